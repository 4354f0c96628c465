package netstack

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// PrepareNIC readies a kernel interface to be driven by a netstack over
// PacketSocket, in the calling thread's network namespace:
//
//   - link up;
//   - every address flushed and IPv6 disabled on it: the kernel must not
//     consider itself an endpoint on this link, or it answers SYNs meant
//     for netstack with resets (and would race netstack's ARP replies);
//   - GRO and LRO off (ethtool): the kernel would otherwise coalesce
//     inbound segments into frames larger than the MTU before AF_PACKET
//     sees them, and gVisor's fdbased link, reading MTU-sized buffers,
//     truncates them: bulk transfers into netstack stall (boot-notes).
//     PrepareNICFor leaves them on for a stack that reads them whole.
//
// Offload settings a driver does not support are skipped with a debug log.
func PrepareNIC(ifname string) error { return prepareNIC(ifname, false) }

// PrepareNICFor is PrepareNIC for a stack with knobs k: with Knobs.HostGSO
// (and this package's link, which reads frames of up to 64 KiB) GRO and
// LRO are switched on instead of off, so that the kernel hands netstack
// coalesced segments, one frame per up to 64 KiB; on virtio-net, LRO is
// the device's receive segmentation offload (the host's TAP may then send
// the guest whole GSO segments).
func PrepareNICFor(ifname string, k Knobs) error {
	k = k.effective()
	return prepareNIC(ifname, k.HostGSO)
}

func prepareNIC(ifname string, coalesce bool) error {
	link, err := netlink.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("netstack: prepare %s: %w", ifname, err)
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("netstack: prepare %s: list addresses: %w", ifname, err)
	}
	for _, a := range addrs {
		if err := netlink.AddrDel(link, &a); err != nil {
			return fmt.Errorf("netstack: prepare %s: delete %v: %w", ifname, a.IPNet, err)
		}
	}
	if _, err := os.Stat("/proc/sys/net"); err != nil {
		return fmt.Errorf("netstack: prepare %s: /proc/sys/net unavailable (is /proc mounted?): %w", ifname, err)
	}
	// No /proc/sys/net/ipv6: the kernel has no IPv6 at all, which is
	// what we want.
	if _, err := os.Stat("/proc/sys/net/ipv6"); err == nil {
		p := "/proc/sys/net/ipv6/conf/" + ifname + "/disable_ipv6"
		if err := os.WriteFile(p, []byte("1\n"), 0o644); err != nil {
			return fmt.Errorf("netstack: prepare %s: disable IPv6: %w", ifname, err)
		}
	}
	if err := SetNICOffload(ifname, OffloadGRO, coalesce); err != nil && !errors.Is(err, unix.EOPNOTSUPP) {
		return err
	}
	if err := SetNICOffload(ifname, OffloadLRO, coalesce); err != nil {
		slog.Debug("netstack: LRO not switchable", "iface", ifname, "on", coalesce, "err", err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("netstack: prepare %s: link up: %w", ifname, err)
	}
	return nil
}

// Offload names a kernel NIC offload switchable through the legacy ethtool
// ioctl.
type Offload int

// Offloads SetNICOffload can switch.
const (
	OffloadGRO        Offload = iota // generic receive offload (ETHTOOL_SGRO)
	OffloadLRO                       // large receive offload (ETH_FLAG_LRO)
	OffloadTSO                       // TCP segmentation offload (ETHTOOL_STSO)
	OffloadGSO                       // generic segmentation offload (ETHTOOL_SGSO)
	OffloadTXChecksum                // TX checksumming (ETHTOOL_STXCSUM)
)

func (o Offload) String() string {
	return [...]string{"gro", "lro", "tso", "gso", "tx-checksum"}[o]
}

// ethtoolValue is struct ethtool_value from linux/ethtool.h.
type ethtoolValue struct {
	cmd  uint32
	data uint32
}

// ifreqData is struct ifreq with the ifr_data pointer member.
type ifreqData struct {
	name [unix.IFNAMSIZ]byte
	data unsafe.Pointer
	_    [24 - unsafe.Sizeof(uintptr(0))]byte
}

func ethtool(fd int, ifname string, v *ethtoolValue) error {
	var ifr ifreqData
	copy(ifr.name[:], ifname)
	ifr.data = unsafe.Pointer(v)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr)))
	runtime.KeepAlive(v)
	if errno != 0 {
		return errno
	}
	return nil
}

// SetNICOffload switches one offload of the kernel interface ifname (in
// the calling thread's network namespace) on or off.
func SetNICOffload(ifname string, o Offload, on bool) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("netstack: ethtool socket: %w", err)
	}
	defer unix.Close(fd)
	val := uint32(0)
	if on {
		val = 1
	}
	var v ethtoolValue
	switch o {
	case OffloadGRO:
		v = ethtoolValue{cmd: unix.ETHTOOL_SGRO, data: val}
	case OffloadTSO:
		v = ethtoolValue{cmd: unix.ETHTOOL_STSO, data: val}
	case OffloadGSO:
		v = ethtoolValue{cmd: unix.ETHTOOL_SGSO, data: val}
	case OffloadTXChecksum:
		v = ethtoolValue{cmd: unix.ETHTOOL_STXCSUM, data: val}
	case OffloadLRO:
		const ethFlagLRO = 1 << 15
		g := ethtoolValue{cmd: unix.ETHTOOL_GFLAGS}
		if err := ethtool(fd, ifname, &g); err != nil {
			return fmt.Errorf("netstack: ethtool %s get flags: %w", ifname, err)
		}
		flags := g.data &^ ethFlagLRO
		if on {
			flags |= ethFlagLRO
		}
		if flags == g.data {
			return nil
		}
		v = ethtoolValue{cmd: unix.ETHTOOL_SFLAGS, data: flags}
	default:
		return fmt.Errorf("%w: offload %d", ErrBadOption, o)
	}
	if err := ethtool(fd, ifname, &v); err != nil {
		return fmt.Errorf("netstack: ethtool %s %v=%v: %w", ifname, o, on, err)
	}
	return nil
}
