package wormlog_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/wormspace/wormspace/apps/wormlog"
	"github.com/wormspace/wormspace/apps/wormlog/wormlogtest"
	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/spec"
)

// specNemesis injects spec faults: unknown outcomes applied or not, and
// unavailability, on any operation or on writes only.
type specNemesis struct {
	st       *spec.Store
	mu       sync.Mutex
	ids      map[string]bool
	injected int // faults planned
	unfired  int // faults still pending when healed
}

func (n *specNemesis) Inject(rng *rand.Rand, target worm.Space) {
	n.mu.Lock()
	n.ids[target.ID()] = true
	n.mu.Unlock()
	f := []spec.Fault{spec.FaultUnknownApplied, spec.FaultUnknownDropped, spec.FaultUnavailable}[rng.IntN(3)]
	var ops []spec.Op
	switch rng.IntN(3) {
	case 0:
		ops = []spec.Op{spec.OpWrite}
	case 1:
		ops = []spec.Op{spec.OpCapture, spec.OpCaptureSegment, spec.OpAlloc, spec.OpCheck}
	}
	k := 1 + rng.IntN(2)
	n.mu.Lock()
	n.injected += k
	n.mu.Unlock()
	n.st.InjectFault(target.ID(), f, k, ops...)
}

func (n *specNemesis) Heal() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for id := range n.ids {
		n.unfired += n.st.PendingFaults(id)
		n.st.InjectFault(id, spec.FaultNone, 0)
	}
}

func openSpec(st *spec.Store) wormlogtest.Open {
	return func(t *testing.T) []worm.Space {
		var ss []worm.Space
		for i := range 6 {
			s := st.Client(fmt.Sprintf("c%d-%s", i, t.Name()))
			t.Cleanup(func() { s.Close() })
			ss = append(ss, s)
		}
		return ss
	}
}

// TestSuiteSpec runs the invariant suite on the specification, fault-free.
func TestSuiteSpec(t *testing.T) {
	wormlogtest.Run(t, openSpec(spec.New(16)))
}

// TestSuiteSpecFaults runs it with spec fault injection and lost listener
// notifications (a listen buffer of 2).
func TestSuiteSpecFaults(t *testing.T) {
	st := spec.New(32)
	st.SetListenBuffer(2)
	seeds := 24
	if testing.Short() {
		seeds = 6
	}
	nem := &specNemesis{st: st, ids: map[string]bool{}}
	wormlogtest.RunWith(t, openSpec(st), wormlogtest.Options{
		Nemesis:  nem,
		Seeds:    seeds,
		Duration: 200 * time.Millisecond,
	})
	fired := nem.injected - nem.unfired
	t.Logf("faults: %d injected, %d fired", nem.injected, fired)
	if fired < seeds {
		t.Errorf("only %d faults fired over %d seeds: the nemesis is not reaching the workload", fired, seeds)
	}
}

// TestAmbiguousWrites drives Append through unknown outcomes on the spec:
// applied ones must end at the first position (the fill finds the record),
// dropped ones must leave a hole there and append elsewhere.
func TestAmbiguousWrites(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, tc := range []struct {
		fault   spec.Fault
		wantPos uint64
	}{
		{spec.FaultUnknownApplied, 0},
		{spec.FaultUnknownDropped, 1},
	} {
		t.Run(tc.fault.String(), func(t *testing.T) {
			st := spec.New(16)
			cfg := testConfig()
			seq := wormlog.NewSequencer(st.Client("seq"), cfg)
			defer seq.Close()
			c := wormlog.NewClient(st.Client("app"), cfg, seq)
			// More unknown outcomes than an appender retries: it must
			// settle the position by filling it.
			st.InjectFault("app", tc.fault, 5, spec.OpWrite)
			pos, err := c.Append(ctx, []byte("v"))
			if err != nil || pos != tc.wantPos {
				t.Fatalf("Append = %d, %v; want %d", pos, err, tc.wantPos)
			}
			rec, err := c.Read(ctx, 0)
			if err != nil {
				t.Fatal(err)
			}
			if tc.wantPos == 1 && !rec.Hole {
				t.Fatalf("position 0 = %+v, want the hole the appender left", rec)
			}
			if rec2, err := c.Read(ctx, pos); err != nil || string(rec2.Value) != "v" {
				t.Fatalf("Read(%d) = %+v, %v", pos, rec2, err)
			}
			if n := st.PendingFaults("app"); n >= 5 {
				t.Fatalf("%d faults still pending: the writes never met them", n)
			}
		})
	}
}

// TestCrashPoints crashes a sequencer while one of its space operations
// hangs (the space is unreachable for it) or after the operation took
// effect without the sequencer learning it, at each kind of operation it
// issues: Check (recovery), CaptureSegment (recovery or prefetch), Alloc
// (prefetch). The successor must recover the tail and fence the grants
// the dead one handed out.
func TestCrashPoints(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, op := range []spec.Op{spec.OpCheck, spec.OpAlloc, spec.OpCaptureSegment} {
		for _, f := range []spec.Fault{spec.FaultUnavailable, spec.FaultUnknownApplied} {
			t.Run(fmt.Sprint(op, "/", f), func(t *testing.T) {
				st := spec.New(16)
				cfg := testConfig()
				c := wormlog.NewClient(st.Client("app"), cfg, nil)
				// A first incarnation writes 20 positions (into the
				// second segment) and leaves one grant unwritten.
				seq0 := wormlog.NewSequencer(st.Client("seq0"), cfg)
				c0 := wormlog.NewClient(st.Client("app"), cfg, seq0)
				for i := range 20 {
					if _, err := c0.Append(ctx, fmt.Append(nil, i)); err != nil {
						t.Fatal(err)
					}
				}
				stale, err := seq0.NextN(ctx, 1)
				if err != nil {
					t.Fatal(err)
				}
				seq0.Close()
				// The incarnation that crashes: its op keeps failing.
				st.InjectFault("seq1", f, 1<<20, op)
				cfg1 := cfg
				cfg1.Prefetch = 3 // so that it allocates, whatever seq0 prefetched
				seq1 := wormlog.NewSequencer(st.Client("seq1"), cfg1)
				deadline := time.Now().Add(5 * time.Second)
				for st.PendingFaults("seq1") == 1<<20 {
					if time.Now().After(deadline) {
						t.Fatalf("the sequencer never issued %v", op)
					}
					time.Sleep(100 * time.Microsecond)
				}
				time.Sleep(time.Millisecond)
				seq1.Close()
				seq2 := wormlog.NewSequencer(st.Client("seq2"), cfg)
				defer seq2.Close()
				if tail, err := seq2.Tail(ctx); err != nil || tail != 20 {
					t.Fatalf("Tail after the crash = %d, %v; want 20", tail, err)
				}
				a := c.Addr(stale.Pos)
				if err := st.Client("old").Write(ctx, a, stale.Token, []byte("stale")); err == nil {
					t.Fatalf("a grant of a dead sequencer still writes at %d", stale.Pos)
				}
				c2 := wormlog.NewClient(st.Client("app"), cfg, seq2)
				if pos, err := c2.Append(ctx, []byte("next")); err != nil || pos != 20 {
					t.Fatalf("Append after the crash = %d, %v; want 20", pos, err)
				}
			})
		}
	}
}

// TestRecaptureAfterRival: a live sequencer whose current segment a rival
// captured keeps serving its appenders: their fenced reports make it
// capture the segment again.
func TestRecaptureAfterRival(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st := spec.New(64)
	cfg := testConfig()
	a := wormlog.NewSequencer(st.Client("a"), cfg)
	defer a.Close()
	ca := wormlog.NewClient(st.Client("app-a"), cfg, a)
	if _, err := ca.Append(ctx, []byte("first")); err != nil {
		t.Fatal(err)
	}
	b := wormlog.NewSequencer(st.Client("b"), cfg)
	defer b.Close()
	if _, err := b.Tail(ctx); err != nil { // b recovered: a's segment is fenced
		t.Fatal(err)
	}
	g, err := a.NextN(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Client("w").Write(ctx, ca.Addr(g.Pos), g.Token, []byte("x")); err == nil {
		t.Fatal("a's token still writes after b's recovery")
	}
	pos, err := ca.Append(ctx, []byte("second"))
	if err != nil {
		t.Fatalf("Append through the fenced sequencer: %v", err)
	}
	if rec, err := ca.Read(ctx, pos); err != nil || string(rec.Value) != "second" {
		t.Fatalf("Read(%d) = %+v, %v", pos, rec, err)
	}
	// a captured its segment again: its fresh grants write.
	g, err = a.NextN(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Client("w").Write(ctx, ca.Addr(g.Pos), g.Token, []byte("\x01fresh grant ok")); err != nil {
		t.Fatalf("a's grant after recapture: %v", err)
	}
}
