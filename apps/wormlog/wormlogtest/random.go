package wormlogtest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"time"

	"github.com/wormspace/wormspace/apps/wormlog"
	"github.com/wormspace/wormspace/worm"
)

// swap is a TokenSource whose sequencer can crash: crash closes the
// current one and starts a successor (before or after, so the two may
// overlap as rivals). Calls that hit a closed sequencer go to its
// successor.
type swap struct {
	mu  sync.Mutex
	cur *wormlog.Sequencer
	all []*wormlog.Sequencer
}

func (s *swap) get() *wormlog.Sequencer {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur
}

func (s *swap) NextN(ctx context.Context, n int) (wormlog.Grant, error) {
	for {
		g, err := s.get().NextN(ctx, n)
		if errors.Is(err, wormlog.ErrClosed) && ctx.Err() == nil {
			time.Sleep(100 * time.Microsecond)
			continue
		}
		return g, err
	}
}

func (s *swap) Tail(ctx context.Context) (uint64, error) {
	for {
		t, err := s.get().Tail(ctx)
		if errors.Is(err, wormlog.ErrClosed) && ctx.Err() == nil {
			time.Sleep(100 * time.Microsecond)
			continue
		}
		return t, err
	}
}

func (s *swap) Fenced(ctx context.Context, g wormlog.Grant, pos uint64) error {
	return s.get().Fenced(ctx, g, pos)
}

// crash replaces the sequencer with one over space.
func (s *swap) crash(space worm.Space, cfg wormlog.Config, closeFirst bool) {
	s.mu.Lock()
	old := s.cur
	s.mu.Unlock()
	if closeFirst {
		old.Close()
	}
	next := wormlog.NewSequencer(space, cfg)
	s.mu.Lock()
	s.cur = next
	s.all = append(s.all, next)
	s.mu.Unlock()
	if !closeFirst {
		time.Sleep(time.Millisecond) // rivals overlap for a moment
		old.Close()
	}
}

func (s *swap) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, q := range s.all {
		q.Close()
	}
}

// obs is one observation of a position.
type obs struct {
	pos  uint64
	hole bool
	val  string
	who  string
}

type history struct {
	mu       sync.Mutex
	seen     map[uint64]obs     // first observation of each position
	acked    map[uint64]string  // position -> acknowledged value
	ackedBy  map[string]uint64  // value -> position
	maybe    map[string]bool    // appends with an unknown outcome
	failed   map[string]bool    // appends that definitely failed
	appended map[string]bool    // every value ever passed to Append
	follows  [][]wormlog.Record // one per follower
	trimmed  uint64             // positions below were trimmed
	errs     []string
}

func (h *history) fail(format string, args ...any) {
	h.errs = append(h.errs, fmt.Sprintf(format, args...))
}

// observe records an observation and checks it against earlier ones of
// the same position, and the value against the appends.
func (h *history) observe(who string, rec wormlog.Record) {
	h.mu.Lock()
	defer h.mu.Unlock()
	o := obs{pos: rec.Pos, hole: rec.Hole, val: string(rec.Value), who: who}
	if prev, ok := h.seen[rec.Pos]; ok {
		if prev.hole != o.hole || prev.val != o.val {
			h.fail("position %d changed: %s saw %s, %s saw %s", rec.Pos, prev.who, describe(prev), who, describe(o))
		}
		return
	}
	h.seen[rec.Pos] = o
}

func describe(o obs) string {
	if o.hole {
		return "a hole"
	}
	return fmt.Sprintf("%q", o.val)
}

// random runs one seeded workload and checks the history.
func random(e *env, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 0x776f726d6c6f67))
	cfg := e.cfg
	cfg.HoleTimeout = time.Duration(5+rng.IntN(20)) * time.Millisecond
	cfg.Prefetch = 1 + rng.IntN(2)
	appenders := 2 + rng.IntN(4)
	followers := 1 + rng.IntN(2)
	e.t.Logf("appenders=%d followers=%d holeTimeout=%v prefetch=%d", appenders, followers, cfg.HoleTimeout, cfg.Prefetch)

	src := &swap{cur: wormlog.NewSequencer(e.space(rng.IntN(len(e.ss))), cfg)}
	src.all = append(src.all, src.cur)
	defer src.close()
	h := &history{
		seen: map[uint64]obs{}, acked: map[uint64]string{}, ackedBy: map[string]uint64{},
		maybe: map[string]bool{}, failed: map[string]bool{}, appended: map[string]bool{},
		follows: make([][]wormlog.Record, followers),
	}

	work, stop := context.WithTimeout(e.ctx, e.opts.Duration)
	defer stop()
	var wg sync.WaitGroup
	spawn := func(fn func(rng *rand.Rand)) {
		r := rand.New(rand.NewPCG(rng.Uint64(), rng.Uint64()))
		wg.Add(1)
		go func() {
			defer wg.Done()
			fn(r)
		}()
	}
	for a := range appenders {
		spawn(func(r *rand.Rand) {
			c := wormlog.NewClient(e.space(a), cfg, src)
			for i := 0; work.Err() == nil; i++ {
				// One append, or a batch of up to 5.
				k := 1
				if r.IntN(4) == 0 {
					k = 1 + r.IntN(5)
				}
				vs := make([][]byte, k)
				h.mu.Lock()
				for j := range vs {
					vs[j] = fmt.Appendf(nil, "s%d-a%d-%d.%d", seed, a, i, j)
					h.appended[string(vs[j])] = true
				}
				h.mu.Unlock()
				// A generous per-append deadline, independent of the
				// workload's end, so appends finish definitely.
				actx, cancel := context.WithTimeout(e.ctx, 20*time.Second)
				var positions []uint64
				var err error
				if k == 1 {
					var pos uint64
					pos, err = c.Append(actx, vs[0])
					positions = []uint64{pos}
				} else {
					positions, err = c.AppendBatch(actx, vs)
				}
				cancel()
				h.mu.Lock()
				for j, v := range vs {
					switch {
					case err == nil:
						pos := positions[j]
						if old, dup := h.acked[pos]; dup {
							h.fail("position %d acknowledged twice: %q and %q", pos, old, v)
						}
						h.acked[pos], h.ackedBy[string(v)] = string(v), pos
					case errors.Is(err, worm.ErrUnknownOutcome) || k > 1:
						h.maybe[string(v)] = true
					default:
						h.failed[string(v)] = true
					}
				}
				if err != nil && !(errors.Is(err, worm.ErrUnknownOutcome) && errors.Is(err, worm.ErrTrimmed)) {
					// With a 20s deadline and faults that last a few
					// operations, an append must not fail. The one
					// legitimate failure: its write was ambiguous and a
					// trim removed the position before it could tell.
					h.fail("append of %d values failed: %v", k, err)
				}
				h.mu.Unlock()
				if err == nil {
					for j, v := range vs {
						h.observe("appender", wormlog.Record{Pos: positions[j], Value: v})
					}
				}
				if r.IntN(4) == 0 {
					time.Sleep(time.Duration(r.IntN(300)) * time.Microsecond)
				}
			}
		})
	}
	for f := range followers {
		spawn(func(r *rand.Rand) {
			c := wormlog.NewClient(e.space(appenders+f), cfg, src)
			next := uint64(0)
			for rec, err := range c.Follow(work, 0) {
				if err != nil {
					h.mu.Lock()
					h.fail("follower %d: %v", f, err)
					h.mu.Unlock()
					return
				}
				if rec.Pos != next {
					h.mu.Lock()
					h.fail("follower %d delivered position %d, want %d", f, rec.Pos, next)
					h.mu.Unlock()
					return
				}
				next++
				h.observe(fmt.Sprintf("follower %d", f), rec)
				h.mu.Lock()
				h.follows[f] = append(h.follows[f], rec)
				h.mu.Unlock()
			}
		})
	}
	spawn(func(r *rand.Rand) {
		c := wormlog.NewClient(e.space(appenders+followers), cfg, src)
		for work.Err() == nil {
			tail, err := src.Tail(work)
			if err != nil || tail == 0 {
				time.Sleep(time.Millisecond)
				continue
			}
			// Near the tail, where appends are in flight.
			pos := tail - 1 - uint64(r.IntN(int(min(tail, 8))))
			var rec wormlog.Record
			if r.IntN(3) == 0 {
				rec, err = c.FillHole(work, pos)
			} else {
				rec, err = c.Read(work, pos)
			}
			if err == nil {
				h.observe("reader/filler", rec)
			}
			time.Sleep(time.Duration(r.IntN(2000)) * time.Microsecond)
		}
	})
	spawn(func(r *rand.Rand) {
		for {
			select {
			case <-work.Done():
				return
			case <-time.After(time.Duration(10+r.IntN(60)) * time.Millisecond):
			}
			src.crash(e.space(r.IntN(len(e.ss))), cfg, r.IntN(3) != 0)
		}
	})
	spawn(func(r *rand.Rand) {
		// Trim whole segments every follower has passed.
		c := wormlog.NewClient(e.space(r.IntN(len(e.ss))), cfg, nil)
		for {
			select {
			case <-work.Done():
				return
			case <-time.After(time.Duration(20+r.IntN(40)) * time.Millisecond):
			}
			h.mu.Lock()
			upto := uint64(1 << 63)
			for _, recs := range h.follows {
				upto = min(upto, uint64(len(recs)))
			}
			h.mu.Unlock()
			// A segment behind the slowest follower, so that appends
			// resolving an ambiguous write rarely meet the trim.
			upto = upto / uint64(e.size) * uint64(e.size)
			if upto < uint64(e.size) {
				continue
			}
			upto -= uint64(e.size)
			if upto == 0 {
				continue
			}
			// Positions below h.trimmed may be trimmed: mark them before
			// trimming, as a cancelled Trim may have trimmed some.
			h.mu.Lock()
			h.trimmed = max(h.trimmed, upto)
			h.mu.Unlock()
			if err := c.Trim(work, upto); err != nil {
				if work.Err() == nil {
					h.mu.Lock()
					h.fail("Trim(%d): %v", upto, err)
					h.mu.Unlock()
				}
				return
			}
		}
	})
	if e.opts.Nemesis != nil {
		spawn(func(r *rand.Rand) {
			for {
				select {
				case <-work.Done():
					return
				case <-time.After(time.Duration(r.IntN(3000)) * time.Microsecond):
				}
				e.opts.Nemesis.Inject(r, e.space(r.IntN(len(e.ss))))
			}
		})
	}
	<-work.Done()
	if e.opts.Nemesis != nil {
		e.opts.Nemesis.Heal()
	}
	wg.Wait()

	// Liveness once healed: a fresh follower reaches the tail of a fresh
	// sequencer, filling whatever holes crashes left.
	src.crash(e.space(0), cfg, true)
	tail, err := src.Tail(e.ctx)
	if err != nil {
		e.t.Fatalf("final tail: %v", err)
	}
	c := wormlog.NewClient(e.space(1), cfg, src)
	final := make([]wormlog.Record, 0, tail)
	from := h.trimmed
	if tail > from {
		fctx, cancel := context.WithTimeout(e.ctx, 30*time.Second)
		for rec, err := range c.Follow(fctx, from) {
			if err != nil {
				e.t.Fatalf("final follow: %v", err)
			}
			final = append(final, rec)
			h.observe("final follower", rec)
			if rec.Pos+1 == tail {
				break
			}
		}
		cancel()
		if uint64(len(final)) != tail-from {
			e.t.Fatalf("final follower got %d positions from %d, tail %d: stuck at %d", len(final), from, tail, from+uint64(len(final)))
		}
	}
	checkHistory(e, h, final, len(src.all))
}

func checkHistory(e *env, h *history, final []wormlog.Record, sequencers int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	// Acknowledged appends read back at their positions (the final
	// follower read every position below the tail).
	holes := 0
	from := h.trimmed
	for i, rec := range final {
		if rec.Pos != from+uint64(i) {
			h.fail("final follower delivered position %d at index %d", rec.Pos, i)
			break
		}
		if rec.Hole {
			holes++
		}
	}
	for pos, v := range h.acked {
		if pos < from {
			continue // trimmed; the followers saw it (checked below)
		}
		if pos >= from+uint64(len(final)) {
			h.fail("acknowledged append %q at %d is past the recovered tail %d", v, pos, from+uint64(len(final)))
			continue
		}
		if rec := final[pos-from]; rec.Hole || string(rec.Value) != v {
			h.fail("acknowledged append %q at %d reads back as %+v", v, pos, rec)
		}
	}
	// Every value seen: appended by someone, at one position only, never
	// a definitely failed append, and an acknowledged one only at its
	// acknowledged position.
	where := map[string]uint64{}
	for pos, o := range h.seen {
		if o.hole {
			continue
		}
		if !h.appended[o.val] {
			h.fail("position %d holds %q, which nobody appended", pos, o.val)
		}
		if h.failed[o.val] {
			h.fail("position %d holds %q, whose append failed definitely", pos, o.val)
		}
		if p, dup := where[o.val]; dup {
			h.fail("value %q at positions %d and %d", o.val, p, pos)
		}
		where[o.val] = pos
		if p, ok := h.ackedBy[o.val]; ok && p != pos {
			h.fail("value %q acknowledged at %d but seen at %d", o.val, p, pos)
		}
	}
	// Followers: consecutive from 0 (checked as delivered), so every
	// acknowledged record in their range exactly once.
	for f, recs := range h.follows {
		n := uint64(len(recs))
		for pos, v := range h.acked {
			if pos < n && (recs[pos].Hole || string(recs[pos].Value) != v) {
				h.fail("follower %d delivered %+v at %d, acknowledged %q", f, recs[pos], pos, v)
			}
		}
	}
	e.t.Logf("acked=%d maybe=%d trimmed=%d tail=%d holes=%d sequencers=%d followed=%v", len(h.acked), len(h.maybe), from, from+uint64(len(final)), holes, sequencers, followLens(h.follows))
	if len(h.errs) > 0 {
		sort.Strings(h.errs)
		for i, msg := range h.errs {
			if i == 20 {
				e.t.Errorf("... and %d more", len(h.errs)-20)
				break
			}
			e.t.Error(msg)
		}
	}
	if len(h.acked) == 0 {
		e.t.Errorf("no append was acknowledged: the workload made no progress")
	}
}

func followLens(f [][]wormlog.Record) []int {
	out := make([]int, len(f))
	for i, r := range f {
		out[i] = len(r)
	}
	return out
}
