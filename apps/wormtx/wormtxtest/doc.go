// Package wormtxtest is the reusable invariant suite of WormTX
// (apps/wormtx): it runs the protocol against any worm.Space and checks
// the properties of the reference, section 4, for WormTX:
//
//   - agreement: every observer (participants, coordinator, recoverers,
//     a final checker) computes the same outcome, and no two participants
//     apply a transaction with different outcomes;
//   - validity: commit implies every participant voted yes (its Resource
//     said yes and its vote register holds yes); a participant that voted
//     no never has a yes register;
//   - non-blocking progress: with the coordinator crashed (and
//     participants crashed before or after voting), the surviving
//     participants and any observer reach the outcome by recovery;
//   - collection: once every participant and the coordinator (or its
//     abandonment) acknowledged, the segment is trimmed.
//
// # Usage
//
// From a test of a Space implementation:
//
//	func TestWormTX(t *testing.T) {
//		wormtxtest.Run(t, func(t *testing.T) []worm.Space {
//			cl := startCluster(t)
//			a, b, c := cl.Client("a"), cl.Client("b"), cl.Client("c")
//			t.Cleanup(func() { a.Close(); b.Close(); c.Close() })
//			return []worm.Space{a, b, c}
//		})
//	}
//
// open is called once per subtest and must return at least two clients
// with distinct IDs sharing one space whose segments hold at least 16
// registers; three or more exercise more interleavings. Subtests use their
// own segments, from a random base, so clients may share a long-lived
// cluster. Every subtest runs under OpTimeout.
//
// RunWith adds options: a Nemesis that disturbs the clients while the
// randomized subtest runs (the spec's fault injection, or a real
// cluster's node killer), and the number of seeds. The randomized subtest
// logs its seed; WORMTX_SEED=<seed> replays one seed.
//
// The suite accepts what a correct Space may do under contention or
// faults (ErrPreempted captures, ErrUnknownOutcome writes, ErrUnavailable):
// the protocol is required to absorb them.
//
// This package imports the standard library, package worm and
// apps/wormtx. It must never import worm/client, worm/paxos, worm/wire,
// worm/server or worm/storage (nor worm/spec outside its tests).
package wormtxtest
