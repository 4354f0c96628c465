package wormtx

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wormspace/wormspace/worm"
)

// TM is the transaction interface shared by WormTX's Coordinator and the
// two-phase-commit baseline (apps/wormtx/twopc), so one harness drives
// both and compares them. Implementations are safe for concurrent use;
// they copy participants and payload (the caller keeps ownership). Await
// may be called by the process that called Begin, once or more.
type TM interface {
	// Begin starts a transaction among participants (names) with an
	// application payload, and returns once every participant has been
	// asked to prepare. The transaction then reaches an outcome whether or
	// not the caller survives (WormTX) or only if the coordinator survives
	// (2PC).
	Begin(ctx context.Context, participants []string, payload []byte) (TxID, error)
	// Await blocks until the transaction's outcome is known to the caller
	// or ctx ends.
	Await(ctx context.Context, tx TxID) (Outcome, error)
}

// Resource is the application state a participant guards: it prepares
// (locks, validates) and later applies the outcome. Both WormTX's
// Participant and the 2PC baseline drive it.
//
// Calls for different transactions come concurrently, from several
// goroutines. For one transaction, Prepare (if called) happens before
// Apply, and the Outcome given to Apply is the same on every call. The
// Descriptor belongs to the caller: keep a copy of what is needed. An
// error from Prepare is reported and the transaction left to time out
// (WormTX) or voted no (2PC); an error from Apply stops the participant's
// handling of that transaction before it is acknowledged, so it is
// retried after a restart.
type Resource interface {
	// Prepare validates the transaction and returns the participant's
	// vote. A yes vote must make Apply(Commit) certain to succeed (hold
	// locks). Prepare must return the same vote for the same transaction
	// on every call, across restarts: record the vote durably before
	// returning it. (A participant is the only ballot-0 writer of its vote
	// register, and ballot 0 may carry one value only.) Prepare may be
	// called again after Apply for the same transaction (a duplicate
	// inbox entry seen after a restart): it must then return the recorded
	// vote and take nothing again.
	Prepare(ctx context.Context, tx TxID, d Descriptor) (yes bool, err error)
	// Apply applies the outcome (commit: make the prepared changes and
	// release; abort: release). It is idempotent, and must accept a
	// transaction Prepare never saw (an abort after a crash before
	// voting).
	Apply(ctx context.Context, tx TxID, o Outcome) error
}

// CrashPoint names a place where a demonstration or test makes a process
// stop as if it crashed.
type CrashPoint uint8

const (
	// CoordinatorAfterAlloc: the segment is allocated, no participant told.
	CoordinatorAfterAlloc CrashPoint = iota + 1
	// CoordinatorAfterPost: after telling some participants (the hook's
	// count says how many so far; Begin posts one by one when Crash is set).
	CoordinatorAfterPost
	// CoordinatorBeforeAwait: Begin completed; the coordinator dies before
	// learning the outcome (after some or all votes were cast).
	CoordinatorBeforeAwait
	// ParticipantBeforeVote: prepared (resources locked), vote not written.
	ParticipantBeforeVote
	// ParticipantAfterVote: vote written, outcome not applied.
	ParticipantAfterVote
)

var crashNames = [...]string{"", "coordinator-after-alloc", "coordinator-after-post", "coordinator-before-await", "participant-before-vote", "participant-after-vote"}

func (c CrashPoint) String() string {
	if int(c) < len(crashNames) && c != 0 {
		return crashNames[c]
	}
	return fmt.Sprintf("CrashPoint(%d)", uint8(c))
}

// CoordinatorConfig configures a Coordinator.
type CoordinatorConfig struct {
	// FirstSeg is the first candidate transaction segment. Begin allocates
	// FirstSeg, FirstSeg+1, ... and skips segments someone else won, so
	// coordinators may share a range; giving each its own range avoids
	// the skipped Allocs.
	FirstSeg uint64
	// Directory locates participants' inboxes. Nil: Begin posts nothing,
	// and the caller tells participants the TxID itself.
	Directory Directory
	// Policy is Await's recovery policy. Its Notify defaults to Directory.
	Policy Policy
	// Crash, when set, is asked at each coordinator crash point (count:
	// participants told so far); returning true makes the call stop there
	// with ErrCrashed. For demonstrations and tests.
	Crash func(p CrashPoint, count int) bool
	// AckTimeout bounds Await's background acknowledgement (0: 30s).
	AckTimeout time.Duration
	// Messenger, when set, is Begin's fast path (the direct mode): Begin
	// takes a segment allocated ahead of need (see Reserve), sends the
	// prepares straight to the participants, which run HandlePrepare
	// (their Resources must be Recoverable), and opens the listener Await
	// learns the votes from. Nothing is written on the way from Begin to
	// the votes. Directory is then only used by recoverers (Policy.Notify).
	Messenger Messenger
	// Reserve is how many segments the direct mode keeps allocated ahead
	// of need (0: 16). A reserved segment that is never used stays
	// allocated, like one whose coordinator died before telling anyone.
	Reserve int
	// Shared, with Messenger, puts many transactions in one segment:
	// each takes a slot of SlotWidth(n) registers of the coordinator's
	// current shared segment, which was allocated and subscribed to
	// ahead of need. Begin then allocates and subscribes to nothing, the
	// coordinator and each participant listen once per segment rather
	// than once per transaction, and the segment is trimmed once, by the
	// coordinator, after it moved on to the next segment and every
	// transaction begun in it was awaited and acknowledged by all its
	// participants. TxIDs are slot names (SlotTxID), so segments must not
	// exceed MaxSharedSegment. Reserve is unused. See shared.go for what
	// a coordinator crash leaves behind.
	Shared bool
	// SetSegments (with Shared) ties each shared segment to one
	// participant set: transactions among the same participants, in the
	// same order, share segments, and the segment's metadata names them.
	// Every slot of a segment then has the same layout, so participant
	// i's vote registers are every slot's i-th: what lets a participant
	// with a Restorable Resource vote without first making its prepare
	// durable (ParticipantConfig.Segments; see records.go). A coordinator
	// that begins transactions among many different sets keeps a segment
	// (and its listener) open per set.
	SetSegments bool
	// Trace, when set, receives the coordinator's stages of each
	// transaction (StageBegin, StagePrepareSent, StageOutcome).
	Trace TraceFunc
	// Logger; nil means slog.Default().
	Logger *slog.Logger
}

// Coordinator begins transactions: it allocates each transaction's segment
// with the descriptor as metadata and posts the transaction to every
// participant's inbox. It decides nothing: the outcome is a function of
// the votes, which anyone can compute. Safe for concurrent use.
type Coordinator struct {
	sp     worm.Space
	cfg    CoordinatorConfig
	next   atomic.Uint64
	cur    cursors
	bg     sync.WaitGroup // background acks, descriptor writes, reserve refills
	pool   *reservePool   // direct mode
	shared *sharedPool    // direct mode, shared segments
	// life ends with Close; closing is closed when Close starts.
	life    context.Context
	end     context.CancelFunc
	closing chan struct{}
	mu      sync.Mutex
	txs     map[TxID]Tx // begun and not yet awaited
	watches map[TxID]*watch
	acking  map[TxID]*watch // awaited, waiting for the participants' acks
}

var _ TM = (*Coordinator)(nil)

// NewCoordinator returns a coordinator working on sp.
func NewCoordinator(sp worm.Space, cfg CoordinatorConfig) *Coordinator {
	if cfg.Policy.Notify == nil {
		cfg.Policy.Notify = cfg.Directory
	}
	if cfg.Policy.Logger == nil {
		cfg.Policy.Logger = cfg.Logger
	}
	c := &Coordinator{sp: sp, cfg: cfg, txs: map[TxID]Tx{}, watches: map[TxID]*watch{}, acking: map[TxID]*watch{}, closing: make(chan struct{})}
	c.life, c.end = context.WithCancel(context.Background())
	c.cfg.Policy.hints = &c.cur
	c.next.Store(cfg.FirstSeg)
	if cfg.Messenger != nil && cfg.Shared {
		c.shared = newSharedPool()
		if !cfg.SetSegments {
			// Participant sets are not known before Begin; the single
			// line's first segment is.
			c.shared.mu.Lock()
			c.prefetchLocked(c.lineLocked(nil))
			c.shared.mu.Unlock()
		}
	} else if cfg.Messenger != nil {
		c.pool = newReservePool()
		c.pool.mu.Lock()
		c.refillLocked(0)
		c.pool.mu.Unlock()
	}
	return c
}

func (c *Coordinator) crash(p CrashPoint, n int) bool {
	return c.cfg.Crash != nil && c.cfg.Crash(p, n)
}

// Begin allocates a transaction segment whose metadata is the descriptor
// (participants, payload) and posts the transaction to each participant's
// inbox (concurrently). Errors: ErrInvalid, ErrCrashed, and Space errors
// once ctx ends. A Begin that fails after allocating leaves a transaction
// that anyone can resolve (to abort, since not every participant was told).
func (c *Coordinator) Begin(ctx context.Context, participants []string, payload []byte) (TxID, error) {
	if c.cfg.Trace == nil {
		return c.begin(ctx, participants, payload)
	}
	t0 := time.Now()
	id, err := c.begin(ctx, participants, payload)
	if id != 0 {
		c.cfg.Trace(id, StageBegin, t0)
	}
	return id, err
}

func (c *Coordinator) begin(ctx context.Context, participants []string, payload []byte) (TxID, error) {
	d := Descriptor{Participants: append([]string(nil), participants...), Payload: bytes.Clone(payload)}
	size := c.sp.SegmentSize()
	switch {
	case c.shared != nil:
		// A slot (the descriptor, then the canonical layout) before the
		// segment's descriptor index.
		if size <= indexRegs(size)+1 {
			return 0, fmt.Errorf("%w: segments of %d registers are too small to share", ErrInvalid, size)
		}
		size -= indexRegs(size) + 1
	case c.cfg.Messenger != nil:
		size-- // the last register holds the descriptor
	}
	if err := d.validate(size); err != nil {
		return 0, err
	}
	if c.cfg.Directory != nil {
		for _, p := range d.Participants {
			if _, err := c.cfg.Directory(p); err != nil {
				return 0, err
			}
		}
	}
	if c.shared != nil {
		return c.beginShared(ctx, d)
	}
	if c.cfg.Messenger != nil {
		return c.beginDirect(ctx, d)
	}
	meta := MarshalDescriptor(d)
	// Allocate the segment and capture an inbox position per participant
	// at once: the entries can only be written once the segment is ours,
	// but the captures do not depend on it, so a post then costs one
	// write.
	var claims []*claim
	var cwg sync.WaitGroup
	if c.cfg.Directory != nil {
		claims = make([]*claim, len(d.Participants))
		for i, p := range d.Participants {
			cwg.Go(func() {
				if cl, err := claimInbox(ctx, c.sp, c.cfg.Directory, &c.cur, p); err == nil {
					claims[i] = &cl
				}
			})
		}
	}
	id, err := c.alloc(ctx, meta)
	cwg.Wait()
	if err != nil {
		return 0, err
	}
	t := Tx{ID: id, Descriptor: d}
	c.mu.Lock()
	c.txs[id] = t
	c.mu.Unlock()
	if c.crash(CoordinatorAfterAlloc, 0) {
		return id, ErrCrashed
	}
	if c.cfg.Directory == nil {
		return id, nil
	}
	if c.cfg.Crash != nil {
		// One by one, so crash points fall between posts.
		for i, p := range d.Participants {
			if err := postTo(ctx, c.sp, c.cfg.Directory, &c.cur, p, t, claims[i]); err != nil {
				return id, err
			}
			if c.crash(CoordinatorAfterPost, i+1) {
				return id, ErrCrashed
			}
		}
		return id, nil
	}
	errs := make([]error, len(d.Participants))
	var wg sync.WaitGroup
	for i, p := range d.Participants {
		wg.Go(func() { errs[i] = postTo(ctx, c.sp, c.cfg.Directory, &c.cur, p, t, claims[i]) })
	}
	wg.Wait()
	c.cfg.Trace.emit(id, StagePrepareSent)
	return id, errors.Join(errs...)
}

// alloc allocates the next free transaction segment with meta.
func (c *Coordinator) alloc(ctx context.Context, meta []byte) (TxID, error) {
	seg := c.next.Add(1) - 1
	var b backoff
	for {
		info, err := c.sp.Alloc(ctx, seg, meta)
		switch {
		case err == nil && info.Won && bytes.Equal(info.Meta, meta):
			return TxID(seg), nil
		case err == nil || errors.Is(err, worm.ErrTrimmed):
			seg = c.next.Add(1) - 1 // someone else's segment
		case transient(ctx, err):
			// The Alloc may have taken effect: retrying the same segment
			// tells (the record then names us, with our meta).
			if werr := b.wait(ctx); werr != nil {
				return 0, fmt.Errorf("wormtx: alloc: %w", err)
			}
		default:
			return 0, fmt.Errorf("wormtx: alloc segment %d: %w", seg, err)
		}
	}
}

// Await resolves the transaction with the coordinator's Policy (after
// RecoverAfter it recovers missing votes itself) and returns the outcome.
// In the background it then records what it learned in the coordinator
// ack register and trims the segment if every participant has
// acknowledged (bounded by AckTimeout; Close waits for it). Errors: as
// (Tx).Resolve; ErrCrashed.
func (c *Coordinator) Await(ctx context.Context, id TxID) (Outcome, error) {
	o, err := c.await(ctx, id)
	if err == nil {
		c.cfg.Trace.emit(id, StageOutcome)
	}
	return o, err
}

func (c *Coordinator) await(ctx context.Context, id TxID) (Outcome, error) {
	c.mu.Lock()
	t, ok := c.txs[id]
	w := c.watches[id]
	c.mu.Unlock()
	if w != nil {
		if c.crash(CoordinatorBeforeAwait, len(t.Participants)) {
			return Pending, ErrCrashed
		}
		if w.seg != nil {
			return c.awaitShared(ctx, t, w)
		}
		return c.awaitDirect(ctx, t, w)
	}
	if !ok {
		var err error
		if t, err = Open(ctx, c.sp, id); err != nil {
			return Pending, err
		}
	}
	if c.crash(CoordinatorBeforeAwait, len(t.Participants)) {
		return Pending, ErrCrashed
	}
	o, err := t.Resolve(ctx, c.sp, c.cfg.Policy)
	if err != nil {
		return o, err
	}
	c.mu.Lock()
	delete(c.txs, id)
	c.mu.Unlock()
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.ackTimeout())
	c.bg.Go(func() {
		defer cancel()
		if _, err := writeOwn(actx, c.sp, t.coordAckAddr(), outcomeValue(o), valAbandon); err != nil {
			if !errors.Is(err, worm.ErrTrimmed) {
				c.logger().Warn("wormtx: coordinator ack", "tx", id, "err", err)
			}
			return
		}
		if err := t.collect(actx, c.sp); err != nil {
			c.logger().Warn("wormtx: collect", "tx", id, "err", err)
		}
	})
	return o, nil
}

func (c *Coordinator) ackTimeout() time.Duration {
	if c.cfg.AckTimeout <= 0 {
		return 30 * time.Second
	}
	return c.cfg.AckTimeout
}

// Close waits for the background acknowledgements of Await (those still
// waiting for participants' acks on a listener read them instead) and
// stops the listeners of transactions never awaited. It does not close
// the Space.
func (c *Coordinator) Close() error {
	c.mu.Lock()
	select {
	case <-c.closing:
	default:
		close(c.closing)
	}
	for id, w := range c.watches {
		w.cancel()
		delete(c.watches, id)
	}
	c.mu.Unlock()
	c.bg.Wait()
	if c.shared != nil {
		c.shared.mu.Lock()
		for _, l := range c.shared.lines {
			if s := l.cur; s != nil {
				s.l.cancel()
			}
		}
		c.shared.mu.Unlock()
	}
	if c.pool != nil {
		c.pool.mu.Lock()
		for _, r := range c.pool.ready {
			r.cancel()
		}
		c.pool.ready = nil
		c.pool.mu.Unlock()
	}
	c.end()
	return nil
}

func (c *Coordinator) logger() *slog.Logger {
	if c.cfg.Logger == nil {
		return slog.Default()
	}
	return c.cfg.Logger
}

// collect trims the segment when every ack register (participants' and
// coordinator's) is written. Every acker calls it right after writing its
// own ack; since registers are linearizable, the last acker to write sees
// all the others' acks, so some acker always trims.
//
// A transaction in a shared segment is never trimmed this way: the
// segment holds other transactions, and only its coordinator, which
// knows them all, trims it (see CoordinatorConfig.Shared).
func (t Tx) collect(ctx context.Context, sp worm.Space) error {
	if t.ID.Shared() {
		return nil
	}
	done, err := t.acked(ctx, sp)
	if err != nil || !done {
		return err
	}
	if err := sp.Trim(ctx, uint64(t.ID)); err != nil && !errors.Is(err, worm.ErrTrimmed) {
		return fmt.Errorf("wormtx: %v: trim: %w", t.ID, err)
	}
	return nil
}

// acked reports whether every ack register is written (false, nil when the
// segment is already trimmed: someone else collected it).
func (t Tx) acked(ctx context.Context, sp worm.Space) (bool, error) {
	addrs := []worm.Addr{t.coordAckAddr()}
	for i := range t.Participants {
		addrs = append(addrs, t.ackAddr(i))
	}
	vals, err := readAll(ctx, sp, addrs)
	if errors.Is(err, worm.ErrTrimmed) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	for _, v := range vals {
		if v == nil {
			return false, nil
		}
	}
	return true, nil
}
