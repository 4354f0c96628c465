package netstack

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/waiter"
)

// This file is the Stack's net.Conn, net.Listener and dialer over gVisor's
// tcpip.Endpoint. It replaces gVisor's gonet adapter, which allocates on
// every blocking call: a channel and a waiter entry registered and
// unregistered per Read or Write that has to wait, a heap SliceWriter per
// Read, a bytes.Reader per Write, and a new timer plus a new channel per
// SetDeadline. wormd sets deadlines and blocks in Read on every request, so
// those were a good part of the allocations per message.
//
// Here each conn owns, for its whole lifetime:
//
//   - one waiter entry, registered at creation and removed at Close, whose
//     callback makes a non-blocking send on readWake and/or writeWake
//     (capacity 1: a wakeup that arrives while nobody waits is kept, so a
//     Read that saw ErrWouldBlock and then waits cannot miss the event that
//     arrived in between);
//   - one deadline per direction: a timer created on the first Set and
//     Reset afterwards, whose callback marks the deadline expired and makes
//     the same non-blocking send on that direction's wake channel;
//   - the io.Writer Read passes to the endpoint (the caller's buffer,
//     copied into directly) and the Payloader Write passes, both reused
//     under the direction's mutex.
//
// A blocked Read or Write therefore waits on exactly one channel, woken by
// data, space, a connection event, its deadline or Close; after any wakeup
// it re-checks everything, so a spurious wakeup costs one retry.

// connEvents are the events a conn's entry listens to. EventHUp and
// EventErr wake both directions: a reset or an abort must end a blocked
// Read and a blocked Write.
const connEvents = waiter.ReadableEvents | waiter.WritableEvents | waiter.EventHUp | waiter.EventErr

// conn is a TCP connection of a Stack. It implements net.Conn plus
// CloseRead and CloseWrite, like *net.TCPConn. Read, Write, Close and the
// deadline setters may be called concurrently from any goroutines;
// concurrent Reads (and concurrent Writes) are serialized, and one Write's
// bytes are never interleaved with another's.
type conn struct {
	ep tcpip.Endpoint
	wq *waiter.Queue

	// entry is registered on wq from newConn until Close.
	entry     waiter.Entry
	readWake  chan struct{} // capacity 1, see notify
	writeWake chan struct{} // capacity 1, see notify

	closed atomic.Bool

	// local and remote are fixed at creation: error values and LocalAddr
	// do not allocate per call.
	local, remote *net.TCPAddr

	readMu sync.Mutex
	rbuf   sliceWriter // guarded by readMu
	rd     deadline

	writeMu sync.Mutex
	wbuf    bytes.Reader // guarded by writeMu
	wd      deadline
}

var _ net.Conn = (*conn)(nil)

// newConn wraps ep, whose events are delivered to wq, and registers the
// conn's waiter entry. The conn owns ep: Close closes it.
func newConn(ep tcpip.Endpoint, wq *waiter.Queue) *conn {
	c := &conn{
		ep:        ep,
		wq:        wq,
		readWake:  make(chan struct{}, 1),
		writeWake: make(chan struct{}, 1),
	}
	c.rd.wake = c.readWake
	c.wd.wake = c.writeWake
	c.entry.Init((*connListener)(c), connEvents)
	wq.EventRegister(&c.entry)
	return c
}

// setAddrs records the endpoint's addresses once it is connected.
func (c *conn) setAddrs() {
	if a, err := c.ep.GetLocalAddress(); err == nil {
		c.local = toTCPAddr(a)
	}
	if a, err := c.ep.GetRemoteAddress(); err == nil {
		c.remote = toTCPAddr(a)
	}
}

// connListener is conn's waiter.EventListener. It is a distinct type so
// that NotifyEvent is not part of conn's method set.
type connListener conn

// NotifyEvent runs with the waiter queue locked, on whichever goroutine
// raised the event (a TCP processor, a timer, a user's Write): it only
// makes non-blocking sends.
func (l *connListener) NotifyEvent(m waiter.EventMask) {
	if m&(waiter.ReadableEvents|waiter.EventHUp|waiter.EventErr) != 0 {
		poke(l.readWake)
	}
	if m&(waiter.WritableEvents|waiter.EventHUp|waiter.EventErr) != 0 {
		poke(l.writeWake)
	}
}

// poke makes a non-blocking send on a wake channel of capacity 1.
func poke(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// sliceWriter is the io.Writer a Read hands to the endpoint: it copies
// into the caller's buffer. It lives in the conn (a local passed as an
// interface would escape to the heap on every Read).
type sliceWriter struct{ b []byte }

func (w *sliceWriter) Write(p []byte) (int, error) {
	n := copy(w.b, p)
	w.b = w.b[n:]
	if n < len(p) {
		return n, io.ErrShortWrite // the endpoint stops at a full buffer
	}
	return n, nil
}

// Read implements net.Conn. It returns io.EOF once the peer has closed
// its side (or after CloseRead), an error matching os.ErrDeadlineExceeded
// after the read deadline, and one matching net.ErrClosed after Close.
func (c *conn) Read(b []byte) (int, error) {
	c.readMu.Lock()
	defer c.readMu.Unlock()
	if len(b) == 0 {
		// The endpoint reports a zero-length read as a bad buffer; the
		// kernel returns 0, nil.
		if c.closed.Load() {
			return 0, c.opError("read", net.ErrClosed)
		}
		return 0, nil
	}
	for {
		if c.closed.Load() {
			return 0, c.opError("read", net.ErrClosed)
		}
		if c.rd.expired.Load() {
			return 0, c.opError("read", os.ErrDeadlineExceeded)
		}
		c.rbuf.b = b
		res, e := c.ep.Read(&c.rbuf, tcpip.ReadOptions{})
		c.rbuf.b = nil // do not keep the caller's buffer
		switch e.(type) {
		case nil:
			// Lets receive buffer moderation (Knobs.ModerateReceiveBuffer)
			// see the application's consumption, as gonet does.
			c.ep.ModerateRecvBuf(res.Count)
			return res.Count, nil
		case *tcpip.ErrWouldBlock:
			<-c.readWake
		case *tcpip.ErrClosedForReceive:
			if c.closed.Load() {
				return 0, c.opError("read", net.ErrClosed)
			}
			return 0, io.EOF
		default:
			if c.closed.Load() {
				return 0, c.opError("read", net.ErrClosed)
			}
			return 0, c.opError("read", os.NewSyscallError("read", connErrno(e)))
		}
	}
}

// Write implements net.Conn: it returns when all of b is queued in the
// send buffer, or with the count written so far and an error (the write
// deadline: os.ErrDeadlineExceeded; Close: net.ErrClosed; after
// CloseWrite or a reset: EPIPE, ECONNRESET).
func (c *conn) Write(b []byte) (int, error) {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	n := 0
	for {
		if c.closed.Load() {
			return n, c.opError("write", net.ErrClosed)
		}
		if c.wd.expired.Load() {
			return n, c.opError("write", os.ErrDeadlineExceeded)
		}
		if n == len(b) {
			return n, nil
		}
		c.wbuf.Reset(b[n:])
		k, e := c.ep.Write(&c.wbuf, tcpip.WriteOptions{})
		c.wbuf.Reset(nil) // do not keep the caller's buffer
		n += int(k)
		switch e.(type) {
		case nil:
			// Partial writes (send buffer nearly full) loop without
			// waiting: the endpoint queued what fit.
		case *tcpip.ErrWouldBlock:
			<-c.writeWake
		default:
			if c.closed.Load() {
				return n, c.opError("write", net.ErrClosed)
			}
			return n, c.opError("write", os.NewSyscallError("write", connErrno(e)))
		}
	}
}

// Close implements net.Conn: it wakes blocked Reads and Writes (they
// return net.ErrClosed), removes the waiter entry, stops the deadline
// timers and closes the endpoint (a FIN, or a reset if unread data
// remains, as the kernel does). A second Close returns net.ErrClosed.
func (c *conn) Close() error {
	if c.closed.Swap(true) {
		return c.opError("close", net.ErrClosed)
	}
	poke(c.readWake)
	poke(c.writeWake)
	c.wq.EventUnregister(&c.entry)
	c.rd.stop()
	c.wd.stop()
	c.ep.Close()
	return nil
}

// CloseRead shuts down the reading side: later Reads return io.EOF.
func (c *conn) CloseRead() error {
	if c.closed.Load() {
		return c.opError("close", net.ErrClosed)
	}
	if e := c.ep.Shutdown(tcpip.ShutdownRead); e != nil {
		return c.opError("close", os.NewSyscallError("shutdown", connErrno(e)))
	}
	return nil
}

// CloseWrite shuts down the writing side (sends a FIN once the send
// buffer drains); the peer reads io.EOF and may keep writing.
func (c *conn) CloseWrite() error {
	if c.closed.Load() {
		return c.opError("close", net.ErrClosed)
	}
	if e := c.ep.Shutdown(tcpip.ShutdownWrite); e != nil {
		return c.opError("close", os.NewSyscallError("shutdown", connErrno(e)))
	}
	return nil
}

// LocalAddr implements net.Conn.
func (c *conn) LocalAddr() net.Addr { return c.local }

// RemoteAddr implements net.Conn.
func (c *conn) RemoteAddr() net.Addr { return c.remote }

// SetDeadline implements net.Conn. Setting a deadline does not allocate
// (after the first one per direction, which creates that direction's
// timer).
func (c *conn) SetDeadline(t time.Time) error {
	if c.closed.Load() {
		return c.opError("set", net.ErrClosed)
	}
	c.rd.set(t)
	c.wd.set(t)
	return nil
}

// SetReadDeadline implements net.Conn.
func (c *conn) SetReadDeadline(t time.Time) error {
	if c.closed.Load() {
		return c.opError("set", net.ErrClosed)
	}
	c.rd.set(t)
	return nil
}

// SetWriteDeadline implements net.Conn.
func (c *conn) SetWriteDeadline(t time.Time) error {
	if c.closed.Load() {
		return c.opError("set", net.ErrClosed)
	}
	c.wd.set(t)
	return nil
}

// opError builds the error the kernel's net.TCPConn would return. Only
// failures allocate.
func (c *conn) opError(op string, err error) error {
	e := &net.OpError{Op: op, Net: "tcp", Err: err}
	if c.local != nil {
		e.Source = c.local
	}
	if c.remote != nil {
		e.Addr = c.remote
	}
	return e
}

// deadline is one direction's deadline. The timer is created by the first
// set with a future time and Reset by later ones, so setting a deadline
// per request does not allocate.
type deadline struct {
	// expired is true from the moment the deadline passes until it is
	// set again; Read and Write check it before every attempt.
	expired atomic.Bool
	wake    chan struct{} // the direction's wake channel

	mu    sync.Mutex
	at    time.Time // zero: no deadline
	timer *time.Timer
}

func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.at = t
	if t.IsZero() {
		d.expired.Store(false)
		if d.timer != nil {
			d.timer.Stop()
		}
		return
	}
	dur := time.Until(t)
	if dur <= 0 {
		if d.timer != nil {
			d.timer.Stop()
		}
		d.expired.Store(true)
		poke(d.wake)
		return
	}
	d.expired.Store(false)
	if d.timer == nil {
		d.timer = time.AfterFunc(dur, d.fire)
		return
	}
	d.timer.Reset(dur)
}

// fire runs on the timer's goroutine. A timer Stopped or Reset while fire
// was already starting must not expire a later deadline: fire re-checks
// the current one under mu.
func (d *deadline) fire() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.at.IsZero() {
		return
	}
	if now := time.Now(); now.Before(d.at) {
		d.timer.Reset(d.at.Sub(now)) // fired early relative to a moved deadline
		return
	}
	d.expired.Store(true)
	poke(d.wake)
}

func (d *deadline) stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.at = time.Time{}
	if d.timer != nil {
		d.timer.Stop()
	}
}

// connErrno maps an endpoint's error on an established connection to the
// errno the kernel would report.
func connErrno(e tcpip.Error) error {
	switch e.(type) {
	case *tcpip.ErrClosedForSend:
		return syscall.EPIPE
	case *tcpip.ErrNotConnected, *tcpip.ErrInvalidEndpointState:
		return syscall.ENOTCONN
	case *tcpip.ErrMessageTooLong:
		return syscall.EMSGSIZE
	}
	return errnoOf(e)
}

// tcpListener is the Stack's net.Listener. Like conn it registers one
// waiter entry for its lifetime. Accept on a closed listener, or on one
// whose Stack was closed, returns an error matching net.ErrClosed, as the
// kernel's does.
type tcpListener struct {
	st    *Stack
	ep    tcpip.Endpoint
	wq    *waiter.Queue
	addr  *net.TCPAddr
	entry waiter.Entry
	wake  chan struct{} // capacity 1: a connection is ready, or Close

	mu     sync.Mutex // serializes Accept
	closed atomic.Bool
}

var _ net.Listener = (*tcpListener)(nil)

func newListener(st *Stack, ep tcpip.Endpoint, wq *waiter.Queue) *tcpListener {
	l := &tcpListener{st: st, ep: ep, wq: wq, wake: make(chan struct{}, 1)}
	if a, err := ep.GetLocalAddress(); err == nil {
		l.addr = toTCPAddr(a)
	}
	l.entry.Init(waiter.ChannelNotifier(l.wake), waiter.ReadableEvents|waiter.EventHUp|waiter.EventErr)
	wq.EventRegister(&l.entry)
	return l
}

// Accept implements net.Listener.
func (l *tcpListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for {
		if l.closed.Load() || l.st.isClosed() {
			return nil, l.opError(net.ErrClosed)
		}
		ep, wq, e := l.ep.Accept(nil)
		switch e.(type) {
		case nil:
			c := newConn(ep, wq)
			c.setAddrs()
			return c, nil
		case *tcpip.ErrWouldBlock:
			<-l.wake
		default:
			if l.closed.Load() || l.st.isClosed() {
				return nil, l.opError(net.ErrClosed)
			}
			return nil, l.opError(os.NewSyscallError("accept", connErrno(e)))
		}
	}
}

// Close implements net.Listener: a blocked Accept returns net.ErrClosed,
// connections not yet accepted are reset.
func (l *tcpListener) Close() error {
	if l.closed.Swap(true) {
		return l.opError(net.ErrClosed)
	}
	poke(l.wake)
	l.wq.EventUnregister(&l.entry)
	l.ep.Close()
	return nil
}

// Addr implements net.Listener.
func (l *tcpListener) Addr() net.Addr { return l.addr }

func (l *tcpListener) opError(err error) error {
	e := &net.OpError{Op: "accept", Net: "tcp", Err: err}
	if l.addr != nil {
		e.Addr = l.addr
	}
	return e
}

// dial connects ep (whose events go to wq) to fa. The conn's own waiter
// entry reports the handshake's end (writable, or an error). ctx bounds
// the handshake; on failure ep is closed.
func dial(ctx context.Context, ep tcpip.Endpoint, wq *waiter.Queue, fa tcpip.FullAddress, opErr func(error) error) (*conn, error) {
	c := newConn(ep, wq)
	e := ep.Connect(fa)
	if _, ok := e.(*tcpip.ErrConnectStarted); ok {
		// While the handshake runs the endpoint is ready for nothing;
		// connected it is writable, failed it is ready for everything.
		// Looping on Readiness makes a stray wakeup harmless.
		for ep.Readiness(waiter.WritableEvents) == 0 {
			select {
			case <-ctx.Done():
				c.Close()
				return nil, opErr(ctx.Err())
			case <-c.writeWake:
			}
		}
		e = ep.LastError()
	}
	if e != nil {
		c.Close()
		return nil, opErr(os.NewSyscallError("connect", errnoOf(e)))
	}
	c.setAddrs()
	return c, nil
}
