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
		sl, err := r.slot(ctx)
		if err != nil {
			r.log.Debug("acquire slot", "err", err)
			continue
		}
		r.mu.Lock()
		r.inflight[sl.pos]++
		r.mu.Unlock()
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

// slot returns a register this replica may write a batch to.
func (r *Replica) slot(ctx context.Context) (slot, error) {
	if r.cfg.Policy == Leaderless {
		return r.captureSlot(ctx)
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
	return sl, nil
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
	s := r.segOf(r.frontier())
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
		if err := r.writeNoops(ctx, s, off, end, sc.Token); err != nil {
			return err
		}
		off = end
	}
	return nil
}

// writeNoops writes no-ops to [from, to) of s. Per-register failures
// (written, preempted, unknown) are left to the learner, which reads.
func (r *Replica) writeNoops(ctx context.Context, s uint64, from, to uint32, tok worm.Token) error {
	vals := make([][]byte, to-from)
	for i := range vals {
		vals[i] = noop
	}
	err := r.space.WriteBatch(ctx, s, from, tok, vals)
	var be *worm.BatchError
	if err != nil && !errors.As(err, &be) {
		return fmt.Errorf("fill %d/%d-%d: %w", s, from, to, err)
	}
	for i := range vals {
		if be == nil || be.Errs[i] == nil {
			r.learnedAt(r.pos(s, from+uint32(i)), noop)
		}
	}
	return nil
}

// closeOwn (Rotating) skips ahead: the log has moved past the owner's
// segment s, so the owner fills its unused registers with no-ops. It
// reports whether it wrote anything.
func (r *Replica) closeOwn(ctx context.Context, s uint64) (bool, error) {
	r.pmu.Lock()
	defer r.pmu.Unlock()
	if l := r.lease; l != nil && l.seg == s {
		if uint64(l.next) >= r.size {
			return false, nil // in-flight writes of ours; the timeout path covers failures
		}
		from := l.next
		l.next = uint32(r.size)
		if err := r.writeNoops(ctx, s, from, uint32(r.size), l.tok); err != nil {
			r.lease = nil
			return false, err
		}
		return true, nil
	}
	for k := range r.leased {
		if k < s {
			delete(r.leased, k)
		}
	}
	if r.leased[s] {
		// We wrote here and moved on: what is empty may be our own writes
		// in flight; the timeout path fills what they leave.
		return false, nil
	}
	if _, err := r.space.Alloc(ctx, s, r.meta); err != nil {
		return false, err
	}
	sc, err := r.space.CaptureSegment(ctx, s)
	if err != nil {
		return false, err
	}
	r.learnCapture(s, sc)
	if err := r.fill(ctx, s, sc, 0, uint32(r.size)); err != nil {
		return false, err
	}
	return true, nil
}

// fillHole captures the segment of the empty position j, below which the
// learner is stuck while evidence (one past a position known to exist)
// says the log continues, and fills its holes with no-ops: up to the
// highest written register, or the whole rest of the segment when the log
// continues in a later segment.
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
	if evidence > r.pos(a.Seg+1, 0) {
		upto = uint32(r.size)
	}
	r.log.Debug("fill hole", "pos", j, "seg", a.Seg, "from", a.Off, "upto", upto)
	return r.fill(ctx, a.Seg, sc, a.Off, upto)
}
