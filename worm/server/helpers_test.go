package server

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/paxos"
	"github.com/wormspace/wormspace/worm/wire"
)

// memLog is an in-memory Log with a configurable sync delay, an optional
// gate that holds every Sync until the test lets it through, and failure
// injection. It remembers which registers' accept records are durable.
type memLog struct {
	mu       sync.Mutex
	recs     []paxos.Record // appended (values copied)
	durable  int            // records durable
	syncs    int
	delay    time.Duration
	gate     chan struct{} // nil: no gate
	syncErr  error
	full     bool
	entered  chan struct{}     // signalled when a Sync starts (cap 1000, best effort)
	accepted map[[2]uint64]int // (seg, off) -> index of its accept record
}

func newMemLog() *memLog {
	return &memLog{entered: make(chan struct{}, 1000), accepted: make(map[[2]uint64]int)}
}

func (l *memLog) Reserve(n int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.full {
		return errors.New("no space left on device")
	}
	return nil
}

func (l *memLog) Append(recs []paxos.Record) (uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range recs {
		r.Value = append([]byte(nil), r.Value...)
		if r.Kind == paxos.RecordAccept {
			l.accepted[[2]uint64{r.Seg, uint64(r.Off)}] = len(l.recs)
		}
		l.recs = append(l.recs, r)
	}
	return uint64(len(l.recs)), nil
}

func (l *memLog) Sync() (uint64, error) {
	l.mu.Lock()
	n, delay, gate := len(l.recs), l.delay, l.gate
	l.mu.Unlock()
	select {
	case l.entered <- struct{}{}:
	default:
	}
	if delay > 0 {
		time.Sleep(delay)
	}
	if gate != nil {
		<-gate
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.syncs++
	if l.syncErr != nil {
		return 0, l.syncErr
	}
	if n > l.durable {
		l.durable = n
	}
	return uint64(l.durable), nil
}

// Stats implements StatsLog.
func (l *memLog) Stats() any {
	l.mu.Lock()
	defer l.mu.Unlock()
	return map[string]int{"records": len(l.recs), "durable": l.durable}
}

func (l *memLog) appended() int { l.mu.Lock(); defer l.mu.Unlock(); return len(l.recs) }

func (l *memLog) syncCount() int { l.mu.Lock(); defer l.mu.Unlock(); return l.syncs }

// isDurable reports whether the accept record of (seg, off) is durable.
func (l *memLog) isDurable(seg uint64, off uint32) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	i, ok := l.accepted[[2]uint64{seg, uint64(off)}]
	return ok && i < l.durable
}

func (l *memLog) setSyncErr(err error) { l.mu.Lock(); l.syncErr = err; l.mu.Unlock() }

// nopLog is the fastest possible Log, for benchmarks.
type nopLog struct {
	mu  sync.Mutex
	end uint64
}

func (l *nopLog) Reserve(int) error { return nil }
func (l *nopLog) Append(recs []paxos.Record) (uint64, error) {
	l.mu.Lock()
	l.end += uint64(len(recs))
	e := l.end
	l.mu.Unlock()
	return e, nil
}
func (l *nopLog) Sync() (uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.end, nil
}

// pipeListener is a net.Listener of net.Pipe connections.
type pipeListener struct {
	ch     chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{ch: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

func (l *pipeListener) dial() (net.Conn, error) {
	c, s := net.Pipe()
	select {
	case l.ch <- s:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }

// testServer is a Server with its Engine and one listener.
type testServer struct {
	t      testing.TB
	srv    *Server
	eng    *Engine
	log    Log
	tcp    net.Listener // nil for pipes
	pipe   *pipeListener
	served chan error
}

const testSegSize = 1024

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// startServer starts a server over log (a memLog when nil) on loopback
// TCP, or on net.Pipe when pipe is set.
func startServer(t testing.TB, log Log, pipe bool, tweak func(*Config)) *testServer {
	t.Helper()
	if log == nil {
		log = newMemLog()
	}
	eng := NewEngine(paxos.NewAcceptor(testSegSize), log, quietLogger(), nil)
	cfg := Config{Engine: eng, AcceptorID: 7, Cluster: "test", Logger: quietLogger(), HandshakeTimeout: 2 * time.Second}
	if tweak != nil {
		tweak(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{t: t, srv: srv, eng: eng, log: log, served: make(chan error, 1)}
	var l net.Listener
	if pipe {
		ts.pipe = newPipeListener()
		l = ts.pipe
	} else {
		ts.tcp, err = net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		l = ts.tcp
	}
	go func() { ts.served <- srv.Serve(l) }()
	t.Cleanup(func() {
		srv.Close()
		select {
		case err := <-ts.served:
			if !errors.Is(err, ErrServerClosed) {
				t.Errorf("Serve returned %v, want ErrServerClosed", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return after Close")
		}
		if ml, ok := log.(*memLog); ok {
			ml.mu.Lock()
			if ml.gate != nil {
				select {
				case <-ml.gate:
				default:
					close(ml.gate)
				}
			}
			ml.mu.Unlock()
		}
		eng.Close()
	})
	return ts
}

func (ts *testServer) rawDial() (net.Conn, error) {
	if ts.pipe != nil {
		return ts.pipe.dial()
	}
	return net.DialTimeout("tcp", ts.tcp.Addr().String(), 2*time.Second)
}

// testClient speaks worm/wire directly: no worm/client.
type testClient struct {
	t     testing.TB
	nc    net.Conn
	r     *wire.Reader
	w     *wire.Writer
	hello wire.ServerHello
	wmu   sync.Mutex
}

func (ts *testServer) dialKey(key []byte) (*testClient, error) {
	nc, err := ts.rawDial()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	sh, err := wire.ClientHandshake(ctx, nc, wire.ClientHello{ID: "tester"}, key)
	if err != nil {
		nc.Close()
		return nil, err
	}
	return &testClient{t: ts.t, nc: nc, r: wire.NewReader(nc, int(sh.MaxFrame)), w: wire.NewWriter(nc, int(sh.MaxFrame), int(sh.MaxValue)), hello: sh}, nil
}

func (ts *testServer) dial() *testClient {
	ts.t.Helper()
	c, err := ts.dialKey(nil)
	if err != nil {
		ts.t.Fatalf("dial: %v", err)
	}
	ts.t.Cleanup(func() { c.nc.Close() })
	return c
}

// send buffers requests; flush sends them in one write.
func (c *testClient) send(id uint64, req *paxos.Request) {
	c.t.Helper()
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.w.WriteRequest(id, req); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

func (c *testClient) flush() {
	c.t.Helper()
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if err := c.w.Flush(); err != nil {
		c.t.Fatalf("flush: %v", err)
	}
}

func (c *testClient) do(id uint64, req *paxos.Request) {
	c.t.Helper()
	c.send(id, req)
	c.flush()
}

// frame is a received frame, decoded and detached.
type frame struct {
	typ  wire.FrameType
	id   uint64
	resp *paxos.Response   // response and push frames
	err  *wire.RemoteError // error frames
}

// next reads one frame within timeout.
func (c *testClient) next(timeout time.Duration) (frame, error) {
	c.nc.SetReadDeadline(time.Now().Add(timeout))
	f, err := c.r.Next()
	if err != nil {
		return frame{}, err
	}
	out := frame{typ: f.Type, id: f.ID}
	switch f.Type {
	case wire.FrameResponse, wire.FramePush:
		var resp paxos.Response
		if err := wire.DecodeResponse(f.Payload, int(c.hello.MaxValue), &resp); err != nil {
			return frame{}, err
		}
		out.resp = resp.Clone()
	case wire.FrameErr:
		out.err, err = wire.DecodeError(f.Payload)
		if err != nil {
			return frame{}, err
		}
	}
	return out, nil
}

// must reads one frame within 5 s and fails the test on error.
func (c *testClient) must() frame {
	c.t.Helper()
	f, err := c.next(5 * time.Second)
	if err != nil {
		c.t.Fatalf("reading a frame: %v", err)
	}
	return f
}

// response reads the next response frame (skipping pushes, which it
// returns separately).
func (c *testClient) response() (frame, []frame) {
	c.t.Helper()
	var pushes []frame
	for {
		f := c.must()
		switch f.typ {
		case wire.FramePush:
			pushes = append(pushes, f)
		case wire.FrameResponse:
			return f, pushes
		default:
			c.t.Fatalf("unexpected frame %v %+v", f.typ, f.err)
		}
	}
}

// roundTrip sends req and returns its response.
func (c *testClient) roundTrip(id uint64, req *paxos.Request) *paxos.Response {
	c.t.Helper()
	c.do(id, req)
	f, _ := c.response()
	if f.id != id {
		c.t.Fatalf("response id %d, want %d", f.id, id)
	}
	return f.resp
}

// works checks that the client is still served: a read round trip.
func (c *testClient) works() {
	c.t.Helper()
	resp := c.roundTrip(999_999, &paxos.Request{Kind: paxos.KindRead, Seg: 999, Off: 0})
	if resp.Kind != paxos.KindRead || resp.Status != paxos.StatusOK {
		c.t.Fatalf("read on a well-behaved connection: %+v", resp)
	}
}

func ballot(round uint64) worm.Ballot { return worm.Ballot{Round: round, Node: 42} }

// accept is an unsafe write (ballot 0): one record, no capture needed
// (an accept at any other ballot needs the register's exact promise).
func accept(seg uint64, off uint32, values ...[]byte) *paxos.Request {
	return &paxos.Request{Kind: paxos.KindAccept, Seg: seg, Off: off, Values: values}
}

// eventually polls cond for up to 5 s.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
