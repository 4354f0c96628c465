package chain

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/wire"
)

// Config configures a Client. Only Chain is required.
type Config struct {
	// Chain is every replica's address, head first: the list the replicas
	// were started with (each replica checks it against its own).
	Chain []string
	// Key is the cluster key, or nil for replicas without one.
	Key []byte
	// ID is this client's identity, recorded by Alloc (default: a random
	// "client-" name).
	ID string
	// Cluster, when set, is the cluster name every replica must announce;
	// when empty the first replica to answer sets it.
	Cluster string
	// Dialer makes the connections (default: kernel TCP, TCP_NODELAY).
	Dialer Dialer
	// OpTimeout bounds an operation whose context has no deadline
	// (default 10s).
	OpTimeout time.Duration
	// DialTimeout bounds one dial and handshake (default 2s).
	DialTimeout time.Duration
	// MaxAttempts bounds the seals a capture tries when higher seals keep
	// preempting it (default 64).
	MaxAttempts int
	// MaxPendingBytes bounds what may be queued for one replica that has
	// not read it; past it requests fail at once (default 16 MiB).
	MaxPendingBytes int
	// Logger receives connection events (default slog.Default()).
	Logger *slog.Logger
}

// Client is WormSpace over a chain of replicas: it implements worm.Space.
// Safe for concurrent use; meant to be shared (one connection per
// replica, many requests in flight on each).
type Client struct {
	cfg     Config
	log     *slog.Logger
	conns   []*cconn
	tail    int
	allMask uint64
	session uint64
	node    uint64
	round   atomic.Uint64

	segSize  uint32
	maxValue int
	maxFrame int
	cluster  string

	mu        sync.Mutex
	nextID    uint64
	pending   map[uint64]*call
	allocated map[uint64]struct{}
	listeners map[uint64]map[*listener]struct{}

	closed    chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
}

var _ worm.Space = (*Client)(nil)

// errClosed is returned for operations on a closed client.
var errClosed = fmt.Errorf("chain: client closed: %w", worm.ErrUnavailable)

// maxAllocCache bounds the segments a client remembers as allocated.
const maxAllocCache = 1 << 16

func random64() uint64 {
	var b [8]byte
	for {
		_, _ = rand.Read(b[:])
		if v := binary.LittleEndian.Uint64(b[:]); v != 0 {
			return v
		}
	}
}

// Dial connects to every replica of the chain and returns once each has
// completed the handshake and confirmed the chain. It fails at once on a
// configuration error (replicas that disagree with Chain or with each
// other, a refused key) and with worm.ErrUnavailable when ctx ends before
// every replica answered: a chain needs all of its replicas.
func Dial(ctx context.Context, cfg Config) (*Client, error) {
	if len(cfg.Chain) == 0 || len(cfg.Chain) > maxChain {
		return nil, fmt.Errorf("%w: %d replicas (want 1..%d)", ErrConfig, len(cfg.Chain), maxChain)
	}
	if cfg.Key != nil && len(cfg.Key) < wire.MinKeySize {
		return nil, fmt.Errorf("%w: cluster key of %d bytes (want at least %d)", ErrConfig, len(cfg.Key), wire.MinKeySize)
	}
	if cfg.ID == "" {
		var b [6]byte
		_, _ = rand.Read(b[:])
		cfg.ID = "client-" + hex.EncodeToString(b[:])
	}
	if cfg.Dialer == nil {
		cfg.Dialer = tcpDialer{net.Dialer{KeepAlive: 15 * time.Second}}
	}
	if cfg.OpTimeout <= 0 {
		cfg.OpTimeout = 10 * time.Second
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 2 * time.Second
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 64
	}
	if cfg.MaxPendingBytes <= 0 {
		cfg.MaxPendingBytes = 16 << 20
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cl := &Client{
		cfg:       cfg,
		log:       cfg.Logger.With("client", cfg.ID),
		tail:      len(cfg.Chain) - 1,
		allMask:   1<<len(cfg.Chain) - 1,
		session:   random64(),
		node:      random64(),
		cluster:   cfg.Cluster,
		pending:   map[uint64]*call{},
		allocated: map[uint64]struct{}{},
		listeners: map[uint64]map[*listener]struct{}{},
		closed:    make(chan struct{}),
	}
	for i, addr := range cfg.Chain {
		cl.conns = append(cl.conns, newCConn(cl, i, addr))
	}
	for _, cn := range cl.conns {
		cl.wg.Add(1)
		go cn.run()
	}
	for _, cn := range cl.conns {
		for !cn.up() {
			select {
			case <-cn.settled:
			case <-ctx.Done():
				cl.Close()
				return nil, fmt.Errorf("chain: replica %s unreachable: %w: %w (%v)", cn.addr, worm.ErrUnavailable, ctx.Err(), cn.err())
			}
			cn.mu.Lock()
			err, fatal := cn.lastErr, cn.fatal
			cn.mu.Unlock()
			if fatal {
				cl.Close()
				return nil, fmt.Errorf("chain: replica %s: %w", cn.addr, err)
			}
			if cn.up() {
				break
			}
			// Unreachable for now: wait for a later attempt.
			t := time.NewTimer(20 * time.Millisecond)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				cl.Close()
				return nil, fmt.Errorf("chain: replica %s unreachable: %w: %w (%v)", cn.addr, worm.ErrUnavailable, ctx.Err(), err)
			}
		}
	}
	return cl, nil
}

func (cn *cconn) err() error {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	return cn.lastErr
}

// admit checks a replica's hello against what the client knows.
func (cl *Client) admit(idx int, h wire.ServerHello) error {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	addr := cl.cfg.Chain[idx]
	if h.Flags&helloChain == 0 {
		return fmt.Errorf("%w: %s is not a chain replica (a wormserver?)", ErrConfig, addr)
	}
	if cl.cluster == "" {
		cl.cluster = h.Cluster
	} else if h.Cluster != cl.cluster {
		return fmt.Errorf("%w: replica %s is in cluster %q, not %q", ErrConfig, addr, h.Cluster, cl.cluster)
	}
	if cl.segSize == 0 {
		cl.segSize, cl.maxValue, cl.maxFrame = h.SegmentSize, int(h.MaxValue), int(h.MaxFrame)
	} else if h.SegmentSize != cl.segSize {
		return fmt.Errorf("%w: replica %s has segment size %d, the chain %d", ErrConfig, addr, h.SegmentSize, cl.segSize)
	} else {
		cl.maxValue, cl.maxFrame = min(cl.maxValue, int(h.MaxValue)), min(cl.maxFrame, int(h.MaxFrame))
	}
	return nil
}

func (cl *Client) isClosed() bool {
	select {
	case <-cl.closed:
		return true
	default:
		return false
	}
}

// ID returns the client's identity.
func (cl *Client) ID() string { return cl.cfg.ID }

// SegmentSize returns the chain's number of data registers per segment.
func (cl *Client) SegmentSize() uint32 { return cl.segSize }

// Close closes every connection and ends every Listen. Operations in
// progress fail with worm.ErrUnavailable or worm.ErrUnknownOutcome.
func (cl *Client) Close() error {
	cl.closeOnce.Do(func() {
		close(cl.closed)
		cl.wg.Wait()
	})
	return nil
}

// down returns an error naming the first replica in mask whose
// connection is down, or nil.
func (cl *Client) down(mask uint64) error {
	for i, cn := range cl.conns {
		if mask&(1<<i) != 0 && !cn.up() {
			select {
			case cn.redial <- struct{}{}:
			default:
			}
			return fmt.Errorf("chain: replica %s is unreachable: %w", cn.addr, worm.ErrUnavailable)
		}
	}
	return nil
}

func (cl *Client) begin(ctx context.Context) error {
	if cl.isClosed() {
		return errClosed
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%w: %w", worm.ErrUnavailable, err)
	}
	return nil
}

// nextToken returns a ballot higher than every one this client issued or
// saw.
func (cl *Client) nextToken() worm.Token {
	return worm.Token{Round: cl.round.Add(1), Node: cl.node}
}

// observe raises the round counter past b.
func (cl *Client) observe(b worm.Ballot) {
	for {
		cur := cl.round.Load()
		if b.Round <= cur || cl.round.CompareAndSwap(cur, b.Round) {
			return
		}
	}
}

func clone(b []byte) []byte { return append(make([]byte, 0, len(b)), b...) }

func (cl *Client) checkValues(values ...[]byte) error {
	cl.mu.Lock()
	maxValue, maxFrame := cl.maxValue, cl.maxFrame
	cl.mu.Unlock()
	total := wire.HeaderSize + reqFixed
	for _, v := range values {
		if len(v) > maxValue {
			return fmt.Errorf("%w: %d bytes (the chain's limit is %d)", worm.ErrTooLarge, len(v), maxValue)
		}
		total += regFixed + len(v)
	}
	if total > maxFrame {
		return fmt.Errorf("%w: batch of %d bytes exceeds the frame limit of %d", worm.ErrTooLarge, total, maxFrame)
	}
	return nil
}

// ---------------------------------------------------------------------------
// Broadcasts (seal, segment seal, trim, status) and single requests

// broadcast sends req to every replica and waits for every answer. The
// caller reads c.replies[i] for replica i and releases c. err is
// worm.ErrUnavailable (a replica unreachable or silent until ctx ended),
// with c already released.
func (cl *Client) broadcast(ctx context.Context, req *request) (*call, error) {
	if err := cl.down(cl.allMask); err != nil {
		return nil, err
	}
	c := cl.newCall(cl.allMask, len(cl.conns))
	for i, cn := range cl.conns {
		if !cn.send(c.id<<slotBits|uint64(i), req) {
			cl.failSend(c, i)
			break
		}
	}
	if exp := cl.wait(ctx, c); exp != nil {
		cl.release(c)
		return nil, fmt.Errorf("chain: %s: %w: %w", opName(req.op), worm.ErrUnavailable, exp)
	}
	if lost := c.lost; lost >= 0 {
		cl.release(c)
		return nil, fmt.Errorf("chain: %s: replica %s unreachable: %w", opName(req.op), cl.conns[lost].addr, worm.ErrUnavailable)
	}
	return c, nil
}

// ask sends req to replica idx and waits for its answer (c.replies[0]).
func (cl *Client) ask(ctx context.Context, idx int, req *request) (*call, error) {
	if err := cl.down(1 << idx); err != nil {
		return nil, err
	}
	c := cl.newCall(1<<idx, 1)
	if !cl.conns[idx].send(c.id<<slotBits, req) {
		cl.failSend(c, idx)
	}
	if exp := cl.wait(ctx, c); exp != nil {
		cl.release(c)
		return nil, fmt.Errorf("chain: %s: %w: %w", opName(req.op), worm.ErrUnavailable, exp)
	}
	if lost := c.lost; lost >= 0 {
		cl.release(c)
		return nil, fmt.Errorf("chain: %s: replica %s unreachable: %w", opName(req.op), cl.conns[lost].addr, worm.ErrUnavailable)
	}
	return c, nil
}

// statusErr turns a whole-request status into an error (nil for OK).
func statusErr(r *response) error {
	switch r.status {
	case StatusOK:
		return nil
	case StatusTrimmed:
		return worm.ErrTrimmed
	case StatusOutOfRange:
		return worm.ErrOutOfRange
	case StatusInvalid:
		return fmt.Errorf("%w: replica refused %s: %s", worm.ErrInvalid, opName(r.op), r.text)
	case StatusError:
		return fmt.Errorf("chain: replica could not serve %s (%s): %w", opName(r.op), r.text, worm.ErrUnavailable)
	}
	return fmt.Errorf("chain: %s answered %v: %w", opName(r.op), r.status, worm.ErrUnavailable)
}

// ---------------------------------------------------------------------------
// Writes

// writeRegs writes values to consecutive registers from (seg, off) with
// tok (zero: unsafe) through the chain. It returns one error per register
// (nil: written) in errs (reused when it has room), or a whole-request
// error. Registers the tail reports stranded are repaired by a capture
// before their error is returned.
func (cl *Client) writeRegs(ctx context.Context, seg uint64, off uint32, tok worm.Token, values [][]byte, errs []error) ([]error, error) {
	if err := cl.down(cl.allMask); err != nil {
		return nil, err
	}
	c := cl.newCall(cl.allMask, 1)
	c.regs = c.regs[:0]
	for _, v := range values {
		c.regs = append(c.regs, regIn{value: v})
	}
	req := request{op: opWrite, seg: seg, off: off, tok: tok, session: cl.session, regs: c.regs}
	sent := cl.conns[0].send(c.id<<slotBits, &req)
	if !sent {
		cl.release(c)
		return nil, fmt.Errorf("chain: write: head %s unreachable: %w", cl.conns[0].addr, worm.ErrUnavailable)
	}
	if exp := cl.wait(ctx, c); exp != nil {
		cl.release(c)
		return nil, fmt.Errorf("%w: write of %v sent, no answer: %w", worm.ErrUnknownOutcome, worm.Addr{Seg: seg, Off: off}, exp)
	}
	if lost := c.lost; lost >= 0 {
		cl.release(c)
		return nil, fmt.Errorf("%w: write of %v sent, then replica %s became unreachable (%w)", worm.ErrUnknownOutcome, worm.Addr{Seg: seg, Off: off}, cl.conns[lost].addr, worm.ErrUnavailable)
	}
	r := &c.replies[0].resp
	if r.status != StatusOK {
		err := statusErr(r)
		cl.release(c)
		return nil, err
	}
	if len(r.entries) != len(values) {
		n := len(r.entries)
		cl.release(c)
		return nil, fmt.Errorf("%w: write of %d registers answered for %d", ErrMalformed, len(values), n)
	}
	if cap(errs) < len(values) {
		errs = make([]error, len(values))
	}
	errs = errs[:len(values)]
	clear(errs)
	var stranded []int
	for i, e := range r.entries {
		a := worm.Addr{Seg: seg, Off: off + uint32(i)}
		switch e.status {
		case StatusOK:
		case StatusPreempted:
			errs[i] = worm.ErrPreempted
		case StatusWritten:
			if bytes.Equal(e.value, values[i]) {
				continue // cannot happen (the replica says OK), but it is the truth
			}
			errs[i] = &worm.WrittenError{Addr: a, Value: clone(e.value)}
		case StatusUnknown:
			errs[i] = fmt.Errorf("%w: %v: stored at the head, then refused further down the chain (a higher capture came between, or a replica could not forward it)", worm.ErrUnknownOutcome, a)
		case StatusStranded:
			stranded = append(stranded, i)
		case StatusUnavailable:
			errs[i] = fmt.Errorf("chain: %v: a replica could not forward the write: %w", a, worm.ErrUnavailable)
		case StatusTrimmed:
			errs[i] = worm.ErrTrimmed
		case StatusOutOfRange:
			errs[i] = worm.ErrOutOfRange
		default:
			errs[i] = fmt.Errorf("chain: %v: replica answered %v: %w", a, e.status, worm.ErrUnavailable)
		}
	}
	cl.release(c)
	for _, i := range stranded {
		// The head holds another value that the tail lacks (whoever
		// carried it died or was preempted on the way). This write had no
		// effect; finish that value (a capture does) before reporting it,
		// so that what we report is committed.
		a := worm.Addr{Seg: seg, Off: off + uint32(i)}
		_, err := cl.capture(ctx, a, false)
		switch {
		case errors.Is(err, worm.ErrWritten):
			errs[i] = err
		case err == nil, errors.Is(err, worm.ErrPreempted):
			errs[i] = worm.ErrPreempted
		default:
			errs[i] = fmt.Errorf("chain: %v: finishing the value the head holds: %w", a, err)
			if !errors.Is(err, worm.ErrUnavailable) && !errors.Is(err, worm.ErrTrimmed) {
				errs[i] = fmt.Errorf("%w: %w", worm.ErrUnavailable, errs[i])
			}
		}
	}
	return errs, nil
}

// Write writes value to addr with a token from Capture or CaptureSegment.
func (cl *Client) Write(ctx context.Context, addr worm.Addr, tok worm.Token, value []byte) error {
	if err := cl.begin(ctx); err != nil {
		return err
	}
	if tok.IsZero() {
		return fmt.Errorf("%w: zero token (use WriteUnsafe)", worm.ErrInvalid)
	}
	if addr.Off >= cl.segSize {
		return worm.ErrOutOfRange
	}
	if err := cl.checkValues(value); err != nil {
		return err
	}
	vals, errs := [1][]byte{value}, [1]error{}
	_, err := cl.writeRegs(ctx, addr.Seg, addr.Off, tok, vals[:], errs[:])
	if err != nil {
		return err
	}
	return errs[0]
}

// WriteUnsafe writes value at ballot 0, without capturing.
func (cl *Client) WriteUnsafe(ctx context.Context, addr worm.Addr, value []byte) error {
	if err := cl.begin(ctx); err != nil {
		return err
	}
	if addr.Off >= cl.segSize {
		return worm.ErrOutOfRange
	}
	if err := cl.checkValues(value); err != nil {
		return err
	}
	if err := cl.allocCheck(ctx, addr.Seg); err != nil {
		return err
	}
	vals, errs := [1][]byte{value}, [1]error{}
	_, err := cl.writeRegs(ctx, addr.Seg, addr.Off, worm.Token{}, vals[:], errs[:])
	if err != nil {
		return err
	}
	return errs[0]
}

// WriteBatch writes values to consecutive registers from (seg, off) in
// one request that travels the chain once.
func (cl *Client) WriteBatch(ctx context.Context, seg uint64, off uint32, tok worm.Token, values [][]byte) error {
	if err := cl.begin(ctx); err != nil {
		return err
	}
	if tok.IsZero() {
		return fmt.Errorf("%w: zero token", worm.ErrInvalid)
	}
	if len(values) == 0 {
		return fmt.Errorf("%w: empty batch", worm.ErrInvalid)
	}
	if uint64(off)+uint64(len(values)) > uint64(cl.segSize) {
		return worm.ErrOutOfRange
	}
	if err := cl.checkValues(values...); err != nil {
		return err
	}
	errs, err := cl.writeRegs(ctx, seg, off, tok, values, nil)
	if err != nil {
		return err
	}
	for _, e := range errs {
		if e != nil {
			return &worm.BatchError{Seg: seg, Off: off, Errs: errs}
		}
	}
	return nil
}

// ---------------------------------------------------------------------------
// Captures

// Capture seals addr at every replica with a fresh token. A value found
// anywhere is finished through the chain and reported as a
// *worm.WrittenError instead of a token.
func (cl *Client) Capture(ctx context.Context, addr worm.Addr) (worm.Token, error) {
	if err := cl.begin(ctx); err != nil {
		return worm.Token{}, err
	}
	if addr.Off >= cl.segSize {
		return worm.Token{}, worm.ErrOutOfRange
	}
	return cl.capture(ctx, addr, true)
}

// capture is Capture for any register (the metadata register included);
// checkAlloc makes an unallocated segment an error.
func (cl *Client) capture(ctx context.Context, addr worm.Addr, checkAlloc bool) (worm.Token, error) {
	if checkAlloc {
		if err := cl.allocCheck(ctx, addr.Seg); err != nil {
			return worm.Token{}, err
		}
	}
	for attempt := 1; ; attempt++ {
		tok := cl.nextToken()
		req := request{op: opSeal, seg: addr.Seg, off: addr.Off, tok: tok}
		c, err := cl.broadcast(ctx, &req)
		if err != nil {
			return worm.Token{}, err
		}
		nack := false
		var found []byte
		has, committed := false, false
		for i := range cl.conns {
			r := &c.replies[i].resp
			switch r.status {
			case StatusOK, StatusNack:
			default:
				err = statusErr(r)
			}
			if err != nil {
				break
			}
			cl.observe(r.promised)
			nack = nack || r.status == StatusNack
			if r.has && !committed {
				found, has = clone(r.value), true
				committed = i == cl.tail
			}
		}
		cl.release(c)
		switch {
		case err != nil:
			return worm.Token{}, err
		case committed:
			return worm.Token{}, &worm.WrittenError{Addr: addr, Value: found}
		case nack:
			if attempt >= cl.cfg.MaxAttempts {
				return worm.Token{}, fmt.Errorf("chain: capture of %v: %d attempts: %w", addr, attempt, worm.ErrPreempted)
			}
			continue
		case !has:
			return tok, nil
		}
		// A value stranded upstream of the tail: finish it with our seal.
		errs, err := cl.writeRegs(ctx, addr.Seg, addr.Off, tok, [][]byte{found}, nil)
		if err != nil {
			return worm.Token{}, finishErr(addr, err)
		}
		switch e := errs[0]; {
		case e == nil:
			return worm.Token{}, &worm.WrittenError{Addr: addr, Value: found}
		case errors.Is(e, worm.ErrWritten):
			return worm.Token{}, e
		case errors.Is(e, worm.ErrPreempted), errors.Is(e, worm.ErrUnknownOutcome):
			// A higher capture came between our seal and our finish.
			if attempt >= cl.cfg.MaxAttempts {
				return worm.Token{}, fmt.Errorf("chain: capture of %v: %d attempts: %w", addr, attempt, worm.ErrPreempted)
			}
		default:
			return worm.Token{}, finishErr(addr, e)
		}
	}
}

// finishErr reports a failed finish of a stranded value: the capture
// changed no value anyone can read, so it is unavailability (or trim).
func finishErr(addr worm.Addr, err error) error {
	if errors.Is(err, worm.ErrTrimmed) {
		return worm.ErrTrimmed
	}
	return fmt.Errorf("chain: capture of %v: finishing a stranded value: %w (%v)", addr, worm.ErrUnavailable, err)
}

// CaptureSegment seals every register of seg at every replica with a
// fresh token in one round; values found upstream of the tail are
// finished before they are reported.
func (cl *Client) CaptureSegment(ctx context.Context, seg uint64) (worm.SegmentCapture, error) {
	if err := cl.begin(ctx); err != nil {
		return worm.SegmentCapture{}, err
	}
	if err := cl.allocCheck(ctx, seg); err != nil {
		return worm.SegmentCapture{}, err
	}
	for attempt := 1; ; attempt++ {
		tok := cl.nextToken()
		req := request{op: opSealSeg, seg: seg, tok: tok}
		c, err := cl.broadcast(ctx, &req)
		if err != nil {
			return worm.SegmentCapture{}, err
		}
		nack := false
		committed := map[uint32][]byte{}
		upstream := map[uint32][]byte{}
		contended := map[uint32]bool{}
		for i := range cl.conns {
			r := &c.replies[i].resp
			if r.status != StatusOK && r.status != StatusNack {
				err = statusErr(r)
				break
			}
			cl.observe(r.promised)
			nack = nack || r.status == StatusNack
			for _, e := range r.entries {
				if i == cl.tail {
					committed[e.off] = clone(e.value)
				} else if _, ok := upstream[e.off]; !ok {
					upstream[e.off] = clone(e.value)
				}
			}
			for _, off := range r.contended {
				contended[off] = true
			}
		}
		cl.release(c)
		if err != nil {
			return worm.SegmentCapture{}, err
		}
		if nack {
			if attempt >= cl.cfg.MaxAttempts {
				return worm.SegmentCapture{}, fmt.Errorf("chain: capture of segment %d: %d attempts: %w", seg, attempt, worm.ErrPreempted)
			}
			continue
		}
		retry := false
		for off, v := range upstream {
			if _, ok := committed[off]; ok || contended[off] {
				// Committed already; or another capture holds the register
				// and will finish it (our token cannot).
				continue
			}
			errs, err := cl.writeRegs(ctx, seg, off, tok, [][]byte{v}, nil)
			if err != nil {
				return worm.SegmentCapture{}, finishErr(worm.Addr{Seg: seg, Off: off}, err)
			}
			switch e := errs[0]; {
			case e == nil:
				committed[off] = v
			case errors.Is(e, worm.ErrWritten):
				w, _ := worm.WrittenValue(e)
				committed[off] = w
			case errors.Is(e, worm.ErrPreempted), errors.Is(e, worm.ErrUnknownOutcome):
				retry = true
			default:
				return worm.SegmentCapture{}, finishErr(worm.Addr{Seg: seg, Off: off}, e)
			}
		}
		if retry {
			if attempt >= cl.cfg.MaxAttempts {
				return worm.SegmentCapture{}, fmt.Errorf("chain: capture of segment %d: %d attempts: %w", seg, attempt, worm.ErrPreempted)
			}
			continue
		}
		sc := worm.SegmentCapture{Token: tok}
		for off, v := range committed {
			sc.Written = append(sc.Written, worm.Entry{Off: off, Value: v})
		}
		slices.SortFunc(sc.Written, func(a, b worm.Entry) int { return cmpU32(a.Off, b.Off) })
		for off := range contended {
			sc.Contended = append(sc.Contended, off)
		}
		slices.Sort(sc.Contended)
		return sc, nil
	}
}

func cmpU32(a, b uint32) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// ---------------------------------------------------------------------------
// Reads, allocation, trim

// Read returns addr's value from the tail, or worm.ErrEmpty.
func (cl *Client) Read(ctx context.Context, addr worm.Addr) ([]byte, error) {
	if err := cl.begin(ctx); err != nil {
		return nil, err
	}
	if addr.Off >= cl.segSize {
		return nil, worm.ErrOutOfRange
	}
	v, allocated, err := cl.readTail(ctx, addr)
	if errors.Is(err, worm.ErrEmpty) && !allocated && !cl.isAllocated(addr.Seg) {
		return nil, worm.ErrUnallocated
	}
	return v, err
}

// readTail reads any register at the tail: its value (a copy) or
// ErrEmpty, and whether the segment is allocated there.
func (cl *Client) readTail(ctx context.Context, addr worm.Addr) ([]byte, bool, error) {
	req := request{op: opRead, seg: addr.Seg, off: addr.Off}
	c, err := cl.ask(ctx, cl.tail, &req)
	if err != nil {
		return nil, false, err
	}
	defer cl.release(c)
	r := &c.replies[0].resp
	if r.allocated {
		cl.markAllocated(addr.Seg)
	}
	switch r.status {
	case StatusOK:
		return clone(r.value), r.allocated, nil
	case StatusEmpty:
		return nil, r.allocated, worm.ErrEmpty
	}
	return nil, false, statusErr(r)
}

func (cl *Client) isAllocated(seg uint64) bool {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	_, ok := cl.allocated[seg]
	return ok
}

func (cl *Client) markAllocated(seg uint64) {
	cl.mu.Lock()
	if len(cl.allocated) >= maxAllocCache {
		clear(cl.allocated)
	}
	cl.allocated[seg] = struct{}{}
	cl.mu.Unlock()
}

// allocCheck returns nil when seg is allocated (cached, or its metadata
// register holds a value at the tail), ErrUnallocated or ErrTrimmed.
func (cl *Client) allocCheck(ctx context.Context, seg uint64) error {
	if cl.isAllocated(seg) {
		return nil
	}
	_, err := cl.Check(ctx, seg)
	return err
}

// Alloc allocates seg: an unsafe write of (identity, meta) to its
// metadata register. The head orders concurrent Allocs, so the first to
// reach it wins, and every caller learns the winner.
func (cl *Client) Alloc(ctx context.Context, seg uint64, meta []byte) (worm.SegmentInfo, error) {
	if err := cl.begin(ctx); err != nil {
		return worm.SegmentInfo{}, err
	}
	mine := encodeInfo(cl.cfg.ID, meta)
	if err := cl.checkValues(mine); err != nil {
		return worm.SegmentInfo{}, err
	}
	addr := worm.Addr{Seg: seg, Off: worm.MetaOffset}
	learn := func(v []byte) (worm.SegmentInfo, error) {
		info, err := decodeInfo(v, cl.cfg.ID)
		if err == nil {
			cl.markAllocated(seg)
		}
		return info, err
	}
	tok := worm.Token{}
	for attempt := 1; ; attempt++ {
		errs, err := cl.writeRegs(ctx, seg, worm.MetaOffset, tok, [][]byte{mine}, nil)
		if err != nil {
			return worm.SegmentInfo{}, err
		}
		e := errs[0]
		if e == nil {
			return learn(mine)
		}
		if v, ok := worm.WrittenValue(e); ok {
			return learn(v)
		}
		if !errors.Is(e, worm.ErrPreempted) && !errors.Is(e, worm.ErrUnknownOutcome) {
			return worm.SegmentInfo{}, e
		}
		// Someone sealed the metadata register (a repair of a stranded
		// record): capture it too, which finishes any record it holds.
		if attempt >= cl.cfg.MaxAttempts {
			return worm.SegmentInfo{}, fmt.Errorf("chain: alloc of %d: %d attempts: %w", seg, attempt, worm.ErrUnavailable)
		}
		t, err := cl.capture(ctx, addr, false)
		if v, ok := worm.WrittenValue(err); ok {
			return learn(v)
		}
		if err != nil && !errors.Is(err, worm.ErrPreempted) {
			return worm.SegmentInfo{}, err
		}
		tok = t
	}
}

// Check reads seg's allocation record at the tail.
func (cl *Client) Check(ctx context.Context, seg uint64) (worm.SegmentInfo, error) {
	if err := cl.begin(ctx); err != nil {
		return worm.SegmentInfo{}, err
	}
	v, _, err := cl.readTail(ctx, worm.Addr{Seg: seg, Off: worm.MetaOffset})
	if errors.Is(err, worm.ErrEmpty) {
		return worm.SegmentInfo{}, worm.ErrUnallocated
	}
	if err != nil {
		return worm.SegmentInfo{}, err
	}
	info, err := decodeInfo(v, cl.cfg.ID)
	if err == nil {
		cl.markAllocated(seg)
	}
	return info, err
}

// Trim trims seg at every replica.
func (cl *Client) Trim(ctx context.Context, seg uint64) error {
	if err := cl.begin(ctx); err != nil {
		return err
	}
	req := request{op: opTrim, seg: seg}
	c, err := cl.broadcast(ctx, &req)
	if err != nil {
		return err
	}
	defer cl.release(c)
	for i := range cl.conns {
		if err := statusErr(&c.replies[i].resp); err != nil {
			return err
		}
	}
	cl.mu.Lock()
	delete(cl.allocated, seg)
	cl.mu.Unlock()
	return nil
}

// ReplicaStatus is one replica's answer to a status request.
type ReplicaStatus struct {
	Addr   string
	Status string // JSON status document, when it answered
	Err    error
}

// Status asks every replica for its status document.
func (cl *Client) Status(ctx context.Context) []ReplicaStatus {
	out := make([]ReplicaStatus, len(cl.conns))
	for i, cn := range cl.conns {
		out[i].Addr = cn.addr
		req := request{op: opStatus}
		c, err := cl.ask(ctx, i, &req)
		if err != nil {
			out[i].Err = err
			continue
		}
		if err := statusErr(&c.replies[0].resp); err != nil {
			out[i].Err = err
		} else {
			out[i].Status = strings.Clone(c.replies[0].resp.text)
		}
		cl.release(c)
	}
	return out
}
