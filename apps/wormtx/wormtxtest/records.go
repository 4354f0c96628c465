package wormtxtest

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wormspace/wormspace/apps/wormtx"
)

// testRecordsRandomized runs, per seed, concurrent transactions among
// three participants that vote with records (set segments), with random
// no votes and random crashes of participants before and after voting; a
// restarter brings crashed participants back with their volatile state
// gone (Recorder.Crash). It checks that a committed transaction is
// applied as commit by every participant (after a crash, from the
// record its vote carried: the Recorder flags a commit without a yes
// vote of its own), that nobody applies two outcomes or holds locks
// once the outcomes are known, and that no transaction is left without
// an outcome. Options.Nemesis (wormd kills on a real cluster, faults
// injected into the spec) disturbs the Space while the transactions
// start.
func testRecordsRandomized(t *testing.T, open Open, opts Options) {
	n := min(opts.Seeds, 4)
	for _, seed := range seeds(t, n) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			t.Logf("seed %d (replay: WORMTX_SEED=%d go test -run 'RecordsRandomized/%d')", seed, seed, seed)
			recordsSeed(setup(t, open, opts), seed, opts)
		})
	}
}

func recordsSeed(e *env, seed uint64, opts Options) {
	parts := names(3)
	const (
		txs       = 24
		workers   = 4
		crashOdds = 16 // one check in crashOdds crashes, per point
		noOdds    = 8  // one vote in noOdds is no
	)
	// Decisions are a function of the seed, the transaction and (for
	// crashes) the incarnation, so a replay makes the same ones for the
	// same TxIDs, and a restarted participant does not crash at the same
	// point of the same transaction forever.
	roll := func(odds int, name string, tx wormtx.TxID, what byte, inc int64) bool {
		h := fnv.New64a()
		fmt.Fprint(h, seed, name, uint64(tx), what, inc)
		return h.Sum64()%uint64(odds) == 0
	}
	// calm ends the crashes once every transaction has its outcome, so
	// that the participants settle.
	var calm atomic.Bool
	incs := map[string]*atomic.Int64{}
	// A crash point kills the whole incarnation: every later check in it
	// crashes too, until the restart gives a fresh flag.
	dead := map[string]*atomic.Pointer[atomic.Bool]{}
	for _, p := range parts {
		dead[p] = &atomic.Pointer[atomic.Bool]{}
		dead[p].Store(&atomic.Bool{})
		incs[p] = &atomic.Int64{}
	}
	logs := map[string]*memSegments{}
	cl := e.cluster(parts, func(name string) wormtx.ParticipantConfig {
		logs[name] = &memSegments{}
		flag, inc := dead[name], incs[name]
		return wormtx.ParticipantConfig{Policy: fast(200 * time.Millisecond), AbandonAfter: 50 * time.Millisecond,
			Segments: logs[name],
			Crash: func(pt wormtx.CrashPoint, tx wormtx.TxID) bool {
				d := flag.Load()
				if d.Load() {
					return true
				}
				if !calm.Load() && (pt == wormtx.ParticipantBeforeVote || pt == wormtx.ParticipantAfterVote) && roll(crashOdds, name, tx, byte(pt), inc.Load()) {
					d.Store(true)
					return true
				}
				return false
			}}
	})
	for _, p := range parts {
		cl.rec[p].VoteFn = func(tx wormtx.TxID) bool { return !roll(noOdds, p, tx, 'v', 0) }
	}
	co := e.setCoordinator(cl)

	// The restarter: the only user of cl.done and cl.start while the
	// transactions run.
	stop := make(chan struct{})
	var restarts atomic.Int64
	var rwg sync.WaitGroup
	rwg.Go(func() {
		rng := rand.New(rand.NewPCG(seed, 1))
		for {
			for _, p := range parts {
				select {
				case <-cl.done[p]:
					cl.rec[p].Crash()
					time.Sleep(time.Duration(rng.IntN(20)) * time.Millisecond)
					incs[p].Add(1)
					dead[p].Store(&atomic.Bool{})
					cl.start(p)
					restarts.Add(1)
				default:
				}
			}
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	})

	var (
		mu       sync.Mutex
		outcomes = map[wormtx.TxID]wormtx.Outcome{}
		failures []string
	)
	// The Space's nemesis (wormd kills on a real cluster, injected
	// ambiguous and failed operations on the spec) while the
	// transactions start; the participants' crashes go on until every
	// outcome is known.
	ids := make([]string, len(e.c))
	for i, c := range e.c {
		ids[i] = c.ID()
	}
	stopNemesis := make(chan struct{})
	calmNemesis := disturb(opts, seed, ids, stopNemesis)
	next := atomic.Int64{}
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for next.Add(1) <= txs && e.ctx.Err() == nil {
				id, err := co.Begin(e.ctx, parts, []byte("payload"))
				if err != nil {
					mu.Lock()
					failures = append(failures, fmt.Sprintf("Begin: %v", err))
					mu.Unlock()
					return
				}
				o, err := co.Await(e.ctx, id)
				mu.Lock()
				if err != nil {
					failures = append(failures, fmt.Sprintf("Await(%v): %v", id, err))
				} else {
					outcomes[id] = o
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(stopNemesis)
	calmNemesis()
	// No new crashes from here; the restarter keeps reviving those
	// already decided until everything has settled.
	calm.Store(true)
	defer rwg.Wait()
	defer close(stop)
	if len(failures) > 0 {
		e.t.Fatalf("%d of %d transactions failed: %v", len(failures), txs, failures)
	}
	// Settling takes a restart's scan and a recovery or two; a minute
	// means something is stuck.
	settle := time.Now().Add(time.Minute)
	commits := 0
	for id, o := range outcomes {
		if o == wormtx.Commit {
			commits++
		}
		for _, p := range parts {
			for {
				got, applied := cl.rec[p].Applied(id)
				if applied && got != o {
					e.t.Fatalf("%v: %s applied %v, the outcome is %v", id, p, got, o)
				}
				// A committed transaction reaches every participant (each
				// voted yes and must apply it, after a crash from its
				// vote's record); an aborted one may leave out one that
				// holds nothing of it.
				if applied || (o == wormtx.Abort && !slices.Contains(cl.rec[p].Pending(), id)) {
					break
				}
				if time.Now().After(settle) {
					e.t.Fatalf("%v (%v): %s never applied it: %s", id, o, p, cl.rec[p].describe(id))
				}
				time.Sleep(2 * time.Millisecond)
			}
		}
	}
	// No locks left over for transactions whose outcome is known: a
	// prepare that was still on its way settles too.
	for _, p := range parts {
		for {
			var held []wormtx.TxID
			for _, tx := range cl.rec[p].Pending() {
				if _, known := outcomes[tx]; known {
					held = append(held, tx)
				}
			}
			if len(held) == 0 {
				break
			}
			if time.Now().After(settle) {
				e.t.Fatalf("%s still holds %v", p, held)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	cl.checkProblems()
	e.t.Logf("%d transactions, %d committed, %d participant restarts", len(outcomes), commits, restarts.Load())
	if errors.Is(e.ctx.Err(), context.DeadlineExceeded) {
		e.t.Fatal("ran out of time")
	}
}
