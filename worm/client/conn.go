package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"time"

	"github.com/wormspace/wormspace/worm/paxos"
	"github.com/wormspace/wormspace/worm/sockio"
	"github.com/wormspace/wormspace/worm/wire"
)

// responder receives what a connection learns about the requests it sent
// for someone: a response, or the news that none will come.
//
// deliver and failed are called from a connection's reader goroutine (or
// from whoever tears the connection down) without any connection lock
// held; resp and its slices are valid only during the call.
type responder interface {
	deliver(from int, tag uint64, resp *paxos.Response)
	failed(from int)
}

// conn is the client's connection to one wormserver, redialed in the
// background for the life of the Client.
type conn struct {
	cl   *Client
	idx  int
	addr string
	log  *slog.Logger
	wake chan struct{} // capacity 1: "out has bytes"
	// redial (capacity 1) cuts a redial backoff short: an operation found
	// the connection down, so someone is waiting for this server.
	redial chan struct{}

	mu sync.Mutex
	nc net.Conn // nil while down
	// rw reads and writes nc: with raw system calls when nc is a socket
	// of this process (sockio.ReadWriter), so that the connection's
	// reader and writer never wake the runtime's parked sysmon.
	rw    io.ReadWriter
	stop  chan struct{}
	out   []byte // encoded requests not yet handed to the socket
	spare []byte // the other buffer of the double-buffered out
	// lazyArmed: a flushLazy timer is pending.
	lazyArmed bool
	// writing: flush holds the socket (one writer at a time, so frames
	// never interleave).
	writing bool
	pending map[uint64]responder
	hello   wire.ServerHello
	lastErr error
	fatal   bool
	// epoch is the configuration epoch the current connection is bound to
	// (the client's hello), serving whether the server serves it (its
	// hello or push said so, and it refused nothing since), stale that the
	// client's view left that epoch: no new requests, and the connection
	// is closed once nothing is outstanding on it (epoch.go). target is
	// the address of the member the view puts here, when it differs from
	// addr (addr stays what Config.Servers said).
	epoch   uint64
	serving bool
	stale   bool
	target  string
	// rebinding: the view changed and this connection has not finished a
	// dial under it yet; operations wait for that (epoch.go).
	rebinding bool
}

func newConn(cl *Client, idx int, addr string) *conn {
	return &conn{cl: cl, idx: idx, addr: addr, log: cl.log.With("server", addr),
		wake: make(chan struct{}, 1), redial: make(chan struct{}, 1), pending: map[uint64]responder{}}
}

// send queues req for the server and registers r for its response (tag 0:
// no response expected). It reports false, queueing nothing, when the
// connection is down or the server has not read MaxPendingBytes already
// queued: the caller treats the request as failed. It is for requests
// outside any configuration epoch (listen, status); operations use
// sendAt.
func (cn *conn) send(r responder, tag uint64, req *paxos.Request) bool {
	return cn.sendAt(anyEpoch, r, tag, req)
}

// anyEpoch, as sendAt's epoch, sends whatever the connection's epoch.
const anyEpoch = ^uint64(0)

// sendAt is send for an operation issued under epoch: it also reports
// false when the connection is not bound to epoch or the server does not
// serve it (the request would be refused).
func (cn *conn) sendAt(epoch uint64, r responder, tag uint64, req *paxos.Request) bool {
	cn.mu.Lock()
	if cn.nc == nil || len(cn.out) > cn.cl.cfg.MaxPendingBytes || epoch != anyEpoch && (cn.epoch != epoch || !cn.serving || cn.stale) {
		down := cn.nc == nil
		cn.mu.Unlock()
		if down {
			select {
			case cn.redial <- struct{}{}:
			default:
			}
		}
		return false
	}
	if tag != 0 && r != nil {
		cn.pending[tag] = r
	}
	cn.out = wire.AppendRequest(cn.out, tag, req)
	cn.mu.Unlock()
	select {
	case cn.wake <- struct{}{}:
	default:
	}
	return true
}

// flush writes what is queued, unless someone else is writing (they drain
// it); only the writer goroutine calls it today.
func (cn *conn) flush() {
	cn.mu.Lock()
	nc, rw := cn.nc, cn.rw
	if cn.writing || nc == nil || len(cn.out) == 0 {
		cn.mu.Unlock()
		return
	}
	cn.writing = true
	for len(cn.out) > 0 && cn.nc == nc {
		buf := cn.out
		cn.out = cn.spare[:0]
		cn.spare = nil
		cn.mu.Unlock()
		_, err := rw.Write(buf)
		cn.mu.Lock()
		if cap(buf) <= 1<<20 {
			cn.spare = buf[:0]
		}
		if err != nil {
			nc.Close() // the reader sees it and tears down
			break
		}
	}
	cn.writing = false
	cn.mu.Unlock()
}

// lazyDelay bounds how long a request that needs no answer (a Decide)
// waits for company before it is sent on its own. While the client is
// busy a lazy request leaves with the next one long before that; the
// delay only matters once it goes idle, and a decide is a hint (a read
// without it takes one quorum round all the same). It is long on
// purpose: the timer fires once per delay per busy connection, and at
// 1 ms those wake-ups (3,000/s with three servers) took a single
// client's write from 65-80 µs to 95-105 µs p50 on a 2-vCPU machine
// (worm bench -local 3 -volatile -clients 1 -workloads write).
const lazyDelay = 20 * time.Millisecond

// sendLazy queues req, which expects no response (a Decide: a hint that
// lets later reads take the fast path), without waking the writer: it
// leaves with the next request to this server, or after lazyDelay. On the
// hot path this halves the frames and system calls per write.
func (cn *conn) sendLazy(epoch uint64, req *paxos.Request) {
	cn.mu.Lock()
	if cn.nc == nil || len(cn.out) > cn.cl.cfg.MaxPendingBytes || cn.epoch != epoch || !cn.serving || cn.stale {
		cn.mu.Unlock()
		return // a hint: dropping it costs only a slower read later
	}
	cn.out = wire.AppendRequest(cn.out, 0, req)
	arm := !cn.lazyArmed
	cn.lazyArmed = true
	cn.mu.Unlock()
	if arm {
		time.AfterFunc(lazyDelay, cn.flushLazy)
	}
}

func (cn *conn) flushLazy() {
	cn.mu.Lock()
	cn.lazyArmed = false
	pending := len(cn.out) > 0
	cn.mu.Unlock()
	if pending {
		select {
		case cn.wake <- struct{}{}:
		default:
		}
	}
}

// forget drops the registration of tag if it still belongs to r.
func (cn *conn) forget(r responder, tag uint64) {
	cn.mu.Lock()
	if cn.pending[tag] == r {
		delete(cn.pending, tag)
	}
	nc := cn.retireLocked()
	cn.mu.Unlock()
	if nc != nil {
		nc.Close()
	}
}

// shutdown closes the current connection; run then sees the client closed
// and returns.
func (cn *conn) shutdown() {
	cn.mu.Lock()
	nc := cn.nc
	cn.mu.Unlock()
	if nc != nil {
		nc.Close()
	}
}

func (cl *Client) isClosed() bool {
	select {
	case <-cl.closed:
		return true
	default:
		return false
	}
}

// fatalDial reports whether a dial error means the server refused this
// client (retrying will not help soon), as opposed to being unreachable.
func fatalDial(err error) bool {
	return errors.Is(err, wire.ErrAuth) || errors.Is(err, wire.ErrVersion) || errors.Is(err, ErrConfig)
}

// run dials, serves and redials the connection until the client closes.
func (cn *conn) run(ready chan<- readyEvent) {
	defer cn.cl.wg.Done()
	// Redials back off exponentially while nobody needs the server, up to
	// maxBackoff; an operation that finds the connection down cuts the
	// wait short, but attempts stay at least minBackoff apart.
	const minBackoff, maxBackoff = 25 * time.Millisecond, time.Second
	backoff := minBackoff
	wasUp := false
	for !cn.cl.isClosed() {
		nc, h, epoch, err := cn.dial()
		if err != nil {
			fatal := fatalDial(err)
			cn.mu.Lock()
			cn.lastErr, cn.fatal = err, fatal
			settled := cn.rebinding && epoch == cn.cl.epochNow.Load()
			if settled {
				cn.rebinding = false
			}
			cn.mu.Unlock()
			if settled {
				cn.cl.mu.Lock()
				cn.cl.changedLocked()
				cn.cl.mu.Unlock()
			}
			select {
			case ready <- readyEvent{err: err, fatal: fatal}:
			default:
			}
			if wasUp || fatal {
				cn.log.Warn("wormserver unreachable", "err", err)
				wasUp = false
			}
			// Jittered, capped exponential backoff.
			d := backoff/2 + rand.N(backoff/2+1)
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-cn.redial:
				t.Stop()
				select {
				case <-time.After(minBackoff):
				case <-cn.cl.closed:
					return
				}
			case <-cn.cl.closed:
				t.Stop()
				return
			}
			backoff = min(2*backoff, maxBackoff)
			continue
		}
		backoff = minBackoff
		stop := make(chan struct{})
		cn.mu.Lock()
		rw := sockio.ReadWriter(nc)
		cn.nc, cn.rw, cn.stop, cn.hello, cn.out = nc, rw, stop, h, cn.out[:0]
		cn.epoch, cn.serving, cn.stale = epoch, false, false
		if epoch == cn.cl.epochNow.Load() {
			cn.rebinding = false // learn below tells the waiters
		}
		cn.lastErr, cn.fatal = nil, false
		cn.mu.Unlock()
		if cn.cl.isClosed() {
			cn.down(errClosed)
			return
		}
		// What the server is: serving our epoch, sealed, or a member of a
		// newer configuration (which the client adopts, binding this
		// connection again).
		cn.cl.learn(cn, h.Membership)
		if !wasUp {
			cn.log.Debug("connected", "acceptor", h.AcceptorID)
		}
		wasUp = true
		select {
		case ready <- readyEvent{}:
		default:
			// Dial has returned; nobody counts any more.
		}
		cn.cl.resubscribe(cn)
		writerDone := make(chan struct{})
		go cn.writer(nc, stop, writerDone)
		err = cn.reader(rw, h)
		cn.mu.Lock()
		retired := cn.stale
		cn.mu.Unlock()
		switch {
		case cn.cl.isClosed():
		case retired:
			cn.log.Debug("connection bound again", "epoch", cn.cl.viewEpoch())
		default:
			cn.log.Warn("connection lost", "err", err)
		}
		cn.down(err)
		<-writerDone
	}
}

// dial connects and runs the handshake, binding the connection to the
// client's epoch, which it returns.
func (cn *conn) dial() (net.Conn, wire.ServerHello, uint64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cn.cl.cfg.DialTimeout)
	defer cancel()
	go func() {
		select {
		case <-cn.cl.closed:
			cancel()
		case <-ctx.Done():
		}
	}()
	addr, epoch := cn.dialAddr(), cn.cl.viewEpoch()
	nc, err := cn.cl.cfg.Dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, wire.ServerHello{}, epoch, err
	}
	h, err := wire.ClientHandshake(ctx, nc, wire.ClientHello{ID: cn.cl.cfg.ID, Epoch: epoch}, cn.cl.cfg.Key)
	if err != nil {
		nc.Close()
		return nil, wire.ServerHello{}, epoch, fmt.Errorf("handshake with %s: %w", addr, err)
	}
	if err := cn.cl.admit(cn.idx, h, epoch); err != nil {
		nc.Close()
		return nil, wire.ServerHello{}, epoch, err
	}
	return nc, h, epoch, nil
}

// down tears the connection down and fails every request outstanding on
// it.
func (cn *conn) down(err error) {
	cn.mu.Lock()
	nc := cn.nc
	if nc == nil {
		cn.mu.Unlock()
		return
	}
	cn.nc, cn.rw = nil, nil
	close(cn.stop)
	cn.out = cn.out[:0]
	cn.lastErr = err
	var failed []responder
	seen := make(map[responder]struct{}, len(cn.pending))
	for _, r := range cn.pending {
		if _, ok := seen[r]; !ok {
			seen[r] = struct{}{}
			failed = append(failed, r)
		}
	}
	clear(cn.pending)
	cn.mu.Unlock()
	nc.Close()
	for _, r := range failed {
		r.failed(cn.idx)
	}
	cn.cl.lostAll()
	cn.cl.mu.Lock()
	cn.cl.changedLocked()
	cn.cl.mu.Unlock()
}

// writer hands queued requests to the socket: everything queued while the
// previous write ran leaves in the next single write.
//
// Woken, it yields once before it writes, so that goroutines already
// runnable queue their requests first and share the write: operations
// begun together (a transaction's votes from one process's participants,
// many clients' reads) leave in one system call and reach the server in
// one read, where the server can answer and sync them as one. With nothing
// else runnable the yield costs a pass through the scheduler. Measured
// side by side (worm bench -local 3 -volatile, alternating binaries, two
// runs): reads at 16 and 64 clients 117-126k and 193-200k/s against 85-89k
// and 125-129k, writes at 64 clients 85-97k against 79-82k, one client
// within the runs' spread; WormTX at 4 clients (worm bench tx) 0.42 wormd
// syncs per commit against 0.55, p50 0.90-0.93x of 2PC's against
// 1.03-1.06x.
func (cn *conn) writer(nc net.Conn, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	for {
		select {
		case <-cn.wake:
		case <-stop:
			return
		}
		runtime.Gosched()
		cn.flush()
		cn.mu.Lock()
		gone := cn.nc != nc
		cn.mu.Unlock()
		if gone {
			return
		}
	}
}

// reader decodes frames until the connection fails, stepping each response
// into the operation waiting for it.
func (cn *conn) reader(rw io.Reader, h wire.ServerHello) error {
	r := wire.NewReader(rw, int(h.MaxFrame))
	cn.mu.Lock()
	epoch := cn.epoch
	cn.mu.Unlock()
	var resp paxos.Response
	for {
		f, err := r.Next()
		if err != nil {
			return err
		}
		switch f.Type {
		case wire.FrameResponse:
			if err := wire.DecodeResponse(f.Payload, int(h.MaxValue), &resp); err != nil {
				return fmt.Errorf("malformed response from the server: %w", err)
			}
			cn.mu.Lock()
			rs := cn.pending[f.ID]
			delete(cn.pending, f.ID)
			retire := cn.retireLocked() != nil
			cn.mu.Unlock()
			if rs != nil {
				rs.deliver(cn.idx, f.ID, &resp)
			}
			if retire {
				return errRetired
			}
		case wire.FramePush:
			if err := wire.DecodeResponse(f.Payload, int(h.MaxValue), &resp); err != nil {
				return fmt.Errorf("malformed push from the server: %w", err)
			}
			// Reports of a configuration the client left must not count
			// with the new one's (adoptLocked).
			if resp.Kind == paxos.KindNotify && cn.cl.epochNow.Load() == epoch {
				cn.cl.notify(cn.idx, &resp)
			}
		case wire.FrameControl:
			// Only membership pushes (id 0): this connection sends no
			// control requests (Replace uses connections of its own).
			var rep wire.ControlReply
			if err := wire.DecodeControlReply(f.Payload, int(h.MaxValue), &rep); err != nil {
				return fmt.Errorf("malformed control frame from the server: %w", err)
			}
			if f.ID == 0 && rep.Op == wire.CtlMembership {
				cn.cl.learn(cn, rep.Membership)
			}
		case wire.FrameErr:
			re, err := wire.DecodeError(f.Payload)
			if err != nil {
				return err
			}
			return re
		default:
			return fmt.Errorf("unexpected %v frame from the server", f.Type)
		}
	}
}

// call drives one paxos.Op: it is the responder for every request the Op
// sends.
type call struct {
	cl    *Client
	epoch uint64        // the configuration epoch the Op runs under
	done  chan struct{} // closed when the Op finishes (not on Expire)

	mu     sync.Mutex
	op     *paxos.Op
	sent   []sentTag
	unsent []sentTag // scratch for pumpLocked
	// sentBuf backs sent for the first round to three servers.
	sentBuf  [3]sentTag
	finished bool
	// serverErr is the text of the last StatusError a server answered.
	serverErr string
	// sealed: a server refused a request because it does not serve the
	// epoch any more (StatusSealed).
	sealed bool
}

type sentTag struct {
	idx int
	tag uint64
}

func (c *call) deliver(from int, tag uint64, resp *paxos.Response) {
	c.mu.Lock()
	if resp.Status == paxos.StatusSealed {
		// Refused, nothing changed: as if never sent. The operation runs
		// again under the newer configuration if it needs to (Client.run).
		c.sealed = true
		c.cl.conns[from].refused(c.epoch)
		if !c.finished {
			c.op.Unsent(from, tag)
			c.pumpLocked()
		}
		c.mu.Unlock()
		return
	}
	if resp.Status == paxos.StatusError && resp.Text != "" {
		// The core counts it as no answer; keep the reason (a full disk,
		// a failed sync) for the error the caller sees.
		c.serverErr = resp.Text
	}
	if !c.finished {
		c.op.Step(from, tag, resp)
		c.pumpLocked()
	}
	c.mu.Unlock()
}

func (c *call) failed(from int) {
	c.mu.Lock()
	if !c.finished {
		c.op.Fail(from)
		c.pumpLocked()
	}
	c.mu.Unlock()
}

// pumpLocked sends whatever the Op asks for, reporting requests that cannot
// be sent as failed right away, until the outbox stays empty.
func (c *call) pumpLocked() {
	conns := c.cl.conns
	for {
		outs := c.op.TakeOutbox()
		if len(outs) == 0 {
			break
		}
		c.unsent = c.unsent[:0]
		for i := range outs {
			o := &outs[i]
			lo, hi := o.To, o.To+1
			if o.To == paxos.All {
				lo, hi = 0, len(conns)
			}
			for j := lo; j < hi; j++ {
				if o.Tag == 0 {
					conns[j].sendLazy(c.epoch, &o.Req)
					continue
				}
				switch {
				case conns[j].sendAt(c.epoch, c, o.Tag, &o.Req):
					if o.Tag != 0 {
						c.sent = append(c.sent, sentTag{j, o.Tag})
					}
				case o.Tag != 0:
					c.unsent = append(c.unsent, sentTag{j, o.Tag})
				}
			}
		}
		// outs is invalid from here on: Unsent may refill the outbox.
		for _, u := range c.unsent {
			c.op.Unsent(u.idx, u.tag)
		}
	}

	if c.op.Done() && !c.finished {
		c.finished = true
		close(c.done)
	}
}

// cleanup drops the registrations of requests that were never answered.
func (c *call) cleanup() {
	c.mu.Lock()
	sent := c.sent
	c.sent = nil
	c.mu.Unlock()
	for _, s := range sent {
		c.cl.conns[s.idx].forget(c, s.tag)
	}
}
