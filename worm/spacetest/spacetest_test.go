package spacetest_test

import (
	"fmt"
	"testing"

	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/spacetest"
	"github.com/wormspace/wormspace/worm/spec"
)

// TestSpec runs the suite against the specification: the suite itself must
// hold of the atomic WormSpace.
func TestSpec(t *testing.T) {
	for _, size := range []uint32{16, 1024} {
		t.Run(fmt.Sprint("size", size), func(t *testing.T) {
			// One store shared by every subtest, as a long-lived cluster
			// would be: the suite's segment numbering keeps them apart.
			st := spec.New(size)
			n := 0
			spacetest.Run(t, func(t *testing.T) []worm.Space {
				n++
				cs := []worm.Space{st.Client(fmt.Sprint("a", n)), st.Client(fmt.Sprint("b", n)), st.Client(fmt.Sprint("c", n))}
				t.Cleanup(func() {
					for _, c := range cs {
						c.Close()
					}
				})
				return cs
			})
		})
	}
}
