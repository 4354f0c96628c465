package wormtx

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/wormspace/wormspace/worm"
)

// Policy says how an observer waits for a transaction's outcome.
type Policy struct {
	// RecoverAfter is how long Resolve waits for missing votes before it
	// captures their registers and writes no (VoteTimedOut). Zero recovers
	// at once; a negative value never recovers (wait only, like a 2PC
	// participant).
	RecoverAfter time.Duration
	// Poll is the rescan interval, the safety net under Listen (whose
	// notifications may be lost). Zero means 250ms.
	Poll time.Duration
	// HintWait is how long Resolve waits, after a hint (a vote announced
	// without its chosen value: by fewer wormservers than a quorum so
	// far, or too large to travel), for the chosen value before it reads
	// the registers. In the fault-free case the chosen value follows the
	// hint within a fraction of a millisecond. Zero means 20ms.
	HintWait time.Duration
	// WriteDecision makes Resolve record the outcome in the decision
	// register once it knows it (capture+write; idempotent, and later
	// observers then need one read). Resolve always records it after a
	// recovery, whatever this says.
	WriteDecision bool
	// Notify, when set, is used by a recoverer to post the transaction to
	// the inbox of each participant whose vote it filled in, so that a
	// participant the coordinator never told still learns the outcome,
	// applies and acknowledges it (which lets the segment be trimmed).
	Notify Directory
	// Logger receives recovery events; nil means slog.Default().
	Logger *slog.Logger

	hints *cursors // inbox position hints for Notify (shared by copies)
	// recoverHook, when set, runs before a recovery round.
	recoverHook func(context.Context)
}

// DefaultPolicy recovers missing votes after two seconds.
var DefaultPolicy = Policy{RecoverAfter: 2 * time.Second}

func (p Policy) poll() time.Duration {
	if p.Poll <= 0 {
		return 250 * time.Millisecond
	}
	return p.Poll
}

func (p Policy) hintWait() time.Duration {
	if p.HintWait <= 0 {
		return 20 * time.Millisecond
	}
	return p.HintWait
}

func (p Policy) logger() *slog.Logger {
	if p.Logger == nil {
		return slog.Default()
	}
	return p.Logger
}

// Status is a snapshot of a transaction's registers.
type Status struct {
	Votes    []Vote    // Votes[i] is participant i's vote register
	Decision Outcome   // the decision register (Pending when empty)
	Acks     []Outcome // Acks[i]: the outcome participant i applied (Pending: not yet)
	// CoordinatorAck: the outcome the coordinator learned; Pending when
	// empty; Abort with Abandoned set when a participant gave up on it.
	CoordinatorAck Outcome
	Abandoned      bool
	// Outcome is the function of the votes: Commit when all are yes,
	// Abort when one is no, Pending otherwise (or the decision register,
	// when the votes were not all read).
	Outcome Outcome
}

// Outcome computes the transaction's outcome from its votes: Abort as soon
// as one vote is no (or timed out), Commit when all are yes, else Pending.
func OutcomeOf(votes []Vote) Outcome {
	all := true
	for _, v := range votes {
		switch v {
		case VoteNo, VoteTimedOut:
			return Abort
		case VoteMissing:
			all = false
		}
	}
	if all {
		return Commit
	}
	return Pending
}

// Status reads every register of the transaction (concurrently, one round
// trip). It never writes. Errors: worm.ErrTrimmed once the segment has
// been collected, ErrInconsistent, and Space errors.
func (t Tx) Status(ctx context.Context, sp worm.Space) (Status, error) {
	n := t.n()
	addrs := make([]worm.Addr, 0, 2*n+2)
	for i := range n {
		addrs = append(addrs, t.voteAddr(i))
	}
	addrs = append(addrs, t.decisionAddr())
	for i := range n {
		addrs = append(addrs, t.ackAddr(i))
	}
	addrs = append(addrs, t.coordAckAddr())
	vals, err := readAll(ctx, sp, addrs)
	if err != nil {
		return Status{}, fmt.Errorf("wormtx: %v: %w", t.ID, err)
	}
	st := Status{Votes: make([]Vote, n), Acks: make([]Outcome, n)}
	for i := range n {
		if vals[i] != nil {
			if st.Votes[i], err = parseVote(vals[i]); err != nil {
				return Status{}, err
			}
		}
		if v := vals[n+1+i]; v != nil {
			if st.Acks[i], err = parseOutcome(v); err != nil {
				return Status{}, err
			}
		}
	}
	if v := vals[n]; v != nil {
		if st.Decision, err = parseOutcome(v); err != nil {
			return Status{}, err
		}
	}
	if v := vals[2*n+1]; v != nil {
		if string(v) == string(valAbandon) {
			st.CoordinatorAck, st.Abandoned = Abort, true
		} else if st.CoordinatorAck, err = parseOutcome(v); err != nil {
			return Status{}, err
		}
	}
	st.Outcome = OutcomeOf(st.Votes)
	if st.Decision != Pending && st.Outcome != Pending && st.Decision != st.Outcome {
		return Status{}, fmt.Errorf("%w: %v: decision %v but votes say %v", ErrInconsistent, t.ID, st.Decision, st.Outcome)
	}
	if st.Outcome == Pending {
		st.Outcome = st.Decision
	}
	return st, nil
}

// readAll reads addrs concurrently; vals[i] is nil for an empty register.
func readAll(ctx context.Context, sp worm.Space, addrs []worm.Addr) ([][]byte, error) {
	vals := make([][]byte, len(addrs))
	errs := make([]error, len(addrs))
	var wg sync.WaitGroup
	for i, a := range addrs {
		wg.Go(func() { vals[i], errs[i] = readOpt(ctx, sp, a) })
	}
	wg.Wait()
	return vals, errors.Join(errs...)
}

// Resolve reads transaction id's descriptor and resolves it with
// (Tx).Resolve.
func Resolve(ctx context.Context, sp worm.Space, id TxID, pol Policy) (Outcome, error) {
	t, err := Open(ctx, sp, id)
	if err != nil {
		return Pending, err
	}
	return t.Resolve(ctx, sp, pol)
}

// Resolve returns the transaction's outcome, Commit or Abort. It listens on
// the segment and learns the votes (and the decision register) from the
// chosen values the notifications carry; it reads the registers not yet
// known once at the start (concurrently with subscribing) and once
// subscribed, after a hint that no chosen value followed within
// pol.HintWait, after a Lost notification, and at every pol.Poll tick. It
// returns as soon as the decision register is known, one vote is no or
// every vote is yes, and, when votes are still missing after
// pol.RecoverAfter, captures each missing vote register and writes no. A
// yes that reached some acceptors survives the capture (the capture
// reports it), so recovery never turns a cast yes into no.
//
// Resolve is what makes WormTX non-blocking: it needs no particular
// process, only a quorum of wormservers. Any number of observers may run it
// concurrently; they all return the same outcome.
//
// Errors: worm.ErrTrimmed (the transaction was collected after every
// participant applied it), ErrInconsistent, and ctx's error (wrapped in
// the last Space error) when ctx ends first.
func (t Tx) Resolve(ctx context.Context, sp worm.Space, pol Policy) (Outcome, error) {
	return t.resolve(ctx, sp, pol, resolveOpts{})
}

// resolveOpts are the options of resolve that Resolve does not expose.
type resolveOpts struct {
	// notes is a listener on the transaction's segment that the caller
	// opened (nil: resolve opens its own). It is not closed by resolve.
	notes <-chan worm.Notification
	// fresh: the transaction has just begun and notes was opened before
	// any vote can have been chosen, or concurrently with the votes (the
	// wormservers replay to a new subscriber what raced with it). The
	// notifications then tell everything and resolve reads only after a
	// hint, a Lost notification or a Poll tick.
	fresh bool
	// observe, when set, sees every chosen notification.
	observe func(worm.Notification)
}

// listening is the outcome of a Listen started in the background.
type listening struct {
	ch  <-chan worm.Notification
	err error
}

// listenAsync starts sp.Listen(ctx, seg) and delivers its result.
func listenAsync(ctx context.Context, sp worm.Space, seg uint64) <-chan listening {
	ready := make(chan listening, 1)
	go func() {
		ch, err := sp.Listen(ctx, seg)
		ready <- listening{ch, err}
	}()
	return ready
}

func (t Tx) resolve(ctx context.Context, sp worm.Space, pol Policy, opt resolveOpts) (Outcome, error) {
	n := t.n()
	votes := make([]Vote, n)
	decision := Pending
	notes := opt.notes
	var ready <-chan listening
	if notes == nil {
		lctx, cancel := context.WithCancel(ctx)
		defer cancel()
		// Subscribe and scan at once (one round trip, not two); if the
		// first scan is inconclusive, scan again once subscribed, so no
		// write falls between the two unseen.
		ready = listenAsync(lctx, sp, t.segment())
	}
	scanNow := !opt.fresh
	var recoverAt <-chan time.Time
	if pol.RecoverAfter >= 0 {
		tm := time.NewTimer(pol.RecoverAfter)
		defer tm.Stop()
		recoverAt = tm.C
	}
	poll := time.NewTimer(pol.poll())
	defer poll.Stop()
	var hint *time.Timer
	var hintC <-chan time.Time
	if opt.fresh {
		// The notifications should tell everything (see resolveOpts);
		// if they do not within HintWait (the servers' replay missed a
		// vote that raced with the subscription), read.
		hint = time.NewTimer(pol.hintWait())
		hintC = hint.C
	}
	defer func() {
		if hint != nil {
			hint.Stop()
		}
	}()
	recovered := false
	for {
		if scanNow {
			scanNow = false
			_, err := t.scan(ctx, sp, votes, &decision)
			if err != nil && !transient(ctx, err) {
				return Pending, fmt.Errorf("wormtx: %v: %w", t.ID, err)
			}
		}
		o, err := t.outcome(votes, decision)
		if err != nil {
			return Pending, err
		}
		if o != Pending {
			if recovered || pol.WriteDecision {
				if err := t.decide(ctx, sp, o); err != nil {
					return Pending, err
				}
			}
			return o, nil
		}
		if recovered {
			// Every vote was settled by the recovery round; only a
			// transient read error can bring us here. Retry at once.
			recoverAt = closedTime
		}
		select {
		case l := <-ready:
			ready = nil
			if l.err != nil {
				if errors.Is(l.err, worm.ErrTrimmed) {
					return Pending, fmt.Errorf("wormtx: %v: %w", t.ID, l.err)
				}
				break // fall back on polling
			}
			notes = l.ch
			scanNow = true // writes before the subscription are seen
		case nt, ok := <-notes:
			if ok && !nt.Lost {
				// Registers of other slots of a shared segment, or its
				// descriptor, are none of our business.
				k, in := t.canon(nt.Off)
				if !in {
					continue
				}
				nt.Off = uint32(k)
			}
			switch {
			case !ok:
				notes = nil // trimmed or listener gone; scan will tell
				scanNow = true
			case nt.Lost:
				scanNow = true
			case nt.Chosen:
				if opt.observe != nil {
					opt.observe(nt)
				}
				if err := t.learn(nt, votes, &decision); err != nil {
					return Pending, err
				}
			case int(nt.Off) <= n && hintC == nil:
				// A vote or the decision is being written: its chosen
				// value normally follows at once; read if it does not.
				if hint == nil {
					hint = time.NewTimer(pol.hintWait())
				} else {
					hint.Reset(pol.hintWait())
				}
				hintC = hint.C
			}
		case <-hintC:
			hintC = nil
			scanNow = true
		case <-poll.C:
			poll.Reset(pol.poll())
			scanNow = true
		case <-recoverAt:
			recoverAt = nil
			if pol.recoverHook != nil {
				pol.recoverHook(ctx)
			}
			if err := t.recover(ctx, sp, votes, pol); err != nil {
				return Pending, err
			}
			recovered = true
		case <-ctx.Done():
			return Pending, fmt.Errorf("wormtx: %v: outcome unknown: %w", t.ID, ctx.Err())
		}
	}
}

// learn records a chosen value announced by a notification (nt.Off is
// the canonical index): a vote, or the decision.
func (t Tx) learn(nt worm.Notification, votes []Vote, decision *Outcome) error {
	switch n := t.n(); {
	case int(nt.Off) < n:
		if votes[nt.Off] != VoteMissing {
			return nil
		}
		v, err := parseVote(nt.Value)
		if err != nil {
			return err
		}
		votes[nt.Off] = v
	case int(nt.Off) == n:
		d, err := parseOutcome(nt.Value)
		if err != nil {
			return err
		}
		*decision = d
	}
	return nil
}

// outcome is the outcome votes and decision determine (Pending if none),
// or ErrInconsistent when they contradict each other.
func (t Tx) outcome(votes []Vote, decision Outcome) (Outcome, error) {
	o := OutcomeOf(votes)
	if decision != Pending {
		if o != Pending && o != decision {
			return Pending, fmt.Errorf("%w: %v: decision %v but votes say %v", ErrInconsistent, t.ID, decision, o)
		}
		return decision, nil
	}
	return o, nil
}

var closedTime = func() <-chan time.Time {
	c := make(chan time.Time)
	close(c)
	return c
}()

// scan reads the decision register (unless known) and the votes still
// missing, in one concurrent round, records what it found in votes and
// decision, and returns the outcome they determine (or Pending).
func (t Tx) scan(ctx context.Context, sp worm.Space, votes []Vote, decision *Outcome) (Outcome, error) {
	var idx []int
	var addrs []worm.Addr
	for i, v := range votes {
		if v == VoteMissing {
			idx = append(idx, i)
			addrs = append(addrs, t.voteAddr(i))
		}
	}
	readDecision := decision == nil || *decision == Pending
	if readDecision {
		idx = append(idx, -1)
		addrs = append(addrs, t.decisionAddr())
	}
	vals := make([][]byte, len(addrs))
	errs := make([]error, len(addrs))
	var wg sync.WaitGroup
	for i, a := range addrs {
		wg.Go(func() {
			v, err := sp.Read(ctx, a)
			if errors.Is(err, worm.ErrEmpty) {
				err = nil
			}
			vals[i], errs[i] = v, err
		})
	}
	wg.Wait()
	var firstErr error
	d := Pending
	for k, i := range idx {
		if errs[k] != nil {
			firstErr = cmpErr(firstErr, errs[k])
			continue
		}
		if vals[k] == nil {
			continue
		}
		if i < 0 {
			var err error
			if d, err = parseOutcome(vals[k]); err != nil {
				return Pending, err
			}
			continue
		}
		v, err := parseVote(vals[k])
		if err != nil {
			return Pending, err
		}
		votes[i] = v
	}
	if decision != nil && d != Pending {
		*decision = d
	} else if decision != nil {
		d = *decision
	}
	o, err := t.outcome(votes, d)
	if err != nil {
		return Pending, err
	}
	if o != Pending {
		return o, nil
	}
	return Pending, firstErr
}

// cmpErr keeps the first non-transient error, else the first error.
func cmpErr(have, err error) error {
	if have == nil {
		return err
	}
	if errors.Is(have, worm.ErrUnavailable) || errors.Is(have, worm.ErrUnknownOutcome) {
		if !errors.Is(err, worm.ErrUnavailable) && !errors.Is(err, worm.ErrUnknownOutcome) {
			return err
		}
	}
	return have
}

// recover settles every missing vote with VoteTimedOut, concurrently, and
// records what was chosen (a carried-over yes included) in votes.
func (t Tx) recover(ctx context.Context, sp worm.Space, votes []Vote, pol Policy) error {
	log := pol.logger()
	errs := make([]error, len(votes))
	var wg sync.WaitGroup
	for i, v := range votes {
		if v != VoteMissing {
			continue
		}
		wg.Go(func() {
			val, filled, err := settle(ctx, sp, t.voteAddr(i), valTimedOut)
			if err != nil {
				errs[i] = err
				return
			}
			if votes[i], err = parseVote(val); err != nil {
				errs[i] = err
				return
			}
			log.Debug("wormtx: recovered vote", "tx", t.ID, "participant", t.Participants[i], "vote", votes[i], "filled", filled)
			if filled && pol.Notify != nil {
				if err := postTo(ctx, sp, pol.Notify, pol.hints, t.Participants[i], t, nil); err != nil {
					log.Warn("wormtx: could not notify participant after recovery", "tx", t.ID, "participant", t.Participants[i], "err", err)
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("wormtx: %v: recovery: %w", t.ID, err)
	}
	return nil
}

// decide records o in the decision register (capture+write, idempotent).
func (t Tx) decide(ctx context.Context, sp worm.Space, o Outcome) error {
	v, _, err := settle(ctx, sp, t.decisionAddr(), outcomeValue(o))
	if err != nil {
		if errors.Is(err, worm.ErrTrimmed) {
			return nil // every participant applied it already
		}
		return fmt.Errorf("wormtx: %v: decision: %w", t.ID, err)
	}
	d, err := parseOutcome(v)
	if err != nil {
		return err
	}
	if d != o {
		return fmt.Errorf("%w: %v: decision register holds %v, votes say %v", ErrInconsistent, t.ID, d, o)
	}
	return nil
}
