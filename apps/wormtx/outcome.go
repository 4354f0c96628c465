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
	// notifications are hints and may be lost). Zero means 250ms.
	Poll time.Duration
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
}

// DefaultPolicy recovers missing votes after two seconds.
var DefaultPolicy = Policy{RecoverAfter: 2 * time.Second}

func (p Policy) poll() time.Duration {
	if p.Poll <= 0 {
		return 250 * time.Millisecond
	}
	return p.Poll
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
// the segment (notifications are hints: each one, and each Poll tick,
// triggers a read of the registers not yet known; a Lost notification is
// just another rescan), returns as soon as the decision register is
// written, one vote is no or every vote is yes, and, when votes are still
// missing after pol.RecoverAfter, captures each missing vote register and
// writes no. A yes that reached some acceptors survives the capture (the
// capture reports it), so recovery never turns a cast yes into no.
//
// Resolve is what makes WormTX non-blocking: it needs no particular
// process, only a quorum of wormservers. Any number of observers may run it
// concurrently; they all return the same outcome.
//
// Errors: worm.ErrTrimmed (the transaction was collected after every
// participant applied it), ErrInconsistent, and ctx's error (wrapped in
// the last Space error) when ctx ends first.
func (t Tx) Resolve(ctx context.Context, sp worm.Space, pol Policy) (Outcome, error) {
	n := t.n()
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Subscribe and scan at once (one round trip, not two); if the first
	// scan is inconclusive, scan again once subscribed, so no write falls
	// between the two unseen.
	type listening struct {
		ch  <-chan worm.Notification
		err error
	}
	ready := make(chan listening, 1)
	go func() {
		ch, err := sp.Listen(lctx, uint64(t.ID))
		ready <- listening{ch, err}
	}()
	var notes <-chan worm.Notification
	subscribe := func() error {
		l := <-ready
		if l.err != nil {
			if errors.Is(l.err, worm.ErrTrimmed) {
				return fmt.Errorf("wormtx: %v: %w", t.ID, l.err)
			}
			return nil // fall back on polling
		}
		notes = l.ch
		return nil
	}
	subscribed := false
	votes := make([]Vote, n)
	var recoverAt <-chan time.Time
	if pol.RecoverAfter >= 0 {
		tm := time.NewTimer(pol.RecoverAfter)
		defer tm.Stop()
		recoverAt = tm.C
	}
	recovered := false
	for {
		o, err := t.scan(ctx, sp, votes)
		if err != nil {
			if !transient(ctx, err) {
				return Pending, fmt.Errorf("wormtx: %v: %w", t.ID, err)
			}
		} else if o != Pending {
			if recovered || pol.WriteDecision {
				if err := t.decide(ctx, sp, o); err != nil {
					return Pending, err
				}
			}
			return o, nil
		}
		if !subscribed {
			subscribed = true
			if err := subscribe(); err != nil {
				return Pending, err
			}
			continue // rescan: writes before the subscription are seen
		}
		if recovered {
			// Every vote was settled by the recovery round; only a
			// transient read error can bring us here. Retry at once.
			recoverAt = closedTime
		}
		poll := time.NewTimer(pol.poll())
		select {
		case _, ok := <-notes:
			if !ok {
				notes = nil // trimmed or listener gone; scan will tell
			}
		case <-poll.C:
		case <-recoverAt:
			recoverAt = nil
			if err := t.recover(ctx, sp, votes, pol); err != nil {
				poll.Stop()
				return Pending, err
			}
			recovered = true
		case <-ctx.Done():
			poll.Stop()
			return Pending, fmt.Errorf("wormtx: %v: outcome unknown: %w", t.ID, ctx.Err())
		}
		poll.Stop()
	}
}

var closedTime = func() <-chan time.Time {
	c := make(chan time.Time)
	close(c)
	return c
}()

// scan reads the decision register and the votes still missing, in one
// concurrent round, and returns the outcome they determine (or Pending).
func (t Tx) scan(ctx context.Context, sp worm.Space, votes []Vote) (Outcome, error) {
	var idx []int
	addrs := []worm.Addr{t.decisionAddr()}
	for i, v := range votes {
		if v == VoteMissing {
			idx = append(idx, i)
			addrs = append(addrs, t.voteAddr(i))
		}
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
	for k, i := range idx {
		if errs[k+1] != nil {
			firstErr = cmpErr(firstErr, errs[k+1])
			continue
		}
		if vals[k+1] != nil {
			v, err := parseVote(vals[k+1])
			if err != nil {
				return Pending, err
			}
			votes[i] = v
		}
	}
	if errs[0] == nil && vals[0] != nil {
		d, err := parseOutcome(vals[0])
		if err != nil {
			return Pending, err
		}
		if o := OutcomeOf(votes); o != Pending && o != d {
			return Pending, fmt.Errorf("%w: %v: decision %v but votes say %v", ErrInconsistent, t.ID, d, o)
		}
		return d, nil
	}
	if errs[0] != nil {
		firstErr = cmpErr(firstErr, errs[0])
	}
	if o := OutcomeOf(votes); o != Pending {
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
