package qemu

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// requireTAP skips only where the facilities are truly missing.
func requireTAP(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces and TAP devices")
	}
	if _, err := os.Stat(tunDevice); err != nil {
		t.Skipf("no %s: %v", tunDevice, err)
	}
	if err := CanUseTAP(); err != nil {
		t.Fatalf("root with %s but CanUseTAP: %v", tunDevice, err)
	}
}

// TestBridgeNet builds a cluster network without QEMU: namespace, bridge
// with the host address, two TAPs; checks them with netlink queries inside
// the namespace, dials a listener in the namespace through dial, and
// checks that a TAP vanishes with its descriptor and the namespace with its
// name.
func TestBridgeNet(t *testing.T) {
	requireTAP(t)
	suffix := fmt.Sprintf("%x", os.Getpid()%0xfffff)
	name := "qemutest-" + suffix
	host := netip.MustParsePrefix("10.77.9.1/24")
	b, err := createBridgeNet(name, "wbr-"+suffix, host)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		b.close()
		deleteNamedNS(name)
	}()
	if !namedNSExists(name) {
		t.Fatalf("/var/run/netns/%s missing", name)
	}
	taps := map[string]*os.File{}
	for i := 1; i <= 2; i++ {
		tn := fmt.Sprintf("wt%d-%s", i, suffix)
		f, err := b.addTAP(tn)
		if err != nil {
			t.Fatal(err)
		}
		taps[tn] = f
	}
	h, err := netlink.NewHandleAt(b.ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	br, err := h.LinkByName(b.bridge)
	if err != nil {
		t.Fatal(err)
	}
	if br.Type() != "bridge" || br.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("bridge %s: type %s flags %v", b.bridge, br.Type(), br.Attrs().Flags)
	}
	addrs, err := h.AddrList(br, unix.AF_INET)
	if err != nil || len(addrs) != 1 || addrs[0].IPNet.String() != host.String() {
		t.Errorf("bridge addresses %v (%v), want %v", addrs, err, host)
	}
	for tn := range taps {
		l, err := h.LinkByName(tn)
		if err != nil {
			t.Fatalf("TAP %s: %v", tn, err)
		}
		tt, ok := l.(*netlink.Tuntap)
		if !ok || tt.Mode != netlink.TUNTAP_MODE_TAP {
			t.Errorf("%s is %T %+v, want a TAP", tn, l, l)
		}
		if ok && (tt.Flags&netlink.TUNTAP_VNET_HDR == 0 || tt.Flags&netlink.TUNTAP_NO_PI == 0 || !tt.NonPersist) {
			t.Errorf("%s flags %v non-persist %v, want NO_PI|VNET_HDR non-persistent", tn, tt.Flags, tt.NonPersist)
		}
		if l.Attrs().MasterIndex != br.Attrs().Index {
			t.Errorf("%s master %d, want bridge %d", tn, l.Attrs().MasterIndex, br.Attrs().Index)
		}
		if l.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("%s is down", tn)
		}
	}
	// No firewall hooks on the private bridge; the host's switch is left
	// as it was.
	hostOn := BridgeNetfilterOn()
	var nsOn bool
	if err := inNS(b.ns, func() error { nsOn = BridgeNetfilterOn(); return nil }); err != nil {
		t.Fatal(err)
	}
	if nsOn {
		t.Error("br_netfilter's iptables hook is on in the cluster's namespace")
	}
	if BridgeNetfilterOn() != hostOn {
		t.Error("creating the cluster network changed the host's br_netfilter switch")
	}
	t.Logf("br_netfilter iptables hook: host %v, cluster namespace %v", hostOn, nsOn)
	// The TAPs live in the namespace only.
	for tn := range taps {
		if _, err := netlink.LinkByName(tn); err == nil {
			t.Errorf("TAP %s visible in the host namespace", tn)
		}
	}

	// Closing a TAP's last descriptor removes it (what a killed QEMU does).
	for tn, f := range taps {
		f.Close()
		deadline := time.Now().Add(5 * time.Second)
		for {
			if _, err := h.LinkByName(tn); err != nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("TAP %s survived its descriptor", tn)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	// dial reaches a socket in the namespace (on the bridge address),
	// and the connection works from other goroutines afterwards.
	var ln net.Listener
	if err := inNS(b.ns, func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(host.Addr(), 0).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			io.Copy(c, c)
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := b.dial(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		defer conn.Close()
		if _, err := conn.Write([]byte("worm")); err != nil {
			done <- err
			return
		}
		buf := make([]byte, 4)
		_, err := io.ReadFull(conn, buf)
		if err == nil && string(buf) != "worm" {
			err = fmt.Errorf("echo %q", buf)
		}
		done <- err
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// The same address is not reachable from the host namespace.
	if c, err := net.DialTimeout("tcp", ln.Addr().String(), 300*time.Millisecond); err == nil {
		c.Close()
		t.Errorf("namespace listener reachable from the host namespace")
	}

	// Deleting the name removes the namespace from `ip netns`.
	ln.Close()
	b.close()
	if err := deleteNamedNS(name); err != nil {
		t.Fatal(err)
	}
	if namedNSExists(name) {
		t.Fatalf("namespace %s still named", name)
	}
	if err := deleteNamedNS(name); err != nil {
		t.Fatalf("deleting a deleted namespace: %v", err)
	}
}

func TestCreateBridgeNetCleansUpOnFailure(t *testing.T) {
	requireTAP(t)
	name := fmt.Sprintf("qemutest-f%x", os.Getpid()%0xfffff)
	// An interface name with a slash is refused by the kernel, so
	// setupBridge fails after the namespace exists; nothing may remain.
	_, err := createBridgeNet(name, "wbr/bad", netip.MustParsePrefix("10.77.9.1/24"))
	if err == nil {
		deleteNamedNS(name)
		t.Fatal("bridge named wbr/bad created")
	}
	t.Log(err)
	if namedNSExists(name) {
		deleteNamedNS(name)
		t.Fatalf("namespace %s left after failed creation (%v)", name, err)
	}
}
