package netstack

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// Errors for expected conditions.
var (
	// ErrBadOption reports an invalid or missing option to New.
	ErrBadOption = errors.New("netstack: bad option")
	// ErrClosed is returned by operations on a closed Stack. It wraps
	// net.ErrClosed so callers can test either.
	ErrClosed = fmt.Errorf("netstack: stack closed: %w", net.ErrClosed)
)

const nicID tcpip.NICID = 1

// listenBacklog matches the Linux default somaxconn.
const listenBacklog = 4096

// Stack is a gVisor netstack with one NIC and a static IPv4 address,
// implementing Network. Create it with New; it is safe for concurrent use.
type Stack struct {
	s     *stack.Stack
	addr  netip.Prefix
	gw    netip.Addr
	mac   net.HardwareAddr
	mtu   uint32
	knobs Knobs
	desc  string
	log   *slog.Logger
	qdisc *directQDisc

	release   func() error // closes the link's fd, if any
	closeOnce sync.Once
	closeErr  error
	mu        sync.Mutex
	closed    bool
}

var _ Network = (*Stack)(nil)

// New builds a Stack. Exactly one link option (TAP, TAPDevice,
// PacketSocket or one end of Pipe) and WithAddress are required.
func New(opts ...Option) (*Stack, error) {
	routeGVisorLog()
	c := config{knobs: DefaultKnobs(), log: slog.Default()}
	for _, o := range opts {
		o(&c)
	}
	if c.err != nil {
		return nil, c.err
	}
	if c.link == nil {
		return nil, fmt.Errorf("%w: no link (use TAP, TAPDevice, PacketSocket or Pipe)", ErrBadOption)
	}
	if !c.addr.IsValid() || !c.addr.Addr().Is4() {
		return nil, fmt.Errorf("%w: WithAddress needs an IPv4 prefix, got %v", ErrBadOption, c.addr)
	}
	if c.gw.IsValid() && (!c.gw.Is4() || !c.addr.Masked().Contains(c.gw)) {
		return nil, fmt.Errorf("%w: gateway %v not inside %v", ErrBadOption, c.gw, c.addr)
	}
	c.knobs = c.knobs.effective()
	if err := c.knobs.validate(); err != nil {
		return nil, err
	}
	ep, desc, release, err := c.link.open(&c)
	if err != nil {
		return nil, err
	}
	if l, ok := ep.(*fdLink); ok {
		// The inline link's reader is waited for after the stack's
		// teardown, not during it (fdLink.Attach), and before its fd
		// is closed.
		closeFD := release
		release = func() error {
			l.waitStopped()
			if closeFD != nil {
				return closeFD()
			}
			return nil
		}
	}
	if c.faults != nil {
		if ep, err = c.faults.wrap(ep); err != nil {
			if release != nil {
				_ = release()
			}
			return nil, err
		}
		desc += ", faults"
	}
	st, err := build(&c, ep)
	if err != nil {
		if release != nil {
			_ = release()
		}
		return nil, err
	}
	st.desc = fmt.Sprintf("netstack(%s, %v)", desc, c.addr)
	st.release = release
	st.log.Debug("netstack up", "link", desc, "addr", c.addr, "gw", c.gw,
		"mac", st.mac, "mtu", c.mtu, "knobs", c.knobs.String())
	return st, nil
}

func build(c *config, ep stack.LinkEndpoint) (*Stack, error) {
	k := c.knobs
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol},
	})
	fail := func(what string, e tcpip.Error) (*Stack, error) {
		s.Destroy()
		return nil, fmt.Errorf("netstack: %s: %s", what, e)
	}
	sack := tcpip.TCPSACKEnabled(k.SACK)
	rec := k.recovery()
	cc := tcpip.CongestionControlOption(k.CongestionControl)
	mod := tcpip.TCPModerateReceiveBufferOption(k.ModerateReceiveBuffer)
	snd := tcpip.TCPSendBufferSizeRangeOption(k.SendBuffer)
	rcv := tcpip.TCPReceiveBufferSizeRangeOption(k.ReceiveBuffer)
	delay := tcpip.TCPDelayEnabled(k.Nagle)
	opts := []struct {
		name string
		opt  tcpip.SettableTransportProtocolOption
	}{
		{"sack", &sack}, {"recovery", &rec}, {"congestion control", &cc},
		{"moderate receive buffer", &mod}, {"send buffer", &snd},
		{"receive buffer", &rcv}, {"delay", &delay},
	}
	if k.TimeWaitMillis > 0 {
		tw := tcpip.TCPTimeWaitTimeoutOption(time.Duration(k.TimeWaitMillis) * time.Millisecond)
		opts = append(opts, struct {
			name string
			opt  tcpip.SettableTransportProtocolOption
		}{"time wait", &tw})
	}
	for _, o := range opts {
		if e := s.SetTransportProtocolOption(tcp.ProtocolNumber, o.opt); e != nil {
			return fail("set "+o.name, e)
		}
	}
	// directQDisc: gVisor's default qdisc, without its list allocation
	// per packet (qdisc.go).
	qd := newDirectQDisc(ep, time.Duration(c.knobs.DelayedACKMicros)*time.Microsecond, c.knobs.CoalesceACKs)
	if b, ok := ep.(burstLink); ok && c.knobs.CoalesceACKs {
		// Before the NIC exists: Attach starts the link's reader.
		b.setBursts(qd.acks)
	}
	nicOpts := stack.NICOptions{Name: "eth0", QDisc: qd}
	if e := s.CreateNICWithOptions(nicID, ep, nicOpts); e != nil {
		return fail("create NIC", e)
	}
	local := tcpip.AddrFrom4(c.addr.Addr().As4())
	pa := tcpip.ProtocolAddress{
		Protocol:          ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddressWithPrefix{Address: local, PrefixLen: c.addr.Bits()},
	}
	if e := s.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); e != nil {
		return fail("add address", e)
	}
	routes := []tcpip.Route{{Destination: pa.AddressWithPrefix.Subnet(), NIC: nicID}}
	if c.gw.IsValid() {
		routes = append(routes, tcpip.Route{
			Destination: header.IPv4EmptySubnet,
			Gateway:     tcpip.AddrFrom4(c.gw.As4()),
			NIC:         nicID,
		})
	}
	s.SetRouteTable(routes)
	return &Stack{
		qdisc: qd,
		s:     s, addr: c.addr, gw: c.gw, mac: c.mac, mtu: c.mtu, knobs: k, log: c.log,
	}, nil
}

// String names the stack and its link, e.g. "netstack(tap fd 7, 10.0.0.2/24)".
func (st *Stack) String() string { return st.desc }

// Knobs returns the settings the stack runs with.
func (st *Stack) Knobs() Knobs { return st.knobs }

// Addr returns the stack's address and prefix.
func (st *Stack) Addr() netip.Prefix { return st.addr }

// MAC returns the NIC's hardware address.
func (st *Stack) MAC() net.HardwareAddr { return st.mac }

// MTU returns the NIC's MTU.
func (st *Stack) MTU() uint32 { return st.mtu }

// Stats returns netstack's counters (drops, retransmissions, ...), useful
// when diagnosing a stall.
func (st *Stack) Stats() tcpip.Stats { return st.s.Stats() }

// DelayedACKStats reports the delayed-ACK filter's counters (all zero when
// Knobs.DelayedACKMicros is 0). gVisor's own TCP and NIC counters count a
// held ACK as sent; Saved is how many of those never left.
func (st *Stack) DelayedACKStats() DelayedACKStats {
	if st.qdisc == nil || st.qdisc.acks == nil {
		return DelayedACKStats{}
	}
	return st.qdisc.acks.stats()
}

// Close aborts every connection, stops the NIC and closes the link's fd.
// Later calls return ErrClosed.
func (st *Stack) Close() error {
	first := false
	st.closeOnce.Do(func() {
		first = true
		st.mu.Lock()
		st.closed = true
		st.mu.Unlock()
		// Destroy aborts endpoints and removes the NIC, which stops the
		// link's reader goroutines; release waits for them (fdbased's
		// inside Destroy, the inline link's there) and only then closes
		// the fd.
		st.s.Destroy()
		if st.release != nil {
			st.closeErr = st.release()
		}
	})
	if !first {
		return ErrClosed
	}
	return st.closeErr
}

func (st *Stack) isClosed() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.closed
}

// parseAddr parses "host:port" into a netstack address. An empty host (or
// 0.0.0.0) means any address.
func parseAddr(network, address string) (tcpip.FullAddress, error) {
	switch network {
	case "tcp", "tcp4":
	default:
		return tcpip.FullAddress{}, fmt.Errorf("%w %q (netstack is IPv4 TCP only)", ErrUnsupportedNetwork, network)
	}
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return tcpip.FullAddress{}, fmt.Errorf("netstack: address %q: %w", address, err)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return tcpip.FullAddress{}, fmt.Errorf("netstack: port in %q: %w", address, err)
	}
	fa := tcpip.FullAddress{NIC: 0, Port: uint16(p)}
	if host == "" {
		return fa, nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.Unmap().Is4() {
		return tcpip.FullAddress{}, fmt.Errorf("%w: host %q is not an IPv4 address (no name resolution in netstack)", ErrBadOption, host)
	}
	if !ip.Unmap().IsUnspecified() {
		fa.Addr = tcpip.AddrFrom4(ip.Unmap().As4())
	}
	return fa, nil
}

func toTCPAddr(fa tcpip.FullAddress) *net.TCPAddr {
	a := &net.TCPAddr{Port: int(fa.Port)}
	if fa.Addr.Len() > 0 {
		a.IP = net.IP(fa.Addr.AsSlice())
	} else {
		a.IP = net.IPv4zero
	}
	return a
}

// errnoOf maps netstack errors to the errno the kernel would report, so
// that callers can test errors.Is(err, syscall.ECONNREFUSED) whichever
// Network they use.
func errnoOf(e tcpip.Error) error {
	switch e.(type) {
	case *tcpip.ErrConnectionRefused:
		return syscall.ECONNREFUSED
	case *tcpip.ErrPortInUse:
		return syscall.EADDRINUSE
	case *tcpip.ErrTimeout:
		return syscall.ETIMEDOUT
	case *tcpip.ErrHostUnreachable:
		return syscall.EHOSTUNREACH
	case *tcpip.ErrNetworkUnreachable:
		return syscall.ENETUNREACH
	case *tcpip.ErrConnectionReset:
		return syscall.ECONNRESET
	case *tcpip.ErrConnectionAborted, *tcpip.ErrAborted:
		return syscall.ECONNABORTED
	case *tcpip.ErrBadLocalAddress:
		return syscall.EADDRNOTAVAIL
	}
	return errors.New(e.String())
}

// Listen implements Network. The context only bounds setup.
func (st *Stack) Listen(ctx context.Context, network, address string) (net.Listener, error) {
	if st.isClosed() {
		return nil, ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	fa, err := parseAddr(network, address)
	if err != nil {
		return nil, err
	}
	var wq waiter.Queue
	ep, e := st.s.NewEndpoint(tcp.ProtocolNumber, ipv4.ProtocolNumber, &wq)
	if e != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Addr: toTCPAddr(fa), Err: errnoOf(e)}
	}
	ep.SocketOptions().SetReuseAddress(true)
	if e := ep.Bind(fa); e != nil {
		ep.Close()
		return nil, &net.OpError{Op: "listen", Net: network, Addr: toTCPAddr(fa), Err: os.NewSyscallError("bind", errnoOf(e))}
	}
	if e := ep.Listen(listenBacklog); e != nil {
		ep.Close()
		return nil, &net.OpError{Op: "listen", Net: network, Addr: toTCPAddr(fa), Err: os.NewSyscallError("listen", errnoOf(e))}
	}
	return newListener(st, ep, &wq), nil
}

// DialContext implements Network. The context bounds the connection
// handshake (including ARP resolution); once connected it has no effect.
func (st *Stack) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	if st.isClosed() {
		return nil, ErrClosed
	}
	fa, err := parseAddr(network, address)
	if err != nil {
		return nil, err
	}
	if fa.Addr.Len() == 0 {
		return nil, fmt.Errorf("%w: dial needs a host in %q", ErrBadOption, address)
	}
	opErr := func(err error) error {
		return &net.OpError{Op: "dial", Net: network, Addr: toTCPAddr(fa), Err: err}
	}
	var wq waiter.Queue
	ep, e := st.s.NewEndpoint(tcp.ProtocolNumber, ipv4.ProtocolNumber, &wq)
	if e != nil {
		return nil, opErr(errnoOf(e))
	}
	ep.SocketOptions().SetDelayOption(st.knobs.Nagle)
	c, err := dial(ctx, ep, &wq, fa, opErr)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// randomMAC returns a locally administered unicast MAC address.
func randomMAC() net.HardwareAddr {
	m := make(net.HardwareAddr, 6)
	_, _ = rand.Read(m)
	m[0] = (m[0] | 0x02) &^ 0x01
	return m
}
