package netstack_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/wormspace/wormspace/netstack"
)

// nsEnv is a private network namespace created by a test. Everything
// created in it (TAP, veth) disappears with it.
type nsEnv struct {
	ns   netns.NsHandle
	orig netns.NsHandle
}

var nsSeq atomic.Int32

// ifname returns a unique interface name (<= 15 chars) for this process.
func ifname(prefix string) string {
	return fmt.Sprintf("%s%d%d", prefix, os.Getpid()%100000, nsSeq.Add(1))
}

// requireNetAdmin skips when the facilities for namespace tests are truly
// missing (not root, no /dev/net/tun).
func requireNetAdmin(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root to create network namespaces, TAP and veth devices")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		tb.Skipf("no /dev/net/tun: %v", err)
	}
}

func newNS(tb testing.TB) *nsEnv {
	tb.Helper()
	requireNetAdmin(tb)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		tb.Fatal(err)
	}
	ns, err := netns.New() // switches this thread into the new namespace
	if err != nil {
		orig.Close()
		tb.Skipf("cannot create a network namespace: %v", err)
	}
	if err := netns.Set(orig); err != nil {
		tb.Fatal(err)
	}
	e := &nsEnv{ns: ns, orig: orig}
	tb.Cleanup(func() { ns.Close(); orig.Close() })
	if err := e.do(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	}); err != nil {
		tb.Fatal(err)
	}
	return e
}

// do runs f on a thread switched into the namespace. Sockets, TAP and
// veth devices created by f belong to the namespace for their lifetime.
func (e *nsEnv) do(f func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := netns.Set(e.ns); err != nil {
		return err
	}
	defer func() {
		if err := netns.Set(e.orig); err != nil {
			panic(fmt.Sprintf("cannot return to the original namespace: %v", err))
		}
	}()
	return f()
}

// kernel is the namespace's kernel TCP as a Network: its sockets are
// created inside the namespace.
type nsKernel struct{ e *nsEnv }

func (k nsKernel) Listen(ctx context.Context, network, address string) (l net.Listener, err error) {
	err = k.e.do(func() error {
		l, err = netstack.Kernel().Listen(ctx, network, address)
		return err
	})
	return l, err
}

func (k nsKernel) DialContext(ctx context.Context, network, address string) (c net.Conn, err error) {
	err = k.e.do(func() error {
		c, err = netstack.Kernel().DialContext(ctx, network, address)
		return err
	})
	return c, err
}
func (nsKernel) Close() error   { return nil }
func (nsKernel) String() string { return "kernel(netns)" }

var (
	tapKernel = netip.MustParsePrefix("10.99.0.1/24")
	tapStack  = netip.MustParsePrefix("10.99.0.2/24")
	vethKern  = netip.MustParsePrefix("10.98.0.1/24")
	vethStack = netip.MustParsePrefix("10.98.0.2/24")
)

func addrUp(name string, p netip.Prefix) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	a, err := netlink.ParseAddr(p.String())
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(l, a); err != nil {
		return err
	}
	return netlink.LinkSetUp(l)
}

func knobs(tb testing.TB) netstack.Knobs {
	k, err := netstack.KnobsFromEnv()
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

// tapEnv makes a namespace with a TAP device whose kernel side holds
// 10.99.0.1/24, and a netstack (10.99.0.2/24) attached to the TAP fd.
func tapEnv(tb testing.TB) (*nsEnv, *netstack.Stack) { return tapEnvWith(tb, knobs(tb)) }

// tapEnvWith is tapEnv with the stack's knobs given.
func tapEnvWith(tb testing.TB, k netstack.Knobs) (*nsEnv, *netstack.Stack) {
	e := newNS(tb)
	var st *netstack.Stack
	if err := e.do(func() error {
		name := ifname("nstap")
		if k.HostGSO {
			// The stack opens the TAP itself, with the virtio-net
			// header host GSO needs (a TAP fd opened by OpenTAP has
			// none).
			var err error
			if st, err = netstack.New(netstack.TAPDevice(name), netstack.WithAddress(tapStack), netstack.WithKnobs(k)); err != nil {
				return err
			}
			return addrUp(name, tapKernel)
		}
		f, err := netstack.OpenTAP(name)
		if err != nil {
			return err
		}
		fd, err := dupFD(f)
		if err != nil {
			return err
		}
		if err := addrUp(name, tapKernel); err != nil {
			return err
		}
		st, err = netstack.New(netstack.TAP(fd), netstack.WithAddress(tapStack), netstack.WithKnobs(k))
		return err
	}); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { st.Close() })
	return e, st
}

// vethEnv makes a namespace with a veth pair: one end holds 10.98.0.1/24
// in the kernel, the other is prepared with PrepareNIC and driven by a
// netstack (10.98.0.2/24) over AF_PACKET.
func vethEnv(tb testing.TB) (*nsEnv, *netstack.Stack) {
	return vethEnvWith(tb, knobs(tb), os.Getenv("WORM_VETH_NO_TSO") != "")
}

// vethEnvWith is vethEnv with the stack's knobs given; noTSO turns off the
// kernel side's segmentation offloads, so that netstack receives MTU-sized
// frames as a virtio-net guest with GRO off does (with them on, AF_PACKET
// hands up frames of up to 64 KiB).
func vethEnvWith(tb testing.TB, k netstack.Knobs, noTSO bool) (*nsEnv, *netstack.Stack) {
	e := newNS(tb)
	var st *netstack.Stack
	if err := e.do(func() error {
		a, b := ifname("nsva"), ifname("nsvb")
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: a}, PeerName: b}
		if err := netlink.LinkAdd(v); err != nil {
			return err
		}
		if err := addrUp(a, vethKern); err != nil {
			return err
		}
		if noTSO {
			for _, o := range []netstack.Offload{netstack.OffloadTSO, netstack.OffloadGSO} {
				if err := netstack.SetNICOffload(a, o, false); err != nil {
					return err
				}
			}
		}
		if err := netstack.PrepareNICFor(b, k); err != nil {
			return err
		}
		var err error
		st, err = netstack.New(netstack.PacketSocket(b), netstack.WithAddress(vethStack), netstack.WithKnobs(k))
		return err
	}); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { st.Close() })
	return e, st
}

func dupFD(f *os.File) (int, error) {
	defer f.Close()
	return syscallDup(int(f.Fd()))
}
