package spec

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/wormspace/wormspace/worm"
)

// ErrClosed is returned by every call on a Client after Close. It matches
// worm.ErrUnavailable too (errors.Is), because the call had no effect.
var ErrClosed = &closedError{}

type closedError struct{}

func (*closedError) Error() string        { return "spec: client closed" }
func (*closedError) Is(target error) bool { return target == worm.ErrUnavailable }

// DefaultListenBuffer is the number of notifications a listener may fall
// behind by before the spec drops them and reports Lost.
const DefaultListenBuffer = 256

// Store is one atomic WormSpace shared by any number of Clients. All state
// sits behind one mutex: every operation is one atomic step.
type Store struct {
	segSize uint32

	mu       sync.Mutex
	round    uint64 // last issued capture round; global, so tokens only grow
	nodes    uint64 // last issued client node
	segs     map[uint64]*segment
	trimmed  map[uint64]struct{}
	faults   map[string][]*faultPlan
	maxValue int // 0: unlimited
	listenN  int
}

type segment struct {
	promised  worm.Ballot // range capture (CaptureSegment)
	allocated bool
	owner     string
	meta      []byte
	regs      map[uint32]*register
	listeners map[*listener]struct{}
}

type register struct {
	promised worm.Ballot // per-register capture
	value    []byte
	has      bool
}

// New returns an empty Store whose segments hold segmentSize data
// registers. It panics if segmentSize is 0 or reaches worm.MetaOffset.
func New(segmentSize uint32) *Store {
	if segmentSize == 0 || segmentSize == worm.MetaOffset {
		panic(fmt.Sprintf("spec: bad segment size %d", segmentSize))
	}
	return &Store{
		segSize: segmentSize,
		segs:    map[uint64]*segment{},
		trimmed: map[uint64]struct{}{},
		faults:  map[string][]*faultPlan{},
		listenN: DefaultListenBuffer,
	}
}

// SetMaxValueSize makes writes of values longer than n bytes fail with
// worm.ErrTooLarge, so applications can be tested against the limit a
// real cluster enforces. n <= 0 (the default) means unlimited.
func (s *Store) SetMaxValueSize(n int) {
	s.mu.Lock()
	s.maxValue = n
	s.mu.Unlock()
}

// SetListenBuffer sets how many notifications a listener created later may
// fall behind by before they are dropped and replaced by one Lost
// notification. Small values let tests exercise the Lost path.
func (s *Store) SetListenBuffer(n int) {
	if n < 1 {
		n = 1
	}
	s.mu.Lock()
	s.listenN = n
	s.mu.Unlock()
}

// SegmentSize returns the number of data registers per segment.
func (s *Store) SegmentSize() uint32 { return s.segSize }

// Client returns a new client handle with identity id. Handles are cheap;
// each has its own ballot node, so tokens are unique across handles. Two
// handles may share an id (they then share allocation ownership and
// injected faults).
func (s *Store) Client(id string) worm.Space {
	s.mu.Lock()
	s.nodes++
	node := s.nodes
	s.mu.Unlock()
	return &Client{s: s, id: id, node: node, done: make(chan struct{})}
}

// Client is one client handle of a Store. It implements worm.Space.
type Client struct {
	s    *Store
	id   string
	node uint64

	closeOnce sync.Once
	done      chan struct{} // closed by Close
}

var _ worm.Space = (*Client)(nil)

// ID is the client's identity, as recorded by Alloc.
func (c *Client) ID() string { return c.id }

// SegmentSize is the number of data registers per segment.
func (c *Client) SegmentSize() uint32 { return c.s.segSize }

// Close makes later calls fail with ErrClosed and closes the client's
// listeners. It is idempotent.
func (c *Client) Close() error {
	c.closeOnce.Do(func() { close(c.done) })
	return nil
}

// begin is the common prologue: closed client, done context. It returns
// the fault planned for this operation (faultNone normally).
func (c *Client) begin(ctx context.Context, op Op) (Fault, error) {
	select {
	case <-c.done:
		return FaultNone, ErrClosed
	default:
	}
	if err := ctx.Err(); err != nil {
		return FaultNone, fmt.Errorf("%w: %w", worm.ErrUnavailable, err)
	}
	return c.s.takeFault(c.id, op), nil
}

// seg returns the live segment (creating it when create is set) or
// ErrTrimmed. Caller holds s.mu.
func (s *Store) seg(n uint64, create bool) (*segment, error) {
	if _, ok := s.trimmed[n]; ok {
		return nil, worm.ErrTrimmed
	}
	g := s.segs[n]
	if g == nil && create {
		g = &segment{regs: map[uint32]*register{}}
		s.segs[n] = g
	}
	return g, nil
}

func (s *Store) checkOff(off uint32) error {
	if off >= s.segSize {
		return worm.ErrOutOfRange
	}
	return nil
}

func (s *Store) checkValue(v []byte) error {
	if s.maxValue > 0 && len(v) > s.maxValue {
		return fmt.Errorf("%w: %d bytes, limit %d", worm.ErrTooLarge, len(v), s.maxValue)
	}
	return nil
}

func (s *Store) nextToken(node uint64) worm.Token {
	s.round++
	return worm.Token{Round: s.round, Node: node}
}

func (g *segment) effective(r *register) worm.Ballot {
	if r == nil {
		return g.promised
	}
	return g.promised.Max(r.promised)
}

func (g *segment) reg(off uint32) *register {
	r := g.regs[off]
	if r == nil {
		r = &register{}
		g.regs[off] = r
	}
	return r
}

func clone(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return append(make([]byte, 0, len(b)), b...)
}

func written(addr worm.Addr, v []byte) error {
	return &worm.WrittenError{Addr: addr, Value: clone(v)}
}

// Capture issues a fresh token for addr, higher than every earlier token.
// Errors, in order: ErrTrimmed, ErrOutOfRange, ErrUnallocated, and a
// *worm.WrittenError when the register holds a value.
func (c *Client) Capture(ctx context.Context, addr worm.Addr) (worm.Token, error) {
	f, err := c.begin(ctx, OpCapture)
	if err != nil {
		return worm.Token{}, err
	}
	if f.dropped() {
		return worm.Token{}, f.err()
	}
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	g, err := s.seg(addr.Seg, false)
	if err != nil {
		return worm.Token{}, err
	}
	if err := s.checkOff(addr.Off); err != nil {
		return worm.Token{}, err
	}
	if g == nil || !g.allocated {
		return worm.Token{}, worm.ErrUnallocated
	}
	r := g.reg(addr.Off)
	if r.has {
		return worm.Token{}, written(addr, r.value)
	}
	r.promised = s.nextToken(c.node)
	if f != FaultNone {
		// An applied fault: the capture took effect (it preempts older
		// tokens) but the caller never learns its token.
		return worm.Token{}, f.err()
	}
	return r.promised, nil
}

// store applies one write at (g, off) with ballot tok (zero: unsafe) and
// returns its per-register outcome. Caller holds s.mu and has checked
// trim and range.
func (s *Store) store(addr worm.Addr, g *segment, tok worm.Token, v []byte) error {
	r := g.regs[addr.Off]
	if r != nil && r.has {
		if bytes.Equal(r.value, v) {
			return nil
		}
		return written(addr, r.value)
	}
	if err := s.checkValue(v); err != nil {
		return err
	}
	if g.effective(r) != tok {
		// Lower: preempted by a later capture. Higher: a token that was
		// never issued for this register. Zero (unsafe) on a captured
		// register: preempted.
		return worm.ErrPreempted
	}
	r = g.reg(addr.Off)
	r.value, r.has = clone(v), true
	for l := range g.listeners {
		l.notify(addr.Off, r.value)
	}
	return nil
}

// Write stores value with a token from Capture or CaptureSegment. Errors,
// in order: ErrInvalid (zero token), ErrTrimmed, ErrOutOfRange, nil when
// the register already holds value, *worm.WrittenError when it holds
// another, ErrTooLarge, ErrPreempted when tok is not the register's current
// capture. Write does not check allocation: a token implies a capture that
// did.
func (c *Client) Write(ctx context.Context, addr worm.Addr, tok worm.Token, value []byte) error {
	f, err := c.begin(ctx, OpWrite)
	if err != nil {
		return err
	}
	if tok.IsZero() {
		return fmt.Errorf("%w: write with the zero token (use WriteUnsafe)", worm.ErrInvalid)
	}
	if f.dropped() {
		return f.err()
	}
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	g, err := s.seg(addr.Seg, false)
	if err != nil {
		return err
	}
	if err := s.checkOff(addr.Off); err != nil {
		return err
	}
	if g == nil {
		// Never captured, hence tok was not issued for it.
		g = &segment{regs: map[uint32]*register{}}
	}
	err = s.store(addr, g, tok, value)
	if err == nil && f != FaultNone {
		return f.err()
	}
	return err
}

// WriteUnsafe stores value at ballot 0. It succeeds on a register that is
// empty and was never captured (nor its segment), or that already holds
// value. Errors, in order: ErrTrimmed, ErrOutOfRange, ErrUnallocated,
// *worm.WrittenError, ErrTooLarge, ErrPreempted.
func (c *Client) WriteUnsafe(ctx context.Context, addr worm.Addr, value []byte) error {
	f, err := c.begin(ctx, OpWriteUnsafe)
	if err != nil {
		return err
	}
	if f.dropped() {
		return f.err()
	}
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	g, err := s.seg(addr.Seg, false)
	if err != nil {
		return err
	}
	if err := s.checkOff(addr.Off); err != nil {
		return err
	}
	if g == nil || !g.allocated {
		return worm.ErrUnallocated
	}
	err = s.store(addr, g, worm.Token{}, value)
	if err == nil && f != FaultNone {
		return f.err()
	}
	return err
}

// Read returns a copy of the register's value, or ErrEmpty. Errors, in
// order: ErrTrimmed, ErrOutOfRange, ErrUnallocated, ErrEmpty.
func (c *Client) Read(ctx context.Context, addr worm.Addr) ([]byte, error) {
	f, err := c.begin(ctx, OpRead)
	if err != nil {
		return nil, err
	}
	if f != FaultNone {
		// Reads change nothing: every fault is plain unavailability.
		return nil, fmt.Errorf("spec: injected fault: %w", worm.ErrUnavailable)
	}
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	g, err := s.seg(addr.Seg, false)
	if err != nil {
		return nil, err
	}
	if err := s.checkOff(addr.Off); err != nil {
		return nil, err
	}
	if g == nil || !g.allocated {
		return nil, worm.ErrUnallocated
	}
	if r := g.regs[addr.Off]; r != nil && r.has {
		return clone(r.value), nil
	}
	return nil, worm.ErrEmpty
}

func (g *segment) info(caller string) worm.SegmentInfo {
	return worm.SegmentInfo{Owner: g.owner, Meta: clone(g.meta), Won: g.owner == caller}
}

// Alloc allocates seg: the first caller records its identity and meta;
// every caller gets the winner's record, with Won set when the winner's
// identity is the caller's. Errors: ErrTrimmed, ErrTooLarge.
func (c *Client) Alloc(ctx context.Context, seg uint64, meta []byte) (worm.SegmentInfo, error) {
	f, err := c.begin(ctx, OpAlloc)
	if err != nil {
		return worm.SegmentInfo{}, err
	}
	if f.dropped() {
		return worm.SegmentInfo{}, f.err()
	}
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.trimmed[seg]; ok {
		return worm.SegmentInfo{}, worm.ErrTrimmed
	}
	g, _ := s.seg(seg, true)
	if !g.allocated {
		if err := s.checkValue(meta); err != nil {
			return worm.SegmentInfo{}, err
		}
		g.allocated, g.owner, g.meta = true, c.id, clone(meta)
	}
	if f != FaultNone {
		return worm.SegmentInfo{}, f.err()
	}
	return g.info(c.id), nil
}

// Check returns seg's allocation record, or ErrUnallocated, or ErrTrimmed.
func (c *Client) Check(ctx context.Context, seg uint64) (worm.SegmentInfo, error) {
	f, err := c.begin(ctx, OpCheck)
	if err != nil {
		return worm.SegmentInfo{}, err
	}
	if f != FaultNone {
		return worm.SegmentInfo{}, fmt.Errorf("spec: injected fault: %w", worm.ErrUnavailable)
	}
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	g, err := s.seg(seg, false)
	if err != nil {
		return worm.SegmentInfo{}, err
	}
	if g == nil || !g.allocated {
		return worm.SegmentInfo{}, worm.ErrUnallocated
	}
	return g.info(c.id), nil
}

// CaptureSegment issues a fresh token covering every register of seg.
// Written lists the registers holding values, ascending. Contended lists
// registers whose per-register capture is higher than the new token; in
// the spec the new token is the highest ever issued, so it is always
// empty. Errors: ErrTrimmed, ErrUnallocated.
func (c *Client) CaptureSegment(ctx context.Context, seg uint64) (worm.SegmentCapture, error) {
	f, err := c.begin(ctx, OpCaptureSegment)
	if err != nil {
		return worm.SegmentCapture{}, err
	}
	if f.dropped() {
		return worm.SegmentCapture{}, f.err()
	}
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	g, err := s.seg(seg, false)
	if err != nil {
		return worm.SegmentCapture{}, err
	}
	if g == nil || !g.allocated {
		return worm.SegmentCapture{}, worm.ErrUnallocated
	}
	tok := s.nextToken(c.node)
	g.promised = tok
	if f != FaultNone {
		return worm.SegmentCapture{}, f.err()
	}
	sc := worm.SegmentCapture{Token: tok}
	for off, r := range g.regs {
		if r.has {
			sc.Written = append(sc.Written, worm.Entry{Off: off, Value: clone(r.value)})
		}
		if tok.Less(r.promised) {
			sc.Contended = append(sc.Contended, off)
		}
	}
	slices.SortFunc(sc.Written, func(a, b worm.Entry) int { return int(int64(a.Off) - int64(b.Off)) })
	slices.Sort(sc.Contended)
	return sc, nil
}

// WriteBatch writes values to consecutive registers from (seg, off) with
// tok, each with Write's semantics; it is not all-or-nothing. It returns
// nil, a *worm.BatchError with per-register errors, or a whole-batch error:
// ErrInvalid (zero token or empty batch), ErrTrimmed, ErrOutOfRange (the
// batch does not fit in the segment).
func (c *Client) WriteBatch(ctx context.Context, seg uint64, off uint32, tok worm.Token, values [][]byte) error {
	f, err := c.begin(ctx, OpWriteBatch)
	if err != nil {
		return err
	}
	if tok.IsZero() {
		return fmt.Errorf("%w: batch with the zero token", worm.ErrInvalid)
	}
	if len(values) == 0 {
		return fmt.Errorf("%w: empty batch", worm.ErrInvalid)
	}
	if f.dropped() {
		return f.err()
	}
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	g, err := s.seg(seg, false)
	if err != nil {
		return err
	}
	if uint64(off)+uint64(len(values)) > uint64(s.segSize) {
		return worm.ErrOutOfRange
	}
	if g == nil {
		g = &segment{regs: map[uint32]*register{}}
	}
	errs := make([]error, len(values))
	failed := false
	for i, v := range values {
		errs[i] = s.store(worm.Addr{Seg: seg, Off: off + uint32(i)}, g, tok, v)
		if errs[i] == nil && f != FaultNone {
			errs[i] = f.err()
		}
		failed = failed || errs[i] != nil
	}
	if failed {
		return &worm.BatchError{Seg: seg, Off: off, Errs: errs}
	}
	return nil
}

// Trim garbage-collects seg: its registers and record are freed, later
// operations return ErrTrimmed and its listeners' channels are closed.
// Trimming again succeeds. Trim does not require allocation.
func (c *Client) Trim(ctx context.Context, seg uint64) error {
	f, err := c.begin(ctx, OpTrim)
	if err != nil {
		return err
	}
	if f.dropped() {
		return f.err()
	}
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if g := s.segs[seg]; g != nil {
		for l := range g.listeners {
			l.stop()
		}
		delete(s.segs, seg)
	}
	s.trimmed[seg] = struct{}{}
	if f != FaultNone {
		return f.err()
	}
	return nil
}

// Listen returns a channel that first receives a Notification for every
// register of seg already written (in offset order), then one for every
// register that becomes written after the call (not for idempotent
// rewrites, nor for the metadata register), each carrying the written
// value, which is chosen at once (Chosen set; each listener gets its own
// copy). The first part models the best case of the wormservers' replay
// of recent writes to a new subscriber (worm/server), which is a bounded
// cache there: applications must not need it for correctness. The channel
// is buffered; a listener that falls more than the listen buffer behind
// loses the queued notifications and receives one Notification{Lost:
// true} instead, so writers never block. The channel is closed when ctx
// ends, the client closes, or seg is trimmed. Listen does not require
// allocation. Errors: ErrTrimmed.
func (c *Client) Listen(ctx context.Context, seg uint64) (<-chan worm.Notification, error) {
	f, err := c.begin(ctx, OpListen)
	if err != nil {
		return nil, err
	}
	if f != FaultNone {
		return nil, fmt.Errorf("spec: injected fault: %w", worm.ErrUnavailable)
	}
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	g, err := s.seg(seg, true)
	if err != nil {
		return nil, err
	}
	l := newListener(s.listenN)
	if g.listeners == nil {
		g.listeners = map[*listener]struct{}{}
	}
	g.listeners[l] = struct{}{}
	written := make([]uint32, 0, len(g.regs))
	for off, r := range g.regs {
		if r.has {
			written = append(written, off)
		}
	}
	slices.Sort(written)
	for _, off := range written {
		l.notify(off, g.regs[off].value)
	}
	go l.pump(ctx, c.done, func() {
		s.mu.Lock()
		if g := s.segs[seg]; g != nil {
			delete(g.listeners, l)
		}
		s.mu.Unlock()
	})
	return l.out, nil
}
