package netstack_test

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/wormspace/wormspace/netstack"
	"github.com/wormspace/wormspace/netstack/netperf"
)

// TestDispatchModes runs echo and bulk in both directions, kernel client to
// netstack server, over TAP and over AF_PACKET with every receive mode: the
// inline link and fdbased's three. Over veth the kernel side's TSO is off
// for the fdbased modes (PACKET_MMAP's ring slots hold MTU-sized frames);
// the inline link is run both ways, since with TSO on AF_PACKET hands it
// frames of up to 64 KiB.
func TestDispatchModes(t *testing.T) {
	requireNetAdmin(t)
	type env func(tb testing.TB, k netstack.Knobs) (*nsEnv, *netstack.Stack)
	tap := func(tb testing.TB, k netstack.Knobs) (*nsEnv, *netstack.Stack) { return tapEnvWith(tb, k) }
	veth := func(noTSO bool) env {
		return func(tb testing.TB, k netstack.Knobs) (*nsEnv, *netstack.Stack) { return vethEnvWith(tb, k, noTSO) }
	}
	for _, c := range []struct {
		name string
		mode netstack.DispatchMode
		env  env
		busy int // Knobs.BusyPollMicros
	}{
		{"tap/inline", netstack.DispatchInline, tap, 0},
		{"tap/netpoll", netstack.DispatchNetpoll, tap, 0},
		{"tap/netpoll/busypoll", netstack.DispatchNetpoll, tap, 50},
		{"tap/readv", netstack.DispatchReadv, tap, 0},
		{"afpacket-tso/inline", netstack.DispatchInline, veth(false), 0},
		{"afpacket-tso/netpoll", netstack.DispatchNetpoll, veth(false), 0},
		{"afpacket/inline", netstack.DispatchInline, veth(true), 0},
		{"afpacket/inline/busypoll", netstack.DispatchInline, veth(true), 50},
		{"afpacket/readv", netstack.DispatchReadv, veth(true), 0},
		{"afpacket/recvmmsg", netstack.DispatchRecvMMsg, veth(true), 0},
		{"afpacket/mmap", netstack.DispatchPacketMMap, veth(true), 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			k := netstack.DefaultKnobs()
			k.Dispatch, k.BusyPollMicros = c.mode, c.busy
			e, st := c.env(t, k)
			if got := st.Knobs(); got.Dispatch != c.mode || got.BusyPollMicros != c.busy {
				t.Fatalf("stack runs dispatch %q busy_poll_us %d, want %q %d", got.Dispatch, got.BusyPollMicros, c.mode, c.busy)
			}
			addr := fmt.Sprintf("%v:%d", st.Addr().Addr(), 7200+int(nsSeq.Add(1)))
			startServer(t, st, addr)
			ctx := context.Background()
			r, err := netperf.EchoRun(ctx, dial(t, nsKernel{e}, addr), 64, 500, netperf.Config{})
			if err != nil {
				t.Fatal(err)
			}
			const bulk = 8 << 20
			s, err := netperf.BulkSend(ctx, dial(t, nsKernel{e}, addr), bulk, netperf.Config{})
			if err != nil {
				t.Fatalf("bulk into netstack: %v", err)
			}
			rv, err := netperf.BulkRecv(ctx, dial(t, nsKernel{e}, addr), bulk, netperf.Config{})
			if err != nil {
				t.Fatalf("bulk out of netstack: %v", err)
			}
			t.Logf("echo p50 %v p99 %v; bulk into %.0f MB/s, out of %.0f MB/s", r.P50, r.P99, s.MBps, rv.MBps)
		})
	}
}

// TestInlineNoAllocPerPacket checks the wormd path's promise: with the
// inline link, a 64-byte request/response round trip over TAP or AF_PACKET
// allocates nothing, on either stack (the test process holds the netstack
// server and the kernel client; the count is process-wide). A few
// allocations by timers and gVisor's background work are tolerated, not
// one per packet.
func TestInlineNoAllocPerPacket(t *testing.T) {
	requireNetAdmin(t)
	if raceEnabled {
		t.Skip("the race detector allocates on its own; allocation counts mean nothing under -race")
	}
	type envFn func(tb testing.TB, k netstack.Knobs) (*nsEnv, *netstack.Stack)
	tap := func(tb testing.TB, k netstack.Knobs) (*nsEnv, *netstack.Stack) { return tapEnvWith(tb, k) }
	veth := func(tb testing.TB, k netstack.Knobs) (*nsEnv, *netstack.Stack) { return vethEnvWith(tb, k, false) }
	for _, c := range []struct {
		name string
		mode netstack.DispatchMode
		env  envFn
		busy int
		gso  bool // host GSO: a virtio-net header written and read with every frame
	}{
		{"tap", netstack.DispatchInline, tap, 0, false},
		{"afpacket", netstack.DispatchInline, veth, 0, false},
		{"tap/netpoll", netstack.DispatchNetpoll, tap, 0, false},
		{"afpacket/netpoll", netstack.DispatchNetpoll, veth, 0, false},
		{"tap/netpoll/busypoll", netstack.DispatchNetpoll, tap, 200, false},
		{"tap/netpoll/host_gso", netstack.DispatchNetpoll, tap, 0, true},
		{"afpacket/netpoll/host_gso", netstack.DispatchNetpoll, veth, 0, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			k := netstack.DefaultKnobs()
			k.Dispatch, k.BusyPollMicros, k.HostGSO = c.mode, c.busy, c.gso
			e, st := c.env(t, k)
			addr := fmt.Sprintf("%v:%d", st.Addr().Addr(), 7200+int(nsSeq.Add(1)))
			startServer(t, st, addr)
			rt, err := netperf.Echo(dial(t, nsKernel{e}, addr), 64)
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 200; i++ { // warm the pools, ARP, windows
				if err := rt(); err != nil {
					t.Fatal(err)
				}
			}
			const n = 3000
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			for i := 0; i < n; i++ {
				if err := rt(); err != nil {
					t.Fatal(err)
				}
			}
			runtime.ReadMemStats(&after)
			per := float64(after.Mallocs-before.Mallocs) / n
			t.Logf("%.3f allocations per round trip (%d in %d)", per, after.Mallocs-before.Mallocs, n)
			if per > 0.2 {
				t.Fatalf("%.2f allocations per 64-byte round trip; want none per packet", per)
			}
		})
	}
}

// TestCloseUnderTraffic closes inline-link stacks (some of them busy
// polling) while the kernel side keeps sending them SYNs for a closed
// port: the reader answers each with a reset, which needs the stack's
// lock, and gVisor detaches the link with that lock held. Close must not
// deadlock (it did: Attach(nil) waited for the reader), and must return
// promptly every time.
func TestCloseUnderTraffic(t *testing.T) {
	requireNetAdmin(t)
	// The race needs a reset in flight at the moment of Close: the old
	// code hung in about one run of three of 10 closes; 30 make a miss
	// unlikely.
	for i := 0; i < 30; i++ {
		k := netstack.DefaultKnobs()
		k.Dispatch = netstack.DispatchInline
		if i%2 == 1 {
			k.Dispatch = netstack.DispatchNetpoll // its reader parks in the poller
		}
		if i%3 == 2 {
			k.BusyPollMicros = 1_000_000 // its reader is polling, never parked, when Close comes
		}
		e, st := tapEnvWith(t, k)
		addr := fmt.Sprintf("%v:9", st.Addr().Addr()) // nothing listens
		stop := make(chan struct{})
		flooding := make(chan struct{})
		go func() {
			defer close(flooding)
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
				if c, err := (nsKernel{e}).DialContext(ctx, "tcp", addr); err == nil {
					c.Close()
				}
				cancel()
			}
		}()
		time.Sleep(20 * time.Millisecond)
		closed := make(chan error, 1)
		go func() { closed <- st.Close() }()
		select {
		case err := <-closed:
			if err != nil {
				t.Fatalf("close %d: %v", i, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("close %d: Stack.Close did not return within 10 s under traffic", i)
		}
		close(stop)
		<-flooding
	}
}
