package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/wormspace/wormspace/worm/paxos"
	"github.com/wormspace/wormspace/worm/wire"
)

func bothTransports(t *testing.T, f func(t *testing.T, pipe bool)) {
	t.Run("tcp", func(t *testing.T) { f(t, false) })
	t.Run("pipe", func(t *testing.T) { f(t, true) })
}

// Many requests sent in one write come back matched by id, and later
// requests of the pipeline see the effects of earlier ones.
func TestPipelinedRequestsMatchByID(t *testing.T) {
	bothTransports(t, func(t *testing.T, pipe bool) {
		ts := startServer(t, nil, pipe, nil)
		c := ts.dial()
		if c.hello.AcceptorID != 7 || c.hello.Cluster != "test" || c.hello.SegmentSize != testSegSize {
			t.Fatalf("server hello %+v", c.hello)
		}
		const n = 100
		kinds := map[uint64]paxos.Kind{}
		for i := uint32(0); i < n; i++ {
			// Ids are not sequential: the server must echo, not count.
			a, r := uint64(1000+7*i), uint64(5000+13*i)
			c.send(a, accept(3, i, []byte(fmt.Sprintf("v%d", i))))
			c.send(r, &paxos.Request{Kind: paxos.KindRead, Seg: 3, Off: i})
			kinds[a], kinds[r] = paxos.KindAccept, paxos.KindRead
		}
		c.flush()
		seen := map[uint64]bool{}
		for range 2 * n {
			f, _ := c.response()
			want, ok := kinds[f.id]
			if !ok || seen[f.id] {
				t.Fatalf("response with unknown or repeated id %d", f.id)
			}
			seen[f.id] = true
			if f.resp.Kind != want || f.resp.Status != paxos.StatusOK {
				t.Fatalf("id %d: %+v, want a %v reply", f.id, f.resp, want)
			}
			if want == paxos.KindRead {
				i := (f.id - 5000) / 13
				if got := string(f.resp.Reg.Value); got != fmt.Sprintf("v%d", i) || !f.resp.Reg.HasValue {
					t.Fatalf("read %d returned %q, want the value accepted before it in the pipeline", i, got)
				}
			}
		}
	})
}

// Many concurrent connections are all served.
func TestManyConnections(t *testing.T) {
	ts := startServer(t, nil, false, nil)
	const conns, per = 24, 40
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for k := range conns {
		c := ts.dial()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range uint32(per) {
				c.send(uint64(i), accept(uint64(100+k), i, []byte("x")))
			}
			c.flush()
			got := map[uint64]bool{}
			for range per {
				f, err := c.next(5 * time.Second)
				if err != nil {
					errs <- err
					return
				}
				if f.typ != wire.FrameResponse || f.resp.Status != paxos.StatusOK || got[f.id] {
					errs <- fmt.Errorf("conn %d: %v %+v", k, f.typ, f.resp)
					return
				}
				got[f.id] = true
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := ts.srv.m.requests[paxos.KindAccept][paxos.StatusOK].Load(); n != conns*per {
		t.Fatalf("server counted %d accepts, want %d", n, conns*per)
	}
}

// Under a slow log and concurrent clients, every accept's record is
// durable before its reply reaches the client.
func TestNoReplyBeforeItsSync(t *testing.T) {
	log := newMemLog()
	log.delay = 2 * time.Millisecond
	ts := startServer(t, log, false, nil)
	const conns, per = 6, 60
	var wg sync.WaitGroup
	var mu sync.Mutex
	var bad []string
	for k := range conns {
		c := ts.dial()
		wg.Add(1)
		go func() {
			defer wg.Done()
			seg := uint64(200 + k)
			for i := range uint32(per) {
				c.send(uint64(i), accept(seg, i, []byte("v")))
				if i%7 == 0 {
					c.flush()
				}
			}
			c.flush()
			for range per {
				f, err := c.next(10 * time.Second)
				if err != nil {
					mu.Lock()
					bad = append(bad, err.Error())
					mu.Unlock()
					return
				}
				if !log.isDurable(seg, uint32(f.id)) {
					mu.Lock()
					bad = append(bad, fmt.Sprintf("reply to accept (%d, %d) arrived before its record was durable", seg, f.id))
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if len(bad) > 0 {
		t.Fatal(bad[0])
	}
	if log.syncs >= conns*per {
		t.Errorf("%d syncs for %d accepts: no group commit", log.syncs, conns*per)
	}
}

// With a gated log: no reply before the sync; after a failed sync the
// waiting reply is never sent and later requests get StatusError.
func TestSyncGateAndFailure(t *testing.T) {
	log := newMemLog()
	log.gate = make(chan struct{})
	ts := startServer(t, log, false, nil)
	c := ts.dial()
	c.do(1, accept(1, 0, []byte("a")))
	waitSync(t, log.entered)
	if f, err := c.next(50 * time.Millisecond); err == nil {
		t.Fatalf("got %v %+v before the sync finished", f.typ, f.resp)
	}
	log.gate <- struct{}{}
	f, _ := c.response()
	if f.id != 1 || f.resp.Status != paxos.StatusOK {
		t.Fatalf("after the sync: %+v", f.resp)
	}

	log.setSyncErr(errors.New("input/output error"))
	c.do(2, accept(1, 1, []byte("b")))
	waitSync(t, log.entered)
	log.gate <- struct{}{}
	if f, err := c.next(100 * time.Millisecond); err == nil {
		t.Fatalf("a reply (%+v) left although its sync failed", f.resp)
	}
	eventually(t, "the dropped reply to be counted", func() bool {
		return ts.srv.m.requests[paxos.KindAccept][statusDropped].Load() == 1
	})
	resp := c.roundTrip(3, &paxos.Request{Kind: paxos.KindRead, Seg: 1, Off: 0})
	if resp.Status != paxos.StatusError {
		t.Fatalf("request after a failed sync: %+v", resp)
	}
}

// Listen/notify: a notification follows a durable accept, names the run
// of registers, arrives no earlier than the accept's reply, and stops
// after Unlisten.
func TestListenNotify(t *testing.T) {
	log := newMemLog()
	log.gate = make(chan struct{})
	ts := startServer(t, log, false, nil)
	lis, wr := ts.dial(), ts.dial()
	if r := lis.roundTrip(1, &paxos.Request{Kind: paxos.KindListen, Seg: 5}); r.Status != paxos.StatusOK {
		t.Fatalf("listen: %+v", r)
	}
	wr.do(10, accept(5, 3, []byte("a"), []byte("b"), []byte("c")))
	waitSync(t, log.entered)
	if f, err := lis.next(50 * time.Millisecond); err == nil {
		t.Fatalf("notification %+v before the write was durable", f.resp)
	}
	close(log.gate)
	f, _ := wr.response()
	if f.resp.Status != paxos.StatusOK {
		t.Fatalf("accept: %+v", f.resp)
	}
	p := lis.must()
	if p.typ != wire.FramePush || p.resp.Kind != paxos.KindNotify || p.resp.Seg != 5 || p.resp.Off != 3 || p.resp.Count != 3 {
		t.Fatalf("notification: %v %+v", p.typ, p.resp)
	}
	// Writes elsewhere are not notified; a nacked accept is not notified.
	wr.roundTrip(11, accept(6, 0, []byte("z")))
	wr.roundTrip(12, &paxos.Request{Kind: paxos.KindPrepare, Seg: 5, Off: 9, Ballot: ballot(5)})
	if r := wr.roundTrip(13, accept(5, 9, []byte("nack"))); r.Results[0].Status != paxos.StatusNack {
		t.Fatalf("accept under a higher promise: %+v", r)
	}
	if _, pushes := lis.response2(20, &paxos.Request{Kind: paxos.KindStatus}); len(pushes) != 0 {
		t.Fatalf("unexpected notifications %+v", pushes[0].resp)
	}
	// Unlisten stops them.
	if r := lis.roundTrip(2, &paxos.Request{Kind: paxos.KindUnlisten, Seg: 5}); r.Status != paxos.StatusOK {
		t.Fatalf("unlisten: %+v", r)
	}
	wr.roundTrip(14, accept(5, 20, []byte("d")))
	if _, pushes := lis.response2(21, &paxos.Request{Kind: paxos.KindStatus}); len(pushes) != 0 {
		t.Fatalf("notification after unlisten: %+v", pushes[0].resp)
	}
	// A trimmed segment cannot be listened to.
	wr.roundTrip(15, &paxos.Request{Kind: paxos.KindTrim, Seg: 8})
	if r := lis.roundTrip(3, &paxos.Request{Kind: paxos.KindListen, Seg: 8}); r.Status != paxos.StatusTrimmed {
		t.Fatalf("listen on a trimmed segment: %+v", r)
	}
	// Closing a connection drops its subscriptions.
	lis.roundTrip(4, &paxos.Request{Kind: paxos.KindListen, Seg: 9})
	lis.nc.Close()
	eventually(t, "subscriptions to go with the connection", func() bool {
		ts.srv.subMu.RLock()
		defer ts.srv.subMu.RUnlock()
		return len(ts.srv.subs) == 0
	})
}

// response2 sends req and returns its response and the pushes before it.
func (c *testClient) response2(id uint64, req *paxos.Request) (frame, []frame) {
	c.t.Helper()
	c.do(id, req)
	return c.response()
}

// A subscriber that does not read loses notifications once its output is
// over the cap; when it reads again it gets a lost marker (Count 0).
func TestLostMarkerForSlowSubscriber(t *testing.T) {
	ts := startServer(t, nil, true, func(c *Config) { c.MaxPending = 2048 })
	lis, wr := ts.dial(), ts.dial()
	lis.roundTrip(1, &paxos.Request{Kind: paxos.KindListen, Seg: 4})
	// net.Pipe has no buffer: the listener not reading keeps everything
	// in the server's output buffer.
	const writes = 200
	for i := range uint32(writes) {
		wr.send(uint64(i), accept(4, i, []byte("v")))
	}
	wr.flush()
	for range writes {
		wr.response()
	}
	if ts.srv.m.notifyLost.Load() == 0 {
		t.Fatalf("no notification was dropped (sent %d)", ts.srv.m.notifySent.Load())
	}
	var offs, lost int
	for {
		f, err := lis.next(200 * time.Millisecond)
		if err != nil {
			break
		}
		if f.typ != wire.FramePush || f.resp.Seg != 4 {
			t.Fatalf("frame %v %+v", f.typ, f.resp)
		}
		if f.resp.Count == 0 {
			lost++
		} else {
			offs += int(f.resp.Count)
		}
	}
	if lost != 1 {
		t.Fatalf("%d lost markers, want 1", lost)
	}
	if offs == 0 || offs >= writes {
		t.Fatalf("%d notified registers of %d writes, want some but not all", offs, writes)
	}
	if sent := ts.srv.m.notifySent.Load(); int(sent) != offs {
		t.Fatalf("server counted %d sent, listener got %d", sent, offs)
	}
	// Caught up: notifications flow again.
	wr.roundTrip(1000, accept(4, 500, []byte("w")))
	if f := lis.must(); f.typ != wire.FramePush || f.resp.Off != 500 || f.resp.Count != 1 {
		t.Fatalf("after catching up: %+v", f.resp)
	}
}

func TestStatusDocument(t *testing.T) {
	ts := startServer(t, nil, false, nil)
	c := ts.dial()
	for i := range uint32(5) {
		c.roundTrip(uint64(i), accept(2, i, []byte("v")))
	}
	c.roundTrip(9, &paxos.Request{Kind: paxos.KindTrim, Seg: 3})
	resp := c.roundTrip(10, &paxos.Request{Kind: paxos.KindStatus})
	if resp.Status != paxos.StatusOK {
		t.Fatalf("status: %+v", resp)
	}
	var doc struct {
		Version       string                       `json:"version"`
		AcceptorID    uint32                       `json:"acceptor_id"`
		Cluster       string                       `json:"cluster"`
		Uptime        float64                      `json:"uptime_seconds"`
		SegmentSize   uint32                       `json:"segment_size"`
		Connections   int                          `json:"connections"`
		Requests      map[string]map[string]uint64 `json:"requests"`
		Engine        EngineStats                  `json:"engine"`
		LiveBytes     int64                        `json:"live_bytes"`
		Segments      map[string]int               `json:"segments"`
		Storage       map[string]int               `json:"storage"`
		Handshake     map[string]uint64            `json:"handshake_failures"`
		Notifications map[string]uint64            `json:"notifications"`
	}
	if err := json.Unmarshal([]byte(resp.Text), &doc); err != nil {
		t.Fatalf("status is not JSON: %v\n%s", err, resp.Text)
	}
	switch {
	case doc.Version == "" || doc.AcceptorID != 7 || doc.Cluster != "test" || doc.SegmentSize != testSegSize:
		t.Fatalf("identity: %s", resp.Text)
	case doc.Uptime <= 0 || doc.Connections != 1:
		t.Fatalf("uptime/connections: %s", resp.Text)
	case doc.Requests["accept"]["ok"] != 5 || doc.Requests["trim"]["ok"] != 1:
		t.Fatalf("request counts: %s", resp.Text)
	case doc.Engine.Syncs == 0 || doc.Engine.Durable != 6 || doc.LiveBytes <= 0:
		t.Fatalf("engine: %s", resp.Text)
	case doc.Segments["live"] != 1 || doc.Segments["trimmed"] != 1:
		t.Fatalf("segments: %s", resp.Text)
	case doc.Storage["records"] != 6:
		t.Fatalf("storage stats: %s", resp.Text)
	case doc.Handshake == nil || doc.Notifications == nil:
		t.Fatalf("failure counters: %s", resp.Text)
	}
}

// Graceful shutdown: requests already read finish and flush, then a
// shutdown error frame; the listener stops accepting at once.
func TestGracefulShutdown(t *testing.T) {
	log := newMemLog()
	log.gate = make(chan struct{})
	ts := startServer(t, log, false, nil)
	c := ts.dial()
	const n = 10
	for i := range uint32(n) {
		c.send(uint64(i), accept(1, i, []byte("v")))
	}
	c.flush()
	eventually(t, "the requests to reach the log", func() bool { return log.appended() == n })
	done := make(chan error, 1)
	go func() { done <- ts.srv.Shutdown(context.Background()) }()
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned (%v) with replies waiting for a sync", err)
	case <-time.After(50 * time.Millisecond):
	}
	if _, err := ts.dialKey(nil); err == nil {
		t.Fatal("a new connection was accepted during Shutdown")
	}
	select {
	case err := <-ts.served:
		ts.served <- err
		if !errors.Is(err, ErrServerClosed) {
			t.Fatalf("Serve returned %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Serve did not return on Shutdown")
	}
	close(log.gate)
	for range n {
		f, _ := c.response()
		if f.resp.Status != paxos.StatusOK {
			t.Fatalf("reply during shutdown: %+v", f.resp)
		}
	}
	f := c.must()
	if f.typ != wire.FrameErr || !errors.Is(f.err, wire.ErrShutdown) {
		t.Fatalf("after the replies: %v %+v, want a shutdown error frame", f.typ, f.err)
	}
	if _, err := c.next(2 * time.Second); err == nil {
		t.Fatal("connection still open after the shutdown frame")
	}
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

// A Shutdown whose context ends closes everything and says so.
func TestShutdownDeadline(t *testing.T) {
	log := newMemLog()
	log.gate = make(chan struct{})
	ts := startServer(t, log, false, nil)
	c := ts.dial()
	c.do(1, accept(1, 0, []byte("v")))
	eventually(t, "the request to reach the log", func() bool { return log.appended() == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := ts.srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v, want a deadline error", err)
	}
	if _, err := c.next(time.Second); err == nil {
		t.Fatal("connection open after a forced shutdown")
	}
	if n := ts.srv.nconns.Load(); n != 0 {
		t.Fatalf("%d connections after Shutdown", n)
	}
}

func TestConfigValidation(t *testing.T) {
	eng := NewEngine(paxos.NewAcceptor(16), newMemLog(), quietLogger(), nil)
	defer eng.Close()
	for _, cfg := range []Config{
		{},
		{Engine: eng, Key: []byte("short")},
		{Engine: eng, SegmentSize: 8},
		{Engine: eng, MaxValue: 1 << 20, MaxFrame: 1 << 20},
		{Engine: eng, MaxValue: 1 << 10, MaxFrame: 1 << 10},
		{Engine: eng, Cluster: string(bytes.Repeat([]byte("c"), 300))},
	} {
		if _, err := New(cfg); !errors.Is(err, ErrConfig) {
			t.Errorf("New(%+v) = %v, want ErrConfig", cfg, err)
		}
	}
	if _, err := New(Config{Engine: eng, SegmentSize: 16}); err != nil {
		t.Fatal(err)
	}
	// A large MaxValue alone raises the frame limit with it.
	s, err := New(Config{Engine: eng, MaxValue: 8 << 20})
	if err != nil || s.hello.MaxFrame < 8<<20+1024 {
		t.Fatalf("MaxValue 8 MiB: %v, frame limit %d", err, s.hello.MaxFrame)
	}
}

// One Server serves several listeners at once; Close ends every Serve.
func TestServeSeveralListeners(t *testing.T) {
	ts := startServer(t, nil, false, nil)
	pl := newPipeListener()
	served := make(chan error, 1)
	go func() { served <- ts.srv.Serve(pl) }()
	viaTCP := ts.dial()
	nc, err := pl.dial()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	sh, err := wire.ClientHandshake(ctx, nc, wire.ClientHello{ID: "pipe"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	viaPipe := &testClient{t: t, nc: nc, r: wire.NewReader(nc, int(sh.MaxFrame)), w: wire.NewWriter(nc, int(sh.MaxFrame), int(sh.MaxValue)), hello: sh}
	viaTCP.roundTrip(1, accept(1, 0, []byte("shared")))
	if r := viaPipe.roundTrip(2, &paxos.Request{Kind: paxos.KindRead, Seg: 1, Off: 0}); string(r.Reg.Value) != "shared" {
		t.Fatalf("read through the other listener: %+v", r)
	}
	ts.srv.Close()
	if err := <-served; !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve on the pipe listener returned %v", err)
	}
	if err := ts.srv.Serve(newPipeListener()); !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve after Close: %v", err)
	}
}

// A connection may listen to at most MaxSubscriptions segments.
func TestMaxSubscriptions(t *testing.T) {
	ts := startServer(t, nil, true, func(c *Config) { c.MaxSubscriptions = 2 })
	c := ts.dial()
	for _, tc := range []struct {
		seg  uint64
		want paxos.Status
	}{{1, paxos.StatusOK}, {2, paxos.StatusOK}, {3, paxos.StatusError}} {
		if r := c.roundTrip(tc.seg, &paxos.Request{Kind: paxos.KindListen, Seg: tc.seg}); r.Status != tc.want {
			t.Fatalf("listen %d: %+v, want %v", tc.seg, r, tc.want)
		}
	}
	// Listening again to a subscribed segment is not a new subscription.
	if r := c.roundTrip(9, &paxos.Request{Kind: paxos.KindListen, Seg: 1}); r.Status != paxos.StatusOK {
		t.Fatalf("repeated listen: %+v", r)
	}
	c.roundTrip(10, &paxos.Request{Kind: paxos.KindUnlisten, Seg: 2})
	if r := c.roundTrip(11, &paxos.Request{Kind: paxos.KindListen, Seg: 3}); r.Status != paxos.StatusOK {
		t.Fatalf("listen after unlisten: %+v", r)
	}
}
