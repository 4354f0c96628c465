// Package chain is the Corfu-style baseline of WormSpace: write-once
// registers replicated by chain replication instead of Paxos, behind the
// same worm.Space interface, so that WormLog (or any application) runs
// unchanged over either and the two can be measured side by side
// (`worm bench log`). It is the paper's second WOR protocol: capture is
// an epoch seal, a write travels head to tail, a read is served by the
// tail.
//
// # Using it
//
// Each replica is a process (`worm chain serve`) holding a Replica state
// machine, a durable Disk and a Server; every replica is given the whole
// chain, head first, and its own position:
//
//	disk, rep, err := chain.OpenDisk(dir, chain.DiskOptions{Cluster: "c1"})
//	srv, err := chain.NewServer(chain.ServerConfig{Chain: addrs, Index: i, Cluster: "c1", Key: key}, rep, disk)
//	go srv.Serve(listener)
//
//	cl, err := chain.Dial(ctx, chain.Config{Chain: addrs, Key: key})
//	var space worm.Space = cl
//
// # The protocol
//
// Every replica keeps, per register, a seal (a ballot) and at most one
// value; per segment, a segment seal that covers every data register
// whose own seal is lower (the metadata register has only its own). A
// replica enforces two rules and nothing else (Replica): a seal succeeds
// only with a ballot at least the register's effective seal and raises
// it; a write stores its value only into an empty register whose
// effective seal equals the write's ballot (ballot zero: never sealed).
//
//   - Write: the client sends the write to the head. Each replica applies
//     it and, once the change is durable (fsync, shared by concurrent
//     requests), forwards it to its successor over a link connection; the
//     tail answers the client directly, on the client's own connection to
//     the tail. One request, chain length + 1 message delays, one fsync
//     per replica in sequence. A replica that refuses a register (sealed
//     higher, trimmed) settles it; a request whose registers are all
//     settled is answered at once by the replica that settled the last.
//     A write refused downstream after the head stored it is reported as
//     worm.ErrUnknownOutcome: its value is stranded at the head and a
//     later capture will finish it.
//   - Capture: seal the register at every replica in parallel (one round
//     trip), with a ballot higher than any the client has seen. A replica
//     with a higher seal refuses, and the client retries higher. If the
//     tail holds a value, it is committed: *worm.WrittenError. If only
//     replicas upstream hold one, the capture finishes it (a write of that
//     value with its own token through the chain) and reports it. Else
//     the token is returned. CaptureSegment is the same over the segment
//     seal; values it finds upstream are finished, registers with a
//     higher own seal are listed as Contended.
//   - Read: ask the tail. A value there is committed; an empty tail is an
//     empty register, whatever upstream replicas hold.
//   - WriteUnsafe and Alloc: a write at ballot zero. Because the head
//     orders every write, concurrent ballot-zero writes are safe here
//     (unlike Paxos): the first to reach the head wins, so Alloc is one
//     such write of (identity, metadata) to the metadata register.
//   - Trim: every replica, in parallel. Listen: the tail pushes a
//     notification for every register it commits.
//
// # Why it is linearizable
//
// A register's value is the tail's. Values enter only at the head, which
// is write-once, so every replica holds nothing or the head's value: the
// head orders all writes (agreement). A write is acknowledged only by the
// tail, after it stored the value; a read returns only the tail's value;
// an operation that meets a value elsewhere (a capture, a write answered
// written) makes sure the tail holds it before reporting it: a write that
// the tail reports as stranded (the head holds a value the tail lacks)
// is repaired by a capture, which finishes the value. So nothing is
// reported that a later read could contradict, and a value, once at the
// tail, never changes.
//
// Seal order. The seals of a capture go to all replicas at once; any
// order is safe, because each replica decides alone and the rules are
// local. A write with an older token succeeds only if the tail stored it
// before the tail's seal, and then the capture sees the value at the tail;
// a value stored anywhere before that replica's seal is reported by it and
// finished; after its seal a replica refuses the older token. Hence once
// every replica is sealed, no older token can commit anything the capture
// did not report, and a capture that reports a token saw an empty tail
// (its linearization point is the tail's seal). Sealing in parallel costs
// one round trip, as Paxos's phase 1 does; sealing along the chain would
// cost chain length + 1 message delays for nothing.
//
// Durability. Each replica makes a state change durable before anything
// that depends on it leaves (a forward, a reply, a notification): the
// same rule wormd follows. Its log (Disk) is a simple checksummed record
// log with commit markers and group commit; -volatile skips fsync.
//
// Authentication. Replicas and clients use the wormserver handshake
// (worm/wire) with the cluster key; links between replicas authenticate
// with it too. Both hellos carry a flag that tells a chain replica from a
// wormserver, and every connection checks that the replica at position i
// of the client's chain is the replica at position i of its own. A client
// registers a random session id with every replica, on which the replica
// that settles a write answers it; any holder of the key could claim
// another client's session, as it could forge any request: the key is the
// trust boundary, as for wormd.
//
// # What the baseline does not do
//
// No reconfiguration. Corfu replaces a failed storage unit by sealing the
// epoch and installing a new chain through an auxiliary; here the chain
// is fixed. With any replica down, operations that need it fail with
// worm.ErrUnavailable when the client's connection to it is down before
// they start (a write needs every replica, a read the tail), and with
// worm.ErrUnknownOutcome when it breaks while a write is in flight (the
// head may have stored the value); never with a wrong answer. A replica
// that restarts on its data directory recovers every acknowledged change,
// and the chain works again. The log is not compacted while a replica
// runs (trimmed segments free memory at once, disk at the next start).
// Backward acknowledgements (classic chain replication's, for
// reconfiguration) are not sent.
//
// This package imports the standard library, package worm and worm/wire
// (the handshake and frame reader); it must never import worm/paxos,
// worm/client, worm/server or worm/storage.
package chain
