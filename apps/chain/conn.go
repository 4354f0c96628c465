package chain

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wormspace/wormspace/worm/sockio"
	"github.com/wormspace/wormspace/worm/wire"
)

// cconn is the client's connection to one replica, redialed in the
// background for the life of the Client.
type cconn struct {
	cl   *Client
	idx  int
	addr string
	log  *slog.Logger
	box  outbox
	isUp atomic.Bool
	// maxValue is the replica's value limit, from its hello; only the
	// connection's goroutine uses it.
	maxValue int

	mu      sync.Mutex
	lastErr error
	fatal   bool          // the replica refused this client (auth, configuration)
	tried   bool          // the first attempt has settled
	settled chan struct{} // closed when the first attempt settled
	redial  chan struct{} // capacity 1: an operation found the connection down
}

func newCConn(cl *Client, idx int, addr string) *cconn {
	return &cconn{cl: cl, idx: idx, addr: addr, log: cl.log.With("replica", addr), box: newOutbox(),
		settled: make(chan struct{}), redial: make(chan struct{}, 1)}
}

func (cn *cconn) up() bool { return cn.isUp.Load() }

// send queues req with id; false (nothing queued) when the connection is
// down or the replica stopped reading.
func (cn *cconn) send(id uint64, req *request) bool {
	if !cn.isUp.Load() {
		select {
		case cn.redial <- struct{}{}:
		default:
		}
		return false
	}
	b := &cn.box
	b.mu.Lock()
	if len(b.out) > cn.cl.cfg.MaxPendingBytes {
		b.mu.Unlock()
		return false
	}
	b.out = appendRequest(b.out, id, req)
	b.mu.Unlock()
	b.kick()
	return true
}

func (cn *cconn) settle(err error, fatal bool) {
	cn.mu.Lock()
	cn.lastErr, cn.fatal = err, fatal
	if !cn.tried {
		cn.tried = true
		close(cn.settled)
	}
	cn.mu.Unlock()
}

// run dials, serves and redials until the client closes.
func (cn *cconn) run() {
	cl := cn.cl
	defer cl.wg.Done()
	var backoff time.Duration
	for {
		wasUp, fatal, err := cn.session()
		if cl.isClosed() {
			cn.settle(errClosed, false)
			return
		}
		if wasUp {
			backoff = 0
			cn.log.Warn("connection to replica lost", "err", err)
		} else {
			cn.settle(err, fatal)
			cn.log.Debug("replica unreachable", "err", err)
		}
		backoff = min(max(2*backoff, 10*time.Millisecond), time.Second)
		if fatal {
			backoff = 5 * time.Second
		}
		t := time.NewTimer(backoff/2 + rand.N(backoff/2+1))
		select {
		case <-t.C:
		case <-cn.redial:
			t.Stop()
		case <-cl.closed:
			t.Stop()
			cn.settle(errClosed, false)
			return
		}
	}
}

// session runs one connection: dial, handshake, hello, then the reader
// until the connection breaks. wasUp reports whether it got that far.
func (cn *cconn) session() (wasUp, fatal bool, err error) {
	cl := cn.cl
	ctx, cancel := context.WithTimeout(context.Background(), cl.cfg.DialTimeout)
	defer cancel()
	go func() {
		select {
		case <-cl.closed:
			cancel()
		case <-ctx.Done():
		}
	}()
	nc, err := cl.cfg.Dialer.DialContext(ctx, "tcp", cn.addr)
	if err != nil {
		return false, false, err
	}
	defer nc.Close()
	sh, err := wire.ClientHandshake(ctx, nc, wire.ClientHello{ID: cl.cfg.ID, Flags: helloChain}, cl.cfg.Key)
	if err != nil {
		return false, errors.Is(err, wire.ErrAuth) || errors.Is(err, wire.ErrVersion), err
	}
	if err := cl.admit(cn.idx, sh); err != nil {
		return false, true, err
	}
	cn.maxValue = int(sh.MaxValue)
	rd := wire.NewReader(sockio.ReadWriter(nc), int(sh.MaxFrame))
	desc, err := helloSync(ctx, nc, rd, cl.session, int(sh.MaxValue))
	if err != nil {
		return false, errors.Is(err, wire.ErrAuth), err
	}
	if want := describeChain(cn.idx, cl.cfg.Chain); desc != want {
		return false, true, fmt.Errorf("%w: replica %s describes the chain as %q, this client was given %q", ErrConfig, cn.addr, desc, want)
	}
	stop := make(chan struct{})
	writerDone := make(chan struct{})
	go func() {
		cn.box.loop(nc, stop)
		close(writerDone)
	}()
	cn.box.reset()
	cn.isUp.Store(true)
	cn.settle(nil, false)
	cn.log.Debug("connected")
	if cn.idx == cl.tail {
		cl.resubscribe(cn)
	}
	closer := make(chan struct{})
	go func() {
		select {
		case <-cl.closed:
			nc.Close()
		case <-closer:
		}
	}()
	err = cn.read(rd)
	close(closer)
	cn.isUp.Store(false)
	nc.Close()
	close(stop)
	<-writerDone
	cn.box.reset()
	cl.connLost(cn.idx)
	return true, false, err
}

// read dispatches frames until the connection fails.
func (cn *cconn) read(rd *wire.Reader) error {
	cl := cn.cl
	var resp response
	maxValue := cn.maxValue
	for {
		f, err := rd.Next()
		if err != nil {
			return err
		}
		switch f.Type {
		case wire.FrameResponse:
			if err := cl.deliver(cn.idx, f.ID, f.Payload, maxValue, &resp); err != nil {
				return err
			}
		case wire.FramePush:
			seg, off, count, err := decodeNotify(f.Payload)
			if err != nil {
				return err
			}
			cl.notify(seg, off, count)
		case wire.FrameErr:
			re, derr := wire.DecodeError(f.Payload)
			if derr != nil {
				return derr
			}
			return re
		default:
			return fmt.Errorf("%w: unexpected %v frame", ErrMalformed, f.Type)
		}
	}
}

// ---------------------------------------------------------------------------
// Calls: an operation's outstanding requests and their replies.

// reply is one replica's decoded answer, deep-copied into storage the
// call owns (reused across calls).
type reply struct {
	ok   bool
	from int
	resp response
	vals []byte
}

// set copies src into r.
func (r *reply) set(from int, src *response) {
	n := len(src.value)
	for i := range src.entries {
		n += len(src.entries[i].value)
	}
	if cap(r.vals) < n || cap(r.vals) > 1<<20 && n < 1<<20 {
		r.vals = make([]byte, 0, max(n, 64))
	}
	vals := r.vals[:0]
	dup := func(v []byte) []byte {
		start := len(vals)
		vals = append(vals, v...)
		return vals[start:len(vals):len(vals)]
	}
	entries, contended := r.resp.entries[:0], r.resp.contended[:0]
	r.resp = *src
	r.resp.value = dup(src.value)
	for _, e := range src.entries {
		e.value = dup(e.value)
		entries = append(entries, e)
	}
	r.resp.entries = entries
	r.resp.contended = append(contended, src.contended...)
	r.vals = vals
	r.ok, r.from = true, from
}

// call collects the replies to one operation's requests. Request ids are
// call id << slotBits | slot; a broadcast uses the replica index as the
// slot, a write slot 0 (its reply comes from whichever replica settles
// it).
type call struct {
	mu      sync.Mutex
	id      uint64
	mask    uint64 // replicas whose lost connection fails the call
	need    int
	got     int
	done    bool
	lost    int // the replica whose connection broke, or -1
	expired bool
	sig     chan struct{} // capacity 1
	replies [maxChain]reply
	regs    []regIn // scratch for the write request
}

var callPool = sync.Pool{New: func() any { return &call{sig: make(chan struct{}, 1)} }}

func (c *call) finishLocked() {
	c.done = true
	select {
	case c.sig <- struct{}{}:
	default:
	}
}

// newCall registers a call that needs need replies and fails when the
// connection to a replica in mask breaks.
func (cl *Client) newCall(mask uint64, need int) *call {
	c := callPool.Get().(*call)
	cl.mu.Lock()
	cl.nextID++
	id := cl.nextID
	c.mu.Lock()
	c.id, c.mask, c.need, c.got, c.done, c.lost, c.expired = id, mask, need, 0, false, -1, false
	for i := range c.replies {
		c.replies[i].ok = false
	}
	select {
	case <-c.sig:
	default:
	}
	c.mu.Unlock()
	cl.pending[id] = c
	cl.mu.Unlock()
	return c
}

// release returns c to the pool; nothing of its replies may be used
// afterwards.
func (cl *Client) release(c *call) {
	cl.mu.Lock()
	if cl.pending[c.id] == c {
		delete(cl.pending, c.id)
	}
	cl.mu.Unlock()
	c.mu.Lock()
	c.done = true
	c.id = 0
	c.mu.Unlock()
	callPool.Put(c)
}

// failSend marks c failed because a request could not be sent to replica
// idx (its connection is down).
func (cl *Client) failSend(c *call, idx int) {
	c.mu.Lock()
	if !c.done {
		c.lost = idx
		c.finishLocked()
	}
	c.mu.Unlock()
}

// deliver hands a response frame to its call.
func (cl *Client) deliver(from int, id uint64, payload []byte, maxValue int, scratch *response) error {
	cid, slot := id>>slotBits, int(id&slotMask)
	cl.mu.Lock()
	c := cl.pending[cid]
	cl.mu.Unlock()
	if c == nil {
		return nil // a late answer to a call that gave up
	}
	if err := decodeResponse(payload, maxValue, scratch); err != nil {
		return err
	}
	c.mu.Lock()
	if c.id == cid && !c.done && slot < len(c.replies) && !c.replies[slot].ok {
		c.replies[slot].set(from, scratch)
		c.got++
		if c.got >= c.need {
			c.finishLocked()
		}
	}
	c.mu.Unlock()
	return nil
}

// connLost fails every call that depends on replica idx.
func (cl *Client) connLost(idx int) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	for cid, c := range cl.pending {
		if c.mask&(1<<idx) == 0 {
			continue
		}
		c.mu.Lock()
		if c.id == cid && !c.done {
			c.lost = idx
			c.finishLocked()
		}
		c.mu.Unlock()
	}
	if idx == cl.tail {
		cl.lostAllLocked()
	}
}

// timerPool holds stopped timers for waits whose context has no deadline
// (OpTimeout bounds them): a pooled timer costs no allocation, where
// context.WithTimeout costs several per operation.
var timerPool = sync.Pool{New: func() any {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return t
}}

// errOpTimeout is the reason of a wait that OpTimeout ended.
var errOpTimeout = fmt.Errorf("operation timeout: %w", context.DeadlineExceeded)

// wait waits until c is done, ctx ends (or OpTimeout passes, for a ctx
// without a deadline) or the client closes. It reports expired (with the
// reason) when c did not finish.
func (cl *Client) wait(ctx context.Context, c *call) (expired error) {
	var timeout <-chan time.Time
	if _, ok := ctx.Deadline(); !ok {
		t := timerPool.Get().(*time.Timer)
		t.Reset(cl.cfg.OpTimeout)
		defer func() {
			t.Stop()
			timerPool.Put(t)
		}()
		timeout = t.C
	}
	select {
	case <-c.sig:
		return nil
	case <-ctx.Done():
		expired = ctx.Err()
	case <-timeout:
		expired = errOpTimeout
	case <-cl.closed:
		expired = errors.New("client closed")
	}
	c.mu.Lock()
	if c.done {
		c.mu.Unlock()
		return nil // finished as we gave up: use it
	}
	c.expired = true
	c.done = true
	c.mu.Unlock()
	return expired
}
