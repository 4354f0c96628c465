package wormpaxos

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/wormspace/wormspace/worm"
)

// enqueue queues q for the workers; false when Run has ended.
func (r *Replica) enqueue(q *request) bool {
	r.qmu.Lock()
	defer r.qmu.Unlock()
	if r.qdone {
		return false
	}
	r.queue = append(r.queue, q)
	r.qbytes += cmdSize(q.cmd)
	if r.busy == 0 || r.fullLocked() {
		r.qcond.Signal()
	}
	return true
}

// fullLocked reports whether the queue holds a full batch. Caller holds
// r.qmu.
func (r *Replica) fullLocked() bool {
	return len(r.queue) >= r.cfg.MaxBatch || r.qbytes >= r.cfg.MaxBatchBytes
}

// takeBatch waits for a batch and takes it (appending to buf), counting
// it busy until the caller calls batchDone. Batching is adaptive: while
// a batch is being placed, the next one is taken only once it is full
// (MaxBatch commands or MaxBatchBytes), so under load a batch closes when
// the previous write returns and holds what arrived meanwhile; with
// nothing in flight a command goes at once. At most Pipeline batches are
// in flight (one per worker). It returns nil when Run's context ends.
func (r *Replica) takeBatch(buf []*request) []*request {
	r.qmu.Lock()
	defer r.qmu.Unlock()
	for !r.qdone && (len(r.queue) == 0 || (r.busy > 0 && !r.fullLocked())) {
		r.qcond.Wait()
	}
	if r.qdone {
		return nil
	}
	n, size := 0, 0
	for n < len(r.queue) && n < r.cfg.MaxBatch && (n == 0 || size+cmdSize(r.queue[n].cmd) <= r.cfg.MaxBatchBytes) {
		size += cmdSize(r.queue[n].cmd)
		n++
	}
	buf = append(buf, r.queue[:n]...)
	rest := copy(r.queue, r.queue[n:])
	clear(r.queue[rest:])
	r.queue = r.queue[:rest]
	r.qbytes -= size
	r.busy++
	if len(r.queue) > 0 && r.fullLocked() {
		r.qcond.Signal() // another full batch for another worker
	}
	return buf
}

// batchDone ends a batch taken by takeBatch: what queued meanwhile may go.
func (r *Replica) batchDone() {
	r.qmu.Lock()
	r.busy--
	if len(r.queue) > 0 {
		r.qcond.Signal()
	}
	r.qmu.Unlock()
}

// worker is one proposer pipeline stage: it takes a batch of queued
// commands, encodes them into one register value and places it in the log.
func (r *Replica) worker(ctx context.Context) {
	var batch []*request
	for {
		batch = r.takeBatch(batch[:0])
		if batch == nil {
			return
		}
		live := r.live(batch)
		if len(live) > 0 {
			alive := func() bool {
				r.mu.Lock()
				defer r.mu.Unlock()
				for _, q := range live {
					if q.ctx.Err() == nil && !r.doneLocked(q.cmd) {
						return true
					}
				}
				return false
			}
			r.place(ctx, encodeRequests(live), alive)
		}
		clear(batch)
		r.batchDone()
	}
}

// live compacts batch in place to the requests still waiting for a
// result: not given up and not yet applied.
func (r *Replica) live(batch []*request) []*request {
	out := batch[:0]
	r.mu.Lock()
	for _, q := range batch {
		if q.ctx.Err() == nil && !r.doneLocked(q.cmd) {
			out = append(out, q)
		}
	}
	r.mu.Unlock()
	return out
}

// place writes val into some log register, per the policy, retrying until
// it is chosen somewhere or alive reports that nobody waits for it. A value
// may end up chosen twice (after an ambiguous write); the session table
// makes the second copy a no-op.
func (r *Replica) place(ctx context.Context, val []byte, alive func() bool) {
	for attempt := 0; ; attempt++ {
		if ctx.Err() != nil || !alive() {
			return
		}
		if attempt > 0 {
			if sleep(ctx, backoff(attempt)) != nil {
				return
			}
		}
		sl, err := r.slot(ctx) // counts sl.pos in r.inflight
		if err != nil {
			r.log.Debug("acquire slot", "err", err)
			continue
		}
		ok, err := r.writeSlot(ctx, sl, val, alive)
		r.mu.Lock()
		if r.inflight[sl.pos]--; r.inflight[sl.pos] <= 0 {
			delete(r.inflight, sl.pos)
		}
		r.mu.Unlock()
		r.kick()
		if ok {
			r.stats.writes.Add(1)
			return
		}
		r.stats.retries.Add(1)
		if sl.gen != 0 && (errors.Is(err, worm.ErrPreempted) || errors.Is(err, worm.ErrWritten) || errors.Is(err, worm.ErrTrimmed)) {
			// Another replica (or a hole filler) took the segment: learn
			// and re-acquire.
			r.dropLease(sl.gen)
		}
	}
}

// writeSlot writes val at sl. It returns true when val is chosen there.
// ErrUnavailable is retried at the same slot (nothing happened, and
// leaving the slot would leave a hole); ErrUnknownOutcome is resolved by
// reading, then by retrying the identical write.
func (r *Replica) writeSlot(ctx context.Context, sl slot, val []byte, alive func() bool) (bool, error) {
	for i := 0; ; i++ {
		err := r.space.Write(ctx, sl.addr, sl.tok, val)
		if err == nil {
			r.learnedAt(sl.pos, val)
			return true, nil
		}
		if errors.Is(err, worm.ErrUnknownOutcome) {
			got, rerr := r.space.Read(ctx, sl.addr)
			if rerr == nil {
				r.learnedAt(sl.pos, got)
				if bytes.Equal(got, val) {
					return true, nil
				}
				return false, &worm.WrittenError{Addr: sl.addr, Value: got}
			}
		} else if !errors.Is(err, worm.ErrUnavailable) {
			if v, ok := worm.WrittenValue(err); ok {
				r.learnedAt(sl.pos, v)
			}
			return false, err
		}
		if ctx.Err() != nil || !alive() {
			return false, err
		}
		if sleep(ctx, backoff(i)) != nil {
			return false, err
		}
	}
}

func (r *Replica) dropLease(gen uint64) {
	r.pmu.Lock()
	if r.lease != nil && r.lease.gen == gen {
		r.lease = nil
	}
	r.pmu.Unlock()
}

// slot returns a register this replica may write a batch to, and counts
// it in r.inflight until place is done with it. Under a lease the slot is
// handed out and counted under r.pmu in one step, so an owner's skip
// (closeOwn, also under r.pmu) never sees a handed-out position as
// abandoned while its write is about to start.
func (r *Replica) slot(ctx context.Context) (slot, error) {
	if r.cfg.Policy == Leaderless {
		sl, err := r.captureSlot(ctx)
		if err == nil {
			r.claim(sl.pos)
		}
		return sl, err
	}
	r.pmu.Lock()
	defer r.pmu.Unlock()
	if r.lease == nil || uint64(r.lease.next) >= r.size {
		if err := r.acquire(ctx); err != nil {
			return slot{}, err
		}
	}
	l := r.lease
	sl := slot{pos: r.pos(l.seg, l.next), addr: worm.Addr{Seg: l.seg, Off: l.next}, tok: l.tok, gen: l.gen}
	l.next++
	r.claim(sl.pos)
	return sl, nil
}

// claim counts a write of ours in flight at pos.
func (r *Replica) claim(pos uint64) {
	r.mu.Lock()
	r.inflight[pos]++
	r.mu.Unlock()
}

// captureSlot (Leaderless) captures the next free register.
func (r *Replica) captureSlot(ctx context.Context) (slot, error) {
	for tries := 0; tries < 64; tries++ {
		r.pmu.Lock()
		i := max(r.frontier(), r.nextFree)
		r.nextFree = i + 1
		a := r.addr(i)
		alloc := !r.allocated[a.Seg]
		r.pmu.Unlock()
		if alloc {
			if _, err := r.space.Alloc(ctx, a.Seg, r.meta); err != nil {
				return slot{}, fmt.Errorf("alloc %d: %w", a.Seg, err)
			}
			r.pmu.Lock()
			r.allocated[a.Seg] = true
			r.pmu.Unlock()
		}
		tok, err := r.space.Capture(ctx, a)
		for k := 0; k < 3 && errors.Is(err, worm.ErrPreempted); k++ {
			// Another capture of the same register: its owner will
			// probably write it (then we learn the value), or it was a
			// filler. Retry here before leaving a hole behind.
			if sleep(ctx, backoff(k)) != nil {
				break
			}
			tok, err = r.space.Capture(ctx, a)
		}
		if err == nil {
			return slot{pos: i, addr: a, tok: tok}, nil
		}
		if v, ok := worm.WrittenValue(err); ok {
			r.learnedAt(i, v)
			continue
		}
		if errors.Is(err, worm.ErrPreempted) {
			continue // a concurrent capture of the same register
		}
		return slot{}, fmt.Errorf("capture %v: %w", a, err)
	}
	return slot{}, fmt.Errorf("capture: too many written registers: %w", worm.ErrPreempted)
}

// acquire (Sticky, Rotating) captures the first segment at or past the
// frontier that this replica may write commands into, filling holes on
// the way, and installs it as the lease. Caller holds r.pmu.
func (r *Replica) acquire(ctx context.Context) error {
	s := r.groupStart(r.frontier())
	if r.lease != nil && r.lease.seg >= s {
		s = r.lease.seg + 1
	}
	r.lease = nil
	for ; ; s++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		if r.cfg.Policy == Rotating && !r.owns(s) {
			continue
		}
		info, err := r.space.Alloc(ctx, s, r.meta)
		if errors.Is(err, worm.ErrTrimmed) {
			continue
		}
		if err != nil {
			return fmt.Errorf("alloc %d: %w", s, err)
		}
		sc, err := r.space.CaptureSegment(ctx, s)
		if errors.Is(err, worm.ErrTrimmed) {
			continue
		}
		if err != nil {
			return fmt.Errorf("capture segment %d: %w", s, err)
		}
		hi := r.learnCapture(s, sc)
		own := r.cfg.Policy == Rotating || info.Won
		upto := hi
		if !own {
			// Sticky takeover of a segment another replica leads: close
			// it so the log can move past it.
			upto = uint32(r.size)
		}
		if err := r.fill(ctx, s, sc, 0, upto); err != nil {
			return err
		}
		if own && uint64(hi) < r.size {
			r.leaseGen++
			r.stats.leases.Add(1)
			r.lease = &lease{seg: s, tok: sc.Token, next: hi, gen: r.leaseGen}
			r.leased[s] = true
			r.setLeader(r.space.ID(), s)
			r.log.Debug("lease", "seg", s, "next", hi)
			return nil
		}
	}
}

// learnCapture records a segment capture's written registers and returns
// one past the highest written offset.
func (r *Replica) learnCapture(s uint64, sc worm.SegmentCapture) uint32 {
	hi := uint32(0)
	for _, e := range sc.Written {
		r.learnedAt(r.pos(s, e.Off), e.Value)
		hi = max(hi, e.Off+1)
	}
	return hi
}

// fill writes no-ops with sc.Token to every register in [from, upto) of
// segment s that sc reports neither written nor contended.
func (r *Replica) fill(ctx context.Context, s uint64, sc worm.SegmentCapture, from, upto uint32) error {
	skip := map[uint32]bool{}
	for _, e := range sc.Written {
		skip[e.Off] = true
	}
	for _, o := range sc.Contended {
		skip[o] = true
	}
	for off := from; off < upto; {
		if skip[off] {
			off++
			continue
		}
		end := off
		for end < upto && !skip[end] {
			end++
		}
		if _, err := r.writeNoops(ctx, s, off, end, sc.Token); err != nil {
			return err
		}
		off = end
	}
	return nil
}

// writeNoops writes no-ops to [from, to) of s with tok and records what
// it learns. err is set when the call failed as a whole (nothing is known
// to be written); otherwise errs holds, per register, nil when the
// register is settled (it holds our no-op or another chosen value) or
// what went wrong there. fill leaves unsettled registers to the learner,
// which reads them; an owner's skip (skipLease) settles them itself.
func (r *Replica) writeNoops(ctx context.Context, s uint64, from, to uint32, tok worm.Token) (errs []error, err error) {
	vals := make([][]byte, to-from)
	for i := range vals {
		vals[i] = noop
	}
	errs = make([]error, len(vals))
	err = r.space.WriteBatch(ctx, s, from, tok, vals)
	var be *worm.BatchError
	if err != nil && !errors.As(err, &be) {
		return nil, fmt.Errorf("no-ops %d/%d-%d: %w", s, from, to, err)
	}
	for i := range vals {
		pos := r.pos(s, from+uint32(i))
		if be == nil || be.Errs[i] == nil {
			r.learnedAt(pos, noop)
			continue
		}
		if v, ok := worm.WrittenValue(be.Errs[i]); ok {
			r.learnedAt(pos, v)
			continue
		}
		errs[i] = be.Errs[i]
	}
	return errs, nil
}

// noopAt fills the single position pos with a no-op under a capture of its
// own: for a register the segment's token cannot write (a per-register
// capture holds it) or that a write of ours left empty. The capture
// finishes any value that may be chosen there, so it never overwrites a
// command.
func (r *Replica) noopAt(ctx context.Context, pos uint64) error {
	a := r.addr(pos)
	tok, err := r.space.Capture(ctx, a)
	if v, ok := worm.WrittenValue(err); ok {
		r.learnedAt(pos, v)
		return nil
	}
	if err != nil {
		return fmt.Errorf("capture %v: %w", a, err)
	}
	err = r.space.Write(ctx, a, tok, noop)
	if v, ok := worm.WrittenValue(err); ok {
		r.learnedAt(pos, v)
		return nil
	}
	if err != nil {
		return fmt.Errorf("no-op %v: %w", a, err)
	}
	r.learnedAt(pos, noop)
	return nil
}

// settledLocked reports whether position pos needs no skip from us: a
// write of ours is on its way there, or its value is known. Caller holds
// r.mu.
func (r *Replica) settledLocked(pos uint64) bool {
	_, known := r.known[pos]
	return known || r.inflight[pos] > 0 || pos < r.applied
}

// closeOwn (Rotating) skips: the learner stands at position j, one of
// ours, empty, while another replica proposed position evidence-1, so
// the owner fills its unused positions of j's segment below evidence with
// no-ops (Mencius's skip; with one replica, the rest of the segment). It
// reports whether j is now settled.
//
// Every way the skip can end is handled here rather than left to the
// hole timeout, which in the fault-free case would stall the whole log:
// a skip whose WriteBatch failed (ErrUnknownOutcome is routine on a
// distributed Space: a reader that finds the no-op on a minority finishes
// it with a capture that preempts the rest of the write) keeps its lease
// and its positions and is written again, identically; a register a
// per-register capture took is filled under a capture of its own; a
// position handed to a command write that ended elsewhere is filled
// likewise; and an owner whose segment was captured by a hole filler
// (revocation) captures it again and goes on past the revoked positions.
func (r *Replica) closeOwn(ctx context.Context, j, evidence uint64) (bool, error) {
	a := r.addr(j)
	s := a.Seg
	upto := uint32(r.size)
	if r.interleaved() {
		upto = r.offsBelow(s, evidence)
	}
	if upto <= a.Off {
		return false, nil
	}
	r.pmu.Lock()
	defer r.pmu.Unlock()
	r.mu.Lock()
	settled := r.settledLocked(j)
	r.mu.Unlock()
	if settled {
		return false, nil // our write is on its way, or the learner has the value
	}
	if l := r.lease; l != nil && l.seg == s {
		if a.Off < l.next {
			// Handed out, not in flight, still empty: the command write
			// there ended without choosing it and moved elsewhere.
			if err := r.noopAt(ctx, j); err != nil {
				return false, err
			}
			return true, nil
		}
		return r.skipLease(ctx, l, a.Off, upto)
	}
	for k := range r.leased {
		if k < s {
			delete(r.leased, k)
		}
	}
	if r.leased[s] && r.inflightIn(s) {
		// We lost or left the lease on s and a write of ours there is
		// still on its way: a capture of the segment would preempt it.
		// Settle j alone.
		if err := r.noopAt(ctx, j); err != nil {
			return false, err
		}
		return true, nil
	}
	// Our segment, never captured by us, or captured by a hole filler
	// since: capture it (finishing whatever may be chosen) and fill our
	// empty positions from j below the evidence.
	if _, err := r.space.Alloc(ctx, s, r.meta); err != nil {
		return false, fmt.Errorf("alloc %d: %w", s, err)
	}
	sc, err := r.space.CaptureSegment(ctx, s)
	if err != nil {
		return false, fmt.Errorf("capture segment %d: %w", s, err)
	}
	hi := r.learnCapture(s, sc)
	upto = max(upto, hi)
	if err := r.fill(ctx, s, sc, a.Off, upto); err != nil {
		return false, err
	}
	for _, o := range sc.Contended {
		if o >= a.Off && o < upto {
			if err := r.noopAt(ctx, r.pos(s, o)); err != nil {
				return false, err
			}
		}
	}
	if (r.lease == nil || r.lease.seg < s && uint64(r.lease.next) >= r.size) && uint64(upto) < r.size {
		// Our segment, captured: keep it for our next commands.
		r.leaseGen++
		r.stats.leases.Add(1)
		r.lease = &lease{seg: s, tok: sc.Token, next: upto, gen: r.leaseGen}
		r.leased[s] = true
	}
	return true, nil
}

// skipper (Rotating) is Mencius's skip rule: whenever the replica learns
// that a later position than its next unused one holds commands, it skips
// its unused positions below that one at once, wherever its learner
// stands, so the idle owners of the positions between two commands skip
// in parallel rather than each after the learner has passed the
// others'. It is an optimisation: the learner's closeOwn still settles
// any of our positions it finds empty, including after a failure here.
func (r *Replica) skipper(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.skipWake:
		}
		r.mu.Lock()
		target := r.cmdHint
		r.mu.Unlock()
		if err := r.skipBelow(ctx, target); err != nil && ctx.Err() == nil {
			r.log.Debug("skip ahead", "below", target, "err", err)
		}
	}
}

// skipBelow fills the unused positions of our lease below position
// target with no-ops.
func (r *Replica) skipBelow(ctx context.Context, target uint64) error {
	r.pmu.Lock()
	defer r.pmu.Unlock()
	l := r.lease
	if l == nil {
		return nil
	}
	upto := r.offsBelow(l.seg, target)
	if l.next >= upto {
		return nil
	}
	from := l.next
	_, err := r.skipLease(ctx, l, from, upto)
	if err == nil && l.next > from {
		r.stats.skips.Add(1)
	}
	return err
}

// skipLease writes no-ops with the lease's token to the unused registers
// [l.next, upto) of its segment and moves l.next past the ones it
// settled. at is the learner's offset; it reports whether at is settled.
// Caller holds r.pmu.
func (r *Replica) skipLease(ctx context.Context, l *lease, at, upto uint32) (bool, error) {
	from := l.next
	errs, err := r.writeNoops(ctx, l.seg, from, upto, l.tok)
	if err != nil {
		// Nothing is known written: the positions stay ours and unused,
		// and the next skip writes the identical batch (writing the value
		// a register already holds succeeds).
		return false, err
	}
	next, preempted := upto, 0
	for i, e := range errs {
		if e == nil {
			continue
		}
		off := from + uint32(i)
		if errors.Is(e, worm.ErrPreempted) {
			preempted++
			// A per-register capture holds it (a reader finishing a
			// value, or a hole filler): a capture of our own settles it.
			if err := r.noopAt(ctx, r.pos(l.seg, off)); err == nil {
				continue
			}
		}
		next = min(next, off)
	}
	l.next = next
	if preempted == len(errs) {
		// Every register refused our token: the segment was captured
		// (a hole filler revoked our positions). The next skip captures
		// it again.
		r.lease = nil
	}
	if next < upto {
		r.log.Debug("skip own positions: some unsettled", "seg", l.seg, "from", from, "upto", upto, "next", next)
	}
	return next > at, nil
}

// inflightIn reports whether a write of ours is on its way in segment s.
func (r *Replica) inflightIn(s uint64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for p := range r.inflight {
		if r.segOf(p) == s {
			return true
		}
	}
	return false
}

// revokeAhead is how many of a silent owner's positions past the evidence
// a hole filler takes (Rotating).
const revokeAhead = 64

// fillHole captures the segment of the empty position j, below which the
// learner is stuck while evidence (one past a position known to exist)
// says the log continues, and fills its holes with no-ops: up to the
// highest written register, or the whole rest of the segment when the log
// continues in a later segment (Rotating: the owner's positions below
// the evidence and revokeAhead more).
func (r *Replica) fillHole(ctx context.Context, j, evidence uint64) error {
	a := r.addr(j)
	if _, err := r.space.Alloc(ctx, a.Seg, r.meta); err != nil {
		return fmt.Errorf("alloc %d: %w", a.Seg, err)
	}
	sc, err := r.space.CaptureSegment(ctx, a.Seg)
	if err != nil {
		return fmt.Errorf("capture segment %d: %w", a.Seg, err)
	}
	r.pmu.Lock()
	if r.lease != nil && r.lease.seg == a.Seg {
		r.lease = nil // our own capture preempted it
	}
	r.pmu.Unlock()
	upto := max(r.learnCapture(a.Seg, sc), a.Off+1)
	if r.interleaved() {
		// Mencius revocation: an owner silent for HoleTimeout while the
		// log went on loses its positions below the evidence and the next
		// revokeAhead ones, so a dead owner stops the others once per
		// revokeAhead of its positions, not at each; if it was only slow,
		// its writes there are preempted and it re-captures its segment
		// and goes on past them.
		upto = max(upto, min(uint32(r.size), r.offsBelow(a.Seg, evidence)+revokeAhead))
	} else if evidence > r.endOfGroup(a.Seg) {
		upto = uint32(r.size)
	}
	r.log.Debug("fill hole", "pos", j, "seg", a.Seg, "from", a.Off, "upto", upto)
	return r.fill(ctx, a.Seg, sc, a.Off, upto)
}
