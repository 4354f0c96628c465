package wormpaxos_test

import (
	"math/rand/v2"
	"testing"

	"github.com/wormspace/wormspace/apps/wormpaxos/wormpaxostest"
	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/spec"
)

// openSpec returns three clients of a fresh spec store.
func openSpec(size uint32) (*spec.Store, wormpaxostest.Open) {
	st := spec.New(size)
	return st, func(t *testing.T) []worm.Space {
		cs := []worm.Space{st.Client("a"), st.Client("b"), st.Client("c")}
		t.Cleanup(func() {
			for _, c := range cs {
				c.Close()
			}
		})
		return cs
	}
}

// TestSuiteSpec runs the reusable suite on the specification, with spec
// fault injection (ambiguous and failed operations) in the randomized runs.
func TestSuiteSpec(t *testing.T) {
	st, open := openSpec(16)
	faults := []spec.Fault{spec.FaultUnknownApplied, spec.FaultUnknownDropped, spec.FaultUnavailable}
	wormpaxostest.RunOptions(t, open, wormpaxostest.Options{
		Nemesis: func(rng *rand.Rand, s worm.Space) {
			st.InjectFault(s.ID(), faults[rng.IntN(len(faults))], 1)
		},
	})
}
