package wormtx_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/wormspace/wormspace/apps/wormtx"
	"github.com/wormspace/wormspace/worm/spec"
)

// stageLog records Trace events by transaction and reporter.
type stageLog struct {
	mu sync.Mutex
	at map[wormtx.TxID]map[string]map[wormtx.Stage]time.Time
}

func (l *stageLog) hook(who string) wormtx.TraceFunc {
	return func(tx wormtx.TxID, s wormtx.Stage, at time.Time) {
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.at == nil {
			l.at = map[wormtx.TxID]map[string]map[wormtx.Stage]time.Time{}
		}
		if l.at[tx] == nil {
			l.at[tx] = map[string]map[wormtx.Stage]time.Time{}
		}
		if l.at[tx][who] == nil {
			l.at[tx][who] = map[wormtx.Stage]time.Time{}
		}
		if _, dup := l.at[tx][who][s]; dup {
			panic(fmt.Sprintf("%s reported %v of %v twice", who, s, tx))
		}
		l.at[tx][who][s] = at
	}
}

// get returns who's time of s in tx.
func (l *stageLog) get(tx wormtx.TxID, who string, s wormtx.Stage) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	at, ok := l.at[tx][who][s]
	return at, ok
}

// memRes is a Recoverable resource voting yes.
type memRes struct {
	mu       sync.Mutex
	prepared map[wormtx.TxID]wormtx.Descriptor
	applied  map[wormtx.TxID]wormtx.Outcome
}

func (r *memRes) Prepare(_ context.Context, tx wormtx.TxID, d wormtx.Descriptor) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, done := r.applied[tx]; !done {
		r.prepared[tx] = d
	}
	return true, nil
}

func (r *memRes) Apply(_ context.Context, tx wormtx.TxID, o wormtx.Outcome) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.prepared, tx)
	r.applied[tx] = o
	return nil
}

func (r *memRes) Prepared(context.Context) ([]wormtx.Tx, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []wormtx.Tx
	for tx, d := range r.prepared {
		out = append(out, wormtx.Tx{ID: tx, Descriptor: d})
	}
	return out, nil
}

// handing delivers prepares straight to participants' HandlePrepare.
type handing struct {
	ctx   context.Context
	parts map[string]*wormtx.Participant
	res   map[string]*memRes
	t     *testing.T
}

func (h handing) SendPrepare(_ context.Context, p string, t wormtx.Tx) error {
	go func() {
		if _, err := h.parts[p].HandlePrepare(h.ctx, t, h.res[p]); err != nil && h.ctx.Err() == nil {
			h.t.Errorf("%s: HandlePrepare: %v", p, err)
		}
	}()
	return nil
}

// TestTraceStages runs a transaction in the direct mode, with and without
// shared segments, and checks that the coordinator and every participant
// report each of their stages once, in path order.
func TestTraceStages(t *testing.T) {
	for _, shared := range []bool{false, true} {
		t.Run(fmt.Sprintf("shared=%v", shared), func(t *testing.T) {
			ctx := ctxT(t)
			st := spec.New(64)
			var log stageLog
			names := []string{"p0", "p1", "p2"}
			h := handing{ctx: ctx, parts: map[string]*wormtx.Participant{}, res: map[string]*memRes{}, t: t}
			for _, n := range names {
				h.parts[n] = wormtx.NewParticipant(st.Client(n), n, wormtx.ParticipantConfig{Policy: fast(10 * time.Second), Trace: log.hook(n)})
				h.res[n] = &memRes{prepared: map[wormtx.TxID]wormtx.Descriptor{}, applied: map[wormtx.TxID]wormtx.Outcome{}}
				t.Cleanup(func() { h.parts[n].Close() })
			}
			co := wormtx.NewCoordinator(st.Client("c"), wormtx.CoordinatorConfig{FirstSeg: 1 << 20, Policy: fast(10 * time.Second),
				Messenger: h, Shared: shared, Reserve: 1, Trace: log.hook("c")})
			defer co.Close()
			id, err := co.Begin(ctx, names, []byte("x"))
			if err != nil {
				t.Fatal(err)
			}
			if o, err := co.Await(ctx, id); err != nil || o != wormtx.Commit {
				t.Fatalf("Await = %v, %v", o, err)
			}
			begin, ok := log.get(id, "c", wormtx.StageBegin)
			if !ok {
				t.Fatal("no begin stage")
			}
			prev := begin
			for _, s := range []wormtx.Stage{wormtx.StagePrepareSent, wormtx.StageOutcome} {
				at, ok := log.get(id, "c", s)
				if !ok || at.Before(prev) {
					t.Fatalf("coordinator %v: reported %v at %v, previous stage at %v", s, ok, at, prev)
				}
				prev = at
			}
			for _, n := range names {
				// The participant applies after Await may return.
				deadline := time.Now().Add(10 * time.Second)
				for {
					if _, ok := log.get(id, n, wormtx.StageApplied); ok || time.Now().After(deadline) {
						break
					}
					time.Sleep(time.Millisecond)
				}
				prev := begin
				for _, s := range wormtx.Stages[2:] {
					at, ok := log.get(id, n, s)
					if !ok || at.Before(prev) {
						t.Fatalf("%s %v: reported %v at %v, previous stage at %v", n, s, ok, at, prev)
					}
					prev = at
				}
			}
		})
	}
}
