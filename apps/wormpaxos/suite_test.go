package wormpaxos_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
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

// paxosLike makes the spec behave the way worm.Space allows a distributed
// implementation to differ from it, at random: captures preempted under
// (imagined) contention, a write that finds another value reported as
// preempted, writes whose reply is lost, reads and listens failing for
// want of a quorum.
type paxosLike struct {
	worm.Space
	mu  sync.Mutex
	rng *rand.Rand
	p   float64
}

func (s *paxosLike) roll() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rng.Float64() < s.p
}

func (s *paxosLike) Capture(ctx context.Context, a worm.Addr) (worm.Token, error) {
	if s.roll() {
		return worm.Token{}, fmt.Errorf("paxoslike: %w", worm.ErrPreempted)
	}
	return s.Space.Capture(ctx, a)
}

func (s *paxosLike) CaptureSegment(ctx context.Context, seg uint64) (worm.SegmentCapture, error) {
	if s.roll() {
		return worm.SegmentCapture{}, fmt.Errorf("paxoslike: %w", worm.ErrPreempted)
	}
	return s.Space.CaptureSegment(ctx, seg)
}

func (s *paxosLike) Write(ctx context.Context, a worm.Addr, tok worm.Token, v []byte) error {
	err := s.Space.Write(ctx, a, tok, v)
	if s.roll() {
		switch {
		case errors.Is(err, worm.ErrWritten):
			return fmt.Errorf("paxoslike: %w", worm.ErrPreempted)
		case err == nil:
			return fmt.Errorf("paxoslike: reply lost: %w", worm.ErrUnknownOutcome)
		}
	}
	return err
}

func (s *paxosLike) Read(ctx context.Context, a worm.Addr) ([]byte, error) {
	if s.roll() {
		return nil, fmt.Errorf("paxoslike: %w", worm.ErrUnavailable)
	}
	return s.Space.Read(ctx, a)
}

func (s *paxosLike) Listen(ctx context.Context, seg uint64) (<-chan worm.Notification, error) {
	if s.roll() {
		return nil, fmt.Errorf("paxoslike: %w", worm.ErrUnavailable)
	}
	return s.Space.Listen(ctx, seg)
}

// TestSuitePaxosLike runs the suite over a spec that takes the liberties a
// Paxos client may take (worm.Space, worm/spacetest), 3% of the time.
func TestSuitePaxosLike(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	st := spec.New(16)
	seed := rand.Uint64()
	if v, err := strconv.ParseUint(os.Getenv("WORMPAXOS_PAXOSLIKE_SEED"), 10, 64); err == nil {
		seed = v
	}
	t.Logf("paxos-like seed %d (replay: WORMPAXOS_PAXOSLIKE_SEED=%d; scheduling is not replayed)", seed, seed)
	wormpaxostest.RunOptions(t, func(t *testing.T) []worm.Space {
		var cs []worm.Space
		for i, id := range []string{"a", "b", "c"} {
			c := st.Client(id)
			t.Cleanup(func() { c.Close() })
			cs = append(cs, &paxosLike{Space: c, rng: rand.New(rand.NewPCG(seed, uint64(i))), p: 0.03})
		}
		return cs
	}, wormpaxostest.Options{Seeds: 1})
}
