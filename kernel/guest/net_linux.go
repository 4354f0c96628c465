package guest

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// setupNetwork brings lo and eth0 up. With StackKernel eth0 gets the
// address and the default route; with StackNetstack the kernel is kept off
// eth0 (no addresses, IPv6 disabled, GRO off) for wormd's netstack.
func setupNetwork(log *slog.Logger, cfg Config) error {
	t := time.Now()
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("lo up: %w", err)
	}
	var eth netlink.Link
	deadline := time.Now().Add(deviceWait)
	for {
		if eth, err = netlink.LinkByName(Iface); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not appear within %v (is virtio_net loaded and a virtio-net device attached?): %w", Iface, deviceWait, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	switch cfg.Stack {
	case StackKernel:
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: cfg.Addr.Addr().AsSlice(), Mask: net.CIDRMask(cfg.Addr.Bits(), 32)}}
		if err := netlink.AddrReplace(eth, addr); err != nil {
			return fmt.Errorf("%s: add %v: %w", Iface, cfg.Addr, err)
		}
		if err := netlink.LinkSetUp(eth); err != nil {
			return fmt.Errorf("%s up: %w", Iface, err)
		}
		if cfg.Gateway.IsValid() {
			r := &netlink.Route{LinkIndex: eth.Attrs().Index, Gw: cfg.Gateway.AsSlice()}
			if err := netlink.RouteReplace(r); err != nil {
				return fmt.Errorf("default route via %v: %w", cfg.Gateway, err)
			}
		}
	case StackNetstack:
		addrs, err := netlink.AddrList(eth, netlink.FAMILY_ALL)
		if err != nil {
			return fmt.Errorf("%s: list addresses: %w", Iface, err)
		}
		for _, a := range addrs {
			if err := netlink.AddrDel(eth, &a); err != nil {
				return fmt.Errorf("%s: delete %v: %w", Iface, a.IPNet, err)
			}
		}
		// The kernel must not answer for netstack's address (it would
		// reset netstack's connections); no IPv6 at all is also fine.
		p := "/proc/sys/net/ipv6/conf/" + Iface + "/disable_ipv6"
		if _, err := os.Stat("/proc/sys/net/ipv6"); err == nil {
			if err := os.WriteFile(p, []byte("1\n"), 0o644); err != nil {
				return fmt.Errorf("%s: disable IPv6: %w", Iface, err)
			}
		}
		// GRO hands AF_PACKET coalesced super-frames; netstack then stalls
		// on bulk transfers (boot-notes).
		if err := setGRO(Iface, false); err != nil && !errors.Is(err, unix.EOPNOTSUPP) {
			return fmt.Errorf("%s: GRO off: %w", Iface, err)
		}
		if err := netlink.LinkSetUp(eth); err != nil {
			return fmt.Errorf("%s up: %w", Iface, err)
		}
	default:
		return fmt.Errorf("unknown stack %q", cfg.Stack)
	}
	log.Info("network up", "iface", Iface, "stack", cfg.Stack, "mac", eth.Attrs().HardwareAddr.String(), "ms", time.Since(t).Milliseconds())
	return nil
}

// ethtoolValue is struct ethtool_value (linux/ethtool.h).
type ethtoolValue struct {
	cmd, data uint32
}

// ifreqPtr is struct ifreq whose union holds the ifr_data pointer (40
// bytes on 64-bit Linux).
type ifreqPtr struct {
	name [unix.IFNAMSIZ]byte
	data unsafe.Pointer
	_    [24 - unsafe.Sizeof(uintptr(0))]byte
}

// setGRO switches generic receive offload with the legacy ethtool ioctl.
func setGRO(ifname string, on bool) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	v := &ethtoolValue{cmd: unix.ETHTOOL_SGRO}
	if on {
		v.data = 1
	}
	var ifr ifreqPtr
	copy(ifr.name[:], ifname)
	ifr.data = unsafe.Pointer(v)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr)))
	runtime.KeepAlive(v)
	if errno != 0 {
		return errno
	}
	return nil
}
