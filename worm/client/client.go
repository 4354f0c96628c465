package client

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/paxos"
	"github.com/wormspace/wormspace/worm/wire"
)

// Dialer makes connections to wormservers. netstack.Network and
// *net.Dialer satisfy it.
type Dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// Config configures a Client. Only Servers is required.
type Config struct {
	// Servers are the wormservers' addresses ("host:port"), in the same
	// order for every client of the cluster is not required: acceptors are
	// told apart by the identity they announce.
	Servers []string
	// Key is the cluster key (at least 32 bytes), or nil for a cluster that
	// runs without authentication.
	Key []byte
	// ID is this client's identity, recorded by Alloc. Default: a random
	// "client-" name.
	ID string
	// Cluster, when set, is the cluster name every server must announce.
	// When empty, the first server to answer sets it for the others.
	Cluster string
	// Dialer makes the connections. Default: kernel TCP with TCP_NODELAY.
	Dialer Dialer
	// OpTimeout bounds an operation whose context has no deadline.
	// Default 10s.
	OpTimeout time.Duration
	// NudgeAfter is how long an operation waits for stragglers once a
	// quorum has answered without deciding the phase. Default 20ms.
	NudgeAfter time.Duration
	// DialTimeout bounds one dial and handshake. Default 2s.
	DialTimeout time.Duration
	// MaxPendingBytes bounds the bytes queued for one server that it has
	// not read yet; past it requests to that server fail at once (as if it
	// were down) instead of growing memory. Default 16 MiB.
	MaxPendingBytes int
	// Logger receives connection events. Default slog.Default().
	Logger *slog.Logger
}

// ErrConfig reports an unusable Config or a cluster whose servers
// disagree.
var ErrConfig = errors.New("client: bad configuration")

// Client is WormSpace over a cluster of wormservers: it implements
// worm.Space. Safe for concurrent use.
type Client struct {
	cfg      Config
	log      *slog.Logger
	p        *paxos.Proposer
	conns    []*conn
	segSize  uint32
	maxValue int
	maxFrame int
	cluster  string
	rawTag   atomic.Uint64

	mu        sync.Mutex // guards cluster identity checks, listeners and the configuration
	acceptors map[uint32]int
	listeners map[uint64]map[*listener]struct{}
	// view is the configuration operations are issued under (epoch.go);
	// epochNow mirrors its epoch for lock-free readers; pendingNext is the
	// newest epoch a sealed server announced; changed is closed (and
	// replaced) whenever the view or a connection's serving state changes.
	view        view
	epochNow    atomic.Uint64
	pendingNext uint64
	changed     chan struct{}

	closed    chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
}

var _ worm.Space = (*Client)(nil)

type netDialer struct{ d net.Dialer }

func (d netDialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	c, err := d.d.DialContext(ctx, network, address)
	if err != nil {
		return nil, err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	return c, nil
}

// Dial connects to the cluster and returns once a quorum of servers
// completed the handshake (the rest keep being dialed in the background).
// It fails when ctx ends first (worm.ErrUnavailable), or at once on a
// configuration error: no servers, a bad key, servers that disagree on the
// cluster or segment size, or authentication refused by a quorum.
func Dial(ctx context.Context, cfg Config) (*Client, error) {
	if len(cfg.Servers) == 0 {
		return nil, fmt.Errorf("%w: no servers", ErrConfig)
	}
	if len(cfg.Servers) > 64 {
		return nil, fmt.Errorf("%w: %d servers (at most 64)", ErrConfig, len(cfg.Servers))
	}
	if cfg.Key != nil && len(cfg.Key) < 32 {
		return nil, fmt.Errorf("%w: cluster key of %d bytes (want at least 32)", ErrConfig, len(cfg.Key))
	}
	if cfg.ID == "" {
		var b [6]byte
		_, _ = rand.Read(b[:])
		cfg.ID = "client-" + hex.EncodeToString(b[:])
	}
	if cfg.Dialer == nil {
		cfg.Dialer = netDialer{net.Dialer{KeepAlive: 15 * time.Second}}
	}
	if cfg.OpTimeout <= 0 {
		cfg.OpTimeout = 10 * time.Second
	}
	if cfg.NudgeAfter <= 0 {
		cfg.NudgeAfter = 20 * time.Millisecond
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 2 * time.Second
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
		cluster:   cfg.Cluster,
		acceptors: map[uint32]int{},
		listeners: map[uint64]map[*listener]struct{}{},
		closed:    make(chan struct{}),
		changed:   make(chan struct{}),
	}
	cl.rawTag.Store(1 << 63)
	ready := make(chan readyEvent, len(cfg.Servers))
	for i, addr := range cfg.Servers {
		cn := newConn(cl, i, addr)
		cl.conns = append(cl.conns, cn)
	}
	for _, cn := range cl.conns {
		cl.wg.Add(1)
		go cn.run(ready)
	}
	quorum := len(cfg.Servers)/2 + 1
	// Wait for a quorum, and give the others until the first attempt of
	// every server settled (bounded by DialTimeout), so that a
	// misconfigured member is reported here rather than logged later.
	// A quorum must serve the client's configuration: the first hellos may
	// name a newer one (the connections are then bound again), or say
	// that a change is under way.
	var grace <-chan time.Time
wait:
	for {
		up, refused, lastErr := cl.census()
		if err := cl.misconfigured(); err != nil {
			cl.Close()
			return nil, err
		}
		cl.mu.Lock()
		serving, epoch, changed := cl.readyLocked(), cl.view.epoch, cl.changed
		cl.mu.Unlock()
		if serving {
			if cl.settled() {
				break
			}
			if grace == nil {
				grace = time.After(cfg.DialTimeout)
			}
		}
		if refused > len(cfg.Servers)-quorum {
			cl.Close()
			return nil, fmt.Errorf("client: %d of %d servers refused this client: %w", refused, len(cfg.Servers), lastErr)
		}
		select {
		case <-ready:
			continue
		case <-changed:
			continue
		case <-grace:
			break wait
		case <-ctx.Done():
			if serving {
				break wait
			}
			cl.Close()
			switch {
			case up >= quorum:
				return nil, fmt.Errorf("client: %d of %d servers reachable, but not %d serving configuration epoch %d (a membership change is under way; `worm replace` finishes one that was interrupted): %w: %w", up, len(cfg.Servers), quorum, epoch, worm.ErrUnavailable, ctx.Err())
			case lastErr != nil:
				return nil, fmt.Errorf("client: %d of %d servers reachable (need %d): %w: %w (last error: %v)", up, len(cfg.Servers), quorum, worm.ErrUnavailable, ctx.Err(), lastErr)
			}
			return nil, fmt.Errorf("client: %d of %d servers reachable (need %d): %w: %w", up, len(cfg.Servers), quorum, worm.ErrUnavailable, ctx.Err())
		}
	}
	// Once more: a server's refusal can land between the loop's check and
	// settled() seeing that server settled (TestSameAcceptorTwice caught
	// it under load).
	if err := cl.misconfigured(); err != nil {
		cl.Close()
		return nil, err
	}
	// The proposer needs the segment size, known from the first
	// handshake; a node id of 64 random bits keeps ballots unique.
	var nb [8]byte
	for {
		_, _ = rand.Read(nb[:])
		if binary.LittleEndian.Uint64(nb[:]) != 0 {
			break
		}
	}
	cl.mu.Lock()
	cl.p = paxos.NewProposer(binary.LittleEndian.Uint64(nb[:]), cfg.ID, len(cfg.Servers), cl.segSize)
	cl.mu.Unlock()
	return cl, nil
}

// census counts the servers connected and those that refused this client.
func (cl *Client) census() (up, refused int, lastErr error) {
	for _, cn := range cl.conns {
		cn.mu.Lock()
		if cn.nc != nil {
			up++
		} else if cn.lastErr != nil {
			lastErr = cn.lastErr
			if cn.fatal {
				refused++
			}
		}
		cn.mu.Unlock()
	}
	return up, refused, lastErr
}

// settled reports whether every server has been reached or has failed
// at least once.
func (cl *Client) settled() bool {
	for _, cn := range cl.conns {
		cn.mu.Lock()
		s := cn.nc != nil || cn.lastErr != nil
		cn.mu.Unlock()
		if !s {
			return false
		}
	}
	return true
}

// misconfigured returns the first configuration error a server reported
// (another cluster, another segment size, an acceptor listed twice).
func (cl *Client) misconfigured() error {
	for _, cn := range cl.conns {
		cn.mu.Lock()
		err := cn.lastErr
		cn.mu.Unlock()
		if errors.Is(err, ErrConfig) {
			return err
		}
	}
	return nil
}

type readyEvent struct {
	err   error
	fatal bool // the server refused us (auth, cluster mismatch), not just unreachable
}

// admit checks a server's hello, on a connection dialed under epoch,
// against the cluster the client knows and records its acceptor
// identity (in a configuration with recorded members, checks it is the
// member's). It sets the cluster's segment size and limits from the
// first server.
func (cl *Client) admit(idx int, h wire.ServerHello, epoch uint64) error {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.cluster == "" {
		cl.cluster = h.Cluster
	} else if h.Cluster != cl.cluster {
		return fmt.Errorf("%w: server %s is in cluster %q, not %q", ErrConfig, cl.cfg.Servers[idx], h.Cluster, cl.cluster)
	}
	if cl.segSize == 0 {
		cl.segSize = h.SegmentSize
		cl.maxValue = int(h.MaxValue)
		cl.maxFrame = int(h.MaxFrame)
	} else if h.SegmentSize != cl.segSize {
		return fmt.Errorf("%w: server %s has segment size %d, the cluster %d", ErrConfig, cl.cfg.Servers[idx], h.SegmentSize, cl.segSize)
	} else {
		cl.maxValue = min(cl.maxValue, int(h.MaxValue))
		cl.maxFrame = min(cl.maxFrame, int(h.MaxFrame))
	}
	switch {
	case epoch != cl.view.epoch:
		// Dialed under a configuration the client left meanwhile: the
		// connection is bound again at once (learn), so who answers
		// there says nothing about the current one.
		return nil
	case cl.view.members != nil:
		if want := cl.view.members[idx]; h.AcceptorID != want.ID {
			return fmt.Errorf("client: server %s announces acceptor %d; configuration epoch %d has acceptor %d there", want.Addr, h.AcceptorID, cl.view.epoch, want.ID)
		}
		return nil
	}
	if other, ok := cl.acceptors[h.AcceptorID]; ok && other != idx {
		return fmt.Errorf("%w: servers %s and %s are the same acceptor (id %d): quorums would not intersect", ErrConfig, cl.cfg.Servers[other], cl.cfg.Servers[idx], h.AcceptorID)
	}
	for id, i := range cl.acceptors {
		if i == idx && id != h.AcceptorID {
			return fmt.Errorf("%w: server %s was acceptor %d and now announces %d", ErrConfig, cl.cfg.Servers[idx], id, h.AcceptorID)
		}
	}
	cl.acceptors[h.AcceptorID] = idx
	return nil
}

// ID returns the client's identity, as recorded by Alloc.
func (cl *Client) ID() string { return cl.cfg.ID }

// SegmentSize returns the cluster's number of data registers per segment.
func (cl *Client) SegmentSize() uint32 { return cl.segSize }

// MaxValue returns the largest value the cluster accepts.
func (cl *Client) MaxValue() int {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return cl.maxValue
}

// Close closes every connection and ends every Listen. Operations in
// progress fail with worm.ErrUnavailable or worm.ErrUnknownOutcome.
func (cl *Client) Close() error {
	cl.closeOnce.Do(func() {
		close(cl.closed)
		for _, cn := range cl.conns {
			cn.shutdown()
		}
		cl.wg.Wait()
	})
	return nil
}

// errClosed is returned for operations on a closed client.
var errClosed = fmt.Errorf("client: closed: %w", worm.ErrUnavailable)

// runAt drives op, issued under epoch, to its end and returns its
// result, and whether a server refused one of its requests because it
// does not serve epoch any more (Client.run, epoch.go, decides what
// follows). ctx has a deadline.
func (cl *Client) runAt(ctx context.Context, epoch uint64, op *paxos.Op) (paxos.Result, bool) {
	if op.Done() {
		return op.Result(), false
	}
	c := &call{cl: cl, epoch: epoch, op: op, done: make(chan struct{})}
	c.sent = c.sentBuf[:0]
	c.mu.Lock()
	c.pumpLocked()
	c.mu.Unlock()
	defer c.cleanup()
	res := cl.wait(ctx, c)
	c.mu.Lock()
	why, sealed := c.serverErr, c.sealed
	c.mu.Unlock()
	if res.Err != nil && errors.Is(res.Err, worm.ErrUnavailable) && why != "" {
		res.Err = fmt.Errorf("%w (a server answered: %s)", res.Err, why)
	}
	return res, sealed
}

// timers recycles wait's nudge timers: most operations end before their
// first nudge, and a timer per operation was most of what the wait
// allocated. Since Go 1.23 a stopped timer's channel holds no stale value,
// so a recycled timer is as good as a new one.
var timers sync.Pool

func getTimer(d time.Duration) *time.Timer {
	if t, ok := timers.Get().(*time.Timer); ok {
		t.Reset(d)
		return t
	}
	return time.NewTimer(d)
}

func putTimer(t *time.Timer) {
	t.Stop()
	timers.Put(t)
}

// wait drives c until its op ends, its context ends or the client closes.
func (cl *Client) wait(ctx context.Context, c *call) paxos.Result {
	op := c.op
	var nudge *time.Timer
	var nudgeC <-chan time.Time
	defer func() {
		if nudge != nil {
			putTimer(nudge)
		}
	}()
	for {
		select {
		case <-c.done:
			if nudge != nil {
				nudge.Stop()
			}
			return op.Result()
		default:
		}
		if nudge == nil {
			nudge = getTimer(cl.cfg.NudgeAfter)
			nudgeC = nudge.C
		}
		select {
		case <-c.done:
		case <-nudgeC:
			c.mu.Lock()
			if !c.finished {
				op.Nudge()
				c.pumpLocked()
			}
			c.mu.Unlock()
			nudge.Reset(cl.cfg.NudgeAfter)
		case <-ctx.Done():
			nudge.Stop()
			c.mu.Lock()
			expired := !c.finished
			if expired {
				op.Expire()
				c.finished = true
			}
			c.mu.Unlock()
			res := op.Result()
			if expired && res.Err != nil {
				res.Err = fmt.Errorf("%w: %w", res.Err, ctx.Err())
			}
			return res
		case <-cl.closed:
			nudge.Stop()
			c.mu.Lock()
			expired := !c.finished
			if expired {
				op.Expire()
				c.finished = true
			}
			c.mu.Unlock()
			res := op.Result()
			if expired && res.Err != nil {
				res.Err = fmt.Errorf("%w: client closed", res.Err)
			}
			return res
		}
	}
}

// checkValues refuses values the cluster would refuse, before anything is
// sent.
func (cl *Client) checkValues(values ...[]byte) error {
	cl.mu.Lock()
	maxValue, maxFrame := cl.maxValue, cl.maxFrame
	cl.mu.Unlock()
	total := 64
	for _, v := range values {
		if len(v) > maxValue {
			return fmt.Errorf("%w: %d bytes (the cluster's limit is %d)", worm.ErrTooLarge, len(v), maxValue)
		}
		total += 8 + len(v)
	}
	if total > maxFrame {
		return fmt.Errorf("%w: batch of %d bytes exceeds the frame limit of %d", worm.ErrTooLarge, total, maxFrame)
	}
	return nil
}

// Capture runs a capture (phase 1) of addr and returns its token.
func (cl *Client) Capture(ctx context.Context, addr worm.Addr) (worm.Token, error) {
	res := cl.run(ctx, func(p *paxos.Proposer) *paxos.Op { return p.Capture(addr) })
	return res.Token, res.Err
}

// Write writes value to addr with a token from Capture or CaptureSegment.
func (cl *Client) Write(ctx context.Context, addr worm.Addr, tok worm.Token, value []byte) error {
	if tok.IsZero() {
		return fmt.Errorf("%w: zero token (use WriteUnsafe)", worm.ErrInvalid)
	}
	if err := cl.checkValues(value); err != nil {
		return err
	}
	return cl.run(ctx, func(p *paxos.Proposer) *paxos.Op { return p.Write(addr.Seg, addr.Off, tok, [][]byte{value}) }).Err
}

// WriteUnsafe writes value at ballot 0, without capturing.
func (cl *Client) WriteUnsafe(ctx context.Context, addr worm.Addr, value []byte) error {
	if err := cl.checkValues(value); err != nil {
		return err
	}
	return cl.run(ctx, func(p *paxos.Proposer) *paxos.Op { return p.Write(addr.Seg, addr.Off, worm.Token{}, [][]byte{value}) }).Err
}

// Read returns addr's chosen value or worm.ErrEmpty.
func (cl *Client) Read(ctx context.Context, addr worm.Addr) ([]byte, error) {
	res := cl.run(ctx, func(p *paxos.Proposer) *paxos.Op { return p.Read(addr) })
	return res.Value, res.Err
}

// Alloc allocates seg; the first caller wins.
func (cl *Client) Alloc(ctx context.Context, seg uint64, meta []byte) (worm.SegmentInfo, error) {
	if err := cl.checkValues(paxos.EncodeSegmentInfo(cl.cfg.ID, meta)); err != nil {
		return worm.SegmentInfo{}, err
	}
	res := cl.run(ctx, func(p *paxos.Proposer) *paxos.Op { return p.Alloc(seg, meta) })
	// Alloc's outcome is always definite once any allocator's value is
	// chosen, but many allocators of one segment can duel (each capture
	// preempting the others' before they write) past the core's retry
	// bound. The core has no clock, so the randomized backoff that ends a
	// duel lives here; the context bounds it.
	for backoff := 200 * time.Microsecond; errors.Is(res.Err, worm.ErrPreempted) && ctx.Err() == nil; backoff = min(2*backoff, 50*time.Millisecond) {
		t := time.NewTimer(time.Duration(mrand.Int64N(int64(backoff))))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return res.Info, res.Err
		}
		res = cl.run(ctx, func(p *paxos.Proposer) *paxos.Op { return p.Alloc(seg, meta) })
	}
	return res.Info, res.Err
}

// Check returns seg's allocation record or worm.ErrUnallocated.
func (cl *Client) Check(ctx context.Context, seg uint64) (worm.SegmentInfo, error) {
	res := cl.run(ctx, func(p *paxos.Proposer) *paxos.Op { return p.Check(seg) })
	return res.Info, res.Err
}

// CaptureSegment captures every register of seg in one round.
func (cl *Client) CaptureSegment(ctx context.Context, seg uint64) (worm.SegmentCapture, error) {
	res := cl.run(ctx, func(p *paxos.Proposer) *paxos.Op { return p.CaptureSegment(seg) })
	return res.Capture, res.Err
}

// WriteBatch writes values to consecutive registers from (seg, off).
func (cl *Client) WriteBatch(ctx context.Context, seg uint64, off uint32, tok worm.Token, values [][]byte) error {
	if tok.IsZero() {
		return fmt.Errorf("%w: zero token", worm.ErrInvalid)
	}
	if err := cl.checkValues(values...); err != nil {
		return err
	}
	return cl.run(ctx, func(p *paxos.Proposer) *paxos.Op { return p.Write(seg, off, tok, values) }).Err
}

// Trim garbage-collects seg.
func (cl *Client) Trim(ctx context.Context, seg uint64) error {
	return cl.run(ctx, func(p *paxos.Proposer) *paxos.Op { return p.Trim(seg) }).Err
}
