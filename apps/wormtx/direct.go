package wormtx

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/wormspace/wormspace/worm"
)

// Messenger carries a transaction's prepare from the coordinator straight
// to a participant: the fast path of Begin (CoordinatorConfig.Messenger).
// The receiving end calls (*Participant).HandlePrepare with the Tx.
//
// SendPrepare should hand the message off and return without waiting
// for its delivery (one-way messages, like 2PC's): Begin sends a
// transaction's prepares one after the other, so a SendPrepare that waits
// delays the next participant's prepare. An error means the message was
// certainly not sent. A lost prepare costs nothing but the vote, which
// recovery then fills with no. Safe for concurrent use; t belongs to the
// caller.
type Messenger interface {
	SendPrepare(ctx context.Context, participant string, t Tx) error
}

// Recoverable is a Resource that can list what it prepared and has not
// applied. A participant that takes prepares directly (HandlePrepare)
// votes without its inbox recording the transaction first, so after a
// restart it learns of its prepared transactions from the Resource.
//
// Prepared returns every transaction for which Prepare returned (the
// vote recorded durably, as Prepare's contract requires) and Apply has
// not completed, with the descriptor given to Prepare. The Tx values
// belong to the caller.
type Recoverable interface {
	Resource
	Prepared(ctx context.Context) ([]Tx, error)
}

// Reserved transaction segments. In the direct mode a coordinator
// allocates segments ahead of need with a reservation as metadata (the
// descriptor is not known yet) and writes the descriptor into the
// segment's last register when it begins the transaction there.
const reserveMagic = "wtx-seg:"

// descAddr is where a reserved segment holds its descriptor.
func (t Tx) descAddr(segSize uint32) worm.Addr {
	if t.ID.Shared() {
		return t.sharedDescAddr()
	}
	return worm.Addr{Seg: uint64(t.ID), Off: segSize - 1}
}

// defaultReserve is the number of segments a direct-mode coordinator keeps
// allocated ahead of need when CoordinatorConfig.Reserve is zero: enough
// for a burst of concurrent Begins while the pool refills (one Alloc, two
// round trips, per segment).
const defaultReserve = 16

// reservePool hands out segments the coordinator won ahead of need and
// refills itself in the background.
type reservePool struct {
	mu         sync.Mutex
	ready      []reserved
	filling    int // refillers running
	allocating int // segments being allocated
	waiters    []chan struct{}
	err        error // the last refill failure, for a Begin that waited
	meta       []byte
}

// reserved is a segment won ahead of need, with the coordinator's
// listener on it already subscribed (so that Begin sends the prepares to
// a segment whose every vote the coordinator will hear).
type reserved struct {
	seg    uint64
	ready  <-chan listening
	cancel context.CancelFunc
}

func newReservePool() *reservePool {
	var nonce [8]byte
	_, _ = rand.Read(nonce[:])
	return &reservePool{meta: []byte(reserveMagic + hex.EncodeToString(nonce[:]))}
}

// takeReserved returns a reserved segment, waiting for the refill when
// none is ready, and starts a refill when the pool runs low.
func (c *Coordinator) takeReserved(ctx context.Context) (reserved, error) {
	p := c.pool
	for {
		p.mu.Lock()
		if n := len(p.ready); n > 0 {
			r := p.ready[0]
			p.ready[0] = reserved{}
			p.ready = p.ready[1:]
			c.refillLocked(n - 1)
			p.mu.Unlock()
			return r, nil
		}
		c.refillLocked(0)
		w := make(chan struct{})
		p.waiters = append(p.waiters, w)
		p.mu.Unlock()
		select {
		case <-w:
		case <-ctx.Done():
			p.mu.Lock()
			err := p.err
			p.mu.Unlock()
			if err != nil {
				return reserved{}, fmt.Errorf("wormtx: reserve a segment: %w", err)
			}
			return reserved{}, fmt.Errorf("wormtx: reserve a segment: %w", ctx.Err())
		}
	}
}

// refillLocked starts a background refill when fewer than half the
// reserve are ready: refillers, each allocating a segment and
// subscribing to it at a time, until the reserve is full. p.mu is held.
func (c *Coordinator) refillLocked(have int) {
	p := c.pool
	want := c.reserve()
	if p.filling > 0 || have >= (want+1)/2 {
		return
	}
	p.filling = min(want-have, refillers)
	for range p.filling {
		c.bg.Go(func() { c.refill(want) })
	}
}

// refillers bounds the segments allocated at once: enough to refill in a
// few round trips, without flooding the wormservers.
const refillers = 8

func (c *Coordinator) refill(want int) {
	p := c.pool
	ctx, cancel := context.WithTimeout(c.life, c.ackTimeout())
	defer cancel()
	for {
		p.mu.Lock()
		if len(p.ready)+p.allocating >= want || ctx.Err() != nil {
			p.filling--
			if p.filling == 0 {
				for _, w := range p.waiters {
					close(w)
				}
				p.waiters = nil
			}
			p.mu.Unlock()
			return
		}
		p.allocating++
		p.mu.Unlock()
		seg, err := c.alloc(ctx, p.meta)
		var r reserved
		if err == nil {
			lctx, lcancel := context.WithCancel(c.life)
			r = reserved{seg: uint64(seg), ready: listenAsync(lctx, c.sp, uint64(seg)), cancel: lcancel}
			// Wait for the subscription: a segment is handed out only
			// once its listener hears every write.
			l := <-r.ready
			ch := make(chan listening, 1)
			ch <- l
			r.ready = ch
		}
		p.mu.Lock()
		p.allocating--
		if err != nil {
			p.err = err
		} else {
			p.ready = append(p.ready, r)
			p.err = nil
		}
		for _, w := range p.waiters {
			close(w)
		}
		p.waiters = nil
		p.mu.Unlock()
		if err != nil && ctx.Err() == nil {
			c.logger().Warn("wormtx: reserving a segment", "err", err)
			var b backoff
			_ = b.wait(ctx)
		}
	}
}

func (c *Coordinator) reserve() int {
	if c.cfg.Reserve <= 0 {
		return defaultReserve
	}
	return c.cfg.Reserve
}

// watch is the coordinator's listener on a transaction it began directly,
// opened by Begin so that Await learns the votes from notifications.
type watch struct {
	tx     Tx
	ready  <-chan listening
	cancel context.CancelFunc
	acks   *ackTracker
	// In a shared segment (ready is then nil): the segment and the
	// slot's subscription on its listener (nil if the listener had died).
	seg *sharedSeg
	sub *slotSub
}

// ackTracker records which ack registers a listener saw chosen.
type ackTracker struct {
	mu   sync.Mutex
	n    int
	seen map[uint32]bool
	more chan struct{} // capacity 1: "seen grew"
}

func newAckTracker(n int) *ackTracker {
	return &ackTracker{n: n, seen: map[uint32]bool{}, more: make(chan struct{}, 1)}
}

// observe records a chosen notification of an ack register, nt.Off
// being its canonical index (see Tx.canon), or an acknowledgement by
// message, which Acked turns into one.
func (a *ackTracker) observe(nt worm.Notification) {
	if int(nt.Off) < a.n && nt.Chosen && bytes.Equal(nt.Value, valFenced) {
		// A participant's own fence of its vote (records.go) is its
		// acknowledgement too: it has nothing to apply.
		nt.Off += uint32(a.n + 1)
	}
	if int(nt.Off) > a.n && int(nt.Off) <= 2*a.n+1 {
		a.mu.Lock()
		a.seen[nt.Off] = true
		a.mu.Unlock()
		select {
		case a.more <- struct{}{}:
		default:
		}
	}
}

// has reports whether canonical index k was seen.
func (a *ackTracker) has(k int) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.seen[uint32(k)]
}

// all reports whether every ack register (participants' and the
// coordinator's) was seen chosen.
func (a *ackTracker) all() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.seen) == a.n+1
}

// beginDirect is Begin's fast path: a reserved segment, the prepares sent
// straight to the participants, and the coordinator's listener opened at
// once; the descriptor is written into the segment meanwhile.
func (c *Coordinator) beginDirect(ctx context.Context, d Descriptor) (TxID, error) {
	r, err := c.takeReserved(ctx)
	if err != nil {
		return 0, err
	}
	t := Tx{ID: TxID(r.seg), Descriptor: d}
	w := &watch{tx: t, ready: r.ready, cancel: r.cancel, acks: newAckTracker(t.n())}
	c.mu.Lock()
	c.txs[t.ID] = t
	c.watches[t.ID] = w
	c.mu.Unlock()
	if c.crash(CoordinatorAfterAlloc, 0) {
		return t.ID, ErrCrashed
	}
	err = c.sendPrepares(ctx, t)
	c.cfg.Trace.emit(t.ID, StagePrepareSent)
	return t.ID, err
}

// awaitDirect resolves a transaction begun by beginDirect from the
// listener Begin opened, then acknowledges it and, once its listener saw
// every participant's ack, trims it.
func (c *Coordinator) awaitDirect(ctx context.Context, t Tx, w *watch) (Outcome, error) {
	var l listening
	select {
	case l = <-w.ready:
	case <-ctx.Done():
		return Pending, fmt.Errorf("wormtx: %v: outcome unknown: %w", t.ID, ctx.Err())
	}
	opt := resolveOpts{notes: l.ch, fresh: l.err == nil, observe: w.acks.observe}
	o, err := t.resolve(ctx, c.sp, c.cfg.Policy, opt)
	if err != nil {
		return o, err
	}
	c.mu.Lock()
	delete(c.txs, t.ID)
	delete(c.watches, t.ID)
	c.acking[t.ID] = w
	c.mu.Unlock()
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.ackTimeout())
	c.bg.Go(func() {
		defer cancel()
		defer w.cancel()
		defer func() {
			c.mu.Lock()
			delete(c.acking, t.ID)
			c.mu.Unlock()
		}()
		// The descriptor, for observers that know only the TxID (Open),
		// written once the outcome is known so that it stays off the
		// transaction's critical path. Participants that recover votes
		// settle it too (the coordinator may die first).
		desc := MarshalDescriptor(t.Descriptor)
		if _, err := writeOwn(actx, c.sp, t.descAddr(c.sp.SegmentSize()), desc, desc); err != nil && !errors.Is(err, worm.ErrTrimmed) {
			c.logger().Warn("wormtx: writing the descriptor", "tx", t.ID, "err", err)
		}
		if _, err := writeOwn(actx, c.sp, t.coordAckAddr(), outcomeValue(o), valAbandon); err != nil {
			if !errors.Is(err, worm.ErrTrimmed) {
				c.logger().Warn("wormtx: coordinator ack", "tx", t.ID, "err", err)
			}
			return
		}
		w.acks.observe(worm.Notification{Off: uint32(2*t.n() + 1), Chosen: true})
		// Wait for the participants' acks, by message (Acked) or on the
		// listener; read them only if it ends (or tells that it missed
		// some).
		notes := l.ch
		if l.err != nil {
			notes = nil
		}
	wait:
		for !w.acks.all() {
			select {
			case nt, ok := <-notes:
				if ok && nt.Chosen {
					if k, in := t.canon(nt.Off); in {
						nt.Off = uint32(k)
						w.acks.observe(nt)
					}
					continue
				}
				if ok && !nt.Lost {
					continue
				}
				if notes == nil {
					continue
				}
				break wait
			case <-w.acks.more:
			case <-c.closing:
				break wait
			case <-actx.Done():
				return
			}
		}
		if w.acks.all() {
			if err := c.sp.Trim(actx, uint64(t.ID)); err != nil && !errors.Is(err, worm.ErrTrimmed) {
				c.logger().Warn("wormtx: collect", "tx", t.ID, "err", err)
			}
			return
		}
		if err := t.collect(actx, c.sp); err != nil {
			c.logger().Warn("wormtx: collect", "tx", t.ID, "err", err)
		}
	})
	return o, nil
}

// HandlePrepare runs the participant's part in a transaction whose
// prepare came straight from its coordinator (Messenger): it subscribes
// to the transaction's segment while it prepares res and votes, learns
// the outcome from the notifications (recovering missing votes after
// Policy.RecoverAfter), applies it and acknowledges. Collection is left
// to the coordinator; if the segment is still there after AbandonAfter
// (the coordinator died), the participant collects it as Ack does.
//
// res must be Recoverable: the inbox does not record a transaction
// prepared this way, so a participant that restarts learns of it from
// res (Run does this). Errors: as Handle.
func (p *Participant) HandlePrepare(ctx context.Context, t Tx, res Recoverable) (Outcome, error) {
	if t.ID.Shared() {
		return p.handlePrepareShared(ctx, t, res)
	}
	i, err := p.index(t)
	if err != nil {
		return Pending, err
	}
	// The coordinator allocated the segment before it sent the prepare:
	// a Space that checks allocation before an unsafe write need not.
	if h, ok := p.sp.(allocHinter); ok {
		h.AssumeAllocated(uint64(t.ID))
	}
	p.cfg.Trace.emit(t.ID, StagePrepareStart)
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ready := listenAsync(lctx, p.sp, uint64(t.ID))
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
	var l listening
	select {
	case l = <-ready:
	case <-ctx.Done():
		return Pending, fmt.Errorf("wormtx: %v: outcome unknown: %w", t.ID, ctx.Err())
	}
	opt := resolveOpts{notes: l.ch, fresh: l.err == nil}
	pol := p.cfg.Policy
	pol.recoverHook = func(rctx context.Context) {
		// The coordinator may have died before the descriptor landed:
		// observers that know only the TxID need it.
		if _, err := Settle(rctx, p.sp, t.descAddr(p.sp.SegmentSize()), MarshalDescriptor(t.Descriptor)); err != nil && !errors.Is(err, worm.ErrTrimmed) {
			p.log.Warn("wormtx: settling the descriptor", "tx", t.ID, "err", err)
		}
	}
	o, err := t.resolve(ctx, p.sp, pol, opt)
	if err != nil {
		return Pending, err
	}
	p.cfg.Trace.emit(t.ID, StageOutcome)
	if err := res.Apply(ctx, t.ID, o); err != nil {
		return o, fmt.Errorf("wormtx: %v: apply %v: %w", t.ID, o, err)
	}
	p.cfg.Trace.emit(t.ID, StageApplied)
	acked := false
	if p.cfg.SendAck != nil {
		if err := p.cfg.SendAck(ctx, t, o); err == nil {
			acked = true
		} else {
			p.log.Debug("wormtx: ack message not sent; writing the ack register", "tx", t.ID, "err", err)
		}
	}
	if !acked {
		if err := p.writeAck(ctx, t, i, o); err != nil {
			if errors.Is(err, worm.ErrTrimmed) {
				return o, nil
			}
			return o, err
		}
	}
	if p.cfg.AbandonAfter >= 0 {
		p.later.add(time.Now().Add(p.cfg.AbandonAfter), func(ctx context.Context) {
			if _, err := p.sp.Check(ctx, uint64(t.ID)); errors.Is(err, worm.ErrTrimmed) {
				return // collected by the coordinator
			}
			if acked {
				// The coordinator did not collect: it may be dead. Ack
				// in the register, where every collector looks.
				if err := p.writeAck(ctx, t, i, o); err != nil {
					if !errors.Is(err, worm.ErrTrimmed) {
						p.log.Warn("wormtx: ack", "tx", t.ID, "err", err)
					}
					return
				}
			}
			if err := t.collect(ctx, p.sp); err != nil {
				p.log.Warn("wormtx: collect", "tx", t.ID, "err", err)
				return
			}
			if err := p.abandonCoordinator(ctx, t); err != nil {
				p.log.Warn("wormtx: collect", "tx", t.ID, "err", err)
			}
		})
	}
	if o == Abort {
		return o, p.completeVotes(ctx, t)
	}
	return o, nil
}

// writeAck writes participant i's ack register with o.
func (p *Participant) writeAck(ctx context.Context, t Tx, i int, o Outcome) error {
	a, err := writeOwn(ctx, p.sp, t.ackAddr(i), outcomeValue(o), outcomeValue(o))
	if err != nil {
		return fmt.Errorf("wormtx: %v: ack of %q: %w", t.ID, p.name, err)
	}
	if got, err := parseOutcome(a); err != nil || got != o {
		return fmt.Errorf("%w: %v: ack of %q holds %q, applied %v", ErrInconsistent, t.ID, p.name, a, o)
	}
	return nil
}

// Acked records participant's acknowledgement of transaction id sent as
// a message (ParticipantConfig.SendAck at the participant): the
// coordinator trims the segment once it knows the outcome and has every
// participant's acknowledgement, by message or in its ack register.
// Acknowledgements of transactions the coordinator is not watching (not
// begun by this Coordinator in the direct mode, or collected) are
// ignored.
func (c *Coordinator) Acked(id TxID, participant string) {
	c.mu.Lock()
	w := c.watches[id]
	if w == nil {
		w = c.acking[id]
	}
	c.mu.Unlock()
	if w == nil {
		return
	}
	if i := w.tx.Index(participant); i >= 0 {
		t := w.tx
		w.acks.observe(worm.Notification{Off: uint32(t.n() + 1 + i), Chosen: true})
	}
}

// laterQueue runs deferred checks in deadline order from one goroutine,
// which exits when the queue is empty. Deadlines are added in
// nondecreasing order (now + a constant), so a FIFO is a deadline queue.
type laterQueue struct {
	mu      sync.Mutex
	q       []laterItem
	running bool
}

type laterItem struct {
	at time.Time
	f  func(context.Context)
}

// add queues f to run at (or after) at.
func (lq *laterQueue) add(at time.Time, f func(context.Context)) {
	lq.mu.Lock()
	lq.q = append(lq.q, laterItem{at, f})
	start := !lq.running
	lq.running = true
	lq.mu.Unlock()
	if start {
		go lq.run()
	}
}

func (lq *laterQueue) run() {
	for {
		lq.mu.Lock()
		if len(lq.q) == 0 {
			lq.running = false
			lq.mu.Unlock()
			return
		}
		it := lq.q[0]
		lq.mu.Unlock()
		if d := time.Until(it.at); d > 0 {
			time.Sleep(d)
		}
		lq.mu.Lock()
		lq.q[0] = laterItem{}
		lq.q = lq.q[1:]
		lq.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		it.f(ctx)
		cancel()
	}
}

// openReserved reads the descriptor of a reserved segment.
func openReserved(ctx context.Context, sp worm.Space, id TxID) (Tx, error) {
	t := Tx{ID: id}
	v, err := readOpt(ctx, sp, t.descAddr(sp.SegmentSize()))
	if err != nil {
		return Tx{}, fmt.Errorf("wormtx: %v: %w", id, err)
	}
	if v == nil {
		return Tx{}, fmt.Errorf("wormtx: %v: reserved, not begun (no descriptor yet): %w", id, worm.ErrUnallocated)
	}
	d, err := UnmarshalDescriptor(v)
	if err != nil {
		return Tx{}, fmt.Errorf("wormtx: %v: %w", id, err)
	}
	t.Descriptor = d
	return t, nil
}

func isReservation(meta []byte) bool { return bytes.HasPrefix(meta, []byte(reserveMagic)) }

// allocHinter is implemented by Spaces that check a segment's allocation
// before their first unsafe write into it (worm/client): told that the
// segment is allocated, they skip that round trip.
type allocHinter interface{ AssumeAllocated(seg uint64) }
