package server

import (
	"bytes"
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/wormspace/wormspace/netstack"
	"github.com/wormspace/wormspace/worm/paxos"
	"github.com/wormspace/wormspace/worm/wire"
)

// gVisor's netstack serves TCP in the boot image: there, every write
// deadline armed in the future costs a timer (gonet's deadlineTimer), which
// the reply path no longer arms. These tests run the server over two
// netstack stacks joined by an in-memory link.

var (
	nsServerAddr = netip.MustParsePrefix("192.168.79.1/24")
	nsClientAddr = netip.MustParsePrefix("192.168.79.2/24")
)

// netstackServer starts a server (as startServer, tweaked) that also
// serves a listener of a netstack stack, and returns a dialer from a
// second stack and the listener's deadline counter.
func netstackServer(tb testing.TB, tweak func(*Config)) (*testServer, func() *testClient, *countingListener) {
	tb.Helper()
	ts := startServer(tb, nil, false, tweak)
	la, lb := netstack.Pipe()
	srvStack, err := netstack.New(la, netstack.WithAddress(nsServerAddr))
	if err != nil {
		tb.Fatal(err)
	}
	cliStack, err := netstack.New(lb, netstack.WithAddress(nsClientAddr))
	if err != nil {
		srvStack.Close()
		tb.Fatal(err)
	}
	// Cleanups run last-in first-out: the stacks close after the server.
	tb.Cleanup(func() { cliStack.Close(); srvStack.Close() })
	l, err := srvStack.Listen(context.Background(), "tcp", nsServerAddr.Addr().String()+":7070")
	if err != nil {
		tb.Fatal(err)
	}
	cl := &countingListener{Listener: l}
	go ts.srv.Serve(cl)
	dial := func() *testClient {
		tb.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		nc, err := cliStack.DialContext(ctx, "tcp", l.Addr().String())
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { nc.Close() })
		sh, err := wire.ClientHandshake(ctx, nc, wire.ClientHello{ID: "over-netstack"}, nil)
		if err != nil {
			tb.Fatal(err)
		}
		return &testClient{t: tb, nc: nc, r: wire.NewReader(nc, int(sh.MaxFrame)), w: wire.NewWriter(nc, int(sh.MaxFrame), int(sh.MaxValue)), hello: sh}
	}
	return ts, dial, cl
}

// Over netstack, replies are written without a write deadline, and a
// client that stops reading is still closed by the watchdog (its past
// deadline unblocks gonet's pending Write) while another is served.
func TestNetstackWriteTimeout(t *testing.T) {
	const timeout = 200 * time.Millisecond
	ts, dial, cl := netstackServer(t, func(c *Config) {
		budgetConfig(c)
		c.WriteTimeout = timeout
	})
	good := dial()
	value := bytes.Repeat([]byte("N"), budgetValue)
	good.roundTrip(1, accept(1, 0, value))
	for i := range 100 {
		if r := good.roundTrip(uint64(2+i), &paxos.Request{Kind: paxos.KindRead, Seg: 1, Off: 0}); len(r.Reg.Value) != budgetValue {
			t.Fatalf("read %d: %d bytes", i, len(r.Reg.Value))
		}
	}
	if n := cl.count(); n != 0 {
		t.Fatalf("%d write deadlines set for 101 replies over netstack, want none", n)
	}

	stalled := dial()
	var b []byte
	for i := range 300 {
		b = wire.AppendRequest(b, uint64(i+1), &paxos.Request{Kind: paxos.KindRead, Seg: 1, Off: 0})
	}
	go stalled.nc.Write(b)
	eventually(t, "the stalled connection closed", func() bool { return ts.srv.m.writeTimeouts[wdTimeout].Load() == 1 })
	eventually(t, "the stalled connection released", func() bool { return ts.srv.nconns.Load() == 1 })
	if n := cl.count(); n != 1 {
		t.Fatalf("%d write deadlines set, want the watchdog's one", n)
	}
	good.works()
	eventually(t, "every byte given back", func() bool { return ts.srv.budget.used.Load() == 0 })
}

// Round trips of a 64-byte read over netstack, one request in flight:
// allocs/op is the server's and both stacks' (the client's codec does not
// allocate); the per-write deadline used to add a timer to each.
func BenchmarkRoundTripNetstack(b *testing.B) {
	_, dial, _ := netstackServer(b, nil)
	c := dial()
	c.roundTrip(1, accept(1, 0, value64))
	req := paxos.Request{Kind: paxos.KindRead, Seg: 1, Off: 0}
	var resp paxos.Response
	c.nc.SetDeadline(time.Now().Add(time.Minute))
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if err := c.w.WriteRequest(uint64(i), &req); err != nil {
			b.Fatal(err)
		}
		if err := c.w.Flush(); err != nil {
			b.Fatal(err)
		}
		f, err := c.r.Next()
		if err == nil {
			err = wire.DecodeResponse(f.Payload, 0, &resp)
		}
		if err != nil || f.ID != uint64(i) || resp.Status != paxos.StatusOK {
			b.Fatalf("round trip %d: %v %+v", i, err, resp)
		}
	}
}
