package check_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/check"
	"github.com/wormspace/wormspace/worm/spec"
)

const timeout = time.Minute

// workload runs goroutines doing random operations on a few registers of
// two segments through recorded clients, tolerating every error.
func workload(t *testing.T, cs []worm.Space, workers, ops int, seed uint64) {
	t.Helper()
	ctx := context.Background()
	segs := []uint64{1, 2}
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			c := cs[w%len(cs)]
			var tok worm.Token
			for i := 0; i < ops; i++ {
				seg := segs[rng.IntN(len(segs))]
				a := worm.Addr{Seg: seg, Off: uint32(rng.IntN(3))}
				v := []byte(fmt.Sprintf("w%d-%d", w, rng.IntN(2)))
				switch rng.IntN(10) {
				case 0, 1, 2:
					c.Read(ctx, a)
				case 3:
					tok, _ = c.Capture(ctx, a)
				case 4:
					c.Write(ctx, a, tok, v)
				case 5:
					c.WriteUnsafe(ctx, a, v)
				case 6:
					c.Alloc(ctx, seg, []byte(fmt.Sprint("m", w)))
				case 7:
					c.Check(ctx, seg)
				case 8:
					sc, err := c.CaptureSegment(ctx, seg)
					if err == nil {
						tok = sc.Token
					}
				case 9:
					if a.Off+2 <= c.SegmentSize() {
						c.WriteBatch(ctx, seg, a.Off, tok, [][]byte{v, v})
					}
				}
			}
		}()
	}
	wg.Wait()
}

// TestSpecHistoriesAreLinearizable: histories recorded from the spec under
// heavy concurrency are accepted.
func TestSpecHistoriesAreLinearizable(t *testing.T) {
	t.Setenv("WORM_CHECK_DIR", t.TempDir())
	for seed := uint64(1); seed <= 5; seed++ {
		st := spec.New(8)
		rec := check.NewRecorder()
		var cs []worm.Space
		for i := 0; i < 4; i++ {
			cs = append(cs, rec.Wrap(st.Client(fmt.Sprint("c", i))))
		}
		workload(t, cs, 16, 200, seed)
		res := check.Require(t, rec.History(), timeout)
		if res.Outcome != porcupine.Ok {
			t.Fatalf("seed %d: %v", seed, res)
		}
		if res.Checked < 2000 {
			t.Fatalf("seed %d: only %d operations checked; the workload is too weak", seed, res.Checked)
		}
	}
}

// TestSpecHistoriesWithFaultsAreLinearizable: ambiguous outcomes injected
// into the spec (applied or not) are accepted as pending writes.
func TestSpecHistoriesWithFaultsAreLinearizable(t *testing.T) {
	t.Setenv("WORM_CHECK_DIR", t.TempDir())
	st := spec.New(8)
	rec := check.NewRecorder()
	var cs []worm.Space
	for i := 0; i < 3; i++ {
		cs = append(cs, rec.Wrap(st.Client(fmt.Sprint("c", i))))
	}
	st.InjectFault("c0", spec.FaultUnknownApplied, 40)
	st.InjectFault("c1", spec.FaultUnknownDropped, 40)
	st.InjectFault("c2", spec.FaultUnavailable, 40)
	workload(t, cs, 9, 150, 42)
	for _, id := range []string{"c0", "c1", "c2"} {
		if n := st.PendingFaults(id); n != 0 {
			t.Fatalf("%s: %d injected faults did not fire", id, n)
		}
	}
	res := check.Require(t, rec.History(), timeout)
	if res.Pending == 0 {
		t.Fatalf("no pending writes in a history with injected faults: %v", res)
	}
}

// h builds hand-made histories: times are explicit.
type h struct{ ops []check.Op }

var addr = worm.Addr{Seg: 1, Off: 0}

func (b *h) add(op check.Op) *h {
	if op.Client == "" {
		op.Client = "c"
	}
	if op.Addr == (worm.Addr{}) && op.Kind != check.KindAlloc && op.Kind != check.KindCheck {
		op.Addr = addr
	}
	b.ops = append(b.ops, op)
	return b
}
func (b *h) write(v string, err error, call, ret int64) *h {
	return b.add(check.Op{Kind: check.KindWrite, Value: []byte(v), Err: err, Result: writtenValue(err), Call: call, Return: ret})
}
func (b *h) read(v string, err error, call, ret int64) *h {
	var r []byte
	if err == nil {
		r = []byte(v)
	}
	return b.add(check.Op{Kind: check.KindRead, Result: r, Err: err, Call: call, Return: ret})
}
func (b *h) capture(err error, call, ret int64) *h {
	return b.add(check.Op{Kind: check.KindCapture, Err: err, Result: writtenValue(err), Call: call, Return: ret})
}
func (b *h) alloc(client, meta string, info worm.SegmentInfo, call, ret int64) *h {
	return b.add(check.Op{Kind: check.KindAlloc, Client: client, Addr: worm.Addr{Seg: 1, Off: worm.MetaOffset},
		Value: []byte(meta), Info: info, Call: call, Return: ret})
}
func (b *h) check(client string, info worm.SegmentInfo, err error, call, ret int64) *h {
	return b.add(check.Op{Kind: check.KindCheck, Client: client, Addr: worm.Addr{Seg: 1, Off: worm.MetaOffset},
		Info: info, Err: err, Call: call, Return: ret})
}

func writtenValue(err error) []byte { v, _ := worm.WrittenValue(err); return v }

func wErr(v string) error { return &worm.WrittenError{Addr: addr, Value: []byte(v)} }

// TestRejectsBadHistories: each violation is caught, and the same history
// with the violation repaired (the control) is accepted, so the test
// cannot pass by rejecting everything.
func TestRejectsBadHistories(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("WORM_CHECK_DIR", dir)
	info := func(owner, meta string, won bool) worm.SegmentInfo {
		return worm.SegmentInfo{Owner: owner, Meta: []byte(meta), Won: won}
	}
	cases := []struct {
		name      string
		bad, good *h
	}{
		{
			name: "stale read after a value was read",
			bad:  new(h).write("a", nil, 0, 10).read("a", nil, 11, 12).read("", worm.ErrEmpty, 13, 14),
			good: new(h).write("a", nil, 0, 10).read("", worm.ErrEmpty, 1, 2).read("a", nil, 13, 14),
		},
		{
			name: "stale read after the write returned",
			bad:  new(h).write("a", nil, 0, 1).read("", worm.ErrEmpty, 2, 3),
			good: new(h).write("a", nil, 0, 5).read("", worm.ErrEmpty, 2, 3),
		},
		{
			name: "two different values read from one register",
			bad: new(h).write("a", worm.ErrUnknownOutcome, 0, 1).write("b", worm.ErrUnknownOutcome, 0, 1).
				read("a", nil, 2, 20).read("b", nil, 3, 19),
			good: new(h).write("a", worm.ErrUnknownOutcome, 0, 1).write("b", worm.ErrUnknownOutcome, 0, 1).
				read("a", nil, 2, 20).read("a", nil, 3, 19),
		},
		{
			name: "read empty after a read returned a value",
			bad:  new(h).write("a", worm.ErrUnknownOutcome, 0, 1).read("a", nil, 2, 3).read("", worm.ErrEmpty, 4, 5),
			good: new(h).write("a", worm.ErrUnknownOutcome, 0, 1).read("", worm.ErrEmpty, 2, 3).read("a", nil, 4, 5),
		},
		{
			name: "write OK with a different value than a later read",
			bad:  new(h).write("a", nil, 0, 1).write("b", worm.ErrUnknownOutcome, 0, 1).read("b", nil, 2, 3),
			good: new(h).write("a", nil, 0, 1).write("b", worm.ErrUnknownOutcome, 0, 1).read("a", nil, 2, 3),
		},
		{
			name: "two writes of different values both OK",
			bad:  new(h).write("a", nil, 0, 10).write("b", nil, 1, 9),
			good: new(h).write("a", nil, 0, 10).write("b", wErr("a"), 1, 9),
		},
		{
			name: "capture token after the value was visible",
			bad:  new(h).write("a", nil, 0, 1).read("a", nil, 2, 3).capture(nil, 4, 5),
			good: new(h).write("a", nil, 0, 1).read("a", nil, 2, 3).capture(wErr("a"), 4, 5),
		},
		{
			name: "capture reports a value nobody wrote",
			bad:  new(h).write("a", nil, 0, 1).capture(wErr("z"), 4, 5),
			good: new(h).write("a", nil, 0, 1).capture(wErr("a"), 4, 5),
		},
		{
			name: "written error with a value other than the stored one",
			bad:  new(h).write("a", nil, 0, 1).write("b", wErr("c"), 2, 3),
			good: new(h).write("a", nil, 0, 1).write("b", wErr("a"), 2, 3),
		},
		{
			name: "read of a value whose write was preempted",
			bad:  new(h).write("a", worm.ErrPreempted, 0, 1).read("a", nil, 2, 3),
			good: new(h).write("a", worm.ErrUnknownOutcome, 0, 1).read("a", nil, 2, 3),
		},
		{
			name: "unavailable read dropped, but a later stale read is not",
			bad:  new(h).write("a", nil, 0, 1).read("", worm.ErrUnavailable, 2, 3).read("", worm.ErrEmpty, 4, 5),
			good: new(h).write("a", nil, 0, 1).read("", worm.ErrUnavailable, 2, 3).read("a", nil, 4, 5),
		},
		{
			name: "two clients win one allocation",
			bad: new(h).alloc("p", "mp", info("p", "mp", true), 0, 10).
				alloc("q", "mq", info("q", "mq", true), 1, 9),
			good: new(h).alloc("p", "mp", info("p", "mp", true), 0, 10).
				alloc("q", "mq", info("p", "mp", false), 1, 9),
		},
		{
			name: "loser told it won",
			bad: new(h).alloc("p", "mp", info("p", "mp", true), 0, 1).
				alloc("q", "mq", info("p", "mp", true), 2, 3),
			good: new(h).alloc("p", "mp", info("p", "mp", true), 0, 1).
				alloc("q", "mq", info("p", "mp", false), 2, 3),
		},
		{
			name: "check disagrees with the allocation winner",
			bad: new(h).alloc("p", "mp", info("p", "mp", true), 0, 1).
				check("q", info("q", "mq", true), nil, 2, 3),
			good: new(h).alloc("p", "mp", info("p", "mp", true), 0, 1).
				check("q", info("p", "mp", false), nil, 2, 3),
		},
		{
			name: "check unallocated after an allocation",
			bad: new(h).alloc("p", "mp", info("p", "mp", true), 0, 1).
				check("q", worm.SegmentInfo{}, worm.ErrUnallocated, 2, 3),
			good: new(h).check("q", worm.SegmentInfo{}, worm.ErrUnallocated, 0, 1).
				alloc("p", "mp", info("p", "mp", true), 2, 3),
		},
		{
			name: "segment capture misses a written register",
			bad: new(h).write("a", nil, 0, 1).add(check.Op{Kind: check.KindCaptureSegment, Addr: worm.Addr{Seg: 1},
				Capture: worm.SegmentCapture{Token: worm.Token{Round: 9, Node: 1}}, Call: 2, Return: 3}),
			good: new(h).write("a", nil, 0, 1).add(check.Op{Kind: check.KindCaptureSegment, Addr: worm.Addr{Seg: 1},
				Capture: worm.SegmentCapture{Token: worm.Token{Round: 9, Node: 1},
					Written: []worm.Entry{{Off: 0, Value: []byte("a")}}}, Call: 2, Return: 3}),
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ok, res := check.Check(tc.good.ops, timeout)
			if !ok || res.Outcome != porcupine.Ok {
				t.Fatalf("control history rejected: %v", res)
			}
			ok, res = check.Check(tc.bad.ops, timeout)
			if ok || res.Outcome != porcupine.Illegal {
				t.Fatalf("bad history accepted: %v", res)
			}
			if res.Visualization == "" {
				t.Fatalf("no visualization written: %v", res.VisualizationErr)
			}
			if !strings.HasPrefix(res.Visualization, dir) {
				t.Fatalf("visualization %s not under WORM_CHECK_DIR %s", res.Visualization, dir)
			}
			b, err := os.ReadFile(res.Visualization)
			if err != nil || !strings.Contains(string(b), "<html") {
				t.Fatalf("visualization %s: %d bytes, %v", res.Visualization, len(b), err)
			}
		})
	}
}

// laggingSpace is a deliberately broken Space: reads are served from a
// replica that applies writes only every lag-th read, like a learner that
// answers before it has caught up. The checker must catch it end to end.
type laggingSpace struct {
	worm.Space
	mu    sync.Mutex
	n     int
	lag   int
	cache map[worm.Addr][]byte
}

func (s *laggingSpace) Read(ctx context.Context, a worm.Addr) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n++
	if s.n%s.lag == 0 || s.cache == nil {
		s.cache = map[worm.Addr][]byte{}
	}
	if v, ok := s.cache[a]; ok {
		if v == nil {
			return nil, worm.ErrEmpty
		}
		return v, nil
	}
	v, err := s.Space.Read(ctx, a)
	if err == nil || errors.Is(err, worm.ErrEmpty) {
		s.cache[a] = v
	}
	return v, err
}

func TestCatchesBrokenSpace(t *testing.T) {
	t.Setenv("WORM_CHECK_DIR", t.TempDir())
	st := spec.New(8)
	rec := check.NewRecorder()
	ctx := context.Background()
	broken := rec.Wrap(&laggingSpace{Space: st.Client("reader"), lag: 1000})
	w := rec.Wrap(st.Client("writer"))
	if _, err := w.Alloc(ctx, 1, nil); err != nil {
		t.Fatal(err)
	}
	for off := uint32(0); off < 8; off++ {
		a := worm.Addr{Seg: 1, Off: off}
		if _, err := broken.Read(ctx, a); !errors.Is(err, worm.ErrEmpty) {
			t.Fatal(err)
		}
		if err := w.WriteUnsafe(ctx, a, []byte("v")); err != nil {
			t.Fatal(err)
		}
		broken.Read(ctx, a) // stale: served from the cache
	}
	ok, res := check.Check(rec.History(), timeout)
	if ok {
		t.Fatalf("stale reads accepted: %v", res)
	}
	t.Logf("caught: %v", res)
}

// TestRecorder: in-flight operations are pending, batches are split per
// register and segment captures are expanded.
func TestRecorder(t *testing.T) {
	st := spec.New(8)
	rec := check.NewRecorder()
	ctx := context.Background()
	c := rec.Wrap(st.Client("c"))
	if _, err := c.Alloc(ctx, 1, []byte("m")); err != nil {
		t.Fatal(err)
	}
	sc, err := c.CaptureSegment(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WriteBatch(ctx, 1, 2, sc.Token, [][]byte{[]byte("x"), []byte("y")}); err != nil {
		t.Fatal(err)
	}
	c.Read(ctx, worm.Addr{Seg: 1, Off: 3})
	hist := rec.History()
	kinds := map[check.Kind]int{}
	for _, op := range hist {
		kinds[op.Kind]++
		if op.Return == check.Pending || op.Return < op.Call {
			t.Fatalf("finished op %+v has bad times", op)
		}
		if op.Client != "c" {
			t.Fatalf("op %+v: client %q", op, op.Client)
		}
	}
	if kinds[check.KindWrite] != 2 || kinds[check.KindAlloc] != 1 || kinds[check.KindCaptureSegment] != 1 || kinds[check.KindRead] != 1 {
		t.Fatalf("recorded kinds %v", kinds)
	}
	ops, stats := check.Operations(hist)
	// Alloc, 2 writes, read, and the segment capture expanded to the two
	// registers seen elsewhere (2 and 3): 6.
	if len(ops) != 6 || stats != (check.Stats{}) {
		t.Fatalf("Operations: %d ops, %+v; want 6 ops, nothing dropped or pending", len(ops), stats)
	}

	// An operation in flight when History is taken is pending.
	block := make(chan struct{})
	started := make(chan struct{})
	slow := rec.Wrap(&blockingSpace{Space: st.Client("slow"), started: started, block: block})
	done := make(chan struct{})
	go func() {
		slow.WriteUnsafe(ctx, worm.Addr{Seg: 1, Off: 7}, []byte("late"))
		close(done)
	}()
	<-started
	var inflight *check.Op
	hist = rec.History()
	for i := range hist {
		if hist[i].Client == "slow" {
			inflight = &hist[i]
		}
	}
	if inflight == nil || inflight.Return != check.Pending {
		t.Fatalf("in-flight write: %+v, want Return == Pending", inflight)
	}
	// Nobody observed "late", so the in-flight write cannot matter.
	if _, stats = check.Operations(hist); stats.Elided != 1 || stats.Pending != 0 {
		t.Fatalf("in-flight unobserved write: %+v, want elided", stats)
	}
	close(block)
	<-done
	if ok, res := check.Check(rec.History(), timeout); !ok {
		t.Fatal(res)
	}
}

type blockingSpace struct {
	worm.Space
	started chan struct{}
	block   chan struct{}
}

func (s *blockingSpace) WriteUnsafe(ctx context.Context, a worm.Addr, v []byte) error {
	close(s.started)
	<-s.block
	return s.Space.WriteUnsafe(ctx, a, v)
}
