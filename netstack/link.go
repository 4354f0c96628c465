package netstack

import (
	"fmt"
	"net"
	"os"
	"sync"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/link/fdbased"
	"gvisor.dev/gvisor/pkg/tcpip/link/pipe"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// TAP attaches the stack to an already-open TAP device fd, opened with
// IFF_TAP|IFF_NO_PI (as OpenTAP does). An fd with IFF_VNET_HDR carries a
// virtio-net header on every frame, which only this package's links read
// (dispatch inline or netpoll); with it and Knobs.HostGSO the stack sets
// the TAP's offloads and uses host GSO, without it the stack runs with
// HostGSO off (Stack.Knobs). The Stack takes ownership of fd and closes
// it in Close.
func TAP(fd int) Option { return func(c *config) { c.setLink(tapFD{fd: fd}) } }

// TAPDevice opens /dev/net/tun and attaches to the TAP interface name,
// creating it if it does not exist (a created device vanishes when the
// Stack closes), with IFF_VNET_HDR and the TAP's offloads set when
// Knobs.HostGSO is on. The interface must be brought up by the caller
// (the host side owns it, see OpenTAP).
func TAPDevice(name string) Option { return func(c *config) { c.setLink(tapName{name: name}) } }

// PacketSocket attaches the stack to the named interface through an
// AF_PACKET socket (ETH_P_ALL, PACKET_IGNORE_OUTGOING; PACKET_VNET_HDR
// with Knobs.HostGSO). Call PrepareNICFor on the interface first: the
// kernel must hold no address on it, or it answers netstack's peers with
// resets, and its receive offloads must suit the link.
func PacketSocket(ifname string) Option {
	return func(c *config) { c.setLink(packetSock{ifname: ifname}) }
}

// Pipe returns two link options connected back to back in memory: a stack
// built with one talks to a stack built with the other, frames passing as
// Ethernet with ARP, no fd and no privileges involved. Each option may be
// used by one New call.
func Pipe() (Option, Option) {
	a, b := pipe.New("", "", 1500)
	return func(c *config) { c.setLink(&pipeEnd{ep: a}) },
		func(c *config) { c.setLink(&pipeEnd{ep: b}) }
}

type pipeEnd struct {
	mu   sync.Mutex
	used bool
	ep   *pipe.Endpoint
}

func (p *pipeEnd) open(c *config) (stack.LinkEndpoint, string, func() error, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.used {
		return nil, "", nil, fmt.Errorf("%w: pipe end used twice", ErrBadOption)
	}
	p.used = true
	c.defaults()
	// The pipe carries whole packets; ethernet.New adds Ethernet framing
	// so that ARP runs exactly as on a real link.
	p.ep.SetMTU(c.mtu + 14)
	p.ep.SetLinkAddress(tcpip.LinkAddress(c.mac))
	return ethernet.New(p.ep), "pipe", nil, nil
}

type tapFD struct{ fd int }

func (t tapFD) open(c *config) (stack.LinkEndpoint, string, func() error, error) {
	c.defaults()
	// The fd was set up elsewhere: whether its frames carry a virtio-net
	// header is its flags' business, and only with one can the stack use
	// host GSO.
	vnet, err := tapHasVnetHdr(t.fd)
	if err != nil {
		return nil, "", nil, err
	}
	if vnet && !c.knobs.Dispatch.own() {
		return nil, "", nil, fmt.Errorf("%w: TAP fd %d has IFF_VNET_HDR, which only dispatch inline or netpoll reads (not %q)", ErrBadOption, t.fd, c.knobs.Dispatch)
	}
	if !vnet {
		c.knobs.HostGSO = false
	} else if err := setTAPOffload(t.fd, c.knobs.HostGSO); err != nil {
		return nil, "", nil, err
	}
	ep, err := fdEndpoint(c, t.fd, false, vnet)
	if err != nil {
		return nil, "", nil, err
	}
	return ep, fmt.Sprintf("tap fd %d", t.fd), func() error { return unix.Close(t.fd) }, nil
}

type tapName struct{ name string }

func (t tapName) open(c *config) (stack.LinkEndpoint, string, func() error, error) {
	vnet := c.knobs.HostGSO
	f, err := openTAP(t.name, vnet)
	if err != nil {
		return nil, "", nil, err
	}
	fd, err := dupFile(f)
	if err != nil {
		return nil, "", nil, err
	}
	if vnet {
		if err := setTAPOffload(fd, true); err != nil {
			unix.Close(fd)
			return nil, "", nil, err
		}
	}
	c.defaults()
	ep, err := fdEndpoint(c, fd, false, vnet)
	if err != nil {
		unix.Close(fd)
		return nil, "", nil, err
	}
	return ep, "tap " + t.name, func() error { return unix.Close(fd) }, nil
}

type packetSock struct{ ifname string }

func (p packetSock) open(c *config) (stack.LinkEndpoint, string, func() error, error) {
	ifi, err := net.InterfaceByName(p.ifname)
	if err != nil {
		return nil, "", nil, fmt.Errorf("netstack: packet socket: %w", err)
	}
	if c.mac == nil {
		c.mac = ifi.HardwareAddr
	}
	if c.mtu == 0 && ifi.MTU > 0 {
		c.mtu = uint32(ifi.MTU)
	}
	c.defaults()
	fd, err := OpenPacketSocket(p.ifname)
	if err != nil {
		return nil, "", nil, err
	}
	vnet := c.knobs.HostGSO
	if vnet {
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1); err != nil {
			unix.Close(fd)
			return nil, "", nil, fmt.Errorf("netstack: AF_PACKET PACKET_VNET_HDR (host_gso): %w", err)
		}
	}
	if b := c.knobs.SocketBuffer; b > 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, b); err != nil {
			unix.Close(fd)
			return nil, "", nil, fmt.Errorf("netstack: AF_PACKET receive buffer %d: %w", b, err)
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, b); err != nil {
			unix.Close(fd)
			return nil, "", nil, fmt.Errorf("netstack: AF_PACKET send buffer %d: %w", b, err)
		}
	}
	ep, err := fdEndpoint(c, fd, true, vnet)
	if err != nil {
		unix.Close(fd)
		return nil, "", nil, err
	}
	return ep, "af_packet " + p.ifname, func() error { return unix.Close(fd) }, nil
}

// fdEndpoint makes the link endpoint of fd (a TAP, or an AF_PACKET socket
// when packet), whose frames carry a virtio-net header when vnet (only
// this package's link reads those).
func fdEndpoint(c *config, fd int, packet, vnet bool) (stack.LinkEndpoint, error) {
	k := c.knobs
	if k.Dispatch.own() {
		ep, err := newFDLink(fd, packet, vnet, c.mtu, tcpip.LinkAddress(c.mac), k, c.log)
		if err != nil {
			return nil, fmt.Errorf("netstack: fd link: %w", err)
		}
		return ep, nil
	}
	mode, err := k.Dispatch.fdbased()
	if err != nil {
		return nil, err
	}
	if !packet {
		// A TAP fd is not a socket: fdbased reads it with readv whatever
		// the mode; say so instead of pretending.
		mode = fdbased.Readv
	}
	o := &fdbased.Options{
		FDs:                  []int{fd},
		MTU:                  c.mtu,
		EthernetHeader:       true,
		Address:              tcpip.LinkAddress(c.mac),
		PacketDispatchMode:   mode,
		RXChecksumOffload:    k.RXChecksumOffload,
		TXChecksumOffload:    k.TXChecksumOffload,
		GRO:                  k.GRO,
		ProcessorsPerChannel: k.Processors,
	}
	if k.GSOMaxSize > 0 && packet {
		// Software GSO only: host GSO would need PACKET_VNET_HDR.
		o.GSOMaxSize = k.GSOMaxSize
		o.GVisorGSOEnabled = true
	}
	ep, err := fdbased.New(o)
	if err != nil {
		return nil, fmt.Errorf("netstack: fd link: %w", err)
	}
	if o.GSOMaxSize == 0 {
		// Our transmit path: no allocation per packet (fdwrite.go).
		return &fdWriter{LinkEndpoint: ep, fd: fd}, nil
	}
	return ep, nil
}

func dupFile(f *os.File) (int, error) {
	defer f.Close()
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("netstack: dup: %w", err)
	}
	return fd, nil
}

// OpenTAP opens /dev/net/tun and attaches to (or creates) the TAP
// interface name with IFF_TAP|IFF_NO_PI, no virtio-net header: frames are
// plain Ethernet and the kernel finishes its checksums before handing them
// over, so that any of the dispatch modes can read it (gVisor's fd link
// adds and strips virtio-net headers only on sockets). A Stack made with
// TAPDevice and Knobs.HostGSO opens its TAP with the header instead. The
// returned file is in blocking mode; pass f.Fd() (or a dup) to TAP.
func OpenTAP(name string) (*os.File, error) { return openTAP(name, false) }

// openTAP is OpenTAP, with IFF_VNET_HDR when vnet.
func openTAP(name string, vnet bool) (*os.File, error) {
	if len(name) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("%w: interface name %q longer than %d", ErrBadOption, name, unix.IFNAMSIZ-1)
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("netstack: open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netstack: tap %q: %w", name, err)
	}
	flags := uint16(unix.IFF_TAP | unix.IFF_NO_PI)
	if vnet {
		flags |= unix.IFF_VNET_HDR
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netstack: TUNSETIFF %q: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun:"+ifr.Name()), nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// OpenPacketSocket opens an AF_PACKET raw socket bound to ifname receiving
// every protocol (ETH_P_ALL) with PACKET_IGNORE_OUTGOING, so that netstack
// does not see its own transmissions looped back. It returns the fd.
func OpenPacketSocket(ifname string) (int, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return -1, fmt.Errorf("netstack: packet socket: %w", err)
	}
	proto := htons(unix.ETH_P_ALL)
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(proto))
	if err != nil {
		return -1, fmt.Errorf("netstack: socket(AF_PACKET): %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("netstack: PACKET_IGNORE_OUTGOING: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("netstack: bind AF_PACKET to %s: %w", ifname, err)
	}
	return fd, nil
}

// tapHasVnetHdr reports whether the TAP fd was attached with IFF_VNET_HDR.
func tapHasVnetHdr(fd int) (bool, error) {
	ifr, err := unix.NewIfreq("")
	if err != nil {
		return false, err
	}
	if err := unix.IoctlIfreq(fd, unix.TUNGETIFF, ifr); err != nil {
		return false, fmt.Errorf("netstack: TUNGETIFF on fd %d (not a TAP?): %w", fd, err)
	}
	return ifr.Uint16()&unix.IFF_VNET_HDR != 0, nil
}

// setTAPOffload tells the kernel which offloads the reader of a TAP with
// IFF_VNET_HDR takes (TUNSETOFFLOAD): with gso, frames with an unfinished
// checksum and TCP/IPv4 segments of up to 64 KiB, which the link reads
// whole; without, none (complete, MTU-sized frames).
func setTAPOffload(fd int, gso bool) error {
	var off int
	if gso {
		off = unix.TUN_F_CSUM | unix.TUN_F_TSO4
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, off); err != nil {
		return fmt.Errorf("netstack: TUNSETOFFLOAD %#x: %w", off, err)
	}
	return nil
}
