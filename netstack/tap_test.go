package netstack_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/wormspace/wormspace/netstack"
	"github.com/wormspace/wormspace/netstack/netperf"
)

// pathTest runs echo and bulk (both directions) from client to a server on
// srvNet at srvAddr, and the same with the roles swapped.
func pathTest(t *testing.T, kern netstack.Network, kernAddr netip.Prefix, st *netstack.Stack) {
	const bulk = 24 << 20
	for _, dir := range []struct {
		name           string
		client, server netstack.Network
		srvAddr        netip.Addr
	}{
		{"kernel-to-netstack", kern, st, st.Addr().Addr()},
		{"netstack-to-kernel", st, kern, kernAddr.Addr()},
	} {
		t.Run(dir.name, func(t *testing.T) {
			port := 7100 + int(nsSeq.Add(1))
			startServer(t, dir.server, fmt.Sprintf(":%d", port))
			addr := fmt.Sprintf("%v:%d", dir.srvAddr, port)
			c := dial(t, dir.client, addr)
			r, err := netperf.EchoRun(context.Background(), c, 64, 2000, netperf.Config{})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("echo 64B x %d: p50 %v p99 %v", r.Count, r.P50, r.P99)
			s, err := netperf.BulkSend(context.Background(), dial(t, dir.client, addr), bulk, netperf.Config{})
			if err != nil {
				t.Fatal(err)
			}
			rv, err := netperf.BulkRecv(context.Background(), dial(t, dir.client, addr), bulk, netperf.Config{})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("bulk %d MiB: client->server %.1f MB/s, server->client %.1f MB/s", bulk>>20, s.MBps, rv.MBps)
		})
	}
}

func TestTAP(t *testing.T) {
	e, st := tapEnv(t)
	pathTest(t, nsKernel{e}, tapKernel, st)
}

func TestPacketSocket(t *testing.T) {
	e, st := vethEnv(t)
	pathTest(t, nsKernel{e}, vethKern, st)
}

// TestOpenTAPDevice builds the stack the way wormd and netecho do, from a
// Config naming a TAP device, and checks that the device it created goes
// away with the stack.
func TestOpenTAPDevice(t *testing.T) {
	e := newNS(t)
	name := ifname("nsdev")
	var n netstack.Network
	if err := e.do(func() error {
		var err error
		n, err = netstack.Open(netstack.Config{Stack: "netstack", TAP: name, TAPFD: -1, Addr: tapStack})
		if err != nil {
			return err
		}
		return addrUp(name, tapKernel)
	}); err != nil {
		t.Fatal(err)
	}
	startServer(t, n, ":7400")
	c := dial(t, nsKernel{e}, fmt.Sprintf("%v:7400", tapStack.Addr()))
	if _, err := netperf.EchoRun(context.Background(), c, 64, 200, netperf.Config{}); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.do(func() error {
		if _, err := net.InterfaceByName(name); err == nil {
			return fmt.Errorf("TAP %s still exists after Close", name)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func TestOpenKernel(t *testing.T) {
	n, err := netstack.Open(netstack.Config{TAPFD: -1})
	if err != nil || n.String() != "kernel" {
		t.Fatalf("Open kernel: %v %v", n, err)
	}
	if _, err := netstack.Open(netstack.Config{Stack: "netstack", TAPFD: -1, Addr: tapStack}); !errors.Is(err, netstack.ErrBadOption) {
		t.Fatalf("Open netstack without link: %v", err)
	}
}

// TestPrepareNIC checks that PrepareNIC leaves the kernel no foothold on
// the interface: no addresses, IPv6 disabled, link up.
func TestPrepareNIC(t *testing.T) {
	e := newNS(t)
	if err := e.do(func() error {
		a, b := ifname("nspa"), ifname("nspb")
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: a}, PeerName: b}); err != nil {
			return err
		}
		if err := addrUp(b, vethStack); err != nil { // the kernel holds an address...
			return err
		}
		if err := netstack.PrepareNIC(b); err != nil {
			return err
		}
		l, err := netlink.LinkByName(b)
		if err != nil {
			return err
		}
		addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		if len(addrs) != 0 {
			return fmt.Errorf("addresses left on %s: %v", b, addrs)
		}
		v, err := os.ReadFile("/proc/sys/net/ipv6/conf/" + b + "/disable_ipv6")
		if err == nil && strings.TrimSpace(string(v)) != "1" {
			return fmt.Errorf("IPv6 still enabled on %s", b)
		}
		if l.Attrs().Flags&net.FlagUp == 0 {
			return fmt.Errorf("%s not up", b)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
