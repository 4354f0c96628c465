package compare

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/wormspace/wormspace/qemu"
)

// nsWorker owns an unnamed network namespace through one OS thread that
// lives in it: every socket it dials, every device it creates and every
// process it starts belongs to the namespace. The namespace has no name,
// so nothing is left behind when this process dies: the kernel frees it
// (with its bridge and TAPs) once the last process and fd inside are gone.
// Processes started here get PR_SET_PDEATHSIG from this thread, which
// lives until close, so a killed harness takes them along.
type nsWorker struct {
	jobs chan func()
	done chan struct{}
}

func newNSWorker() (*nsWorker, error) {
	w := &nsWorker{jobs: make(chan func()), done: make(chan struct{})}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Never unlocked: the thread is destroyed when this goroutine
		// returns, so the namespace never leaks into other goroutines.
		ns, err := netns.New()
		if err != nil {
			errc <- fmt.Errorf("compare: new network namespace: %w", err)
			return
		}
		ns.Close()
		errc <- nil
		for {
			select {
			case f := <-w.jobs:
				f()
			case <-w.done:
				return
			}
		}
	}()
	if err := <-errc; err != nil {
		return nil, err
	}
	return w, nil
}

// do runs f on the namespace's thread.
func (w *nsWorker) do(f func() error) error {
	errc := make(chan error, 1)
	select {
	case w.jobs <- func() { errc <- f() }:
	case <-w.done:
		return errors.New("compare: namespace closed")
	}
	return <-errc
}

func (w *nsWorker) close() {
	select {
	case <-w.done:
	default:
		close(w.done)
	}
}

// DialContext dials from inside the namespace (kernel TCP, TCP_NODELAY).
func (w *nsWorker) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := w.do(func() error {
		d := net.Dialer{KeepAlive: -1}
		var err error
		c, err = d.DialContext(ctx, network, addr)
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetNoDelay(true)
		}
		return err
	})
	return c, err
}

// start starts cmd inside the namespace.
func (w *nsWorker) start(cmd *exec.Cmd) error {
	return w.do(cmd.Start)
}

// setupBridge brings lo up and adds a bridge holding host.
func (w *nsWorker) setupBridge(name string, host netip.Prefix) error {
	return w.do(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		// No firewall hooks on the private bridge (qemu.DisableBridgeNetfilter):
		// they are the host's, not the stack's under test.
		if err := qemu.DisableBridgeNetfilter(); err != nil {
			return err
		}
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
		if err := netlink.LinkAdd(br); err != nil {
			return fmt.Errorf("compare: bridge %s: %w", name, err)
		}
		a := &netlink.Addr{IPNet: &net.IPNet{IP: host.Addr().AsSlice(), Mask: net.CIDRMask(host.Bits(), 32)}}
		if err := netlink.AddrAdd(br, a); err != nil {
			return err
		}
		return netlink.LinkSetUp(br)
	})
}

// attach enslaves the (already created) interface dev to the bridge and
// brings it up.
func (w *nsWorker) attach(dev, bridge string) error {
	return w.do(func() error {
		br, err := netlink.LinkByName(bridge)
		if err != nil {
			return err
		}
		l, err := netlink.LinkByName(dev)
		if err != nil {
			return fmt.Errorf("compare: %s: %w", dev, err)
		}
		if err := netlink.LinkSetMaster(l, br); err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	})
}
