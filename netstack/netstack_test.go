package netstack_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/wormspace/wormspace/netstack"
	"github.com/wormspace/wormspace/netstack/netperf"
)

var (
	addrA = netip.MustParsePrefix("192.168.77.1/24")
	addrB = netip.MustParsePrefix("192.168.77.2/24")
)

// pipePair returns two stacks joined by an in-process link.
func pipePair(tb testing.TB) (a, b *netstack.Stack) {
	tb.Helper()
	k, err := netstack.KnobsFromEnv()
	if err != nil {
		tb.Fatal(err)
	}
	return pipePairWith(tb, k)
}

// pipePairWith is pipePair with both stacks' knobs given.
func pipePairWith(tb testing.TB, k netstack.Knobs) (a, b *netstack.Stack) {
	tb.Helper()
	var err error
	la, lb := netstack.Pipe()
	a, err = netstack.New(la, netstack.WithAddress(addrA), netstack.WithKnobs(k))
	if err != nil {
		tb.Fatal(err)
	}
	b, err = netstack.New(lb, netstack.WithAddress(addrB), netstack.WithKnobs(k))
	if err != nil {
		a.Close()
		tb.Fatal(err)
	}
	tb.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// startServer runs a netperf server on n at address and returns the
// address to dial.
func startServer(tb testing.TB, n netstack.Network, address string) string {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	l, err := n.Listen(ctx, "tcp", address)
	if err != nil {
		cancel()
		tb.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- netperf.Serve(ctx, l, nil) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("server: %v", err)
		}
	})
	return l.Addr().String()
}

func dial(tb testing.TB, n netstack.Network, address string) net.Conn {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := n.DialContext(ctx, "tcp", address)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

func TestPipeEcho(t *testing.T) {
	a, b := pipePair(t)
	srv := startServer(t, a, "192.168.77.1:7000")
	// Several concurrent clients, many small request/response pairs each.
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := dial(t, b, srv)
			r, err := netperf.EchoRun(context.Background(), c, 64, 2000, netperf.Config{})
			if err != nil {
				t.Error(err)
				return
			}
			if r.Count != 2000 || r.P50 <= 0 || r.P99 < r.P50 {
				t.Errorf("implausible result %+v", r)
			}
		}()
	}
	wg.Wait()
}

func TestPipeBulk(t *testing.T) {
	a, b := pipePair(t)
	startServer(t, a, ":7001") // any-address listener
	srv := "192.168.77.1:7001"
	const n = 32 << 20
	for _, dir := range []string{"send", "recv"} {
		c := dial(t, b, srv)
		var r netperf.BulkResult
		var err error
		if dir == "send" {
			r, err = netperf.BulkSend(context.Background(), c, n, netperf.Config{})
		} else {
			r, err = netperf.BulkRecv(context.Background(), c, n, netperf.Config{})
		}
		if err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		if r.Bytes != n {
			t.Fatalf("%s: %d bytes", dir, r.Bytes)
		}
		t.Logf("pipe bulk %s: %.1f MB/s", dir, r.MBps)
	}
}

func TestListenerClose(t *testing.T) {
	a, _ := pipePair(t)
	l, err := a.Listen(context.Background(), "tcp", ":7002")
	if err != nil {
		t.Fatal(err)
	}
	// The port is taken while the listener lives.
	if _, err := a.Listen(context.Background(), "tcp", ":7002"); !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("second listen: got %v, want EADDRINUSE", err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := l.Accept()
		errc <- err
	}()
	time.Sleep(50 * time.Millisecond) // let Accept block
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("blocked Accept after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Accept did not return after Close")
	}
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept on closed listener: %v", err)
	}
	if err := l.Close(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second Close: %v", err)
	}
	// The port is free again.
	l2, err := a.Listen(context.Background(), "tcp", ":7002")
	if err != nil {
		t.Fatalf("listen after close: %v", err)
	}
	l2.Close()
}

func TestDialClosedPort(t *testing.T) {
	_, b := pipePair(t)
	for _, n := range []netstack.Network{b, netstack.Kernel()} {
		addr := "192.168.77.1:7999"
		if n == netstack.Kernel() {
			// A port nothing listens on: bind one, note it, close it.
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			addr = l.Addr().String()
			l.Close()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		start := time.Now()
		c, err := n.DialContext(ctx, "tcp", addr)
		cancel()
		if err == nil {
			c.Close()
			t.Fatalf("%v: dial to closed port succeeded", n)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("%v: got %v, want ECONNREFUSED", n, err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("%v: refusal took %v", n, d)
		}
		t.Logf("%v: %v", n, err)
	}
}

func TestStackClose(t *testing.T) {
	a, b := pipePair(t)
	srv := startServer(t, a, "192.168.77.1:7003")
	c := dial(t, b, srv)
	rt, err := netperf.Echo(c, 64)
	if err != nil {
		t.Fatal(err)
	}
	if err := rt(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	// Connections of a closed stack fail instead of hanging.
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if err := rt(); err == nil {
		t.Fatal("round trip on closed stack succeeded")
	}
	if err := b.Close(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second Close: %v", err)
	}
	// A listener of a closed stack reports net.ErrClosed.
	l, err := a.Listen(context.Background(), "tcp", ":7004")
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { _, err := l.Accept(); errc <- err }()
	time.Sleep(20 * time.Millisecond)
	a.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after stack Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Accept did not return after stack Close")
	}
	if _, err := b.DialContext(context.Background(), "tcp", srv); !errors.Is(err, netstack.ErrClosed) {
		t.Fatalf("dial on closed stack: %v", err)
	}
}

func TestOptions(t *testing.T) {
	la, _ := netstack.Pipe()
	bad := [][]netstack.Option{
		{},   // no link
		{la}, // no address
		{la, netstack.WithAddress(netip.MustParsePrefix("fd00::1/64"))},
		{la, netstack.WithAddress(addrA), netstack.WithGateway(netip.MustParseAddr("10.0.0.1"))},
		{la, netstack.WithAddress(addrA), netstack.WithMTU(100)},
		{la, netstack.WithAddress(addrA), netstack.WithKnobs(netstack.Knobs{CongestionControl: "bbr"})},
	}
	for i, opts := range bad {
		if s, err := netstack.New(opts...); !errors.Is(err, netstack.ErrBadOption) {
			if s != nil {
				s.Close()
			}
			t.Errorf("case %d: got %v, want ErrBadOption", i, err)
		}
	}
	s, err := netstack.New(la, netstack.WithAddress(addrA), netstack.WithGateway(netip.MustParseAddr("192.168.77.254")))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := s.Knobs(); got != netstack.DefaultKnobs() {
		t.Errorf("knobs %v, want defaults", got)
	}
	if _, err := s.Listen(context.Background(), "udp", ":1"); !errors.Is(err, netstack.ErrUnsupportedNetwork) {
		t.Errorf("udp listen: %v", err)
	}
}

// TestCloseReleasesGoroutines checks that closing stacks stops their
// protocol and link goroutines: wormd may rebuild a stack after errors.
func TestCloseReleasesGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	for i := 0; i < 3; i++ {
		la, lb := netstack.Pipe()
		a, err := netstack.New(la, netstack.WithAddress(addrA))
		if err != nil {
			t.Fatal(err)
		}
		b, err := netstack.New(lb, netstack.WithAddress(addrB))
		if err != nil {
			t.Fatal(err)
		}
		l, err := a.Listen(context.Background(), "tcp", ":7500")
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { netperf.Serve(context.Background(), l, nil); close(done) }()
		c, err := b.DialContext(context.Background(), "tcp", "192.168.77.1:7500")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := netperf.EchoRun(context.Background(), c, 64, 50, netperf.Config{}); err != nil {
			t.Fatal(err)
		}
		c.Close()
		a.Close()
		b.Close()
		<-done
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before+2 {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines before, %d after closing:\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}
