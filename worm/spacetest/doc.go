// Package spacetest is the conformance suite for worm.Space
// implementations: every implementation (the specification worm/spec, the
// distributed client worm/client against a real cluster, wrappers) must
// pass it.
//
// # Usage
//
// From a test of the implementation:
//
//	func TestConformance(t *testing.T) {
//		spacetest.Run(t, func(t *testing.T) []worm.Space {
//			cl := startCluster(t)           // or reuse one across calls
//			a, b := cl.Client("a"), cl.Client("b")
//			t.Cleanup(func() { a.Close(); b.Close() })
//			return []worm.Space{a, b}
//		})
//	}
//
// open is called once per subtest and must return at least two fresh
// clients with distinct IDs sharing one space whose segment size is at
// least 16. Clients may share a cluster across calls: every subtest uses
// its own segments, numbered from a random base, so subtests never see
// each other's registers. open must arrange for the clients to be closed
// (t.Cleanup); the suite never closes them.
//
// # What it asserts
//
// Only what every correct implementation promises in a fault-free run: the
// rules of worm.Space and the properties of the reference, section 4
// (write-once stability, agreement, preemption, unsafe-write carry-over,
// allocation uniqueness, trim, linearizability via worm/check). It does not
// assert what a Paxos implementation may legitimately do differently from
// the atomic spec: a Capture or CaptureSegment may report ErrPreempted
// under contention (the suite retries), a Write may report ErrPreempted
// where the spec would already report *WrittenError (the suite then reads),
// and a write with a token issued for another register is not tested.
// Under contention a Paxos write may also end in ErrUnknownOutcome (it was
// preempted after reaching some acceptors): the contended subtests
// (ConcurrentWriters, Linearizable) accept that and resolve it by capturing
// or by linearizability checking; every uncontended subtest requires
// definite outcomes. No subtest accepts ErrUnavailable: a fault-free run
// always reaches a quorum.
//
// Every subtest runs under a context with a generous deadline
// (OpTimeout), so a hung implementation fails instead of stalling CI.
//
// This package imports the standard library, package worm and worm/check.
// It must never import worm/client, worm/paxos or worm/wire (nor worm/spec
// outside its tests).
package spacetest
