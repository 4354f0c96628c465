package server

import (
	"bytes"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wormspace/wormspace/worm/paxos"
	"github.com/wormspace/wormspace/worm/wire"
)

// replySize bounds the encoded size of every response, exactly when all
// optional fields are present.
func TestReplySizeBoundsEncoding(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	val := func() []byte {
		switch rng.IntN(3) {
		case 0:
			return nil
		case 1:
			return []byte{}
		}
		return make([]byte, rng.IntN(3000))
	}
	b := func() paxos.Ballot {
		if rng.IntN(2) == 0 {
			return paxos.Ballot{}
		}
		return paxos.Ballot{Round: rng.Uint64(), Node: rng.Uint64()}
	}
	for i := range 2000 {
		r := &paxos.Response{Kind: paxos.Kind(1 + rng.IntN(numKinds-1)), Status: paxos.Status(rng.IntN(5)), Promised: b(),
			Reg: paxos.RegState{Off: rng.Uint32(), Accepted: b(), HasValue: rng.IntN(2) == 0, Decided: rng.IntN(2) == 0, Value: val()}}
		for range rng.IntN(4) {
			r.Regs = append(r.Regs, paxos.RegState{Off: rng.Uint32(), Accepted: b(), HasValue: true, Value: val()})
		}
		for range rng.IntN(4) {
			r.Contended = append(r.Contended, rng.Uint32())
		}
		for range rng.IntN(4) {
			r.Results = append(r.Results, paxos.RegResult{Status: paxos.Status(rng.IntN(5)), Promised: b(), Accepted: b(), Value: val()})
		}
		if rng.IntN(2) == 0 {
			r.Seg, r.Off, r.Count = rng.Uint64(), rng.Uint32(), rng.Uint32()
		}
		if rng.IntN(2) == 0 {
			r.Text = strings.Repeat("t", rng.IntN(100))
		}
		if got, enc := replySize(r), len(wire.AppendResponse(nil, uint64(i), r)); got < enc {
			t.Fatalf("replySize %d < encoded %d for %+v", got, enc, r)
		}
	}
	full := &paxos.Response{Kind: paxos.KindAccept, Promised: paxos.Ballot{Round: 1},
		Reg:       paxos.RegState{Off: 1, Accepted: paxos.Ballot{Round: 1}, HasValue: true, Value: []byte("v")},
		Regs:      []paxos.RegState{{Off: 2, Accepted: paxos.Ballot{Round: 1}, Value: []byte("vv")}},
		Contended: []uint32{3},
		Results:   []paxos.RegResult{{Promised: paxos.Ballot{Round: 1}, Accepted: paxos.Ballot{Round: 1}, Value: []byte("vvv")}},
		Seg:       1, Text: "x"}
	if got, enc := replySize(full), len(wire.AppendResponse(nil, 1, full)); got != enc {
		t.Fatalf("replySize %d, encoded %d: not exact with every field present", got, enc)
	}
}

// serverConn finds the server side of a test client's connection.
func serverConn(t *testing.T, ts *testServer, nc net.Conn) *conn {
	t.Helper()
	var sc *conn
	eventually(t, "the server side of the connection", func() bool {
		ts.srv.mu.Lock()
		defer ts.srv.mu.Unlock()
		for c := range ts.srv.conns {
			if c.remote == nc.LocalAddr().String() {
				sc = c
			}
		}
		return sc != nil
	})
	return sc
}

func (c *conn) heldBytes() (held, out, peakHeld int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.held, len(c.out), c.peakHeld
}

// Responses the Engine holds until a sync are charged to their connection
// and to the server's budget before anything is encoded, and given back
// once written.
func TestHeldRepliesAreCharged(t *testing.T) {
	log := newMemLog()
	ts := startServer(t, log, false, nil)
	value := bytes.Repeat([]byte("h"), 10<<10)
	a := ts.dial()
	a.roundTrip(1, accept(1, 0, value))

	gate := make(chan struct{})
	log.mu.Lock()
	log.gate = gate
	log.mu.Unlock()
	for len(log.entered) > 0 {
		<-log.entered
	}
	a.do(2, accept(2, 0, []byte("w"))) // its sync waits at the gate
	select {
	case <-log.entered:
	case <-time.After(5 * time.Second):
		t.Fatal("the sync did not start")
	}
	b := ts.dial()
	for i := range 3 {
		b.send(uint64(10+i), &paxos.Request{Kind: paxos.KindRead, Seg: 1, Off: 0})
	}
	b.flush()
	sb := serverConn(t, ts, b.nc)
	eventually(t, "three held reads charged", func() bool {
		held, _, _ := sb.heldBytes()
		return held >= 3*len(value)
	})
	held, out, _ := sb.heldBytes()
	if out != 0 || held > 3*(len(value)+200) {
		t.Fatalf("connection holds %d bytes with %d encoded, want 3 held reads of %d bytes and nothing encoded", held, out, len(value))
	}
	if used := ts.srv.budget.used.Load(); used < int64(held) {
		t.Fatalf("server budget counts %d bytes, the connection alone holds %d", used, held)
	}
	close(gate)
	for range 3 {
		f, _ := b.response()
		if !bytes.Equal(f.resp.Reg.Value, value) {
			t.Fatalf("read %d: %d bytes", f.id, len(f.resp.Reg.Value))
		}
	}
	if f, _ := a.response(); f.id != 2 {
		t.Fatalf("accept reply id %d", f.id)
	}
	eventually(t, "every byte given back", func() bool { return ts.srv.budget.used.Load() == 0 })
	if held, _, _ := sb.heldBytes(); held != 0 {
		t.Fatalf("connection still charged %d bytes", held)
	}
}

// slowReader dials, shrinks its receive buffer and pipelines reqs reads
// of (1, 0) without ever reading a reply (its write blocks once the
// server stops reading it: the point). It returns the connection.
func slowReader(t *testing.T, ts *testServer, reqs int) net.Conn {
	t.Helper()
	c := ts.dial()
	c.nc.(*net.TCPConn).SetReadBuffer(4096)
	var b []byte
	for i := range reqs {
		b = wire.AppendRequest(b, uint64(i+1), &paxos.Request{Kind: paxos.KindRead, Seg: 1, Off: 0})
	}
	go func() {
		c.nc.SetWriteDeadline(time.Now().Add(30 * time.Second))
		c.nc.Write(b)
	}()
	return c.nc
}

// goodClient does n operations (an accept of a fresh register, then a
// read of the large value) and returns the slowest one; it fails the test
// on any error or an operation slower than limit.
func goodClient(t *testing.T, c *testClient, seg uint64, n int, valueLen int, limit time.Duration) time.Duration {
	t.Helper()
	var worst time.Duration
	for i := range n {
		t0 := time.Now()
		id := uint64(1000 + 2*i)
		c.do(id, accept(seg, uint32(i), []byte("good")))
		if f, _ := c.response(); f.id != id || f.resp.Status != paxos.StatusOK || f.resp.Results[0].Status != paxos.StatusOK {
			t.Fatalf("good accept %d: %+v", i, f.resp)
		}
		c.do(id+1, &paxos.Request{Kind: paxos.KindRead, Seg: 1, Off: 0})
		if f, _ := c.response(); f.id != id+1 || len(f.resp.Reg.Value) != valueLen {
			t.Fatalf("good read %d: id %d, %d bytes", i, f.id, len(f.resp.Reg.Value))
		}
		d := time.Since(t0)
		worst = max(worst, d)
		if d > limit {
			t.Fatalf("good operation %d took %v (limit %v)", i, d, limit)
		}
	}
	return worst
}

// budgetConfig: values of 60 KiB in frames of at most 128 KiB, a
// connection budget of four replies, a server budget of 4 MiB.
const (
	budgetValue    = 60 << 10
	budgetFrame    = 128 << 10
	budgetPerConn  = 256 << 10
	budgetTotal    = 4 << 20
	budgetMaxReply = budgetFrame + 4
)

func budgetConfig(c *Config) {
	c.MaxValue, c.MaxFrame = 64<<10, budgetFrame
	c.MaxPending, c.MaxPendingTotal = budgetPerConn, budgetTotal
}

// Many slow readers pipelining deep runs of large reads while syncs are
// slow (reads wait behind them, held by the Engine): each connection is
// throttled at its own budget, not closed; the server's accounted bytes
// never exceed its budget; a well-behaved client is served throughout;
// everything is given back when the slow readers leave.
func TestReplyBudgetSlowReaders(t *testing.T) {
	log := newMemLog()
	log.delay = 500 * time.Microsecond
	ts := startServer(t, log, false, budgetConfig)
	good := ts.dial()
	value := bytes.Repeat([]byte("B"), budgetValue)
	good.roundTrip(1, accept(1, 0, value))

	const slow, deep = 8, 300 // 8 x 300 x 60 KiB: 140 MiB if all were buffered
	var conns []net.Conn
	for range slow {
		conns = append(conns, slowReader(t, ts, deep))
	}
	var scs []*conn
	for _, nc := range conns {
		scs = append(scs, serverConn(t, ts, nc))
	}
	// Work while the slow readers fill their budgets, then until every
	// one of them has stopped being read.
	worst := goodClient(t, good, 2, 50, budgetValue, 2*time.Second)
	eventually(t, "every slow reader throttled at its own budget", func() bool {
		for _, sc := range scs {
			sc.mu.Lock()
			waiting, held := sc.readerWaiting, sc.held
			sc.mu.Unlock()
			if !waiting || held < budgetPerConn {
				return false
			}
		}
		return true
	})
	worst = max(worst, goodClient(t, good, 3, 100, budgetValue, 2*time.Second))

	m := &ts.srv.m
	if n := m.throttled[throttleConn].Load(); n < slow {
		t.Fatalf("%d connection-budget throttles, want at least %d", n, slow)
	}
	if n := m.throttled[throttleServer].Load(); n != 0 {
		t.Fatalf("%d waits for the server budget: the slow readers should not fill it", n)
	}
	if n := m.writeTimeouts[wdTimeout].Load() + m.writeTimeouts[wdPressure].Load(); n != 0 {
		t.Fatalf("%d connections closed by the watchdog: throttling must not close", n)
	}
	if got := ts.srv.nconns.Load(); got != slow+1 {
		t.Fatalf("%d connections open, want %d", got, slow+1)
	}
	reads := m.requests[paxos.KindRead][paxos.StatusOK].Load()
	if reads >= slow*deep {
		t.Fatalf("%d reads served of %d sent: no backpressure", reads, slow*deep)
	}
	for i, sc := range scs {
		if _, _, peak := sc.heldBytes(); peak > budgetPerConn+budgetMaxReply {
			t.Fatalf("slow reader %d held %d bytes, bound %d", i, peak, budgetPerConn+budgetMaxReply)
		}
	}
	peak := ts.srv.budget.peak.Load()
	if peak > budgetTotal {
		t.Fatalf("the server held %d bytes for replies, budget %d", peak, budgetTotal)
	}
	samples := scrape(t, ts.srv)
	if v := metricValue(t, samples, "worm_reply_bytes_limit", nil); v != budgetTotal {
		t.Fatalf("worm_reply_bytes_limit %v", v)
	}
	if v := metricValue(t, samples, "worm_connections_throttled", map[string]string{"reason": "connection_bytes"}); v != slow {
		t.Fatalf("worm_connections_throttled{connection_bytes} %v, want %d", v, slow)
	}
	if v := metricValue(t, samples, "worm_reply_bytes", nil); v < slow*budgetPerConn || v > budgetTotal {
		t.Fatalf("worm_reply_bytes %v, want at least %d and at most %d", v, slow*budgetPerConn, budgetTotal)
	}
	t.Logf("good client: slowest operation %v; server held at most %d KiB for replies (budget %d KiB); %d reads served of %d sent",
		worst.Round(time.Microsecond), peak>>10, budgetTotal>>10, reads, slow*deep)

	for _, nc := range conns {
		nc.Close()
	}
	eventually(t, "the slow readers' bytes given back", func() bool { return ts.srv.budget.used.Load() == 0 })
}

func metricValue(t *testing.T, samples []sample, name string, labels map[string]string) float64 {
	t.Helper()
	for _, s := range samples {
		if s.name != name {
			continue
		}
		ok := true
		for k, v := range labels {
			ok = ok && s.labels[k] == v
		}
		if ok {
			return s.value
		}
	}
	t.Fatalf("no sample %s%v", name, labels)
	return 0
}

// logBuffer is an io.Writer for a slog handler that tests can read.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// More slow readers than the server budget holds: readers wait for room,
// the watchdog closes the connections whose writes stall (PressureTimeout)
// with a log line, and the well-behaved client, which waited too, is
// served again; the accounted bytes never exceed the budget.
func TestReplyBudgetPressure(t *testing.T) {
	var logs logBuffer
	ts := startServer(t, nil, false, func(c *Config) {
		budgetConfig(c)
		c.PressureTimeout = 300 * time.Millisecond
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	good := ts.dial()
	value := bytes.Repeat([]byte("P"), budgetValue)
	good.roundTrip(1, accept(1, 0, value))

	// 24 x (256 KiB + one reply): twice the budget.
	const slow = 24
	var conns []net.Conn
	for range slow {
		conns = append(conns, slowReader(t, ts, 300))
	}
	defer func() {
		for _, nc := range conns {
			nc.Close()
		}
	}()
	m := &ts.srv.m
	eventually(t, "the server budget to fill", func() bool { return m.throttled[throttleServer].Load() > 0 })
	// The good client's first operations wait for room too, until the
	// watchdog closes stalled connections.
	worst := goodClient(t, good, 2, 50, budgetValue, 3*time.Second)
	if m.writeTimeouts[wdPressure].Load() == 0 {
		t.Fatal("no connection was closed under pressure")
	}
	if peak := ts.srv.budget.peak.Load(); peak > budgetTotal {
		t.Fatalf("the server held %d bytes for replies, budget %d", peak, budgetTotal)
	}
	if n := m.writeTimeouts[wdTimeout].Load(); n != 0 {
		t.Fatalf("%d connections closed by the plain write timeout (a minute)", n)
	}
	if !strings.Contains(logs.String(), "closing a connection whose client has not read its replies while the server's reply budget is full") {
		t.Fatalf("no log line for the closed connections:\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), "reply budget is full") {
		t.Fatalf("no log line for the full budget:\n%s", logs.String())
	}
	t.Logf("%d slow readers closed under pressure; good client's slowest operation %v", m.writeTimeouts[wdPressure].Load(), worst.Round(time.Microsecond))
}

// countingListener counts the deadlines the server sets on its
// connections.
type countingListener struct {
	net.Listener
	mu        sync.Mutex
	deadlines int
}

func (l *countingListener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: nc, l: l}, nil
}

func (l *countingListener) count() int { l.mu.Lock(); defer l.mu.Unlock(); return l.deadlines }

type countingConn struct {
	net.Conn
	l *countingListener
}

func (c *countingConn) SetWriteDeadline(t time.Time) error {
	c.l.mu.Lock()
	c.l.deadlines++
	c.l.mu.Unlock()
	return c.Conn.SetWriteDeadline(t)
}

// Replies are written without arming a deadline per write; a client that
// stops reading is still closed after WriteTimeout (by the watchdog, with
// one deadline in the past and a log line), alone.
func TestWriteTimeoutWithoutPerWriteDeadline(t *testing.T) {
	var logs logBuffer
	const timeout = 200 * time.Millisecond
	ts := startServer(t, nil, false, func(c *Config) {
		budgetConfig(c)
		c.WriteTimeout = timeout
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl := &countingListener{Listener: tcp}
	go ts.srv.Serve(cl)
	dial := func() *testClient {
		nc, err := net.Dial("tcp", tcp.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nc.Close() })
		sh, err := wire.ClientHandshake(t.Context(), nc, wire.ClientHello{ID: "counted"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return &testClient{t: t, nc: nc, r: wire.NewReader(nc, int(sh.MaxFrame)), w: wire.NewWriter(nc, int(sh.MaxFrame), int(sh.MaxValue)), hello: sh}
	}
	good := dial()
	value := bytes.Repeat([]byte("T"), budgetValue)
	good.roundTrip(1, accept(1, 0, value))
	for i := range 300 {
		good.roundTrip(uint64(2+i), &paxos.Request{Kind: paxos.KindRead, Seg: 1, Off: 0})
	}
	if n := cl.count(); n != 0 {
		t.Fatalf("%d write deadlines set for 301 replies, want none", n)
	}

	stalled := dial()
	stalled.nc.(*net.TCPConn).SetReadBuffer(4096)
	var b []byte
	for i := range 300 {
		b = wire.AppendRequest(b, uint64(i+1), &paxos.Request{Kind: paxos.KindRead, Seg: 1, Off: 0})
	}
	go stalled.nc.Write(b)
	t0 := time.Now()
	eventually(t, "the stalled connection closed", func() bool { return ts.srv.m.writeTimeouts[wdTimeout].Load() == 1 })
	closedAfter := time.Since(t0)
	// Its kernel buffers fill first: it is closed some time after, but
	// within the timeout and the watchdog's period once stalled.
	if closedAfter < timeout {
		t.Fatalf("closed after %v, before the write timeout %v", closedAfter, timeout)
	}
	// Closed on the server's side (the client would see the end of the
	// stream only after draining the kernel's buffers through its tiny
	// window).
	eventually(t, "the stalled connection released", func() bool { return ts.srv.nconns.Load() == 1 })
	if n := cl.count(); n != 1 {
		t.Fatalf("%d write deadlines set, want the watchdog's one", n)
	}
	if !strings.Contains(logs.String(), "closing a connection whose client has not read its replies for the write timeout") {
		t.Fatalf("no log line for the closed connection:\n%s", logs.String())
	}
	good.works()
	eventually(t, "every byte given back", func() bool { return ts.srv.budget.used.Load() == 0 })
	t.Logf("the stalled connection was closed %v after its requests were sent (write timeout %v)", closedAfter.Round(time.Millisecond), timeout)
}
