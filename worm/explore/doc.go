// Package explore is an exhaustive model checker for tiny WormSpace
// configurations: it drives the real protocol core (paxos.Acceptor and
// paxos.Op, unchanged) through every interleaving of events up to a set of
// bounds, and checks the register's properties in every reachable state.
//
// # Using it
//
// Describe a few clients, each with its own paxos.Proposer and a short
// script run one operation at a time, and the fault bounds:
//
//	res, err := explore.Explore(explore.Config{
//		Clients: []explore.Client{
//			{Script: []explore.Action{{Op: explore.Capture}, {Op: explore.Write, Value: "a"}}},
//			{Script: []explore.Action{{Op: explore.Capture}, {Op: explore.Write, Value: "b"}}},
//		},
//		Drops: 1, Expires: 1,
//	})
//
// Explore returns how many distinct states and transitions it visited.
// On the first violation it returns a *Violation: the property, what broke,
// and the full event trace from the initial state. v.TraceString() prints it,
// one event per line with its effect (acceptor answers, finished ops), and
// Replay(cfg, v.Trace) runs exactly that path again.
//
// Three acceptors (Config.Acceptors) serve one register (segment 0,
// offset 0, in a segment of one register that every acceptor holds as
// allocated). Each client first learns that allocation (a prelude with a
// perfect network), then runs its script: Capture, Write with the token of
// its latest successful Capture (skipped without one), WriteUnsafe (ballot
// 0), Read. A Write with Retries reissues the identical write after
// worm.ErrUnknownOutcome.
//
// # Events and bounds
//
// In every state the explorer tries every enabled event:
//
//   - deliver any message in flight: a request to its acceptor (Handle; the
//     records it emits are durable before the answer leaves) or a response
//     to its op (Step). Messages travel on channels, one per client,
//     acceptor and direction (one TCP connection each way): delivering a
//     message that overtakes an earlier one of its channel costs one of
//     Config.Reorders (Unbounded: any message may come next);
//   - drop a message (Config.Drops) or deliver it and keep a copy in flight
//     (Config.Dups);
//   - Op.Nudge (Config.Nudges; only while the op has stragglers) and
//     Op.Expire (Config.Expires) on a client's current op;
//   - break a client's connection to an acceptor (Config.Breaks): their
//     messages in flight are lost and the op gets Op.Fail;
//   - crash an acceptor (Config.Crashes; a minority at a time): its
//     messages are lost, every op gets Op.Fail, later requests to it are
//     reported unsent at once (Op.Unsent); and restart it from its durable records (unbounded).
//
// Bounds count events along a path. Within them the state graph is finite
// and acyclic: every event consumes a message or a budget, or grows a
// client's input log, and each op's phases are bounded (Config.MaxAttempts,
// default 2).
//
// # Properties
//
// Checked on every transition:
//
//   - validity: an acceptor accepts only a value some started write carries;
//   - one value per ballot: no two acceptors accept different values at
//     one ballot;
//   - agreement and write-once stability: "chosen" is historical (a quorum
//     accepted the value at one ballot, at any time on the path); at most
//     one value is ever chosen, and once chosen at ballot b no acceptor
//     accepts another value at a ballot >= b (Paxos P2b);
//   - decided marks: an acceptor marks decided only the chosen value;
//   - durability: the records an acceptor emits, applied to its state before
//     the request, give its state after (so a restart from the durable log
//     loses nothing an answer revealed); a restart rebuilds that state;
//   - outcomes, when an op finishes, against the history: a Read returns the
//     chosen value, or empty only if nothing was chosen and no op had
//     returned a value when it started; a successful Write (or WriteUnsafe)
//     means its value is chosen; a *worm.WrittenError (from Write or
//     Capture) carries the chosen value, never the writer's own; a Capture
//     returns a token only if nothing was chosen when it started; a value
//     whose write was answered preempted is never chosen, then or later;
//     every op returns the same value (stability as observed); errors
//     outside each op's documented set are violations;
//   - progress: in a state with no enabled event, if nothing was lost (no
//     drop, break or crash), every script has run to its end.
//
// # The state and its fingerprint
//
// Ops are opaque and cannot be cloned, but they are deterministic. A
// client's whole state (its Proposer: rounds, tags, bindings; its current
// Op; its place in the script, its token) is a function of the sequence of
// inputs it was given (Step with the exact response, Fail, Nudge, Expire).
// A state is therefore
//
//   - each acceptor's state, as the sorted text of the records its
//     Snapshot emits (complete: Handle depends on nothing else), and
//     whether it is up;
//   - the messages in flight, by their canonical text (every field the
//     receiver can observe), in channel order;
//   - each client's input log (in canonical form, below) and a hash of
//     everything the client has emitted so far;
//   - the budgets used;
//   - the history the properties need (what each ballot had accepted by
//     whom, what is chosen, what was observed, which values were
//     preempted or written, and what was known when the current ops
//     started): not a function of the rest, so part of the state.
//
// The fingerprint is 128 bits of SHA-256 over that text; states are merged
// only when fingerprints are equal (a collision could hide states; at
// these sizes its probability is negligible). Merging by "which messages
// were delivered" would be unsound: a stale reply delivered in one order
// counts differently in another, so the explorer never does that.
//
// To expand a state the explorer makes the live objects match it: a client
// whose live input log differs is rebuilt by replaying its log on a fresh
// Proposer (cost proportional to the log, not to the path). Every replay
// checks that the client emits exactly what it emitted the first time, so
// nondeterminism in an Op is caught rather than trusted. Acceptors are
// rebuilt from their records; because they are deterministic, the effect
// of a request on an acceptor state is memoised.
//
// # Reductions
//
// Two reductions rely on how an Op treats its inputs; Config.Exact turns
// both off, and the tests cross-check that tiny configurations reach the
// same outcomes either way.
//
//   - A response the op can no longer take is removed from flight: an Op
//     takes a response only for an outstanding request of its current
//     phase, which Op.Pending lists; it ignores the others (the Op's
//     documented contract: stale tags and duplicates are ignored), so
//     delivering one would be a no-op on the op and only multiply
//     interleavings. Responses to finished ops are always removed.
//   - Client logs are canonical up to the order of the responses within
//     one segment: a segment is a run of responses during which the op
//     emitted nothing, closed by the response that made it act (send,
//     change phase, finish). Within a phase, the core's tallies (answers,
//     nacks, highest ballot seen, maybe-ours flags) are commutative and
//     the phase decides only from them, so the op's state after a segment
//     depends on the set of its responses, not their order. Inputs other
//     than responses (Fail, Nudge, Expire) are kept in order. Two states
//     merge only if, besides, their clients emitted identical outputs.
//     The argument depends on paxos's phase code; should a phase ever
//     break ties by arrival order, run with Exact. (Two values at one
//     ballot exist only at ballot 0, from two unsafe writers; paxos
//     resolves them by value and count, never by arrival: see
//     worm/paxos/zero.go.)
//
// No partial-order reduction is done: the graph is explored in full.
//
// # Sizes and bigger runs
//
// Measured on a shared 2-core machine (go test -v ./worm/explore), with
// the reductions:
//
//	two writers (Capture; Write) x2, no decides        541,383 states  1.94M transitions  ~20 s
//	WriteUnsafe vs Capture; Write, with decides        143,090 states    479k transitions   ~3 s
//	WriteUnsafe vs Capture, 1 drop                      76,685 states    317k transitions   ~2 s
//	WriteUnsafe vs Capture, 1 expiry                    47,449 states    177k transitions   ~2 s
//	WriteUnsafe vs Read                                 24,215 states     87k transitions   ~1 s
//	two WriteUnsafe ("a", "b"), with decides            22,413 states     75k transitions  <1 s
//	two (WriteUnsafe; Read), no decides                 70,593 states    287k transitions   ~2 s
//	(WriteUnsafe; Capture) vs WriteUnsafe               237,528 states   867k transitions   ~7 s
//
// The whole default run takes 25 to 40 s. Exploration runs at 25,000 to
// 50,000 states per second (BenchmarkExplore reports it) and keeps 16 bytes
// per visited state plus the map's overhead. Each fault bound multiplies
// the state space: two writers with decide messages are 3.0M states
// (2m20s), two writers with one drop 2.2M states (80 s); the other
// configurations of TestBig pass 2.5M states. Bigger configurations
// run with
//
//	go test ./worm/explore -run 'TestBig|TestExactCrossCheck' -explore.big -v -timeout 0
//
// (or WORM_EXPLORE_BIG=1); -explore.maxstates N skips a configuration once
// it passes N states instead of running it to the end.
//
// # Controls
//
// AmnesiacAcceptor (its prepare answers hide what it accepted),
// LaxAcceptor (it accepts below its promise) and UndurableAcceptor (its
// promises never reach the durable log) are deliberately broken acceptors
// (Config.NewAcceptor); two clients with the same Client.Node break the
// proposers' uniqueness contract. The tests require the explorer to find a
// violation with each, and the trace to replay.
//
// This package imports only the standard library, worm and worm/paxos; it
// must never import worm/wire, worm/server, worm/client, worm/storage or
// anything that does I/O.
package explore
