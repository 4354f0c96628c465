package wormtx_test

import (
	"math/rand/v2"
	"testing"

	"github.com/wormspace/wormspace/apps/wormtx/wormtxtest"
	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/spec"
)

func openSpec(st *spec.Store) wormtxtest.Open {
	return func(t *testing.T) []worm.Space {
		a, b, c := st.Client("a"), st.Client("b"), st.Client("c")
		t.Cleanup(func() { a.Close(); b.Close(); c.Close() })
		return []worm.Space{a, b, c}
	}
}

// TestSuiteOnSpec runs the reusable invariant suite on the specification.
func TestSuiteOnSpec(t *testing.T) {
	wormtxtest.Run(t, openSpec(spec.New(64)))
}

// faults is a nemesis of spec fault injection: ambiguous writes applied
// or dropped, unavailability.
type faults struct{ st *spec.Store }

func (f faults) Disturb(rng *rand.Rand, ids []string) {
	id := ids[rng.IntN(len(ids))]
	if f.st.PendingFaults(id) > 2 {
		return
	}
	f.st.InjectFault(id, []spec.Fault{spec.FaultUnknownApplied, spec.FaultUnknownDropped, spec.FaultUnavailable}[rng.IntN(3)], 1)
}

func (f faults) Calm(ids []string) {
	for _, id := range ids {
		f.st.InjectFault(id, spec.FaultNone, 0)
	}
}

// TestSuiteOnSpecWithFaults runs the suite's randomized subtest (and the
// rest) with spec fault injection and a small listen buffer (Lost
// notifications).
func TestSuiteOnSpecWithFaults(t *testing.T) {
	st := spec.New(32)
	st.SetListenBuffer(2)
	wormtxtest.RunWith(t, openSpec(st), wormtxtest.Options{Nemesis: faults{st}, Seeds: 40, TxPerSeed: 16, LossyListen: true})
}
