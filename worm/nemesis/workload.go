package nemesis

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/wormspace/wormspace/apps/wormlog"
	"github.com/wormspace/wormspace/apps/wormpaxos"
	"github.com/wormspace/wormspace/apps/wormpaxos/kv"
	"github.com/wormspace/wormspace/apps/wormpaxos/wormpaxostest"
	"github.com/wormspace/wormspace/worm"
)

// startWorkload starts every client goroutine; they stop when ctx ends.
func (h *harness) startWorkload(ctx context.Context, wg *sync.WaitGroup) error {
	seed := h.cfg.Seed
	began := time.Now()

	// Register clients: capture/write/read on a sliding window of
	// contended registers.
	for i := range 3 {
		cl, err := h.dial(ctx, "reg")
		if err != nil {
			return err
		}
		sp := h.rec.Wrap(cl)
		rng := rand.New(rand.NewPCG(seed, uint64(i)+1))
		wg.Go(func() {
			for n := 0; ctx.Err() == nil; n++ {
				window := int(time.Since(began) / (25 * time.Millisecond))
				a := worm.Addr{Seg: regSegs + uint64(rng.IntN(2)), Off: uint32((window + rng.IntN(4)) % segSize)}
				octx, cancel := context.WithTimeout(ctx, opTimeout)
				var err error
				if rng.IntN(3) == 0 {
					_, err = sp.Read(octx, a)
					h.cnt.add("read", err)
				} else {
					var tok worm.Token
					tok, err = sp.Capture(octx, a)
					h.cnt.add("capture", err)
					if err == nil {
						err = sp.Write(octx, a, tok, []byte(fmt.Sprintf("r%d-%d", i, n)))
						h.cnt.add("write", err)
					}
				}
				cancel()
				if errors.Is(err, worm.ErrUnavailable) || errors.Is(err, worm.ErrUnknownOutcome) {
					sleep(ctx, 10*time.Millisecond) // no quorum: do not spin
				}
			}
		})
	}

	// Durability writer: fresh registers, every acknowledged value
	// remembered and read back at the end.
	dcl, err := h.dial(ctx, "durable")
	if err != nil {
		return err
	}
	dsp := h.rec.Wrap(dcl)
	wg.Go(func() {
		seg, off := uint64(durSeg), uint32(0)
		allocated := false
		for ctx.Err() == nil {
			octx, cancel := context.WithTimeout(ctx, opTimeout)
			if !allocated {
				_, err := dsp.Alloc(octx, seg, nil)
				h.cnt.add("durable-alloc", err)
				allocated = err == nil
				cancel()
				if !allocated {
					sleep(ctx, 20*time.Millisecond)
				}
				continue
			}
			a := worm.Addr{Seg: seg, Off: off}
			v := []byte(fmt.Sprintf("d%d-%d", seg, off))
			tok, err := dsp.Capture(octx, a)
			h.cnt.add("durable-capture", err)
			if err == nil {
				err = dsp.Write(octx, a, tok, v)
				h.cnt.add("durable-write", err)
				if err == nil {
					h.mu.Lock()
					h.durable[a] = v
					h.mu.Unlock()
				}
				off++
			} else if errors.Is(err, worm.ErrWritten) {
				off++
			}
			cancel()
			if off == segSize {
				seg, off, allocated = seg+1, 0, false
			}
			sleep(ctx, 3*time.Millisecond)
		}
	})

	// WormLog: one sequencer (replaced when it fails), two appenders.
	scl, err := h.dial(ctx, "sequencer")
	if err != nil {
		return err
	}
	src := &seqHolder{space: scl, cfg: logConfig()}
	src.cur = wormlog.NewSequencer(scl, src.cfg)
	wg.Go(func() {
		<-ctx.Done()
		src.close()
	})
	for i := range 2 {
		acl, err := h.dial(ctx, "appender")
		if err != nil {
			return err
		}
		lg := wormlog.NewClient(acl, logConfig(), src)
		rng := rand.New(rand.NewPCG(seed, uint64(i)+100))
		wg.Go(func() {
			var mine []uint64
			for n := 0; ctx.Err() == nil; n++ {
				v := []byte(fmt.Sprintf("a%d-%d", i, n))
				octx, cancel := context.WithTimeout(ctx, opTimeout)
				pos, err := lg.Append(octx, v)
				cancel()
				if ctx.Err() != nil {
					return
				}
				h.cnt.add("log-append", err)
				if err != nil {
					sleep(ctx, 10*time.Millisecond)
					continue
				}
				h.mu.Lock()
				if old, dup := h.logAcked[pos]; dup {
					h.violations = append(h.violations, fmt.Sprintf("position %d acknowledged twice: %q and %q", pos, old, v))
				} else {
					h.logAcked[pos] = v
				}
				h.mu.Unlock()
				mine = append(mine, pos)
				if n%8 == 7 {
					// Positions never change: read back an earlier append.
					p := mine[rng.IntN(len(mine))]
					octx, cancel := context.WithTimeout(ctx, opTimeout)
					rec, err := lg.Read(octx, p)
					cancel()
					h.cnt.add("log-read", err)
					h.mu.Lock()
					want := h.logAcked[p]
					h.mu.Unlock()
					if err == nil && (!bytes.Equal(rec.Value, want) || rec.Hole) {
						h.violation("position %d changed: acknowledged %q, read %q (hole %v)", p, want, rec.Value, rec.Hole)
					}
				}
			}
		})
	}

	// WormPaxos KV: three replicas, each on its own client, and three
	// KV clients that try them in a seeded order.
	var reps []kv.Backend
	for i := range 3 {
		rcl, err := h.dial(ctx, "replica")
		if err != nil {
			return err
		}
		r, err := wormpaxos.New(rcl, kv.NewStore(), kvConfig(i))
		if err != nil {
			return err
		}
		wg.Go(func() {
			if err := r.Run(ctx); err != nil && ctx.Err() == nil {
				h.violation("kv replica %d stopped: %v", i, err)
			}
		})
		reps = append(reps, r)
	}
	const keys = 3
	for ci := range 3 {
		crng := rand.New(rand.NewPCG(seed, uint64(ci)+200))
		order := crng.Perm(3)
		bs := make([]kv.Backend, 3)
		for j, k := range order {
			bs[j] = reps[k]
		}
		c := kv.NewClient(fmt.Sprintf("kv%d-%d", seed%1000, ci), bs...)
		c.AttemptTimeout = 700 * time.Millisecond
		wg.Go(func() {
			for n := 0; ctx.Err() == nil; n++ {
				op := kv.Op{Key: "k" + strconv.Itoa(crng.IntN(keys))}
				val := fmt.Sprintf("%d.%d", ci, n)
				var kind string
				switch x := crng.IntN(10); {
				case x < 4:
					op.Kind, op.Value, kind = kv.OpPut, val, "kv-put"
				case x < 5:
					op.Kind, kind = kv.OpDelete, "kv-delete"
				case x < 7:
					op.Kind, op.Value, op.Old, kind = kv.OpCAS, val, fmt.Sprintf("%d.%d", crng.IntN(3), crng.IntN(n+1)), "kv-cas"
				default:
					op.Kind, kind = kv.OpGet, "kv-get"
				}
				octx, cancel := context.WithTimeout(ctx, 2*opTimeout)
				call := h.kvHist.Now()
				res, err := c.Do(octx, op)
				ret := h.kvHist.Now()
				cancel()
				if ctx.Err() != nil && err != nil {
					// Cut off by the end of the run: unknown outcome.
					h.kvHist.Add(wormpaxostest.KVOp{Client: ci, Op: op, Unknown: true, Call: call, Return: ret})
					return
				}
				h.cnt.add(kind, err)
				h.kvHist.Add(wormpaxostest.KVOp{Client: ci, Op: op, Result: res, Unknown: err != nil, Call: call, Return: ret})
				if err != nil {
					sleep(ctx, 10*time.Millisecond)
				}
			}
		})
	}
	return nil
}

// seqHolder is a TokenSource over the current sequencer; a sequencer that
// failed (it gives up after errors it cannot retry) is replaced by a new
// one, which fences the old one's tokens.
type seqHolder struct {
	space worm.Space
	cfg   wormlog.Config

	mu       sync.Mutex
	cur      *wormlog.Sequencer
	replaced int
	closed   bool
}

func (s *seqHolder) get() *wormlog.Sequencer {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur
}

func (s *seqHolder) check(seq *wormlog.Sequencer, err error) {
	if err == nil || !strings.Contains(err.Error(), "sequencer failed") {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur != seq || s.closed {
		return
	}
	seq.Close()
	s.cur = wormlog.NewSequencer(s.space, s.cfg)
	s.replaced++
}

func (s *seqHolder) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	s.cur.Close()
}

func (s *seqHolder) NextN(ctx context.Context, n int) (wormlog.Grant, error) {
	seq := s.get()
	g, err := seq.NextN(ctx, n)
	s.check(seq, err)
	return g, err
}

func (s *seqHolder) Tail(ctx context.Context) (uint64, error) {
	seq := s.get()
	t, err := seq.Tail(ctx)
	s.check(seq, err)
	return t, err
}

func (s *seqHolder) Fenced(ctx context.Context, g wormlog.Grant, pos uint64) error {
	return s.get().Fenced(ctx, g, pos)
}
