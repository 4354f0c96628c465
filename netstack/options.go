package netstack

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Option configures New.
type Option func(*config)

type config struct {
	link  linkSpec
	addr  netip.Prefix
	gw    netip.Addr
	mac   net.HardwareAddr
	mtu   uint32
	knobs Knobs
	log   *slog.Logger
	// faults, when set (WithFaults), wraps the link (faults.go).
	faults *Faults
	err    error
}

// linkSpec opens the link endpoint the NIC is attached to. open may fill in
// c.mac and c.mtu when they were not given. release closes what open
// opened; it runs after the stack has stopped using the endpoint.
type linkSpec interface {
	open(c *config) (ep stack.LinkEndpoint, desc string, release func() error, err error)
}

func (c *config) setLink(l linkSpec) {
	if c.link != nil {
		c.err = fmt.Errorf("%w: more than one link option", ErrBadOption)
		return
	}
	c.link = l
}

// WithAddress sets the stack's IPv4 address and prefix (required), e.g.
// netip.MustParsePrefix("10.77.0.11/24"). The prefix gives the on-link
// route.
func WithAddress(p netip.Prefix) Option { return func(c *config) { c.addr = p } }

// WithGateway adds a default route through gw, which must be on-link.
func WithGateway(gw netip.Addr) Option { return func(c *config) { c.gw = gw } }

// WithMAC sets the NIC's hardware address. Defaults: the interface's own
// address for PacketSocket (the kernel only passes up frames sent to it),
// a random locally administered address otherwise.
func WithMAC(mac net.HardwareAddr) Option {
	return func(c *config) {
		if len(mac) != 6 {
			c.err = fmt.Errorf("%w: MAC %v is not 6 bytes", ErrBadOption, mac)
			return
		}
		c.mac = mac
	}
}

// WithMTU sets the NIC's MTU (IP packet size, without the Ethernet
// header). Defaults: the interface's MTU for PacketSocket, 1500 otherwise.
func WithMTU(mtu uint32) Option {
	return func(c *config) {
		if mtu < 576 || mtu > 65535 {
			c.err = fmt.Errorf("%w: MTU %d outside 576..65535", ErrBadOption, mtu)
			return
		}
		c.mtu = mtu
	}
}

// WithKnobs replaces DefaultKnobs.
func WithKnobs(k Knobs) Option { return func(c *config) { c.knobs = k } }

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option {
	return func(c *config) {
		if l != nil {
			c.log = l
		}
	}
}

func (c *config) defaults() {
	if c.mac == nil {
		c.mac = randomMAC()
	}
	if c.mtu == 0 {
		c.mtu = 1500
	}
}
