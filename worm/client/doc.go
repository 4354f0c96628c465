// Package client is the distributed implementation of worm.Space: the
// WormSpace client library, a Paxos proposer and learner that talks to a
// cluster of wormservers (acceptors, worm/server) over the wire protocol
// (worm/wire).
//
// # Using it
//
//	cl, err := client.Dial(ctx, client.Config{
//		Servers: []string{"127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"},
//		Key:     key, // the cluster key, or nil for an unauthenticated cluster
//	})
//	defer cl.Close()
//	tok, err := cl.Capture(ctx, worm.Addr{Seg: 7, Off: 0})
//	err = cl.Write(ctx, worm.Addr{Seg: 7, Off: 0}, tok, []byte("hello"))
//	v, err := cl.Read(ctx, worm.Addr{Seg: 7, Off: 0})
//
// A Client is safe for use by many goroutines at once, and meant to be
// shared: every operation from every goroutine is multiplexed over one
// connection per wormserver, with many requests in flight on each
// (pipelining, no lock-step RPC). Requests queued while a connection is
// busy leave together in one write.
//
// # How an operation runs
//
// Each call creates one operation of the pure protocol core (paxos.Op), a
// deterministic state machine, and drives it: the requests in its outbox
// are encoded into the connections' send buffers; each response is decoded
// by the connection's reader goroutine and stepped into the operation right
// there (no hand-off to another goroutine), whose new requests are sent at
// once; the calling goroutine only waits for the end, for its context, and
// for the nudge timer. The core counts quorums, retries captures, finishes
// values a capture or read finds stranded on a minority, and resolves
// ambiguous writes by reading; the driver only moves messages, so the code
// that runs here is the code the deterministic simulator (worm/sim) and the
// exhaustive explorer (worm/explore) check.
//
// Failures are reported to the operation as they are known: a request that
// cannot be sent (the connection is down, or its send buffer is over
// MaxPendingBytes because the server stopped reading) fails at once, and a
// connection that breaks fails every request outstanding on it. A server
// that stays connected but does not answer is waited for only while a
// quorum of answers does not already decide the phase: after NudgeAfter
// the operation stops waiting for stragglers. When the context ends (or
// OpTimeout passes for a context without a deadline) the operation
// expires: the call returns worm.ErrUnavailable when nothing can have been
// written, or worm.ErrUnknownOutcome when a write may still take effect,
// wrapped together with the context's error.
//
// Connections are redialed in the background with capped, jittered
// backoff; an operation never waits for a redial. Dial returns once a
// quorum of servers completed the handshake, and refuses servers that
// disagree on the cluster name or the segment size, or two addresses that
// reach the same acceptor (which would silently break quorum
// intersection).
//
// # Configurations
//
// The wormservers form a configuration with an epoch (wire.Config); epoch
// 0 is Config.Servers. A failed wormserver is replaced online by Replace
// (`worm replace`), which seals the epoch, moves the cluster to the next
// one and copies the state into the new member; its documentation gives
// the procedure and the safety argument. Clients follow by themselves:
//
//   - Each connection is bound to the client's epoch in its hello, and a
//     server answers requests only of the epoch it serves; the epoch is
//     never carried in requests. A refusal (paxos.StatusSealed) changed
//     nothing, so the operation treats it as a request never sent.
//   - A server's hello, and the push it sends when its membership
//     changes, say where it stands. A configuration newer than the
//     client's that a member serves is adopted at once: its members are
//     matched to the connections (by acceptor id, then address, the rest
//     in order; the number of members stays fixed), and every connection
//     is closed once its outstanding requests are answered and dialed
//     again under the new epoch. So a client given an old list learns the
//     current configuration from any member it reaches.
//   - An operation whose result a membership change can cause
//     (worm.ErrUnavailable, worm.ErrUnknownOutcome) while one is under way
//     (a refusal, a newer configuration, servers not serving the client's
//     epoch yet) runs again as a fresh operation under the newest
//     configuration once a quorum serves it. A write runs again with the
//     identical token and value: an attempt that reached acceptors before
//     the seal is then either found (its value is chosen: success, or
//     written) or proven to have had no effect, so an unknown outcome is
//     reported only when the deadline leaves it unknown. Operations
//     started while the epoch is sealed and the next one not yet served
//     wait for it, up to their deadline (then worm.ErrUnavailable).
//
// Segments from ConfigSegment(2^32-1) up (the top 2^32 segments) are
// reserved for the configurations' registers.
//
// # Listen
//
// Listen subscribes to write notifications at every reachable wormserver
// and returns once a quorum has acknowledged, so that every register
// written afterwards is announced. Each wormserver reports what it
// accepted (ballot and value, for values up to 1 KiB), and replays its
// recent writes of the segment to a new subscriber; the listener is a
// Paxos learner over those reports: a value a quorum reported at one
// ballot is chosen, and announced with Chosen set. A register's first
// report is announced as a hint (no value) unless it completes a quorum,
// and so are registers whose values are too large to travel. A
// Notification{Lost: true} says that some may have been missed (a server
// reconnected, or the listener fell behind) and the listener should
// rescan.
//
// This package must never import worm/server or worm/storage; it imports
// worm, worm/paxos and worm/wire, and takes its network as a Dialer so
// that kernel TCP and gVisor netstack (netstack.Network) are
// interchangeable.
package client
