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
// (Resolve listens on the segment; a notification is only a hint that
// triggers a read, a Lost notification a rescan, and a Poll timer covers
// missed hints).
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
// Over the Space API this implementation pays for what the API makes
// explicit. Counting one-way delays from Begin, with every Space call a
// round trip and a notification one delay after the write reached the
// wormservers (apps/wormtx/internal/netdelay; TestMessageDelays in
// apps/wormtx/twopc measures it):
//
//	0-2    Alloc of the segment, and at the same time a capture of an
//	       inbox position per participant
//	2-3    the inbox entry's write reaches the wormservers
//	3-4    the notification reaches the participant (a hint)
//	4-6    the participant reads the entry
//	6-7    its vote reaches the wormservers (7-8: the reply)
//	8-10   it reads the other votes (Listen and read in one round trip)
//	       and applies
//
// About 10 delays (measured 11 to 13 with scheduling), against 3 for the
// 2PC baseline from Begin to every participant applied (4 with the
// client's request). The difference is the prepare travelling through
// WormSpace (Alloc and inbox post, 4 delays instead of 1), notifications
// that carry no value (a read after each: +2, twice), and waiting for the
// vote's reply before reading. A notification carrying the value, and a
// prepare sent directly to the participants, would bring it to the
// protocol's 4.
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
// concurrent recoverers racing late voters, inbox-driven runs with
// coordinator and participant crashes and restarts, and a seeded
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
//
// # Imports
//
// This package imports the standard library and package worm only. It
// must never import worm/paxos, worm/wire, worm/server, worm/client or
// worm/storage: it runs unchanged over any worm.Space (tests may use
// worm/spec and worm/check).
package wormtx
