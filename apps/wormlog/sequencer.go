package wormlog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/wormspace/wormspace/worm"
)

// Grant is a run of consecutive log positions [Pos, Pos+N), all in one
// segment, with the capture token that lets its holder write them. A grant
// is a promise of nothing: a hole filler or a newer sequencer may preempt
// any of its positions, and the holder then asks for a new grant.
type Grant struct {
	Pos   uint64
	N     int
	Token worm.Token
}

// TokenSource hands out grants. *Sequencer (in-process) and *Remote (a
// sequencer behind a Server) implement it. All methods are safe for
// concurrent use and block until ctx ends at most.
type TokenSource interface {
	// NextN returns a grant of between 1 and n positions. Every position
	// is granted at most once by one sequencer incarnation. Errors:
	// ErrClosed, ErrForeign, or ctx's error wrapped in
	// worm.ErrUnavailable.
	NextN(ctx context.Context, n int) (Grant, error)
	// Tail returns a position such that every position handed out so far
	// lies below it and no position below it will be handed out by this
	// sequencer. It waits for recovery to finish.
	Tail(ctx context.Context) (uint64, error)
	// Fenced reports that a write with g.Token at position pos was
	// preempted or found the position written by someone else. It is a
	// hint: a sequencer that keeps hearing it for its current segment
	// (another sequencer took the segment over) captures the segment
	// again.
	Fenced(ctx context.Context, g Grant, pos uint64) error
}

// fencedThreshold is how many distinct fenced positions of a sequencer's
// current segment and token make it capture the segment again. One fenced
// position is usually a hole filler; several mean a rival capture.
const fencedThreshold = 3

// Sequencer hands out log positions with capture tokens. It is soft state:
// everything it knows it recovered from the space, and any number of
// incarnations may come and go; each new one fences the tokens of the
// previous ones in the segments it takes over.
//
// A background goroutine (started by NewSequencer, stopped by Close)
// recovers the tail, then keeps cfg.Prefetch segments allocated and
// captured ahead of the current one, so NextN normally never waits for the
// space.
type Sequencer struct {
	space worm.Space
	cfg   Config
	lay   layout
	log   *slog.Logger
	meta  []byte

	mu        sync.Mutex
	cur       *segGrant   // segment positions are handed from; nil before recovery
	ready     []*segGrant // captured segments after cur, ascending
	nextSeg   uint64      // next segment to prepare
	recovered bool
	fatal     error
	closed    bool
	lastErr   error         // last transient background failure, for diagnostics
	changed   chan struct{} // closed and replaced on every state change

	wake   chan struct{} // capacity 1: "the background has work"
	cancel context.CancelFunc
	done   chan struct{}
}

var _ TokenSource = (*Sequencer)(nil)

// segGrant is the sequencer's state for one captured segment.
type segGrant struct {
	seg       uint64
	tok       worm.Token
	next      uint32   // next offset to hand out
	skip      []uint32 // contended offsets (held by higher captures), ascending
	fenced    map[uint32]struct{}
	recapture bool
}

func newSegGrant(seg uint64, sc worm.SegmentCapture) *segGrant {
	g := &segGrant{seg: seg, tok: sc.Token}
	for _, e := range sc.Written {
		g.next = max(g.next, e.Off+1)
	}
	g.skip = append(g.skip, sc.Contended...)
	return g
}

// normalize drops skipped offsets below next and steps over contended ones.
func (g *segGrant) normalize() {
	for len(g.skip) > 0 && g.skip[0] <= g.next {
		if g.skip[0] == g.next {
			g.next++
		}
		g.skip = g.skip[1:]
	}
}

func (g *segGrant) full(size uint32) bool {
	g.normalize()
	return g.next >= size
}

func (g *segGrant) take(n int, size uint32) (off uint32, k int, ok bool) {
	if g.full(size) {
		return 0, 0, false
	}
	limit := size
	if len(g.skip) > 0 {
		limit = g.skip[0]
	}
	k = min(n, int(limit-g.next))
	off = g.next
	g.next += uint32(k)
	return off, k, true
}

// NewSequencer starts a sequencer for the log cfg names over space. It
// returns at once; recovery (finding the tail and fencing the previous
// incarnation) runs in the background and NextN and Tail wait for it. The
// caller must Close it.
func NewSequencer(space worm.Space, cfg Config) *Sequencer {
	cfg = cfg.withDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	s := &Sequencer{
		space:   space,
		cfg:     cfg,
		lay:     layout{size: space.SegmentSize(), first: cfg.FirstSeg},
		log:     cfg.Logger.With("component", "sequencer", "client", space.ID()),
		meta:    cfg.meta(),
		changed: make(chan struct{}),
		wake:    make(chan struct{}, 1),
		cancel:  cancel,
		done:    make(chan struct{}),
	}
	go s.run(ctx)
	return s
}

// Close stops the background goroutine and fails pending and later calls
// with ErrClosed. Tokens already handed out stay valid until a newer
// sequencer (or a hole filler) fences them. Close is idempotent.
func (s *Sequencer) Close() error {
	s.mu.Lock()
	s.closed = true
	s.broadcastLocked()
	s.mu.Unlock()
	s.cancel()
	<-s.done
	return nil
}

func (s *Sequencer) broadcastLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *Sequencer) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// advanceLocked makes cur the first segment that still has positions.
func (s *Sequencer) advanceLocked() {
	for (s.cur == nil || s.cur.full(s.lay.size)) && len(s.ready) > 0 {
		s.cur, s.ready = s.ready[0], s.ready[1:]
		s.poke()
	}
}

// waitLocked waits (releasing s.mu) for a state change. It returns an
// error when the sequencer is closed or failed, or ctx ended.
func (s *Sequencer) waitLocked(ctx context.Context) error {
	ch := s.changed
	s.mu.Unlock()
	var err error
	select {
	case <-ch:
	case <-ctx.Done():
		err = fmt.Errorf("wormlog: sequencer: %w", ctxErr(ctx, s.lastFailure()))
	}
	s.mu.Lock()
	return err
}

func (s *Sequencer) lastFailure() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastErr
}

func (s *Sequencer) usableLocked() error {
	if s.closed {
		return ErrClosed
	}
	return s.fatal
}

// Next returns one position and the token to write it with.
func (s *Sequencer) Next(ctx context.Context) (uint64, worm.Token, error) {
	g, err := s.NextN(ctx, 1)
	return g.Pos, g.Token, err
}

// NextN returns a grant of between 1 and n consecutive positions of one
// segment (fewer when the segment ends or a position is contended).
func (s *Sequencer) NextN(ctx context.Context, n int) (Grant, error) {
	if n < 1 {
		return Grant{}, fmt.Errorf("wormlog: NextN(%d): %w", n, worm.ErrInvalid)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		if err := s.usableLocked(); err != nil {
			return Grant{}, err
		}
		s.advanceLocked()
		if s.cur != nil {
			if off, k, ok := s.cur.take(n, s.lay.size); ok {
				g := Grant{Pos: s.lay.pos(s.cur.seg, off), N: k, Token: s.cur.tok}
				s.advanceLocked()
				return g, nil
			}
		}
		s.poke()
		if err := s.waitLocked(ctx); err != nil {
			return Grant{}, err
		}
	}
}

// Tail returns the position the sequencer will hand out next (a lower
// bound: contended or trimmed positions are skipped). Every position
// handed out by this incarnation lies below it, and so does every position
// written before this incarnation recovered.
func (s *Sequencer) Tail(ctx context.Context) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		if err := s.usableLocked(); err != nil {
			return 0, err
		}
		if s.recovered {
			break
		}
		if err := s.waitLocked(ctx); err != nil {
			return 0, err
		}
	}
	s.advanceLocked()
	switch {
	case s.cur != nil && !s.cur.full(s.lay.size):
		return s.lay.pos(s.cur.seg, s.cur.next), nil
	case len(s.ready) > 0:
		g := s.ready[0]
		g.normalize()
		return s.lay.pos(g.seg, g.next), nil
	default:
		return s.lay.pos(s.nextSeg, 0), nil
	}
}

// Fenced records that g's token was fenced at pos. After fencedThreshold
// distinct positions of the current segment under its current token, the
// background captures that segment again (a rival sequencer took it).
func (s *Sequencer) Fenced(ctx context.Context, g Grant, pos uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.usableLocked(); err != nil {
		return err
	}
	a := s.lay.addr(pos)
	c := s.cur
	if c == nil || c.seg != a.Seg || c.tok != g.Token || c.recapture {
		return nil // stale report
	}
	if c.fenced == nil {
		c.fenced = map[uint32]struct{}{}
	}
	c.fenced[a.Off] = struct{}{}
	if len(c.fenced) >= fencedThreshold {
		c.recapture = true
		s.log.Info("wormlog: current segment fenced by a rival capture; capturing it again", "seg", c.seg, "token", c.tok)
		s.poke()
	}
	return nil
}

// run is the background goroutine: recover, then keep segments ready.
func (s *Sequencer) run(ctx context.Context) {
	defer close(s.done)
	if err := s.recover(ctx); err != nil {
		s.stop(ctx, err)
		return
	}
	for {
		s.mu.Lock()
		var recap *segGrant
		if s.cur != nil && s.cur.recapture {
			recap = s.cur
		}
		need := len(s.ready) < s.cfg.Prefetch
		seg := s.nextSeg
		s.mu.Unlock()
		switch {
		case recap != nil:
			if err := s.recapture(ctx, recap); err != nil {
				s.stop(ctx, err)
				return
			}
		case need:
			g, err := s.prepare(ctx, seg)
			if err != nil {
				s.stop(ctx, err)
				return
			}
			s.mu.Lock()
			s.nextSeg = g.seg + 1
			s.ready = append(s.ready, g)
			s.advanceLocked()
			s.broadcastLocked()
			s.mu.Unlock()
		default:
			select {
			case <-s.wake:
			case <-ctx.Done():
				return
			}
		}
	}
}

// stop ends the background after an error: fatal unless Close caused it.
func (s *Sequencer) stop(ctx context.Context, err error) {
	if ctx.Err() != nil {
		return
	}
	s.log.Error("wormlog: sequencer stopped", "err", err)
	s.mu.Lock()
	s.fatal = fmt.Errorf("wormlog: sequencer failed: %w", err)
	s.broadcastLocked()
	s.mu.Unlock()
}

func (s *Sequencer) note(err error) {
	s.mu.Lock()
	s.lastErr = err
	s.mu.Unlock()
}

// retryOp is retry with the failure remembered for diagnostics.
func retryOp[T any](ctx context.Context, s *Sequencer, op func() (T, error)) (T, error) {
	return retry(ctx, func() (T, error) {
		v, err := op()
		if err != nil && transient(err) {
			s.note(err)
		}
		return v, err
	})
}

// occupied reports whether seg is allocated (by this log) or trimmed: the
// predicate that is true exactly for a prefix of the log's segments, since
// a sequencer allocates segment k+1 only after k is allocated or trimmed,
// and trims proceed upwards from the lowest untrimmed segment.
func (s *Sequencer) occupied(ctx context.Context, seg uint64) (bool, error) {
	info, err := retryOp(ctx, s, func() (worm.SegmentInfo, error) { return s.space.Check(ctx, seg) })
	switch {
	case err == nil:
		return true, s.cfg.checkMeta(seg, info)
	case errors.Is(err, worm.ErrTrimmed):
		return true, nil
	case errors.Is(err, worm.ErrUnallocated):
		return false, nil
	}
	return false, fmt.Errorf("check segment %d: %w", seg, err)
}

// firstFree returns the lowest segment of the log that is neither
// allocated nor trimmed, by exponential then binary search.
func (s *Sequencer) firstFree(ctx context.Context) (uint64, error) {
	first := s.cfg.FirstSeg
	occ, err := s.occupied(ctx, first)
	if err != nil || !occ {
		return first, err
	}
	lo, step := first, uint64(1)
	var hi uint64
	for {
		hi = lo + step
		occ, err := s.occupied(ctx, hi)
		if err != nil {
			return 0, err
		}
		if !occ {
			break
		}
		lo, step = hi, step*2
	}
	for hi-lo > 1 {
		mid := lo + (hi-lo)/2
		occ, err := s.occupied(ctx, mid)
		if err != nil {
			return 0, err
		}
		if occ {
			lo = mid
		} else {
			hi = mid
		}
	}
	return hi, nil
}

func (s *Sequencer) captureSegment(ctx context.Context, seg uint64) (worm.SegmentCapture, error) {
	return retryOp(ctx, s, func() (worm.SegmentCapture, error) { return s.space.CaptureSegment(ctx, seg) })
}

// recover finds the tail and fences earlier incarnations: it captures the
// allocated segments from the highest one down to the highest that holds
// a written register (the tail segment). Every token an earlier sequencer
// handed out in them is now preempted; its holders retry elsewhere.
// Positions the earlier sequencer handed out below the tail and that were
// never written stay holes until someone writes or fills them.
func (s *Sequencer) recover(ctx context.Context) error {
	free, err := s.firstFree(ctx)
	if err != nil {
		return err
	}
	var found []*segGrant // descending
	for seg := free; seg > s.cfg.FirstSeg; {
		seg--
		sc, err := s.captureSegment(ctx, seg)
		if errors.Is(err, worm.ErrTrimmed) {
			break
		}
		if err != nil {
			return fmt.Errorf("capture segment %d: %w", seg, err)
		}
		found = append(found, newSegGrant(seg, sc))
		if len(sc.Written) > 0 {
			break
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := len(found) - 1; i >= 0; i-- {
		s.ready = append(s.ready, found[i])
	}
	s.nextSeg = free
	s.recovered = true
	s.advanceLocked()
	s.broadcastLocked()
	s.log.Info("wormlog: sequencer recovered", "firstFree", free, "captured", len(found), "tail", s.tailLocked())
	return nil
}

func (s *Sequencer) tailLocked() uint64 {
	if s.cur != nil && !s.cur.full(s.lay.size) {
		return s.lay.pos(s.cur.seg, s.cur.next)
	}
	return s.lay.pos(s.nextSeg, 0)
}

// prepare allocates and captures the first usable segment from seg on,
// skipping trimmed and full ones.
func (s *Sequencer) prepare(ctx context.Context, seg uint64) (*segGrant, error) {
	for ; ; seg++ {
		info, err := retryOp(ctx, s, func() (worm.SegmentInfo, error) { return s.space.Alloc(ctx, seg, s.meta) })
		if errors.Is(err, worm.ErrTrimmed) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("alloc segment %d: %w", seg, err)
		}
		if err := s.cfg.checkMeta(seg, info); err != nil {
			return nil, err
		}
		sc, err := s.captureSegment(ctx, seg)
		if errors.Is(err, worm.ErrTrimmed) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("capture segment %d: %w", seg, err)
		}
		g := newSegGrant(seg, sc)
		if g.full(s.lay.size) {
			continue
		}
		s.log.Debug("wormlog: segment ready", "seg", seg, "token", sc.Token, "from", g.next)
		return g, nil
	}
}

// recapture captures g's segment again after a rival capture fenced it.
func (s *Sequencer) recapture(ctx context.Context, g *segGrant) error {
	sc, err := s.captureSegment(ctx, g.seg)
	s.mu.Lock()
	defer s.mu.Unlock()
	g.recapture, g.fenced = false, nil
	if errors.Is(err, worm.ErrTrimmed) {
		g.next = s.lay.size // nothing more to hand out here
		s.advanceLocked()
		s.broadcastLocked()
		return nil
	}
	if err != nil {
		return fmt.Errorf("recapture segment %d: %w", g.seg, err)
	}
	fresh := newSegGrant(g.seg, sc)
	g.tok = sc.Token
	g.next = max(g.next, fresh.next)
	g.skip = fresh.skip
	s.broadcastLocked()
	return nil
}
