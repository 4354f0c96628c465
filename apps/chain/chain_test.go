package chain

import (
	"testing"

	"github.com/wormspace/wormspace/apps/wormlog/wormlogtest"
	"github.com/wormspace/wormspace/worm/spacetest"
)

// TestConformance runs the shared worm.Space conformance suite (its
// Linearizable subtest checks a concurrent history with porcupine) against
// a chain of three durable replicas over loopback TCP.
func TestConformance(t *testing.T) {
	for _, size := range []uint32{16, 1024} {
		t.Run(map[uint32]string{16: "size16", 1024: "size1024"}[size], func(t *testing.T) {
			tc := startChain(t, 3, size, false)
			spacetest.Run(t, tc.open(3))
		})
	}
}

// TestConformanceShortChains: the protocol holds for a single replica
// (head is tail) and for two.
func TestConformanceShortChains(t *testing.T) {
	for _, n := range []int{1, 2} {
		t.Run(map[int]string{1: "one", 2: "two"}[n], func(t *testing.T) {
			tc := startChain(t, n, 16, true)
			spacetest.Run(t, tc.open(2))
		})
	}
}

// TestWormLog runs WormLog's invariant suite over chain registers.
func TestWormLog(t *testing.T) {
	tc := startChain(t, 3, 16, false)
	wormlogtest.Run(t, tc.open(6))
}
