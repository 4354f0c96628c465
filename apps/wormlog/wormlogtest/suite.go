package wormlogtest

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wormspace/wormspace/apps/wormlog"
	"github.com/wormspace/wormspace/worm"
)

var (
	flagSeed  = flag.Uint64("wormlog.seed", 0, "replay one randomized wormlog seed (0: fresh seeds)")
	flagSeeds = flag.Int("wormlog.seeds", 0, "number of randomized wormlog seeds (0: Options.Seeds)")
)

// Open returns at least two clients with distinct identities sharing one
// space.
type Open func(t *testing.T) []worm.Space

// Nemesis injects faults into the clients of a space.
type Nemesis interface {
	// Inject makes some operations of target fail (ErrUnavailable,
	// ErrUnknownOutcome, ...). Called often, from one goroutine.
	Inject(rng *rand.Rand, target worm.Space)
	// Heal stops every fault still pending; afterwards the space must be
	// fault-free.
	Heal()
}

// Options tune RunWith.
type Options struct {
	// Nemesis, if set, injects faults during the randomized runs.
	Nemesis Nemesis
	// Seeds is the number of randomized runs (default 8).
	Seeds int
	// Duration is the length of one randomized run's workload (default
	// 250ms).
	Duration time.Duration
	// Timeout bounds each subtest (default 2 minutes: real clusters may
	// run under emulation).
	Timeout time.Duration
}

func (o Options) withDefaults() Options {
	if o.Seeds <= 0 {
		o.Seeds = 8
	}
	if *flagSeeds > 0 {
		o.Seeds = *flagSeeds
	}
	if o.Duration <= 0 {
		o.Duration = 250 * time.Millisecond
	}
	if o.Timeout <= 0 {
		o.Timeout = 2 * time.Minute
	}
	return o
}

// Run runs the suite with default options and no nemesis.
func Run(t *testing.T, open Open) { RunWith(t, open, Options{}) }

// RunWith runs the suite.
func RunWith(t *testing.T, open Open, opts Options) {
	opts = opts.withDefaults()
	tests := []struct {
		name string
		fn   func(*env)
	}{
		{"AppendRead", testAppendRead},
		{"ConcurrentAppends", testConcurrentAppends},
		{"AppendBatch", testAppendBatch},
		{"FillHole", testFillHole},
		{"AppendRetriesAfterFill", testAppendRetriesAfterFill},
		{"RecoverEmpty", testRecoverEmpty},
		{"RecoverFences", testRecoverFences},
		{"RecoverPrefetched", testRecoverPrefetched},
		{"RecoverTrimmed", testRecoverTrimmed},
		{"Trim", testTrim},
		{"TrimPastTail", testTrimPastTail},
		{"Follow", testFollow},
		{"Foreign", testForeign},
		{"RivalSequencers", testRivalSequencers},
		{"StaleGrantIdenticalValue", testStaleGrantIdenticalValue},
		{"IdleFollowerNeverFills", testIdleFollowerNeverFills},
		{"FollowWithoutSequencer", testFollowWithoutSequencer},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(setup(t, open, opts)) })
	}
	t.Run("Random", func(t *testing.T) {
		seeds := make([]uint64, opts.Seeds)
		for i := range seeds {
			seeds[i] = rand.Uint64()%1e9 + 1
		}
		if *flagSeed != 0 {
			seeds = []uint64{*flagSeed}
		}
		for _, seed := range seeds {
			t.Run(fmt.Sprint(seed), func(t *testing.T) {
				e := setup(t, open, opts)
				t.Logf("seed %d (replay with -wormlog.seed=%d)", seed, seed)
				random(e, seed)
			})
		}
	})
}

// logBase numbers the logs of a process: a random base, a fresh range of
// segments for each log.
var (
	logBase = rand.Uint64N(1<<30)<<20 + 1<<30
	logNext atomic.Uint64
)

// quiet logs warnings and errors only: recoveries and recaptures are
// routine in the suite.
var quiet = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

type env struct {
	t    *testing.T
	ctx  context.Context
	ss   []worm.Space
	size uint32
	opts Options
	cfg  wormlog.Config
}

func setup(t *testing.T, open Open, opts Options) *env {
	t.Helper()
	ss := open(t)
	if len(ss) < 2 {
		t.Fatalf("open returned %d clients; the suite needs at least 2", len(ss))
	}
	size := ss[0].SegmentSize()
	if size < 16 {
		t.Fatalf("segment size %d; the suite needs at least 16", size)
	}
	ids := map[string]bool{}
	for i, s := range ss {
		if s.SegmentSize() != size || ids[s.ID()] {
			t.Fatalf("client %d (%q): segment size %d or identity not unique", i, s.ID(), s.SegmentSize())
		}
		ids[s.ID()] = true
	}
	ctx, cancel := context.WithTimeout(context.Background(), opts.Timeout)
	t.Cleanup(cancel)
	e := &env{t: t, ctx: ctx, ss: ss, size: size, opts: opts}
	e.cfg = e.newConfig("log")
	return e
}

func (e *env) newConfig(name string) wormlog.Config {
	return wormlog.Config{
		Name:        fmt.Sprintf("%s-%d", name, logNext.Add(1)),
		FirstSeg:    logBase + logNext.Add(1)<<16,
		HoleTimeout: 20 * time.Millisecond,
		Logger:      quiet,
	}
}

func (e *env) space(i int) worm.Space { return e.ss[i%len(e.ss)] }

func (e *env) sequencer(i int, cfg wormlog.Config) *wormlog.Sequencer {
	s := wormlog.NewSequencer(e.space(i), cfg)
	e.t.Cleanup(func() { s.Close() })
	return s
}

func (e *env) mustAppend(c *wormlog.Client, v []byte) uint64 {
	e.t.Helper()
	pos, err := c.Append(e.ctx, v)
	if err != nil {
		e.t.Fatalf("Append(%q): %v", v, err)
	}
	return pos
}

func (e *env) wantRecord(c *wormlog.Client, pos uint64, v []byte) {
	e.t.Helper()
	rec, err := c.Read(e.ctx, pos)
	if err != nil {
		e.t.Fatalf("Read(%d): %v, want %q", pos, err, v)
	}
	if rec.Hole || !bytes.Equal(rec.Value, v) || rec.Pos != pos {
		e.t.Fatalf("Read(%d) = %+v, want record %q", pos, rec, v)
	}
}

func (e *env) wantTail(src wormlog.TokenSource, want uint64) {
	e.t.Helper()
	tail, err := src.Tail(e.ctx)
	if err != nil || tail != want {
		e.t.Fatalf("Tail = %d, %v; want %d", tail, err, want)
	}
}

// wantFenced asserts a write with g's token at pos has no effect.
func (e *env) wantFenced(s worm.Space, c *wormlog.Client, g wormlog.Grant, pos uint64) {
	e.t.Helper()
	err := s.Write(e.ctx, c.Addr(pos), g.Token, []byte("stale write"))
	if !errors.Is(err, worm.ErrPreempted) && !errors.Is(err, worm.ErrWritten) {
		e.t.Fatalf("write at %d with old token %v: %v, want ErrPreempted or ErrWritten", pos, g.Token, err)
	}
}

func testAppendRead(e *env) {
	seq := e.sequencer(0, e.cfg)
	c := wormlog.NewClient(e.space(1), e.cfg, seq)
	values := [][]byte{[]byte("a"), {}, {0x00}, {0x01}, bytes.Repeat([]byte{0x01}, 9), []byte("last")}
	for i, v := range values {
		if pos := e.mustAppend(c, v); pos != uint64(i) {
			e.t.Fatalf("append %d at position %d, want %d", i, pos, i)
		}
	}
	r := wormlog.NewClient(e.space(2), e.cfg, nil)
	for i, v := range values {
		e.wantRecord(r, uint64(i), v)
	}
	e.wantTail(seq, uint64(len(values)))
	if _, err := r.Read(e.ctx, uint64(len(values))); !errors.Is(err, wormlog.ErrUnwritten) {
		e.t.Fatalf("Read past the tail: %v, want ErrUnwritten", err)
	}
	if _, err := r.Read(e.ctx, uint64(e.size)*3); !errors.Is(err, wormlog.ErrUnwritten) || !errors.Is(err, worm.ErrUnallocated) {
		e.t.Fatalf("Read in an unallocated segment: %v, want ErrUnwritten and ErrUnallocated", err)
	}
	if _, err := r.Append(e.ctx, []byte("x")); !errors.Is(err, wormlog.ErrNoSequencer) {
		e.t.Fatalf("Append without a sequencer: %v, want ErrNoSequencer", err)
	}
	// A raw value that is not a log entry.
	g, err := seq.NextN(e.ctx, 1)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.space(0).Write(e.ctx, c.Addr(g.Pos), g.Token, []byte{0x07, 1, 2}); err != nil {
		e.t.Fatal(err)
	}
	if _, err := r.Read(e.ctx, g.Pos); !errors.Is(err, wormlog.ErrCorrupt) {
		e.t.Fatalf("Read of a foreign value: %v, want ErrCorrupt", err)
	}
}

func testConcurrentAppends(e *env) {
	seq := e.sequencer(0, e.cfg)
	const workers, each = 16, 3
	n := max(workers*each, int(e.size)*2+5) // cross segment boundaries
	var (
		mu  sync.Mutex
		got = map[uint64][]byte{}
		wg  sync.WaitGroup
		ctr atomic.Int64
	)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := wormlog.NewClient(e.space(w), e.cfg, seq)
			for ctr.Add(1) <= int64(n) {
				v := fmt.Appendf(nil, "w%d-%d", w, ctr.Load())
				pos, err := c.Append(e.ctx, v)
				if err != nil {
					e.t.Errorf("Append: %v", err)
					return
				}
				mu.Lock()
				if old, dup := got[pos]; dup {
					e.t.Errorf("position %d acknowledged twice: %q and %q", pos, old, v)
				}
				got[pos] = v
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if e.t.Failed() {
		return
	}
	// Fault-free with one sequencer: no holes, positions exactly [0, n).
	if len(got) != n {
		e.t.Fatalf("%d appends acknowledged, want %d", len(got), n)
	}
	r := wormlog.NewClient(e.space(1), e.cfg, nil)
	for pos := range uint64(n) {
		v, ok := got[pos]
		if !ok {
			e.t.Fatalf("position %d not acknowledged (positions should be dense)", pos)
		}
		e.wantRecord(r, pos, v)
	}
	e.wantTail(seq, uint64(n))
}

func testFillHole(e *env) {
	seq := e.sequencer(0, e.cfg)
	c := wormlog.NewClient(e.space(1), e.cfg, seq)
	p0 := e.mustAppend(c, []byte("zero"))
	g, err := seq.NextN(e.ctx, 1) // taken, never written: a crashed appender
	if err != nil {
		e.t.Fatal(err)
	}
	p2 := e.mustAppend(c, []byte("two"))
	if p0 != 0 || g.Pos != 1 || p2 != 2 {
		e.t.Fatalf("positions %d, %d, %d; want 0, 1, 2", p0, g.Pos, p2)
	}
	filler := wormlog.NewClient(e.space(2), e.cfg, nil)
	rec, err := filler.FillHole(e.ctx, g.Pos)
	if err != nil || !rec.Hole || rec.Pos != g.Pos {
		e.t.Fatalf("FillHole(%d) = %+v, %v; want a hole", g.Pos, rec, err)
	}
	// The crashed appender comes back: fenced.
	e.wantFenced(e.space(0), c, g, g.Pos)
	// Filling again, or filling a record, changes nothing.
	if rec, err := filler.FillHole(e.ctx, g.Pos); err != nil || !rec.Hole {
		e.t.Fatalf("second FillHole = %+v, %v; want the hole", rec, err)
	}
	if rec, err := filler.FillHole(e.ctx, p2); err != nil || rec.Hole || string(rec.Value) != "two" {
		e.t.Fatalf("FillHole of a record = %+v, %v; want the record", rec, err)
	}
	if rec, err := c.Read(e.ctx, g.Pos); err != nil || !rec.Hole {
		e.t.Fatalf("Read of the hole = %+v, %v", rec, err)
	}
	e.wantRecord(c, p2, []byte("two"))
}

// stealing is a TokenSource that fills the first position it grants before
// handing it out, as a hole filler racing a slow appender would.
type stealing struct {
	wormlog.TokenSource
	filler *wormlog.Client
	once   sync.Once
	stolen atomic.Uint64
	fenced atomic.Int32
	err    error
}

func (s *stealing) NextN(ctx context.Context, n int) (wormlog.Grant, error) {
	g, err := s.TokenSource.NextN(ctx, n)
	if err != nil {
		return g, err
	}
	s.once.Do(func() {
		s.stolen.Store(g.Pos)
		_, s.err = s.filler.FillHole(ctx, g.Pos)
	})
	return g, nil
}

func (s *stealing) Fenced(ctx context.Context, g wormlog.Grant, pos uint64) error {
	s.fenced.Add(1)
	return s.TokenSource.Fenced(ctx, g, pos)
}

func testAppendRetriesAfterFill(e *env) {
	seq := e.sequencer(0, e.cfg)
	src := &stealing{TokenSource: seq, filler: wormlog.NewClient(e.space(2), e.cfg, nil)}
	c := wormlog.NewClient(e.space(1), e.cfg, src)
	pos := e.mustAppend(c, []byte("v"))
	if src.err != nil {
		e.t.Fatal(src.err)
	}
	if pos == src.stolen.Load() || src.fenced.Load() != 1 {
		e.t.Fatalf("append landed at %d (stolen %d), %d fenced reports; want a retry elsewhere after one report", pos, src.stolen.Load(), src.fenced.Load())
	}
	if rec, err := c.Read(e.ctx, src.stolen.Load()); err != nil || !rec.Hole {
		e.t.Fatalf("stolen position = %+v, %v; want a hole", rec, err)
	}
	e.wantRecord(c, pos, []byte("v"))
}

func testRecoverEmpty(e *env) {
	seq := e.sequencer(0, e.cfg)
	e.wantTail(seq, 0)
	seq.Close()
	seq2 := e.sequencer(1, e.cfg)
	e.wantTail(seq2, 0)
	c := wormlog.NewClient(e.space(1), e.cfg, seq2)
	if pos := e.mustAppend(c, []byte("first")); pos != 0 {
		e.t.Fatalf("first append at %d", pos)
	}
}

func testRecoverFences(e *env) {
	seq := e.sequencer(0, e.cfg)
	c := wormlog.NewClient(e.space(1), e.cfg, seq)
	n := uint64(e.size) + 3 // into the second segment
	for i := range n {
		e.mustAppend(c, fmt.Appendf(nil, "v%d", i))
	}
	// In-flight grants of the old sequencer: never written before it dies.
	var old []wormlog.Grant
	for range 3 {
		g, err := seq.NextN(e.ctx, 1)
		if err != nil {
			e.t.Fatal(err)
		}
		old = append(old, g)
	}
	seq.Close()
	seq2 := e.sequencer(2, e.cfg)
	// The new tail is one past the last written position: the positions
	// granted but never written are handed out again, and the old tokens
	// are fenced there.
	e.wantTail(seq2, n)
	for _, g := range old {
		e.wantFenced(e.space(3), c, g, g.Pos)
	}
	c2 := wormlog.NewClient(e.space(1), e.cfg, seq2)
	if pos := e.mustAppend(c2, []byte("after")); pos != n {
		e.t.Fatalf("first append after recovery at %d, want %d", pos, n)
	}
	for i := range n {
		e.wantRecord(c2, i, fmt.Appendf(nil, "v%d", i))
	}
	// A Client whose grant came from the dead sequencer retries via the
	// new one.
	if _, err := seq.NextN(e.ctx, 1); !errors.Is(err, wormlog.ErrClosed) {
		e.t.Fatalf("NextN on a closed sequencer: %v, want ErrClosed", err)
	}
}

func testRecoverPrefetched(e *env) {
	cfg := e.cfg
	cfg.Prefetch = 3 // three empty segments captured ahead
	seq := e.sequencer(0, cfg)
	c := wormlog.NewClient(e.space(1), cfg, seq)
	for i := range 5 {
		e.mustAppend(c, fmt.Appendf(nil, "v%d", i))
	}
	// Wait until the prefetched segments are allocated.
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := e.space(2).Check(e.ctx, cfg.FirstSeg+3)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("prefetched segment %d not allocated: %v", cfg.FirstSeg+3, err)
		}
		time.Sleep(time.Millisecond)
	}
	seq.Close()
	seq2 := e.sequencer(2, cfg)
	e.wantTail(seq2, 5) // not the start of an empty prefetched segment
	if pos := e.mustAppend(wormlog.NewClient(e.space(1), cfg, seq2), []byte("x")); pos != 5 {
		e.t.Fatalf("append after recovery at %d, want 5", pos)
	}
}

func testRecoverTrimmed(e *env) {
	seq := e.sequencer(0, e.cfg)
	c := wormlog.NewClient(e.space(1), e.cfg, seq)
	n := uint64(e.size)*3 + 2
	for i := range n {
		e.mustAppend(c, fmt.Appendf(nil, "v%d", i))
	}
	if err := c.Trim(e.ctx, uint64(e.size)*3); err != nil {
		e.t.Fatal(err)
	}
	seq.Close()
	seq2 := e.sequencer(2, e.cfg)
	e.wantTail(seq2, n)
	// Trim everything, including the open segment: the next sequencer
	// starts in a fresh segment.
	if err := c.Trim(e.ctx, n+uint64(e.size)); err != nil {
		e.t.Fatal(err)
	}
	seq2.Close()
	seq3 := e.sequencer(3, e.cfg)
	c3 := wormlog.NewClient(e.space(1), e.cfg, seq3)
	pos := e.mustAppend(c3, []byte("fresh"))
	if pos < uint64(e.size)*4 {
		e.t.Fatalf("append after trimming everything at %d, want at least %d", pos, e.size*4)
	}
	e.wantRecord(c3, pos, []byte("fresh"))
}

func testTrim(e *env) {
	seq := e.sequencer(0, e.cfg)
	c := wormlog.NewClient(e.space(1), e.cfg, seq)
	size := uint64(e.size)
	n := size*2 + size/2
	for i := range n {
		e.mustAppend(c, fmt.Appendf(nil, "v%d", i))
	}
	r := wormlog.NewClient(e.space(2), e.cfg, nil)
	if err := r.Trim(e.ctx, size-1); err != nil { // no whole segment below
		e.t.Fatal(err)
	}
	e.wantRecord(r, 0, []byte("v0"))
	if err := r.Trim(e.ctx, size*2+1); err != nil {
		e.t.Fatal(err)
	}
	for _, pos := range []uint64{0, size - 1, size, 2*size - 1} {
		if _, err := r.Read(e.ctx, pos); !errors.Is(err, worm.ErrTrimmed) {
			e.t.Fatalf("Read(%d) after trim: %v, want ErrTrimmed", pos, err)
		}
	}
	for _, pos := range []uint64{2 * size, 2*size + 1, n - 1} {
		e.wantRecord(r, pos, fmt.Appendf(nil, "v%d", pos))
	}
	if err := r.Trim(e.ctx, size); err != nil { // lower: no-op
		e.t.Fatal(err)
	}
	e.wantRecord(r, 2*size, fmt.Appendf(nil, "v%d", 2*size))
	for rec, err := range r.Follow(e.ctx, 0) {
		if !errors.Is(err, worm.ErrTrimmed) {
			e.t.Fatalf("Follow from a trimmed position: %+v, %v; want ErrTrimmed", rec, err)
		}
	}
	// Appends continue.
	e.wantRecord(r, e.mustAppend(c, []byte("more")), []byte("more"))
}

func testFollow(e *env) {
	seq := e.sequencer(0, e.cfg)
	n := int(e.size) + 10
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	type got struct {
		recs []wormlog.Record
		err  error
	}
	done := make(chan got, 1)
	follower := wormlog.NewClient(e.space(3), e.cfg, seq)
	go func() {
		var g got
		for rec, err := range follower.Follow(ctx, 0) {
			if err != nil {
				g.err = err
				break
			}
			g.recs = append(g.recs, rec)
			if len(g.recs) == n+1 {
				break
			}
		}
		done <- g
	}()
	// 4 appenders, and one taken position that nobody writes: the
	// follower must fill it after the hole timeout.
	acked := make([][]byte, n+1)
	var mu sync.Mutex
	var wg sync.WaitGroup
	var ctr atomic.Int64
	taken, err := seq.NextN(e.ctx, 1)
	if err != nil {
		e.t.Fatal(err)
	}
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := wormlog.NewClient(e.space(w), e.cfg, seq)
			for ctr.Add(1) <= int64(n) {
				v := fmt.Appendf(nil, "w%d-%d", w, ctr.Load())
				pos, err := c.Append(e.ctx, v)
				if err != nil {
					e.t.Errorf("Append: %v", err)
					return
				}
				mu.Lock()
				acked[pos] = v
				mu.Unlock()
				time.Sleep(time.Duration(rand.IntN(200)) * time.Microsecond)
			}
		}()
	}
	wg.Wait()
	var g got
	select {
	case g = <-done:
	case <-time.After(30 * time.Second):
		e.t.Fatal("follower did not reach the tail")
	}
	if g.err != nil {
		e.t.Fatalf("Follow: %v", g.err)
	}
	for i, rec := range g.recs {
		switch {
		case rec.Pos != uint64(i):
			e.t.Fatalf("follower delivered position %d at index %d", rec.Pos, i)
		case rec.Pos == taken.Pos:
			if !rec.Hole {
				e.t.Fatalf("taken position %d delivered as %+v, want a hole", rec.Pos, rec)
			}
		case rec.Hole || !bytes.Equal(rec.Value, acked[i]):
			e.t.Fatalf("position %d delivered as %+v, want %q", i, rec, acked[i])
		}
	}
}

func testForeign(e *env) {
	seq := e.sequencer(0, e.cfg)
	e.mustAppend(wormlog.NewClient(e.space(1), e.cfg, seq), []byte("a"))
	other := e.cfg
	other.Name += "-other"
	seq2 := e.sequencer(1, other)
	if _, err := seq2.NextN(e.ctx, 1); !errors.Is(err, wormlog.ErrForeign) {
		e.t.Fatalf("sequencer of another log over the same segments: %v, want ErrForeign", err)
	}
}

// testRivalSequencers runs two live sequencers at once, each with its own
// appenders: every append must still land at its own position, and both
// sides must make progress.
func testRivalSequencers(e *env) {
	// Without recapture one side would retry forever: bound it.
	ctx, cancel := context.WithTimeout(e.ctx, 30*time.Second)
	defer cancel()
	e.ctx = ctx
	seqs := []*wormlog.Sequencer{e.sequencer(0, e.cfg), e.sequencer(1, e.cfg)}
	const perSide, workers = 40, 3
	var mu sync.Mutex
	acked := map[uint64][]byte{}
	var wg sync.WaitGroup
	for side, seq := range seqs {
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := wormlog.NewClient(e.space(side*workers+w), e.cfg, seq)
				for i := range perSide / workers {
					v := fmt.Appendf(nil, "s%d-w%d-%d", side, w, i)
					pos, err := c.Append(e.ctx, v)
					if err != nil {
						e.t.Errorf("side %d: Append: %v", side, err)
						return
					}
					mu.Lock()
					if old, dup := acked[pos]; dup {
						e.t.Errorf("position %d acknowledged twice: %q and %q", pos, old, v)
					}
					acked[pos] = v
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	r := wormlog.NewClient(e.space(2), e.cfg, nil)
	for pos, v := range acked {
		e.wantRecord(r, pos, v)
	}
}

// fixedFirst hands out one given grant first, then defers to src.
type fixedFirst struct {
	wormlog.TokenSource
	first *wormlog.Grant
	mu    sync.Mutex
}

func (f *fixedFirst) NextN(ctx context.Context, n int) (wormlog.Grant, error) {
	f.mu.Lock()
	g := f.first
	f.first = nil
	f.mu.Unlock()
	if g != nil {
		return *g, nil
	}
	return f.TokenSource.NextN(ctx, n)
}

// testStaleGrantIdenticalValue: an appender holding a grant of a dead
// sequencer appends the same bytes another appender already appended at
// that (re-granted) position. Writing identical bytes is idempotent in
// WormSpace, so only the per-append nonce keeps the stale appender from
// being acknowledged at the same position.
func testStaleGrantIdenticalValue(e *env) {
	seq := e.sequencer(0, e.cfg)
	stale, err := seq.NextN(e.ctx, 1)
	if err != nil {
		e.t.Fatal(err)
	}
	seq.Close()
	seq2 := e.sequencer(1, e.cfg)
	b := wormlog.NewClient(e.space(2), e.cfg, seq2)
	pb := e.mustAppend(b, []byte("same"))
	if pb != stale.Pos {
		e.t.Fatalf("new sequencer granted %d first, want the unwritten %d again", pb, stale.Pos)
	}
	a := wormlog.NewClient(e.space(3), e.cfg, &fixedFirst{TokenSource: seq2, first: &stale})
	pa := e.mustAppend(a, []byte("same"))
	if pa == pb {
		e.t.Fatalf("two appends acknowledged at position %d", pa)
	}
	e.wantRecord(a, pa, []byte("same"))
	e.wantRecord(a, pb, []byte("same"))
}

// testIdleFollowerNeverFills: a follower waiting at the tail of an idle
// log must not fill the tail position (the next append goes there).
func testIdleFollowerNeverFills(e *env) {
	seq := e.sequencer(0, e.cfg)
	c := wormlog.NewClient(e.space(1), e.cfg, seq)
	e.mustAppend(c, []byte("a"))
	for _, src := range []wormlog.TokenSource{seq, nil} {
		ctx, cancel := context.WithTimeout(e.ctx, 10*e.cfg.HoleTimeout)
		f := wormlog.NewClient(e.space(2), e.cfg, src)
		var got []wormlog.Record
		for rec, err := range f.Follow(ctx, 0) {
			if err != nil {
				e.t.Fatalf("Follow: %v", err)
			}
			got = append(got, rec)
		}
		cancel()
		if len(got) != 1 || string(got[0].Value) != "a" {
			e.t.Fatalf("idle follower (source %T) delivered %+v, want only position 0", src, got)
		}
	}
	if pos := e.mustAppend(c, []byte("b")); pos != 1 {
		e.t.Fatalf("append after idle following at %d, want 1 (was the tail filled?)", pos)
	}
}

// testFollowWithoutSequencer: a follower with no sequencer learns that a
// stuck position was handed out from later writes (notifications or
// probing reads) and fills it.
func testFollowWithoutSequencer(e *env) {
	seq := e.sequencer(0, e.cfg)
	c := wormlog.NewClient(e.space(1), e.cfg, seq)
	e.mustAppend(c, []byte("a"))
	if _, err := seq.NextN(e.ctx, 1); err != nil { // position 1: abandoned
		e.t.Fatal(err)
	}
	e.mustAppend(c, []byte("c"))
	f := wormlog.NewClient(e.space(2), e.cfg, nil)
	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	defer cancel()
	var got []wormlog.Record
	for rec, err := range f.Follow(ctx, 0) {
		if err != nil {
			e.t.Fatalf("Follow: %v", err)
		}
		if got = append(got, rec); len(got) == 3 {
			break
		}
	}
	if len(got) != 3 || got[0].Hole || !got[1].Hole || got[2].Hole || string(got[2].Value) != "c" {
		e.t.Fatalf("follower without sequencer delivered %+v, want a, hole, c", got)
	}
}

func testAppendBatch(e *env) {
	seq := e.sequencer(0, e.cfg)
	c := wormlog.NewClient(e.space(1), e.cfg, seq)
	n := int(e.size)*2 + 5 // several grants: a run never crosses a segment
	values := make([][]byte, n)
	for i := range values {
		values[i] = fmt.Appendf(nil, "b%d", i)
	}
	positions, err := c.AppendBatch(e.ctx, values)
	if err != nil {
		e.t.Fatal(err)
	}
	for i, pos := range positions {
		if pos != uint64(i) {
			e.t.Fatalf("value %d at %d, want %d (fault-free batches are dense)", i, pos, i)
		}
		e.wantRecord(c, pos, values[i])
	}
	// A taken position inside a run: that value goes elsewhere, the
	// others stay.
	src := &stealing{TokenSource: seq, filler: wormlog.NewClient(e.space(2), e.cfg, nil)}
	c2 := wormlog.NewClient(e.space(1), e.cfg, src)
	positions, err = c2.AppendBatch(e.ctx, values[:4])
	if err != nil || src.err != nil {
		e.t.Fatal(err, src.err)
	}
	stolen := src.stolen.Load()
	seen := map[uint64]bool{}
	for i, pos := range positions {
		if pos == stolen || seen[pos] {
			e.t.Fatalf("batch positions %v (stolen %d)", positions, stolen)
		}
		seen[pos] = true
		e.wantRecord(c2, pos, values[i])
	}
	if rec, err := c2.Read(e.ctx, stolen); err != nil || !rec.Hole {
		e.t.Fatalf("stolen position %d = %+v, %v; want a hole", stolen, rec, err)
	}
}

// testTrimPastTail trims beyond the tail under a live sequencer, including
// its current and prefetched segments: appends must move past the trim.
func testTrimPastTail(e *env) {
	seq := e.sequencer(0, e.cfg)
	c := wormlog.NewClient(e.space(1), e.cfg, seq)
	e.mustAppend(c, []byte("a"))
	upto := uint64(e.size) * 3
	if err := c.Trim(e.ctx, upto); err != nil {
		e.t.Fatal(err)
	}
	for i := range 5 {
		v := fmt.Appendf(nil, "after-%d", i)
		pos := e.mustAppend(c, v)
		if pos < upto {
			e.t.Fatalf("append at trimmed position %d (trimmed below %d)", pos, upto)
		}
		e.wantRecord(c, pos, v)
	}
}
