// Package wormlog is WormLog: a Corfu-style shared log built on the
// worm.Space API alone (reference, section 3).
//
// # Usage
//
// One process runs the sequencer; any number of clients append, read,
// follow, fill holes and trim:
//
//	cfg := wormlog.Config{Name: "orders", FirstSeg: 1 << 20}
//	seq := wormlog.NewSequencer(space, cfg) // recovers the tail in the background
//	defer seq.Close()
//	srv := wormlog.NewServer(seq, nil)      // optional: share it over the network
//	go srv.Serve(listener)                  // any net.Listener (TCP, netstack, ...)
//
//	// in an appender process:
//	src := wormlog.NewRemote(func(ctx context.Context) (net.Conn, error) {
//		return dialer.DialContext(ctx, "tcp", seqAddr)
//	})
//	lg := wormlog.NewClient(space, cfg, src) // or src = seq in-process
//	pos, err := lg.Append(ctx, []byte("hello"))
//	rec, err := lg.Read(ctx, pos)            // rec.Value == "hello"
//	for rec, err := range lg.Follow(ctx, 0) { ... } // every position, in order
//	err = lg.Trim(ctx, pos)                  // drop whole segments below pos
//
// # Layout
//
// Position p lives at register worm.FlatAddr(p + FirstSeg*size, size): the
// log occupies segments FirstSeg, FirstSeg+1, ... Each segment's metadata
// WOR (written by Alloc) names the log, so overlapping logs are detected
// (ErrForeign). A register holds a record (tag byte, an 8-byte nonce unique
// to the append, the value: user values can be anything, including empty)
// or the one-byte hole marker.
//
// # Append: two round trips
//
// The Sequencer allocates (Alloc) and captures (CaptureSegment, one Paxos
// phase 1 for the whole segment) each segment before it hands out
// positions in it, and keeps Config.Prefetch segments ready ahead of the
// current one in the background. It hands out grants: a position (or a
// run, NextN) and the segment's capture token. An append is then a grant
// from the sequencer plus one Write (a Paxos phase 2) to a quorum. A write
// that is preempted or finds the register written by someone else did not
// append; the appender takes a new position. A write that ends in
// worm.ErrUnknownOutcome is retried identically and, if that cannot
// decide, the appender fills the position itself: then it knows whether
// its record or a hole is there, so a value is never appended twice.
//
// # Holes
//
// An appender that took a position and died leaves a hole that would block
// readers. Anyone may fill it (FillHole): capture that one register,
// preempting the sequencer's segment capture there, and write the hole
// marker. If the capture finds a value, that value stays. A slow appender
// that still holds the position is preempted (or finds it written) and
// retries elsewhere. Follow fills a position automatically when it stays
// unwritten for Config.HoleTimeout after the follower learned that it was
// handed out (a later position is written, or the sequencer's tail is past
// it); it never fills past the tail.
//
// # Fencing and recovery
//
// The sequencer is soft state; kill it at any point and start another (in
// any process). The new one finds the lowest segment that is neither
// allocated nor trimmed by exponential and binary search over Check (the
// allocated-or-trimmed segments form a prefix of the log, because a
// segment is allocated only after its predecessor and trims go upwards),
// then captures the allocated segments from the highest down to the
// highest holding a written register. Its tail is one past the highest
// written position there. Those captures fence every token the old
// sequencer handed out in those segments: an old token's write gets
// worm.ErrPreempted and its appender retries at a new position. Two live
// sequencers are safe (positions are registers, and registers are written
// once) but wasteful; a sequencer whose appenders keep being fenced in its
// current segment captures it again (Fenced).
//
// # Trim
//
// Trim(upto) trims whole segments lying entirely below upto, lowest
// first, starting at the lowest untrimmed one: trimmed segments always
// form a prefix. Reads there return worm.ErrTrimmed.
//
// # Invariants, and how the tests check them
//
//   - No two acknowledged appends share a position.
//   - A position seen as a record or a hole never changes.
//   - An acknowledged append is readable at its position (until trimmed).
//   - Follow delivers every position from its start in order exactly once,
//     so every acknowledged record in its range exactly once.
//   - A value is in the log at most once, and only if some client
//     appended it.
//
// Package wormlogtest holds a suite that checks them against any
// worm.Space (wormlogtest.Run): concurrent appenders, readers, followers
// and hole fillers, sequencer crashes and restarts, rival sequencers,
// trims, and fault injection when the caller supplies a nemesis; every
// observation is recorded and the whole history is checked at the end.
// Its randomized tests print their seed and replay it with
// -wormlog.seed. This package's own tests run the suite on worm/spec with
// Store.InjectFault as the nemesis.
//
// # Imports
//
// This package uses package worm and the standard library only. It must
// never import worm/paxos, worm/wire, worm/server, worm/client or
// worm/storage: it runs unchanged over the specification, the Paxos
// client, or a chain-replication baseline behind the same interface.
package wormlog
