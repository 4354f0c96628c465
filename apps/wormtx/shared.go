package wormtx

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/wormspace/wormspace/worm"
)

// Shared segments (CoordinatorConfig.Shared): the direct mode with many
// transactions per segment. The coordinator owns its shared segments: it
// allocates them ahead of need, subscribes to each once, hands out slots
// in order, and trims a segment once it has moved on from it and every
// transaction begun in it is complete (its outcome known to the
// coordinator, every participant's acknowledgement received, its
// descriptor written). Nobody else trims a shared segment: it holds
// transactions a participant knows nothing of.
//
// Slot layout (SlotWidth(n) = 2n+3 registers from the slot's offset b):
//
//	b             the descriptor, when a recoverer settled it (the
//	              coordinator does not write it: see the index below)
//	b+1 .. b+2n+2 the canonical layout: votes, decision, acks,
//	              coordinator ack (unused: the coordinator trims)
//
// The last indexRegs(SegmentSize) registers of a shared segment are its descriptor
// index, for observers that know only a TxID (Open): the coordinator
// writes the descriptors of its transactions there in batches, off the
// critical path (one write per descBatch transactions, or when the
// coordinator has been idle for descIdle, or when it moves on to the
// next segment; the last index register is kept for that final batch).
// Slots use the registers before the index.
//
// The outcome rules are those of a segment of its own: the slot's vote
// registers are the decision, recovery captures missing votes, and every
// observer computes the same outcome.

const sharedMagic = "wtx-shared:"

// Descriptor index of a shared segment.
const (
	descIdle   = 50 * time.Millisecond
	descMagic2 = "wtxd"
)

// indexRegs is the size of a shared segment's descriptor index: an
// eighth of the segment, between 2 and 16 registers.
func indexRegs(segSize uint32) uint32 { return min(16, max(2, segSize/8)) }

// SlotsPerSegment is how many transactions of n participants a shared
// segment of segSize registers holds.
func SlotsPerSegment(segSize uint32, n int) int {
	if segSize <= indexRegs(segSize) {
		return 0
	}
	return int((segSize - indexRegs(segSize)) / SlotWidth(n))
}

// sharedSeg is one of the coordinator's shared segments.
type sharedSeg struct {
	seg     uint64
	l       *segListener
	next    uint32 // first free register
	closed  bool   // the coordinator moved on: no more slots here
	open    int    // slots begun and not complete
	trimmed bool
	// Descriptors of begun transactions not yet written to the index,
	// and the index registers used so far.
	descs   []byte
	ndescs  int
	indexed int
	idle    *time.Timer
}

// segFuture is a shared segment being allocated and subscribed to.
type segFuture struct {
	done chan struct{}
	s    *sharedSeg
	err  error
}

// sharedPool is the coordinator's shared segments: per segment line (one
// line, or one per participant set with CoordinatorConfig.SetSegments),
// the current segment and the next one, allocated (and subscribed to) as
// soon as the current one is taken.
type sharedPool struct {
	mu    sync.Mutex
	nonce string
	lines map[string]*segLine
}

// segLine is one run of shared segments: the current one and the next.
type segLine struct {
	cur   *sharedSeg
	ahead *segFuture
	meta  []byte
}

func newSharedPool() *sharedPool {
	var nonce [8]byte
	_, _ = rand.Read(nonce[:])
	return &sharedPool{nonce: hex.EncodeToString(nonce[:]), lines: map[string]*segLine{}}
}

// lineLocked returns the segment line for a transaction among
// participants: the only one, or the participant set's with
// SetSegments. c.shared.mu is held.
func (c *Coordinator) lineLocked(participants []string) *segLine {
	p := c.shared
	key := ""
	if c.cfg.SetSegments {
		key = string(MarshalDescriptor(Descriptor{Participants: participants}))
	}
	if l := p.lines[key]; l != nil {
		return l
	}
	l := &segLine{meta: []byte(sharedMagic + p.nonce)}
	if c.cfg.SetSegments {
		l.meta = setSegmentMeta(p.nonce, participants)
	}
	p.lines[key] = l
	return l
}

// prefetchLocked starts allocating the line's next shared segment unless
// it is under way. c.shared.mu is held.
func (c *Coordinator) prefetchLocked(p *segLine) *segFuture {
	if p.ahead != nil {
		return p.ahead
	}
	f := &segFuture{done: make(chan struct{})}
	p.ahead = f
	c.bg.Go(func() {
		defer close(f.done)
		ctx, cancel := context.WithTimeout(c.life, c.ackTimeout())
		defer cancel()
		seg, err := c.alloc(ctx, p.meta)
		if err == nil && uint64(seg) > MaxSharedSegment {
			err = fmt.Errorf("%w: segment %d is beyond MaxSharedSegment", ErrInvalid, seg)
		}
		if err != nil {
			f.err = err
			return
		}
		// Subscribed before any slot is handed out: every vote written
		// in the segment is heard.
		l := startSegListener(c.life, c.sp, uint64(seg), c.sp.SegmentSize()-indexRegs(c.sp.SegmentSize()))
		select {
		case <-l.ready:
		case <-ctx.Done():
		}
		if ctx.Err() != nil || l.err != nil {
			l.cancel()
			f.err = fmt.Errorf("wormtx: listen on shared segment %d: %w", seg, errors.Join(l.err, ctx.Err()))
			return
		}
		f.s = &sharedSeg{seg: uint64(seg), l: l}
	})
	return f
}

// takeSlot reserves width registers of the current shared segment for a
// new transaction, moving to the segment allocated ahead when the current
// one is full.
func (c *Coordinator) takeSlot(ctx context.Context, participants []string) (*sharedSeg, uint32, error) {
	width := SlotWidth(len(participants))
	size := c.sp.SegmentSize() - indexRegs(c.sp.SegmentSize())
	var b backoff
	c.shared.mu.Lock()
	p := c.lineLocked(participants)
	c.shared.mu.Unlock()
	for {
		c.shared.mu.Lock()
		if s := p.cur; s != nil && !s.closed && s.next+width <= size {
			base := s.next
			// A participant that votes with records fences every
			// unresolved vote register of its own after a restart,
			// slots not yet handed out included: a slot with anything
			// chosen is not a fresh one, and neither are those after
			// it. Move on to the next segment.
			if !c.cfg.SetSegments || !s.l.chosenFrom(base) {
				s.next += width
				s.open++
				c.shared.mu.Unlock()
				return s, base, nil
			}
			c.logger().Info("wormtx: shared segment fenced by a restarted participant; moving on", "seg", s.seg, "slot", base)
		}
		if s := p.cur; s != nil && !s.closed {
			s.closed = true
			c.flushDescsLocked(s)
			c.maybeTrimLocked(s)
		}
		f := c.prefetchLocked(p)
		c.shared.mu.Unlock()
		select {
		case <-f.done:
		case <-ctx.Done():
			return nil, 0, fmt.Errorf("wormtx: allocate a shared segment: %w", ctx.Err())
		}
		c.shared.mu.Lock()
		if p.ahead == f {
			p.ahead = nil
			if f.err == nil {
				p.cur = f.s
				// The next one at once: a segment lasts a moment at
				// thousands of transactions a second, and an Alloc
				// slowed by a busy machine must not stall Begin.
				c.prefetchLocked(p)
			}
		}
		c.shared.mu.Unlock()
		if f.err != nil {
			if errors.Is(f.err, ErrInvalid) {
				return nil, 0, f.err
			}
			c.logger().Warn("wormtx: allocating a shared segment", "err", f.err)
			if err := b.wait(ctx); err != nil {
				return nil, 0, fmt.Errorf("wormtx: allocate a shared segment: %w", f.err)
			}
		}
	}
}

// segmentAhead is the shared segment allocated ahead for the line of
// participants, once its allocation is done (Tx.NextSegment), else 0.
func (c *Coordinator) segmentAhead(participants []string) uint64 {
	c.shared.mu.Lock()
	defer c.shared.mu.Unlock()
	f := c.lineLocked(participants).ahead
	if f == nil {
		return 0
	}
	select {
	case <-f.done:
		if f.err == nil && f.s != nil {
			return f.s.seg
		}
	default:
	}
	return 0
}

// slotDone records that one transaction of s is complete.
func (c *Coordinator) slotDone(s *sharedSeg) {
	c.shared.mu.Lock()
	defer c.shared.mu.Unlock()
	s.open--
	c.maybeTrimLocked(s)
}

// maybeTrimLocked trims s in the background once the coordinator moved on
// from it and every transaction in it is complete. c.shared.mu is held.
func (c *Coordinator) maybeTrimLocked(s *sharedSeg) {
	if !s.closed || s.open > 0 || s.trimmed {
		return
	}
	s.trimmed = true
	c.bg.Go(func() {
		defer s.l.cancel()
		ctx, cancel := context.WithTimeout(c.life, c.ackTimeout())
		defer cancel()
		var b backoff
		for {
			err := c.sp.Trim(ctx, s.seg)
			if err == nil || errors.Is(err, worm.ErrTrimmed) {
				return
			}
			if !transient(ctx, err) || b.wait(ctx) != nil {
				c.logger().Warn("wormtx: trim shared segment", "seg", s.seg, "err", err)
				return
			}
		}
	})
}

// beginShared is Begin in a shared segment: a slot of the current
// segment, whose listener already hears every write, and the prepares
// sent straight to the participants. Nothing is written or awaited on
// the way.
func (c *Coordinator) beginShared(ctx context.Context, d Descriptor) (TxID, error) {
	width := SlotWidth(len(d.Participants))
	s, base, err := c.takeSlot(ctx, d.Participants)
	if err != nil {
		return 0, err
	}
	t := Tx{ID: SlotTxID(s.seg, base), Descriptor: d, NextSegment: c.segmentAhead(d.Participants)}
	sub := s.l.subscribe(base, base+width-1, 0)
	w := &watch{tx: t, acks: newAckTracker(t.n()), seg: s, sub: sub}
	w.cancel = func() {
		if sub != nil {
			s.l.unsubscribe(sub)
		}
	}
	c.mu.Lock()
	c.txs[t.ID] = t
	c.watches[t.ID] = w
	c.mu.Unlock()
	if c.crash(CoordinatorAfterAlloc, 0) {
		return t.ID, ErrCrashed
	}
	err = c.sendPrepares(ctx, t)
	c.cfg.Trace.emit(t.ID, StagePrepareSent)
	c.addDesc(s, t)
	return t.ID, err
}

// addDesc queues t's descriptor for s's index, and writes a batch when
// enough are queued (or arms the idle flush).
func (c *Coordinator) addDesc(s *sharedSeg, t Tx) {
	c.shared.mu.Lock()
	defer c.shared.mu.Unlock()
	if s.trimmed {
		return
	}
	s.descs = binary.AppendUvarint(s.descs, uint64(t.ID.slotOff()))
	d := MarshalDescriptor(t.Descriptor)
	s.descs = binary.AppendUvarint(s.descs, uint64(len(d)))
	s.descs = append(s.descs, d...)
	s.ndescs++
	if s.closed {
		c.flushDescsLocked(s) // a Begin that raced with the move on
		return
	}
	if s.indexed >= int(indexRegs(c.sp.SegmentSize()))-1 {
		return // the last index register is the closing batch's
	}
	if s.ndescs >= c.descBatch() {
		c.flushDescsLocked(s)
		return
	}
	if s.idle == nil {
		s.idle = time.AfterFunc(descIdle, func() {
			c.shared.mu.Lock()
			defer c.shared.mu.Unlock()
			s.idle = nil
			if s.indexed < int(indexRegs(c.sp.SegmentSize()))-1 || s.closed {
				c.flushDescsLocked(s)
			}
		})
	}
}

// descBatch is how many descriptors a batch holds: enough that a full
// segment's batches fit in the index with registers to spare for idle
// flushes.
func (c *Coordinator) descBatch() int {
	half := int(indexRegs(c.sp.SegmentSize()) / 2)
	return max(1, (SlotsPerSegment(c.sp.SegmentSize(), 2)+half-1)/half)
}

// flushDescsLocked writes the queued descriptors of s into its next index
// register, in the background. c.shared.mu is held.
func (c *Coordinator) flushDescsLocked(s *sharedSeg) {
	if s.idle != nil {
		s.idle.Stop()
		s.idle = nil
	}
	size := c.sp.SegmentSize()
	if s.ndescs == 0 || s.trimmed || s.indexed >= int(indexRegs(size)) {
		return
	}
	select {
	case <-c.closing:
		return // Close waits for the background; start nothing more
	default:
	}
	val := append([]byte(descMagic2), s.descs...)
	addr := worm.Addr{Seg: s.seg, Off: size - indexRegs(size) + uint32(s.indexed)}
	s.indexed++
	s.descs, s.ndescs = nil, 0
	c.bg.Go(func() {
		ctx, cancel := context.WithTimeout(c.life, c.ackTimeout())
		defer cancel()
		if _, err := writeOwn(ctx, c.sp, addr, val, val); err != nil && !errors.Is(err, worm.ErrTrimmed) {
			c.logger().Warn("wormtx: writing descriptors", "at", addr, "err", err)
		}
	})
}

// openShared reads the descriptor of a transaction in a shared segment:
// from its slot (settled by a recoverer) or the segment's index.
func openShared(ctx context.Context, sp worm.Space, id TxID) (Tx, error) {
	t := Tx{ID: id}
	size := sp.SegmentSize()
	addrs := []worm.Addr{t.sharedDescAddr()}
	for i := range indexRegs(size) {
		addrs = append(addrs, worm.Addr{Seg: id.Segment(), Off: size - indexRegs(size) + i})
	}
	vals, err := readAll(ctx, sp, addrs)
	if err != nil {
		return Tx{}, fmt.Errorf("wormtx: %v: %w", id, err)
	}
	var desc []byte
	if vals[0] != nil {
		desc = vals[0]
	}
	for _, v := range vals[1:] {
		if desc != nil {
			break
		}
		if d, ok := findDesc(v, id.slotOff()); ok {
			desc = d
		}
	}
	if desc == nil {
		return Tx{}, fmt.Errorf("wormtx: %v: no descriptor recorded (not begun, or not yet indexed): %w", id, worm.ErrUnallocated)
	}
	d, err := UnmarshalDescriptor(desc)
	if err != nil {
		return Tx{}, fmt.Errorf("wormtx: %v: %w", id, err)
	}
	t.Descriptor = d
	return t, nil
}

// findDesc finds slot off's descriptor in an index register's value.
func findDesc(v []byte, off uint32) ([]byte, bool) {
	if !bytes.HasPrefix(v, []byte(descMagic2)) {
		return nil, false
	}
	v = v[len(descMagic2):]
	for len(v) > 0 {
		o, k := binary.Uvarint(v)
		if k <= 0 {
			return nil, false
		}
		v = v[k:]
		n, k := binary.Uvarint(v)
		if k <= 0 || n > uint64(len(v)-k) {
			return nil, false
		}
		d := v[k : k+int(n)]
		v = v[k+int(n):]
		if o == uint64(off) {
			return d, true
		}
	}
	return nil, false
}

// awaitShared learns the outcome of a transaction begun by beginShared
// from its slot's notifications; then, in the background, it waits for
// every participant's acknowledgement (by message, or in the ack
// register) and marks the slot complete, which lets the segment be
// trimmed.
func (c *Coordinator) awaitShared(ctx context.Context, t Tx, w *watch) (Outcome, error) {
	opt := resolveOpts{observe: w.acks.observe}
	if w.sub != nil {
		opt.notes, opt.fresh = w.sub.ch, true
	}
	o, err := t.resolve(ctx, c.sp, c.cfg.Policy, opt)
	if err != nil {
		return o, err
	}
	if o == Abort && c.cfg.SetSegments {
		// A participant's restart may have fenced this slot and those
		// after it without takeSlot hearing of it (a lost notification):
		// if so, hand out no more slots here. Before returning, so that
		// the caller's next Begin goes elsewhere. (Aborts only: a read.)
		c.closeIfFenced(ctx, w.seg, t)
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
		// The coordinator trims the segment itself: its own ack register
		// stays empty. (The descriptor went to the segment's index.)
		w.acks.observe(worm.Notification{Off: uint32(2*t.n() + 1), Chosen: true})
		var notes <-chan worm.Notification
		if w.sub != nil {
			notes = w.sub.ch
		}
		poll := time.NewTicker(c.cfg.Policy.poll())
		defer poll.Stop()
		for !w.acks.all() {
			read := false
			select {
			case nt, ok := <-notes:
				switch {
				case !ok:
					notes, read = nil, true
				case nt.Lost:
					read = true
				case nt.Chosen:
					if k, in := t.canon(nt.Off); in {
						nt.Off = uint32(k)
						w.acks.observe(nt)
					}
				}
			case <-poll.C:
				// Acks by message may be lost, and notifications too:
				// the ack registers tell.
				read = true
			case <-w.acks.more:
			case <-c.closing:
				return
			case <-actx.Done():
				c.logger().Warn("wormtx: not every participant acknowledged; the shared segment will not be trimmed", "tx", t.ID)
				return
			}
			if read {
				c.readAcks(actx, t, w.acks)
			}
		}
		c.slotDone(w.seg)
	})
	return o, nil
}

// closeIfFenced moves the coordinator off s when a vote of t (an aborted
// transaction of s) was fenced by its participant's restart.
func (c *Coordinator) closeIfFenced(ctx context.Context, s *sharedSeg, t Tx) {
	addrs := make([]worm.Addr, t.n())
	for i := range addrs {
		addrs[i] = t.voteAddr(i)
	}
	vals, _ := readAll(ctx, c.sp, addrs)
	if !slices.ContainsFunc(vals, func(v []byte) bool { return bytes.Equal(v, valFenced) }) {
		return
	}
	c.shared.mu.Lock()
	defer c.shared.mu.Unlock()
	if !s.closed {
		c.logger().Info("wormtx: shared segment fenced by a restarted participant; moving on", "seg", s.seg, "tx", t.ID)
		s.closed = true
		c.flushDescsLocked(s)
		c.maybeTrimLocked(s)
	}
}

// readAcks reads the ack registers of t that acks has not seen and
// records those written.
// (With set segments, a vote its participant fenced stands for its ack.)
func (c *Coordinator) readAcks(ctx context.Context, t Tx, acks *ackTracker) {
	var addrs []worm.Addr
	var idx []int
	for i := range t.Participants {
		k := t.n() + 1 + i
		if !acks.has(k) {
			addrs = append(addrs, t.at(k))
			idx = append(idx, k)
			if c.cfg.SetSegments {
				addrs = append(addrs, t.voteAddr(i))
				idx = append(idx, i)
			}
		}
	}
	vals, _ := readAll(ctx, c.sp, addrs)
	for j, v := range vals {
		if v != nil {
			acks.observe(worm.Notification{Off: uint32(idx[j]), Chosen: true, Value: v})
		}
	}
}

// sendPrepares sends t's prepares through the Messenger, one by one
// (crash points fall between them).
func (c *Coordinator) sendPrepares(ctx context.Context, t Tx) error {
	// One after the other: Messenger.SendPrepare hands a message off. A
	// goroutine per participant cost a wake-up of another thread each
	// (about 100 µs to the last prepare on an idle 2-vCPU machine, where
	// the sends themselves take a few µs).
	var errs []error
	for i, p := range t.Participants {
		if err := c.cfg.Messenger.SendPrepare(ctx, p, t); err != nil {
			errs = append(errs, fmt.Errorf("wormtx: %v: prepare %q: %w", t.ID, p, err))
		}
		if c.cfg.Crash != nil && c.crash(CoordinatorAfterPost, i+1) {
			return ErrCrashed
		}
	}
	return errors.Join(errs...)
}

// handlePrepareShared is HandlePrepare for a transaction in a shared
// segment: the participant's listener on the segment is shared by its
// transactions there (opened by the first), so the prepare costs it the
// vote write and nothing else on the way to the outcome. The
// acknowledgement goes by message (SendAck) or into the ack register;
// collection is the coordinator's.
func (p *Participant) handlePrepareShared(ctx context.Context, t Tx, res Recoverable) (Outcome, error) {
	i, err := p.index(t)
	if err != nil {
		return Pending, err
	}
	if h, ok := p.sp.(allocHinter); ok {
		h.AssumeAllocated(t.segment())
	}
	p.cfg.Trace.emit(t.ID, StagePrepareStart)
	p.recordAhead(t, res)
	b := t.ID.slotOff()
	l, sub := p.listeners.subscribe(p.sp, t.segment(), b, b+SlotWidth(t.n())-1)
	defer l.unsubscribe(sub)
	// With a Restorable Resource in a set segment, the vote carries the
	// prepare record and Prepare's durability is not waited for.
	rs, recording := res.(Restorable)
	if recording && p.cfg.Segments != nil {
		select {
		case <-p.restored:
		case <-ctx.Done():
			return Pending, fmt.Errorf("wormtx: %v: waiting for Run's restore: %w", t.ID, ctx.Err())
		}
		var fenced bool
		if recording, fenced, err = p.segmentRecorded(ctx, t); err != nil {
			return Pending, err
		}
		if fenced {
			// This incarnation settled its vote here on starting. A no
			// (its fence) stands for its ack, and preparing now would
			// take locks that nobody releases once the segment is
			// trimmed without this participant's ack: it holds nothing,
			// and the outcome is abort. A yes was restored from its
			// record (Run handles it too); the Resource then returns
			// that vote again below, taking nothing new.
			v, err := p.vote(ctx, t, i, valFenced)
			if err != nil {
				return Pending, err
			}
			if v != VoteYes {
				return Abort, nil
			}
		}
	} else {
		recording = false
	}
	var (
		yes bool
		rec []byte
	)
	if recording {
		yes, rec, err = rs.PrepareRecord(ctx, t.ID, t.Descriptor)
	} else {
		yes, err = res.Prepare(ctx, t.ID, t.Descriptor)
	}
	if err != nil {
		return Pending, fmt.Errorf("wormtx: %v: prepare: %w", t.ID, err)
	}
	p.cfg.Trace.emit(t.ID, StagePrepared)
	if p.cfg.Crash != nil && p.cfg.Crash(ParticipantBeforeVote, t.ID) {
		return Pending, ErrCrashed
	}
	val := voteValue(yes)
	if recording && yes {
		val = voteRecord(t.Payload, rec)
	}
	v, err := p.vote(ctx, t, i, val)
	if err != nil {
		return Pending, err
	}
	p.cfg.Trace.emit(t.ID, StageVoted)
	p.log.Debug("wormtx: voted", "tx", t.ID, "yes", yes, "chosen", v)
	if p.cfg.Crash != nil && p.cfg.Crash(ParticipantAfterVote, t.ID) {
		return Pending, ErrCrashed
	}
	select {
	case <-l.ready:
	case <-ctx.Done():
		return Pending, fmt.Errorf("wormtx: %v: outcome unknown: %w", t.ID, ctx.Err())
	}
	opt := resolveOpts{}
	if l.err == nil {
		opt.notes, opt.fresh = sub.ch, true
	}
	pol := p.cfg.Policy
	pol.recoverHook = func(rctx context.Context) {
		// The coordinator may have died before the descriptor landed:
		// observers that know only the TxID need it.
		if _, err := Settle(rctx, p.sp, t.sharedDescAddr(), MarshalDescriptor(t.Descriptor)); err != nil && !errors.Is(err, worm.ErrTrimmed) {
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
		if err := p.writeAck(ctx, t, i, o); err != nil && !errors.Is(err, worm.ErrTrimmed) {
			return o, err
		}
	}
	if o == Abort {
		return o, p.completeVotes(ctx, t)
	}
	return o, nil
}
