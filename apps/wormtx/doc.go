// Package wormtx is WormTX: non-blocking atomic commitment built on the
// WormSpace API alone (package worm), after the reference, section 3.
//
// # Usage
//
// A coordinator begins a transaction; participants vote; anyone learns the
// outcome:
//
//	co := wormtx.NewCoordinator(space, wormtx.CoordinatorConfig{
//		FirstSeg:  1 << 40,                       // its transaction segments
//		Directory: wormtx.StaticDirectory(inboxes), // participant -> inbox
//	})
//	id, err := co.Begin(ctx, []string{"alice", "bob"}, payload)
//	outcome, err := co.Await(ctx, id)             // wormtx.Commit or wormtx.Abort
//
// Each participant runs a process that serves its inbox and drives a
// Resource (prepare = validate and lock, then apply the outcome):
//
//	p := wormtx.NewParticipant(space, "alice", wormtx.ParticipantConfig{
//		Inbox: inboxes["alice"], Policy: wormtx.DefaultPolicy})
//	err := p.Run(ctx, ledger)                     // until ctx ends
//
// In the direct mode (the fast path), the coordinator sends each prepare
// straight to its participant through a Messenger, and the participant's
// process hands it to HandlePrepare; its Resource must then be
// Recoverable:
//
//	co := wormtx.NewCoordinator(space, wormtx.CoordinatorConfig{
//		FirstSeg: 1 << 40, Directory: dir, Messenger: m})
//	// at the participant, for each prepare message (t):
//	outcome, err := p.HandlePrepare(ctx, t, ledger)
//
// With Shared set as well, transactions share segments (slots of a
// segment allocated and subscribed to ahead): the fast path for many
// transactions (see "Shared segments" below):
//
//	co := wormtx.NewCoordinator(space, wormtx.CoordinatorConfig{
//		FirstSeg: 1 << 40, Directory: dir, Messenger: m, Shared: true})
//	defer p.Close() // participants keep a listener per shared segment
//
// The lower-level pieces are exported too: (*Participant).Vote and Ack,
// Resolve / (Tx).Resolve (learn the outcome, recovering missing votes
// after a timeout), (Tx).Status (read-only snapshot), Open (read a
// descriptor), Settle and WriteOwn (the register idioms). Package
// apps/wormtx/bank is a runnable example (a bank whose transfers span
// participants), apps/wormtx/twopc the two-phase-commit baseline behind
// the same TM and Resource interfaces, apps/wormtx/wormtxtest the
// invariant suite for any worm.Space.
//
// # Design
//
// Each transaction is one segment, allocated by the coordinator with Alloc
// (first caller wins; the metadata is the descriptor: participant list
// and payload). The TxID is the segment number. With n participants the
// segment holds:
//
//	0 .. n-1     votes: participant i writes yes or no with WriteUnsafe
//	             (ballot 0; it is the only ballot-0 writer of register i)
//	n            decision: written (capture+write) by a recoverer, or by
//	             any observer asked to (Policy.WriteDecision); a cache
//	n+1 .. 2n    acks: participant i writes the outcome it applied
//	2n+1         coordinator ack: the outcome it learned, or "abandoned"
//
// The outcome is a function of the segment: commit iff every vote is yes.
// Nobody decides; everyone computes it, by reading (Status) or by waiting
// (Resolve listens on the segment and learns each vote from the chosen
// value its notification carries, as a Paxos learner learns from the
// acceptors; it reads only after a hint that no chosen value followed, a
// Lost notification, or a Poll tick).
//
// Participants learn of transactions through inboxes: participant p's
// inbox is a run of segments (Directory(p), +1, ...), one entry per
// register, each entry a transaction naming p with its descriptor.
// Posters claim positions with capture+write, first empty position first
// (a poster moves past a position only after seeing it written, so the
// written positions form a prefix and a crashed poster's capture is simply
// preempted by the next poster: there are no holes to fill). A participant
// reads its inbox in order, listening on the current inbox segment, and
// trims an inbox segment once it is full and every transaction in it is
// handled. A restarted participant resumes at the first untrimmed inbox
// segment and skips transactions it has acknowledged.
//
// In the direct mode the coordinator allocates segments ahead of need
// (their metadata is a reservation, not the descriptor, which is not
// known yet; CoordinatorConfig.Reserve) and subscribes to each, so Begin
// writes nothing and waits for nothing before the prepares leave: it
// takes a reserved segment, whose listener already hears every write, and
// sends the prepares through the Messenger. The prepare tells the
// participant's Space that the segment is allocated (worm/client checks
// that before a first unsafe write; see allocHinter). A participant
// subscribes to the segment while it prepares and votes; the wormservers
// replay to a new subscriber the notifications of the segment's recent
// writes, so the votes that raced with the subscription are learned like
// the later ones. Since no inbox records a transaction prepared this way,
// the participant's Resource lists what it prepared and has not applied
// (Recoverable), and Run hands those to Handle after a restart. Once the
// outcome is known the coordinator writes the descriptor into the
// segment's last register, for observers that know only the TxID (Open),
// and its ack. It collects: it trims once every participant acknowledged,
// in its ack register or by a message (ParticipantConfig.SendAck, passed
// to Coordinator.Acked); a participant checks AbandonAfter later and, if
// the segment is still there, writes its ack register and collects as in
// the inbox mode.
//
// # Why it is non-blocking
//
// In two-phase commit a participant that voted yes must wait for the
// coordinator: only the coordinator knows whether everyone voted yes. In
// WormTX the votes themselves are the decision, and they sit in registers
// that anyone can read. If a vote is missing after Policy.RecoverAfter,
// any process (a participant waiting for the outcome, the coordinator, an
// observer) captures that vote register and writes no ("timed out").
// Capture is Paxos phase 1: if the participant's yes reached any acceptor
// of the capture's quorum, the capture finishes that yes instead and
// reports it (*worm.WrittenError), so recovery never overrides a yes that
// may already be chosen; otherwise the register is chosen as no and the
// late participant's ballot-0 write is preempted (it learns VoteTimedOut).
// Either way every vote register ends with one value, so every observer
// computes the same outcome, with no process in particular alive: only a
// majority of wormservers is needed. A recoverer that fills a vote also
// posts the transaction to that participant's inbox (Policy.Notify), so a
// participant the crashed coordinator never told still learns the outcome
// and acknowledges it.
//
// Ambiguous outcomes are resolved by reading: a vote or ack write that
// ends in worm.ErrUnknownOutcome is followed by a read; empty means
// nothing was chosen yet and the identical write is retried (idempotent).
// Captures that lose races (worm.ErrPreempted on a distributed Space) and
// worm.ErrUnavailable are retried with jittered exponential backoff, so
// dueling recoverers converge.
//
// # Collection
//
// A segment is trimmed when every ack register is written: each
// participant writes its ack after applying the outcome, the coordinator
// after learning it (Await). Whoever writes an ack then reads the others
// and trims if all are present; registers are linearizable, so the last
// acker always sees every ack. A coordinator that never acknowledges
// (crashed, or never called Await) is abandoned: a participant that sees
// every participant ack waits ParticipantConfig.AbandonAfter, then fills
// the coordinator ack with "abandoned" (capture+write) and trims. After
// trimming, Resolve and Status report worm.ErrTrimmed: every participant
// has applied the outcome and nobody needs it any more. (A coordinator
// that calls Await only after AbandonAfter may therefore find its
// transaction collected.) When an abort is decided while some votes are
// still missing, a participant fills them after RecoverAfter and notifies
// their participants, so they ack too.
//
// # Message delays
//
// In the protocol's own terms, the fault-free path costs four message
// delays from the client's request to every participant knowing the
// outcome, like 2PC (which blocks when its coordinator fails) and one
// fewer than Paxos Commit: (1) the request reaches the coordinator, (2)
// its prepare reaches the participants, (3) each vote (a ballot-0 phase-2
// write, no phase 1) reaches the wormservers, (4) the wormservers'
// acceptance reaches every learner.
//
// The direct mode is exactly that. Counting one-way delays from Begin,
// with every Space call a round trip and a notification one delay after
// the write reached the wormservers (apps/wormtx/internal/netdelay;
// TestMessageDelays in apps/wormtx/twopc measures it):
//
//	0-1    the prepare reaches the participant (Messenger); its Listen
//	       and its vote leave at once
//	1-2    the vote reaches the wormservers (one write: ballot 0 needs
//	       no phase 1)
//	2-3    their notifications, carrying the vote, reach the coordinator
//	       and every participant, each of which learns the vote as chosen
//	       from a quorum of them and, with every vote, the outcome
//
// Three delays from Begin for the coordinator and for every participant
// (measured 3.2 to 3.5 with scheduling; apps/wormtx/txbench counts them
// again, and `worm bench tx` reports them beside latencies measured on
// real wormds). 2PC takes three to its
// participants (prepare, vote, decision) and two to its coordinator, which
// must force its decision to its log before telling anyone; WormTX's one
// durable step on the path is the vote's, at the wormservers, where 2PC
// has the coordinator's log force and the participant's prepare record
// (WormTX's Resources record votes too, unless the votes carry their
// records: see below). Nothing else is on the path: the
// segment was allocated ahead, the coordinator subscribed in Begin, the
// descriptor and the acknowledgements are written afterwards. What the
// count does not show is the work: per transaction, besides the votes,
// the direct mode costs the wormservers an Alloc and a Listen ahead, a
// Listen per participant, the descriptor, the coordinator's ack and the
// Trim afterwards (about fifteen quorum operations, where 2PC sends nine
// messages and forces one log record), which a busy machine turns into
// latency.
//
// With inbox posts (no Messenger) the prepare travels through WormSpace:
//
//	0-4    Alloc of the segment (capture and write of its metadata
//	       register), and at the same time a capture of an inbox position
//	       per participant
//	4-5    the inbox entry's write reaches the wormservers
//	5-6    their notifications, carrying the entry, reach the participant
//	6-7    its vote reaches the wormservers
//	7-8    their notifications reach every learner
//
// About 8 delays to the participants (measured 8.4 to 9). Before
// notifications carried values, each notification cost a read (two more
// delays, twice) and the path was 10 to 13 delays.
//
// # Shared segments
//
// Per transaction, a segment of its own costs the wormservers an Alloc, a
// Listen by the coordinator and by each participant, the descriptor, the
// coordinator's ack and a Trim besides the votes: about fifteen quorum
// operations, which a busy machine turns into latency. With
// CoordinatorConfig.Shared, transaction k takes a slot of SlotWidth(n) =
// 2n+3 registers of the coordinator's current shared segment (its TxID
// names the segment and the slot: SlotTxID). Everything but the votes
// and their notifications is amortized over a segment or moved off the
// critical path:
//
//   - the coordinator allocates the next segment and subscribes to it
//     once the current one is half full (one Alloc and one Listen per
//     segment), and keeps one listener per segment, demultiplexed to
//     the slots' transactions (segListener);
//   - each participant keeps one listener per shared segment too,
//     opened by its first transaction there and shared by the next ones
//     (an eviction keeps the four most recent); a transaction that
//     subscribes late is replayed the chosen values its slot already
//     saw, so it learns from the notifications without reading;
//   - descriptors go to the segment's descriptor index (its last
//     registers) in batches, written in the background: one write per
//     several transactions, after an idle spell, and when the
//     coordinator moves on (Open reads the slot and the index);
//   - participants acknowledge by message (SendAck; or in their ack
//     register), and the coordinator, which alone knows every slot of
//     the segment, trims it once it has moved on to the next segment
//     and every transaction begun there was awaited and acknowledged by
//     all its participants: one Trim per segment.
//
// # Votes that carry their prepare record
//
// A participant's Resource must record its vote durably before the vote
// is cast (Resource.Prepare): a yes it forgot after a crash could still
// commit. That is a log force on every transaction's critical path, ahead
// of the vote's own write to the wormservers. With
// CoordinatorConfig.SetSegments each shared segment belongs to one
// participant set, so participant i's vote registers are every slot's
// i-th; a participant with a Restorable Resource and a SegmentLog
// (ParticipantConfig.Segments) then votes yes with the prepare record in
// the vote (the payload and the Resource's bytes) and forces nothing: the
// wormservers' acceptance of the vote is the durable prepare. It records
// each segment once, before its first vote there. After a restart, Run
// settles the participant's own vote register in every slot of every
// recorded segment that is not trimmed: a yes that reached any acceptor
// comes back with its record (Restorable.Restore, then the outcome is
// applied as usual), and every other register is fenced, so that a vote
// in flight at the crash can no longer be chosen; a fenced vote counts as
// no, and as that participant's acknowledgement. The coordinator hears
// fences in slots it has not handed out and moves to a new segment.
// Details in records.go; `worm bench tx` uses this by default.
//
// The commit rules are those of a segment of one's own, slot by slot: a
// slot's vote registers decide, a missing vote is captured and written
// no by whoever times out (the recovery touches only that slot's
// registers; a recoverer also settles the slot's own descriptor
// register), and Tx.collect never trims a shared segment (other
// slots' transactions may still be running). A crashed coordinator
// therefore blocks nobody's outcome, but its shared segments are not
// trimmed (see Limitations).
//
// # Invariants and how they are tested
//
//   - Agreement: every observer computes the same outcome; no two
//     participants apply a transaction with different outcomes.
//   - Validity: commit implies every participant voted yes.
//   - Non-blocking progress: with the coordinator crashed (at any point)
//     and participants crashed before or after voting, the others reach
//     the outcome by recovery, given a majority of wormservers.
//   - Collection: a transaction every participant applied is trimmed.
//
// apps/wormtx/wormtxtest checks them against any worm.Space: unit cases,
// concurrent recoverers racing late voters, inbox-driven and direct-mode
// runs with coordinator and participant crashes and restarts, and a seeded
// randomized test (random votes, crashes at random points, concurrent
// recoverers, an optional nemesis); the tests here run it on worm/spec
// with and without fault injection (ambiguous writes applied or dropped,
// unavailability, lost notifications). apps/wormtx/bank checks money
// conservation and per-transaction agreement of the ledgers under random
// crashes and faults, and shows 2PC blocking where WormTX completes.
//
// # Limitations
//
//   - A coordinator that dies between Alloc and its first inbox post
//     leaves a transaction nobody knows of. It harms nobody (no
//     participant prepared), but its segment stays allocated until someone
//     resolves it with Policy.Notify set (recovery then tells the
//     participants, who acknowledge, and it is collected).
//   - A participant that never comes back blocks the collection of its
//     transactions (their outcome is decided without it; only the trim
//     waits for its ack).
//   - Coordinators sharing a segment range must have distinct Space
//     identities: Alloc tells winners apart by identity (and metadata).
//   - A poster without a position hint (a new coordinator, a recoverer)
//     finds an inbox's tail from its first segment: one call per trimmed
//     inbox segment, one capture per written position of the current one.
//   - Begin remembers each descriptor until Await (or forever, for
//     transactions never awaited); use Open/Resolve for fire-and-forget.
//     In the direct mode it also keeps a listener open until Await (or
//     Close).
//   - In the direct mode a coordinator that dies before the descriptor
//     write lands leaves a transaction that observers knowing only its
//     TxID cannot Open; its participants settle the descriptor when they
//     recover its missing votes. A participant restarted within
//     AbandonAfter of acknowledging a transaction whose coordinator also
//     died does not collect it (the check is kept in memory).
//   - The wormservers' replay to new subscribers is a bounded cache: when
//     it missed a vote, a direct-mode learner reads after HintWait.
//   - Shared segments are trimmed by their coordinator only. A
//     coordinator that dies (or is closed) with transactions begun and
//     not completed leaves its current segments allocated: their
//     transactions are all decided (by the votes, recovered if need
//     be) and applied, but nobody else knows which slots the segment
//     holds, so nobody else trims it. Likewise a participant that never
//     acknowledges (dead, or its ack message lost and its ack register
//     never written) keeps its segment. A slot's descriptor reaches the
//     index only with its batch, so Open may report a running shared
//     transaction as unknown (worm.ErrUnallocated) for up to descIdle
//     (50ms), and forever if its coordinator died before the batch was
//     written and nobody recovered a vote of it.
//   - Shared segment numbers must be at most MaxSharedSegment (2^43-1):
//     TxIDs name the segment and the slot in 63 bits.
//   - Votes with records: a coordinator with SetSegments keeps a
//     segment (and a listener) open per participant set it begins
//     transactions among; a participant's restart aborts the
//     transactions of its recorded segments that it had not voted in
//     (it fences its registers there), and costs two round trips per
//     slot of each such segment; a participant with Segments must be
//     running Run, whose restore its votes wait for.
//
// # Imports
//
// This package imports the standard library and package worm only. It
// must never import worm/paxos, worm/wire, worm/server, worm/client or
// worm/storage: it runs unchanged over any worm.Space (tests may use
// worm/spec and worm/check).
package wormtx
