package wormtx

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/wormspace/wormspace/worm"
)

// ParticipantConfig configures a Participant.
type ParticipantConfig struct {
	// Inbox is the first segment of the participant's inbox (see
	// Directory). Only Run uses it.
	Inbox uint64
	// Policy is how the participant waits for outcomes after voting: after
	// RecoverAfter it recovers missing votes itself, so a crashed
	// coordinator or participant never blocks it. Notify (other
	// participants' inboxes) lets it tell participants it voted for.
	Policy Policy
	// AbandonAfter is how long a participant that has acknowledged waits
	// for the coordinator's ack before writing "abandoned" into it so the
	// segment can be trimmed. Zero means one minute; negative: never.
	AbandonAfter time.Duration
	// SendAck, when set, is how HandlePrepare acknowledges the outcome it
	// applied in the direct mode: a message to the coordinator (which
	// passes it to (*Coordinator).Acked), instead of a write of the ack
	// register. The coordinator trims the segment once it has every
	// acknowledgement; if the segment is still there AbandonAfter later
	// (the coordinator died), the participant writes its ack register
	// and collects as Ack does. An error falls back on the register.
	SendAck func(ctx context.Context, t Tx, o Outcome) error
	// Trace, when set, receives the participant's stages of each
	// transaction (StagePrepareStart through StageApplied).
	Trace TraceFunc
	// Crash, when set, is asked at each participant crash point; true
	// makes Handle stop there with ErrCrashed, and Run return ErrCrashed
	// (the whole process dies). For demonstrations and tests.
	Crash func(p CrashPoint, tx TxID) bool
	// Segments, with a Restorable Resource, lets HandlePrepare vote in
	// set segments (CoordinatorConfig.SetSegments) with the prepare
	// record in the vote instead of a durable prepare first (see
	// records.go). Run must then be running: it first restores what
	// earlier incarnations' votes recorded, and votes with records wait
	// for that. Nil: every vote waits for Prepare's durability.
	Segments SegmentLog
	// Logger; nil means slog.Default().
	Logger *slog.Logger
}

// Participant is one named participant of transactions on a Space: it
// votes, learns outcomes and acknowledges them. Safe for concurrent use.
type Participant struct {
	sp    worm.Space
	name  string
	cfg   ParticipantConfig
	log   *slog.Logger
	later laterQueue // deferred collection checks (HandlePrepare)
	// listeners on shared segments (HandlePrepare), until Close
	listeners *listenerSet
	// set segments checked for votes with records (records.go), and
	// Run's restore of earlier incarnations' votes, which votes with
	// records wait for (closed at once without Segments)
	segMu    sync.Mutex
	segs     map[uint64]*segRecord
	pruning  bool
	restored chan struct{}
	restore  sync.Once
}

// NewParticipant returns participant name working on sp.
func NewParticipant(sp worm.Space, name string, cfg ParticipantConfig) *Participant {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if cfg.Policy.Logger == nil {
		cfg.Policy.Logger = log
	}
	if cfg.AbandonAfter == 0 {
		cfg.AbandonAfter = time.Minute
	}
	if cfg.Policy.hints == nil {
		cfg.Policy.hints = &cursors{}
	}
	p := &Participant{sp: sp, name: name, cfg: cfg, log: log.With("participant", name), listeners: newListenerSet(),
		segs: map[uint64]*segRecord{}, restored: make(chan struct{})}
	if cfg.Segments == nil {
		p.restore.Do(func() { close(p.restored) })
	}
	return p
}

// Close stops the participant's listeners on shared segments (opened by
// HandlePrepare and kept for the next transactions there). Calls still
// running then fall back on reading. It does not close the Space.
func (p *Participant) Close() error {
	p.listeners.close()
	return nil
}

// Name is the participant's name.
func (p *Participant) Name() string { return p.name }

func (p *Participant) index(t Tx) (int, error) {
	i := t.Index(p.name)
	if i < 0 {
		return -1, fmt.Errorf("%w: %q in %v", ErrNotParticipant, p.name, t.ID)
	}
	return i, nil
}

// Vote writes the participant's vote with WriteUnsafe (ballot 0: it is the
// only ballot-0 writer of its register) and returns the vote that was
// chosen: the one cast, or VoteTimedOut when a recoverer captured the
// register first. For a given transaction, always vote the same way (see
// Resource.Prepare). Errors: ErrNotParticipant, worm.ErrTrimmed, Space
// errors once ctx ends.
func (p *Participant) Vote(ctx context.Context, t Tx, yes bool) (Vote, error) {
	i, err := p.index(t)
	if err != nil {
		return VoteMissing, err
	}
	return p.vote(ctx, t, i, voteValue(yes))
}

// vote writes val (a vote value) into participant i's vote register of t
// and returns the vote chosen.
func (p *Participant) vote(ctx context.Context, t Tx, i int, val []byte) (Vote, error) {
	v, err := writeOwn(ctx, p.sp, t.voteAddr(i), val, valTimedOut)
	if err != nil {
		return VoteMissing, fmt.Errorf("wormtx: %v: vote of %q: %w", t.ID, p.name, err)
	}
	return parseVote(v)
}

// Ack records that the participant applied outcome o, then trims the
// segment if every ack is in, or, when only the coordinator's is missing,
// waits AbandonAfter for it (listening) and then fills it with
// "abandoned" and trims. Errors: ErrNotParticipant, ErrInconsistent (the
// ack register holds another outcome), Space errors once ctx ends. An
// already trimmed segment is success.
func (p *Participant) Ack(ctx context.Context, t Tx, o Outcome) error {
	i, err := p.index(t)
	if err != nil {
		return err
	}
	v, err := writeOwn(ctx, p.sp, t.ackAddr(i), outcomeValue(o), outcomeValue(o))
	if errors.Is(err, worm.ErrTrimmed) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("wormtx: %v: ack of %q: %w", t.ID, p.name, err)
	}
	if got, err := parseOutcome(v); err != nil || got != o {
		return fmt.Errorf("%w: %v: ack of %q holds %q, applied %v", ErrInconsistent, t.ID, p.name, v, o)
	}
	if err := t.collect(ctx, p.sp); err != nil || p.cfg.AbandonAfter < 0 {
		return err
	}
	return p.abandonCoordinator(ctx, t)
}

// abandonCoordinator waits for the coordinator's ack when every
// participant has acked, and gives up on it after AbandonAfter.
//
// A transaction in a shared segment has no coordinator ack to abandon:
// its coordinator trims the segment (see CoordinatorConfig.Shared).
func (p *Participant) abandonCoordinator(ctx context.Context, t Tx) error {
	if t.ID.Shared() {
		return nil
	}
	// Only a participant that sees every participant ack waits; the
	// others leave it to the last one.
	addrs := make([]worm.Addr, 0, len(t.Participants)+1)
	for i := range t.Participants {
		addrs = append(addrs, t.ackAddr(i))
	}
	addrs = append(addrs, t.coordAckAddr())
	vals, err := readAll(ctx, p.sp, addrs)
	if errors.Is(err, worm.ErrTrimmed) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, v := range vals[:len(t.Participants)] {
		if v == nil {
			return nil
		}
	}
	if vals[len(t.Participants)] == nil {
		lctx, cancel := context.WithTimeout(ctx, p.cfg.AbandonAfter)
		notes, err := p.sp.Listen(lctx, t.segment())
		if err == nil {
		wait:
			for {
				select {
				case _, ok := <-notes:
					if !ok {
						break wait
					}
					v, err := readOpt(lctx, p.sp, t.coordAckAddr())
					if err != nil || v != nil {
						break wait
					}
				case <-lctx.Done():
					break wait
				}
			}
		} else {
			<-lctx.Done()
		}
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		v, filled, err := settle(ctx, p.sp, t.coordAckAddr(), valAbandon)
		if errors.Is(err, worm.ErrTrimmed) {
			return nil
		}
		if err != nil {
			return err
		}
		if filled {
			p.log.Info("wormtx: coordinator never acknowledged; abandoned it", "tx", t.ID, "after", p.cfg.AbandonAfter)
		}
		_ = v
	}
	return t.collect(ctx, p.sp)
}

// Handle runs the participant's whole part in transaction t: Prepare on
// res, vote, resolve the outcome (recovering missing votes after
// Policy.RecoverAfter), Apply on res, acknowledge. It returns the outcome.
// If the participant has already acknowledged t (a rescan after a
// restart), it returns that outcome without calling res. Errors:
// ErrCrashed at a crash point, ErrNotParticipant, errors from res, Space
// errors once ctx ends; worm.ErrTrimmed means every participant,
// this one included, has applied t.
func (p *Participant) Handle(ctx context.Context, t Tx, res Resource) (Outcome, error) {
	return p.handle(ctx, t, res, false)
}

// handle is Handle; fresh means the inbox entry was written while this
// process was waiting for it, so no earlier incarnation can have handled
// it (or, for a duplicate entry, Prepare returns the recorded vote), and
// the round trip that checks the ack and vote registers is skipped.
func (p *Participant) handle(ctx context.Context, t Tx, res Resource, fresh bool) (Outcome, error) {
	i, err := p.index(t)
	if err != nil {
		return Pending, err
	}
	p.cfg.Trace.emit(t.ID, StagePrepareStart)
	var mine []byte
	if !fresh {
		// Acked already, or collected: done before (this is a rescan).
		// A recoverer may have voted for us already: no need to
		// prepare. Both registers in one round trip.
		vals, err := readAll(ctx, p.sp, []worm.Addr{t.ackAddr(i), t.voteAddr(i)})
		if err != nil {
			return Pending, fmt.Errorf("wormtx: %v: %w", t.ID, err)
		}
		if vals[0] != nil {
			o, err := parseOutcome(vals[0])
			if err == nil && o == Abort {
				// The previous incarnation may have died before
				// completing the missing votes.
				err = p.completeVotes(ctx, t)
			}
			return o, err
		}
		mine = vals[1]
	}
	if mine == nil {
		yes, err := res.Prepare(ctx, t.ID, t.Descriptor)
		if err != nil {
			return Pending, fmt.Errorf("wormtx: %v: prepare: %w", t.ID, err)
		}
		p.cfg.Trace.emit(t.ID, StagePrepared)
		if p.cfg.Crash != nil && p.cfg.Crash(ParticipantBeforeVote, t.ID) {
			return Pending, ErrCrashed
		}
		v, err := p.Vote(ctx, t, yes)
		if err != nil {
			return Pending, err
		}
		p.cfg.Trace.emit(t.ID, StageVoted)
		p.log.Debug("wormtx: voted", "tx", t.ID, "yes", yes, "chosen", v)
		if p.cfg.Crash != nil && p.cfg.Crash(ParticipantAfterVote, t.ID) {
			return Pending, ErrCrashed
		}
	}
	o, err := t.Resolve(ctx, p.sp, p.cfg.Policy)
	if err != nil {
		return Pending, err
	}
	p.cfg.Trace.emit(t.ID, StageOutcome)
	if err := res.Apply(ctx, t.ID, o); err != nil {
		return o, fmt.Errorf("wormtx: %v: apply %v: %w", t.ID, o, err)
	}
	p.cfg.Trace.emit(t.ID, StageApplied)
	if err := p.Ack(ctx, t, o); err != nil {
		return o, err
	}
	if o == Abort {
		// A no decided before every vote was in: a participant the
		// coordinator never told would never learn of t, never ack, and
		// t would never be collected. Fill missing votes after the
		// recovery timeout and tell their participants.
		return o, p.completeVotes(ctx, t)
	}
	return o, nil
}

// completeVotes waits Policy.RecoverAfter, then settles every vote still
// missing with VoteTimedOut and notifies its participant (Policy.Notify).
// Transient Space errors are retried until ctx ends.
func (p *Participant) completeVotes(ctx context.Context, t Tx) error {
	if p.cfg.Policy.RecoverAfter < 0 {
		return nil
	}
	votes := make([]Vote, t.n())
	var b backoff
	for {
		_, err := t.scan(ctx, p.sp, votes, nil)
		if err == nil {
			break
		}
		if errors.Is(err, worm.ErrTrimmed) {
			return nil
		}
		// A transient error (unavailable, unknown outcome) is retried
		// until ctx ends, as every Space call of the participant's.
		if !transient(ctx, err) || b.wait(ctx) != nil {
			return fmt.Errorf("wormtx: %v: completing the votes: %w", t.ID, err)
		}
	}
	if !slices.Contains(votes, VoteMissing) {
		return nil
	}
	tm := time.NewTimer(p.cfg.Policy.RecoverAfter)
	defer tm.Stop()
	select {
	case <-tm.C:
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := t.recover(ctx, p.sp, votes, p.cfg.Policy); err != nil && !errors.Is(err, worm.ErrTrimmed) {
		return err
	}
	return nil
}

// Run serves the participant's inbox until ctx ends or a crash point
// fires: it reads entries in order (learning them from the notifications'
// chosen values, reading after hints, Lost and Poll ticks), handles each
// transaction in its own goroutine (Handle), and trims an inbox segment
// once it is full and every transaction in it is handled. After a restart
// it starts again at the first untrimmed inbox segment; Handle skips what
// was acknowledged. When res is Recoverable, Run first handles the
// transactions res lists as prepared and not applied (those prepared by
// HandlePrepare, which the inbox need not list). It returns ErrCrashed,
// or ctx's error.
func (p *Participant) Run(ctx context.Context, res Resource) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	defer wg.Wait()
	size := p.sp.SegmentSize()
	seg := p.cfg.Inbox
	// Skip collected inbox segments.
	for {
		_, err := p.sp.Check(ctx, seg)
		if errors.Is(err, worm.ErrTrimmed) {
			seg++
			continue
		}
		if err != nil && !errors.Is(err, worm.ErrUnallocated) {
			if transient(ctx, err) {
				var b backoff
				if b.wait(ctx) == nil {
					continue
				}
			}
			if ctx.Err() != nil {
				return context.Cause(ctx)
			}
			return fmt.Errorf("wormtx: %q inbox: %w", p.name, err)
		}
		break
	}
	if rr, ok := res.(Recoverable); ok {
		// Transactions prepared directly (HandlePrepare) and not applied
		// before a restart: the inbox may not list them.
		txs, err := rr.Prepared(ctx)
		if err != nil {
			return fmt.Errorf("wormtx: %q: listing prepared transactions: %w", p.name, err)
		}
		if rs, ok := res.(Restorable); ok && p.cfg.Segments != nil {
			// And those whose vote carried the prepare (records.go).
			// Votes with records wait for this: the segments listed
			// are those of earlier incarnations only.
			restored, err := p.restoreVotes(ctx, rs)
			if err != nil {
				return err
			}
			p.restore.Do(func() { close(p.restored) })
			for _, t := range restored {
				if !slices.ContainsFunc(txs, func(u Tx) bool { return u.ID == t.ID }) {
					txs = append(txs, t)
				}
			}
		}
		for _, t := range txs {
			wg.Go(func() {
				o, err := p.handle(ctx, t, res, false)
				switch {
				case errors.Is(err, ErrCrashed):
					p.log.Info("wormtx: simulated crash", "tx", t.ID)
					cancel(ErrCrashed)
				case errors.Is(err, worm.ErrTrimmed), errors.Is(err, ErrNotParticipant):
				case err != nil && ctx.Err() == nil:
					p.log.Error("wormtx: prepared transaction failed", "tx", t.ID, "err", err)
				case err == nil:
					p.log.Debug("wormtx: applied after a restart", "tx", t.ID, "outcome", o)
				}
			})
		}
	}
	p.restore.Do(func() { close(p.restored) }) // nothing to restore with res
	for {
		if err := p.serveInboxSegment(ctx, cancel, &wg, res, seg, size); err != nil {
			if ctx.Err() != nil {
				return context.Cause(ctx)
			}
			return err
		}
		seg++
	}
}

// serveInboxSegment reads every entry of inbox segment seg, dispatching
// each transaction, and arranges for seg to be trimmed once they are done.
//
// Duplicate entries (a transaction posted by its coordinator and by a
// recoverer) are skipped within one inbox segment; across segments they
// are harmless: Prepare returns the recorded vote, the vote write is
// idempotent, and the outcome is the same.
func (p *Participant) serveInboxSegment(ctx context.Context, cancel context.CancelCauseFunc, wg *sync.WaitGroup, res Resource, seg uint64, size uint32) error {
	seen := map[TxID]bool{}
	lctx, lcancel := context.WithCancel(ctx)
	defer lcancel()
	notes, err := p.sp.Listen(lctx, seg)
	if errors.Is(err, worm.ErrTrimmed) {
		return nil
	}
	if err != nil {
		notes = nil
	}
	var segWG sync.WaitGroup
	var failed sync.Map // TxID -> error: keep the inbox segment for a rescan
	waited := false     // we saw position off empty: its entry will be fresh
	// known holds entries learned from chosen notifications (ahead of
	// off too, when they arrive out of order): no read needed for them.
	known := map[uint32][]byte{}
	read := true // read position off (not known from a notification)
	for off := uint32(0); off < size; {
		var v []byte
		var err error
		if kv, ok := known[off]; ok {
			v = kv
			delete(known, off)
		} else if read {
			v, err = p.sp.Read(ctx, worm.Addr{Seg: seg, Off: off})
		} else {
			err = worm.ErrEmpty // nothing new about off: keep waiting
		}
		read = false
		switch {
		case err == nil:
			off++
			read = true
			fresh := waited
			waited = false
			t, err := unmarshalEntry(v)
			if err != nil {
				p.log.Warn("wormtx: skipping bad inbox entry", "seg", seg, "off", off-1, "err", err)
				continue
			}
			if seen[t.ID] {
				continue // posted twice (by a recoverer too)
			}
			seen[t.ID] = true
			wg.Add(1)
			segWG.Add(1)
			go func() {
				defer wg.Done()
				defer segWG.Done()
				o, err := p.handle(ctx, t, res, fresh)
				switch {
				case errors.Is(err, ErrCrashed):
					p.log.Info("wormtx: simulated crash", "tx", t.ID)
					cancel(ErrCrashed)
				case errors.Is(err, worm.ErrTrimmed):
				case err != nil && ctx.Err() == nil:
					failed.Store(t.ID, err)
					p.log.Error("wormtx: transaction failed", "tx", t.ID, "err", err)
				case err == nil:
					p.log.Debug("wormtx: applied", "tx", t.ID, "outcome", o)
				}
			}()
			continue
		case errors.Is(err, worm.ErrTrimmed):
			return nil
		case errors.Is(err, worm.ErrEmpty), errors.Is(err, worm.ErrUnallocated):
			waited = true
		case transient(ctx, err):
			read = true
		default:
			return fmt.Errorf("wormtx: %q inbox %d/%d: %w", p.name, seg, off, err)
		}
		if err := p.awaitEntry(ctx, &notes, known, off, &read); err != nil {
			return err
		}
	}
	// Full: trim once every transaction in it is handled.
	wg.Add(1)
	go func() {
		defer wg.Done()
		segWG.Wait()
		if ctx.Err() != nil {
			return
		}
		keep := false
		failed.Range(func(any, any) bool { keep = true; return false })
		if keep {
			p.log.Warn("wormtx: keeping inbox segment: some transactions failed; a restart retries them", "seg", seg)
			return
		}
		if err := p.sp.Trim(ctx, seg); err != nil && ctx.Err() == nil {
			p.log.Warn("wormtx: trim inbox", "seg", seg, "err", err)
		}
	}()
	return nil
}

// awaitEntry waits for news of inbox position off: its chosen entry (into
// known, as any other position's), or a reason to read it (*read: a hint
// that no chosen value followed within Policy.HintWait, a Lost
// notification, the listener's end, a Poll tick).
func (p *Participant) awaitEntry(ctx context.Context, notes *<-chan worm.Notification, known map[uint32][]byte, off uint32, read *bool) error {
	poll := time.NewTimer(p.cfg.Policy.poll())
	defer poll.Stop()
	var hintC <-chan time.Time
	for {
		select {
		case nt, ok := <-*notes:
			switch {
			case !ok:
				*notes = nil
				*read = true
				return nil
			case nt.Lost:
				*read = true
				return nil
			case nt.Chosen:
				if nt.Off >= off {
					known[nt.Off] = nt.Value
				}
				if nt.Off == off {
					return nil
				}
			case nt.Off == off && hintC == nil:
				h := time.NewTimer(p.cfg.Policy.hintWait())
				defer h.Stop()
				hintC = h.C
			}
		case <-hintC:
			*read = true
			return nil
		case <-poll.C:
			*read = true
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
