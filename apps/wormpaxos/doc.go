// Package wormpaxos is state machine replication over WormSpace: a
// replicated log whose position i is write-once register i, replicas that
// learn by reading the registers in order and applying them to a
// StateMachine, and proposers that write the next free register. It is
// written against worm.Space alone, so it runs unchanged on the atomic
// specification (worm/spec) and on the distributed client (worm/client).
//
// # Usage
//
// Every replica of one log gets the same Config apart from Index, its own
// worm.Space client (distinct IDs) and its own StateMachine:
//
//	rep, err := wormpaxos.New(space, kv.NewStore(), wormpaxos.Config{
//		Policy:   wormpaxos.Sticky,
//		LogBase:  1000,   // log position i lives at FlatAddr(1000*SegmentSize + i)
//		Replicas: 3,
//		Index:    0,
//		SnapshotEvery: 10000,
//	})
//	go rep.Run(ctx)                       // learner loop; returns when ctx ends
//	res, err := rep.Propose(ctx, wormpaxos.Command{Client: "c1", Seq: 1, Op: op})
//	val, err := rep.Read(ctx, query)      // linearizable query
//
// Propose returns after the command is applied at this replica, with the
// result of StateMachine.Apply. apps/wormpaxos/kv is a key-value store on
// top, with a network front.
//
// # Design
//
// Register values are encoded batches of commands (client, sequence, op)
// or a no-op filler. A replica's learner (Run) reads position applied,
// applies it and moves on; at an empty register it waits for a Listen
// notification (it listens to its segment and the next few, re-listening
// when a channel fails or closes, and checks a newly listened segment once
// for writes made before) or a polling timeout (PollInterval). A
// notification that carries the register's chosen value (values up to
// 1 KiB on a distributed Space: a small batch) spares the read; a hint
// (a larger batch) is followed by one. Values the
// replica wrote itself, or saw in a capture, are applied without reading
// them again, and the learner does not read a register its own write is
// still filling, so a command costs its proposer one write. A hole — an empty register below a
// written one — is left alone for HoleTimeout (a proposer may still be
// writing it); after that the learner captures the hole's segment
// (CaptureSegment) and fills its empty registers with no-ops, up to the
// highest written one, or to the segment's end when the log already
// continues in a later segment. Capture finishes any value that may
// already be chosen, so a fill never overwrites a command.
//
// Proposing is the same code path for every Policy: commands queue (a
// slice under a mutex, no channel per command); Pipeline workers each take
// a batch, encode one register value and place it. Batching is adaptive:
// with no write in flight a command goes at once; with one in flight, the
// next batch goes only when it is full (MaxBatch commands or MaxBatchBytes)
// or when a write returns, so a batch holds what arrived during the
// previous write and grows with the load. Placement asks the policy for a slot (a register and a token),
// writes it, and on ErrPreempted or *WrittenError (someone else took the
// register) learns what is there and places the batch again elsewhere.
// ErrUnavailable is retried at the same slot (nothing happened, and
// abandoning the slot would leave a hole); ErrUnknownOutcome is resolved
// by reading the register, and when that is inconclusive by retrying the
// identical write. A batch may thus end up in two registers; see
// exactly-once below.
//
// # Policies
//
//   - Sticky: one leader writes commands with one Write each. A replica
//     asked to propose that holds no lease takes the lead: it Allocs the
//     segment at the log's frontier (the Alloc metadata records the
//     leader), captures it in one round, fills the holes below its highest
//     written register with no-ops, and writes from there. A segment whose
//     Alloc another replica won is captured and filled to its end, which
//     fences that leader; the new leader writes only into segments it
//     allocated. A preempted leader learns and re-acquires. With
//     Config.Forward set, a replica forwards commands to the leader it
//     learned (the Alloc owner of the newest segment holding commands;
//     the receiving replica calls ProposeLocal) and takes the lead only
//     when forwarding fails, so failover needs no timer: the first
//     proposal after the leader's death moves the lead. Without Forward,
//     the lead moves on demand to whichever replica is asked to propose:
//     clients that stick to one replica keep one leader; clients spread
//     over replicas make it move, each move costing a segment of no-ops.
//
//   - Rotating (Mencius): log position i belongs to replica i mod n
//     (n = Replicas). Layout: each replica's positions fill its own
//     segments in order: the segments (seg - LogBase) mod n == r are r's,
//     and a group of n consecutive segments holds n*SegmentSize
//     consecutive positions dealt out in turn (position g*n*size + k*n + r
//     is register k of segment LogBase + g*n + r). An owner captures each
//     of its segments once (CaptureSegment) and writes commands at its
//     next free position, one Write per batch.
//
//     Skip rule: an owner that learns that a later position than its
//     next unused one holds commands (a value not known to be a no-op;
//     no-ops that hole fillers wrote ahead do not count) skips at once,
//     wherever its learner stands: it fills its unused positions below
//     that one with no-ops, one WriteBatch of a few registers of its own
//     segment under the segment's token, with no timer. So the idle
//     owners of the positions between two commands skip in parallel. An
//     owner's learner that stands at one of its own empty positions below
//     a command skips too, and settles whatever a skip left: an idle
//     owner's first skip in a group captures its segment there (one more
//     round trip). A skip that fails is the owner's to finish, never left
//     to the hole timeout: after an ambiguous or failed WriteBatch the positions stay
//     unused and the identical batch is written again (ErrUnknownOutcome
//     is routine on a distributed Space even without faults: a reader
//     that finds the no-op on a minority finishes it with a capture that
//     preempts the rest of the write); a register a per-register capture
//     holds, and a position handed to a command write that ended
//     elsewhere, are filled under a Capture of their own; an owner whose
//     segment was captured by others captures it again and goes on past
//     what they filled.
//
//     Revocation: a silent owner's positions are captured and filled by
//     the other replicas' learners after HoleTimeout: those below the
//     evidence and 64 more, so a dead owner stops the log once per 64 of
//     its positions (not at each). If it was only slow, its writes there
//     are preempted, and it captures its segment again and goes on.
//
//     Costs: a command costs its proposer one Write, as under Sticky,
//     but it is applied only once the positions below it are chosen:
//     with every replica busy they mostly hold the others' commands, and
//     the owners skip the rest. A lone active proposer's every command
//     waits for the idle owners' skips of the positions in between: one
//     more write round trip and two notifications more than Sticky, and
//     n-1 small WriteBatches per command across the idle replicas (fewer
//     under load, where one skip covers the positions of many batches). A dead owner costs HoleTimeout per 64 of its positions.
//     This layout differs from the one before it (segment i mod n wholly
//     owned, in log order): a Rotating log written by an older version
//     is not readable.
//
//   - Leaderless: every batch is a Capture and a Write of the next free
//     register. Two round trips, no leader, no fencing.
//
// # Exactly-once
//
// A command carries (Client, Seq). The replica wraps the state machine
// with a session table (client → last applied sequence and its result),
// part of the replicated state: a command whose Seq is not newer than its
// client's last is skipped as a duplicate, wherever in the log it lands,
// and a Propose of an already applied (Client, Seq) returns the cached
// result. So a batch chosen twice, or a client retrying at another replica
// after a timeout, applies each command once. Clients must number their
// commands increasingly and keep one outstanding at a time; the table
// keeps one entry per client forever (no expiry).
//
// # Snapshots and trim
//
// With SnapshotEvery set, the learner snapshots the state machine and the
// session table every SnapshotEvery positions and stores the snapshot in
// WormSpace, in its own area (segments from SnapshotBase): one segment per
// snapshot, allocated in order (the Alloc metadata records the snapshot's
// log position), chunks in registers 1..n, then a header (position, size,
// checksum) in register 0, so a header implies a complete snapshot. Once
// its snapshot is complete, the replica trims the log segments wholly
// below the snapshot position and the snapshot segments of older
// positions: the newest snapshot is never trimmed, and the log is trimmed
// only below a durable snapshot. A replica that starts, or reads a trimmed
// register, restores the newest snapshot and replays the log from there.
//
// # Reads
//
// Read is a read-index barrier: it reads registers from the applied
// position up to the first empty one, waits until the local state machine
// has applied that prefix and then queries it. A command is acknowledged
// only after every position up to its own is chosen, so every command
// acknowledged before Read started lies below that empty register. Reads
// write nothing to the log.
//
// # Invariants and how they are tested
//
// Replicas' applied prefixes are identical, and no acknowledged command is
// lost or applied twice (reference, section 4). apps/wormpaxos/wormpaxostest
// checks them against any worm.Space: every replica reports each applied
// command (Config.OnApply) to a checker that compares positions across
// replicas and incarnations, rejects a second non-duplicate application of
// a (client, sequence), and matches each acknowledged command to its
// application and result. Key-value histories are checked for
// linearizability with porcupine. The randomized runs combine clients that
// retry across replicas, replica crashes and restarts, snapshots, and
// fault injection; this package's tests run the suite on worm/spec with
// Store.InjectFault.
//
// This package imports the standard library and package worm. It must
// never import worm/paxos, worm/wire, worm/server, worm/client or
// worm/storage (its tests may import worm/spec and worm/check).
package wormpaxos
