package qemu

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Linux capability bits (include/uapi/linux/capability.h).
const (
	capNetAdmin = 12
	capSysAdmin = 21
)

// tunDevice is the TUN/TAP clone device.
var tunDevice = "/dev/net/tun"

// CanUseTAP reports whether this process can build TAP networking: it needs
// CAP_NET_ADMIN (TAP devices, bridge), CAP_SYS_ADMIN (creating and
// bind-mounting a named network namespace) and /dev/net/tun. The error
// wraps ErrNoTAP and says what is missing.
func CanUseTAP() error {
	caps, err := effectiveCaps()
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNoTAP, err)
	}
	for _, c := range []struct {
		bit  uint
		name string
	}{{capNetAdmin, "CAP_NET_ADMIN"}, {capSysAdmin, "CAP_SYS_ADMIN"}} {
		if caps&(1<<c.bit) == 0 {
			return fmt.Errorf("%w: process lacks %s", ErrNoTAP, c.name)
		}
	}
	f, err := os.OpenFile(tunDevice, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNoTAP, err)
	}
	f.Close()
	return nil
}

// effectiveCaps reads CapEff from /proc/self/status.
func effectiveCaps() (uint64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "CapEff:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	return 0, errors.New("no CapEff in /proc/self/status")
}

// inNS runs f on an OS thread switched into the network namespace ns, then
// switches the thread back. Sockets, TAP devices and netlink requests made
// by f belong to ns; a socket keeps its namespace for its lifetime, so a
// net.Conn created by f is usable from any goroutine afterwards. If the
// thread cannot be switched back it stays locked, and Go discards it when
// the goroutine ends, so no other goroutine ever runs in the wrong
// namespace.
func inNS(ns netns.NsHandle, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("qemu: current network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("qemu: enter network namespace: %w", err)
			return
		}
		ferr := f()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("qemu: leave network namespace: %w", err))
			return // thread stays locked and is discarded
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// bridgeNet is a cluster's private network: a named network namespace
// (visible to `ip netns`) holding a bridge with the host-side address and
// one TAP per VM. Deleting the namespace removes the bridge and TAPs.
type bridgeNet struct {
	name   string // namespace name, /var/run/netns/NAME
	bridge string // bridge interface name inside the namespace
	host   netip.Prefix
	ns     netns.NsHandle
}

// createBridgeNet makes the named namespace, brings up lo, and adds the
// bridge with address host. On failure nothing is left behind.
func createBridgeNet(name, bridge string, host netip.Prefix) (*bridgeNet, error) {
	if len(bridge) > 15 {
		return nil, fmt.Errorf("%w: bridge name %q longer than 15 bytes", ErrConfig, bridge)
	}
	var ns netns.NsHandle
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		// NewNamed switches this thread into the new namespace.
		ns, err = netns.NewNamed(name)
		if err != nil {
			if netns.Set(orig) == nil {
				runtime.UnlockOSThread()
			}
			errc <- fmt.Errorf("qemu: create network namespace %s: %w", name, err)
			return
		}
		ferr := setupBridge(bridge, host)
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("qemu: leave network namespace: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	if err := <-errc; err != nil {
		if ns.IsOpen() {
			ns.Close()
			deleteNamedNS(name)
		}
		return nil, err
	}
	return &bridgeNet{name: name, bridge: bridge, host: host, ns: ns}, nil
}

// setupBridge runs inside the new namespace.
func setupBridge(bridge string, host netip.Prefix) error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("qemu: lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("qemu: lo up: %w", err)
	}
	if err := DisableBridgeNetfilter(); err != nil {
		return err
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: bridge}}
	if err := netlink.LinkAdd(br); err != nil {
		return fmt.Errorf("qemu: add bridge %s: %w", bridge, err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: host.Addr().AsSlice(), Mask: net.CIDRMask(host.Bits(), 32)}}
	if err := netlink.AddrAdd(br, addr); err != nil {
		return fmt.Errorf("qemu: address %v on %s: %w", host, bridge, err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return fmt.Errorf("qemu: bridge %s up: %w", bridge, err)
	}
	return nil
}

// openBridgeNet attaches to an existing named namespace (another process
// created it).
func openBridgeNet(name, bridge string, host netip.Prefix) (*bridgeNet, error) {
	ns, err := netns.GetFromName(name)
	if err != nil {
		return nil, fmt.Errorf("qemu: open network namespace %s: %w", name, err)
	}
	return &bridgeNet{name: name, bridge: bridge, host: host, ns: ns}, nil
}

// addTAP creates a TAP device in the namespace, enslaved to the bridge and
// up, and returns its queue file for QEMU. The device is not persistent:
// it disappears when the last descriptor (QEMU's copy) closes, so a killed
// VM leaves nothing behind and a restart creates a fresh TAP.
func (b *bridgeNet) addTAP(name string) (*os.File, error) {
	if len(name) > 15 {
		return nil, fmt.Errorf("%w: TAP name %q longer than 15 bytes", ErrConfig, name)
	}
	var f *os.File
	err := inNS(b.ns, func() error {
		br, err := netlink.LinkByName(b.bridge)
		if err != nil {
			return fmt.Errorf("qemu: bridge %s: %w", b.bridge, err)
		}
		tap := &netlink.Tuntap{
			LinkAttrs: netlink.LinkAttrs{Name: name, MasterIndex: br.Attrs().Index},
			Mode:      netlink.TUNTAP_MODE_TAP,
			// NO_PI: frames without the 4-byte packet-info header, as
			// QEMU's tap backend expects. VNET_HDR: a virtio-net header
			// per frame, so checksum/segmentation offload metadata
			// passes between host kernel and guest.
			Flags:      netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR,
			NonPersist: true,
			// Queues: 1 (not 0) keeps the queue file open in Fds;
			// with 0 the library closes it and a non-persistent
			// device would vanish at once.
			Queues: 1,
		}
		if err := netlink.LinkAdd(tap); err != nil {
			return fmt.Errorf("qemu: add TAP %s: %w", name, err)
		}
		if err := netlink.LinkSetUp(tap); err != nil {
			for _, fd := range tap.Fds {
				fd.Close()
			}
			return fmt.Errorf("qemu: TAP %s up: %w", name, err)
		}
		f = tap.Fds[0]
		return nil
	})
	return f, err
}

// dial connects from inside the namespace.
func (b *bridgeNet) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := inNS(b.ns, func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// close releases this process's handle; the namespace lives on.
func (b *bridgeNet) close() {
	if b.ns.IsOpen() {
		b.ns.Close()
	}
}

// deleteNamedNS removes the namespace's name. The namespace itself (and
// its bridge and TAPs) is freed by the kernel once no process, descriptor
// or mount refers to it, that is once its QEMUs are gone. A missing name is
// not an error.
func deleteNamedNS(name string) error {
	p := filepath.Join(netnsDir, name)
	// MNT_DETACH: processes still inside keep the namespace; only the
	// name goes. EINVAL means the file exists but is not a mount point
	// (a creation that failed half-way): remove it all the same.
	if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && err != unix.ENOENT && err != unix.EINVAL {
		return fmt.Errorf("qemu: unmount network namespace %s: %w", name, err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("qemu: delete network namespace %s: %w", name, err)
	}
	return nil
}

// netnsDir is where named network namespaces live (iproute2 convention,
// the same directory vishvananda/netns uses).
const netnsDir = "/var/run/netns"

// namedNSExists reports whether /var/run/netns/NAME exists.
func namedNSExists(name string) bool {
	_, err := os.Stat(filepath.Join(netnsDir, name))
	return err == nil
}

// bridgeNetfilterKnobs are br_netfilter's per-namespace switches: with
// them on (the default once the module is loaded, as on hosts that run
// containers), every frame crossing a bridge also runs the iptables,
// ip6tables and arptables hooks.
var bridgeNetfilterKnobs = []string{
	"/proc/sys/net/bridge/bridge-nf-call-iptables",
	"/proc/sys/net/bridge/bridge-nf-call-ip6tables",
	"/proc/sys/net/bridge/bridge-nf-call-arptables",
}

// DisableBridgeNetfilter turns br_netfilter's hooks off in the network
// namespace of the calling thread (lock it to the namespace first), so
// that frames crossing a private test bridge are not run through the
// host's firewall tables. A host that runs containers typically loads
// br_netfilter and sets its FORWARD policy to DROP: with the hooks on,
// traffic between two TAPs of one bridge (VM to VM) would meet that
// policy, and every frame pays for the netfilter traversal (a few
// percent of a netstack wormd's CPU here). A NIC in the guest or on a
// real network has neither. The switches are the namespace's own (Linux
// 5.3 and later), so the host's are left alone. Without br_netfilter
// there is nothing to do. It fails only when a switch exists and cannot
// be written.
func DisableBridgeNetfilter() error {
	var err error
	for _, k := range bridgeNetfilterKnobs {
		if werr := os.WriteFile(k, []byte("0\n"), 0); werr != nil && !errors.Is(werr, fs.ErrNotExist) {
			err = errors.Join(err, fmt.Errorf("qemu: bridge netfilter off: %w", werr))
		}
	}
	return err
}

// BridgeNetfilterOn reports whether br_netfilter's iptables hook is on in
// the calling thread's network namespace (false when the module is not
// loaded).
func BridgeNetfilterOn() bool {
	b, err := os.ReadFile(bridgeNetfilterKnobs[0])
	return err == nil && strings.TrimSpace(string(b)) != "0"
}
