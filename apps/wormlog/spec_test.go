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
