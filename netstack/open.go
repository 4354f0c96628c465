package netstack

import (
	"fmt"
	"log/slog"
	"net/netip"
)

// Config selects and configures a provider from command-line style
// settings; it is what wormd's -stack/-iface/-addr/-gw flags map to.
type Config struct {
	// Stack is "kernel" or "netstack" ("" means kernel).
	Stack string
	// Exactly one link for netstack: Iface (AF_PACKET), TAP (device name)
	// or TAPFD (>= 0; set it to -1 when unused, the Stack takes ownership).
	Iface string
	TAP   string
	TAPFD int
	// PrepareIface runs PrepareNICFor(Iface, knobs) before attaching.
	PrepareIface bool
	Addr         netip.Prefix
	Gateway      netip.Addr // optional
	MTU          uint32     // optional
	Knobs        *Knobs     // nil: DefaultKnobs
	Logger       *slog.Logger
	// Faults, when set, injects packet faults on the link (WithFaults).
	Faults *Faults
}

// Open returns the Network described by c: Kernel() for "kernel", a new
// Stack for "netstack".
func Open(c Config) (Network, error) {
	switch c.Stack {
	case "", "kernel":
		return Kernel(), nil
	case "netstack":
	default:
		return nil, fmt.Errorf("%w: stack %q (want kernel or netstack)", ErrBadOption, c.Stack)
	}
	opts := []Option{WithAddress(c.Addr), WithLogger(c.Logger)}
	if c.Gateway.IsValid() {
		opts = append(opts, WithGateway(c.Gateway))
	}
	if c.MTU != 0 {
		opts = append(opts, WithMTU(c.MTU))
	}
	if c.Knobs != nil {
		opts = append(opts, WithKnobs(*c.Knobs))
	}
	if c.Faults != nil {
		opts = append(opts, WithFaults(c.Faults))
	}
	links := 0
	if c.Iface != "" {
		links++
		if c.PrepareIface {
			k := DefaultKnobs()
			if c.Knobs != nil {
				k = *c.Knobs
			}
			if err := PrepareNICFor(c.Iface, k); err != nil {
				return nil, err
			}
		}
		opts = append(opts, PacketSocket(c.Iface))
	}
	if c.TAP != "" {
		links++
		opts = append(opts, TAPDevice(c.TAP))
	}
	if c.TAPFD >= 0 {
		links++
		opts = append(opts, TAP(c.TAPFD))
	}
	if links != 1 {
		return nil, fmt.Errorf("%w: netstack needs exactly one of Iface, TAP, TAPFD (got %d)", ErrBadOption, links)
	}
	return New(opts...)
}
