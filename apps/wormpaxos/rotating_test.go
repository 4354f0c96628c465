package wormpaxos_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/wormspace/wormspace/apps/wormpaxos"
	"github.com/wormspace/wormspace/apps/wormpaxos/kv"
	"github.com/wormspace/wormspace/worm/spec"
)

// TestRotatingSkipFailures: under Rotating, an idle owner whose skip
// (the WriteBatch of no-ops below another replica's proposal) fails —
// lost reply, lost request, no quorum; on a distributed Space a reader
// that finishes the no-op it found on a minority makes the writer's
// outcome unknown in fault-free runs — settles its positions itself and
// the log never waits for the hole timeout. (The skip used to drop the
// owner's lease with its positions already marked used, and the owner
// then refused to skip there again, so every replica waited for
// HoleTimeout.)
func TestRotatingSkipFailures(t *testing.T) {
	for _, f := range []spec.Fault{spec.FaultUnknownDropped, spec.FaultUnknownApplied, spec.FaultUnavailable} {
		t.Run(f.String(), func(t *testing.T) {
			const size = 16
			st := spec.New(size)
			ids := []string{"a", "b", "c"}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			var reps []*wormpaxos.Replica
			done := make(chan error, len(ids))
			for i, id := range ids {
				sp := st.Client(id)
				defer sp.Close()
				r, err := wormpaxos.New(sp, kv.NewStore(), wormpaxos.Config{
					Policy: wormpaxos.Rotating, LogBase: 1 << 20, Replicas: len(ids), Index: i,
					// Longer than the test: a command that waits for it fails.
					HoleTimeout:  time.Hour,
					PollInterval: 5 * time.Millisecond,
					MaxBatch:     1, Pipeline: 1,
				})
				if err != nil {
					t.Fatal(err)
				}
				reps = append(reps, r)
				go func() { done <- r.Run(ctx) }()
			}
			c := kv.NewClient("cl", reps[1])
			n := 3*size + 3 // past the first group of segments
			for j := range n {
				if j == 3 {
					// The idle owners hold their segments by now: their
					// next skips fail.
					st.InjectFault("a", f, 2, spec.OpWriteBatch)
					st.InjectFault("c", f, 2, spec.OpWriteBatch)
				}
				if err := c.Put(ctx, "k", strconv.Itoa(j)); err != nil {
					t.Fatalf("put %d: %v (the log waited for a hole timeout)", j, err)
				}
			}
			for _, id := range []string{"a", "c"} {
				if p := st.PendingFaults(id); p != 0 {
					t.Errorf("%s: %d injected faults never fired; the test did not exercise failed skips", id, p)
				}
			}
			for i, r := range reps {
				s := r.Stats()
				if s.Fills != 0 {
					t.Errorf("replica %d filled %d holes", i, s.Fills)
				}
				if i != 1 && s.Skips == 0 {
					t.Errorf("idle replica %d never skipped", i)
				}
			}
			cancel()
			for range reps {
				<-done
			}
		})
	}
}
