// Package wormlogtest is the invariant suite of WormLog (apps/wormlog),
// reusable against any worm.Space: the specification (worm/spec), the
// distributed client against a real cluster, or a chain-replication
// baseline.
//
// # Usage
//
//	func TestWormLog(t *testing.T) {
//		wormlogtest.Run(t, func(t *testing.T) []worm.Space {
//			cl := startCluster(t) // or reuse one across calls
//			var ss []worm.Space
//			for i := range 6 {
//				s := cl.Client(fmt.Sprintf("c%d", i))
//				t.Cleanup(func() { s.Close() })
//				ss = append(ss, s)
//			}
//			return ss
//		})
//	}
//
// open is called once per subtest and must return at least two clients
// with distinct identities sharing one space whose segment size is at
// least 16 (more clients spread the load; six is a good number). Clients
// may share a space across calls: every subtest uses a fresh log in its
// own segment range, from a random base. open must close the clients
// (t.Cleanup).
//
// RunWith takes Options: a Nemesis that injects faults into the clients
// (for worm/spec, Store.InjectFault; for a cluster, crashes and
// partitions), the number of randomized seeds and their duration.
//
// # What it checks
//
// Deterministic subtests check appends and reads (including values that
// look like the log's own markers), the two-round-trip path, hole
// filling of a taken position and the fencing of its holder, sequencer
// recovery (empty log, mid-segment, prefetched empty segments, trimmed
// prefix, fencing of every token the old sequencer handed out), trim,
// Follow, ErrForeign, and rival sequencers.
//
// Random runs a seeded workload: appenders (single and batched), readers,
// followers and hole fillers, a trimmer that trims whole segments behind
// the slowest follower, sequencer crashes and restarts (the old object is
// closed before or after its successor starts, so rivals overlap), and
// the nemesis. It records every observation and checks over the whole
// history:
//
//   - no two acknowledged appends share a position;
//   - every observation of a position (reads, fills, follows, a final
//     read) agrees: a position seen as a record or a hole never changes;
//   - every acknowledged append reads back at its position;
//   - each follower delivers consecutive positions, hence every
//     acknowledged record in its range, in order, exactly once;
//   - every record seen is a value some appender appended, at one
//     position only, and never one whose append failed definitely;
//   - liveness once faults heal: a follower reaches the tail (holes get
//     filled).
//
// Each seed is printed; -wormlog.seed=N replays one (the choices replay,
// the thread interleaving does not).
//
// This package imports the standard library, package worm and
// apps/wormlog. It must never import worm/client, worm/paxos, worm/wire,
// worm/server, worm/storage or worm/spec.
package wormlogtest
