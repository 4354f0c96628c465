package guest

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/vishvananda/netlink"
)

// setupNetwork brings lo and eth0 up. With StackKernel eth0 gets the
// address and the default route; with StackNetstack the kernel is kept off
// eth0 (no addresses, IPv6 disabled) for wormd's netstack, which sets the
// NIC's offloads itself for the link it runs (netstack.PrepareNICFor: GRO
// and LRO on with host GSO, off otherwise).
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
		if err := netlink.LinkSetUp(eth); err != nil {
			return fmt.Errorf("%s up: %w", Iface, err)
		}
	default:
		return fmt.Errorf("unknown stack %q", cfg.Stack)
	}
	log.Info("network up", "iface", Iface, "stack", cfg.Stack, "mac", eth.Attrs().HardwareAddr.String(), "ms", time.Since(t).Milliseconds())
	return nil
}
