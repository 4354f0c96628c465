package netstack

import (
	"context"
	"errors"
	"fmt"
	"net"
)

// Network is a TCP provider: the host kernel's TCP/IP (Kernel) or a gVisor
// netstack (*Stack). Callers such as wormd and the worm client take a Network
// and never need to know which one they were given.
//
// Listen and DialContext accept the network names "tcp" and "tcp4"; Stack
// supports IPv4 only, Kernel accepts whatever the net package accepts.
type Network interface {
	// Listen announces on the local address ("host:port"; an empty host
	// means every local address, port 0 picks a free port).
	Listen(ctx context.Context, network, address string) (net.Listener, error)
	// DialContext connects to address ("host:port"). Connecting to a port
	// nobody listens on fails fast with an error for which
	// errors.Is(err, syscall.ECONNREFUSED) holds, for either provider.
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
	// Close releases the provider. For a Stack it aborts every connection
	// and detaches the NIC; for Kernel it does nothing.
	Close() error
	// String names the provider for logs and result files ("kernel",
	// "netstack(tap fd 7, 10.0.0.2/24)").
	String() string
}

// ErrUnsupportedNetwork is returned for network names other than tcp/tcp4
// (and tcp6 on Kernel).
var ErrUnsupportedNetwork = errors.New("netstack: unsupported network")

// kernel is the host kernel's TCP/IP, through the net package.
type kernel struct{}

// Kernel returns the Network backed by the host kernel's TCP/IP stack
// (net.ListenConfig and net.Dialer). TCP_NODELAY is on for every
// connection, dialed or accepted, matching the netstack default of Nagle
// off: WormSpace's request/response traffic is latency bound.
func Kernel() Network { return kernel{} }

func (kernel) String() string { return "kernel" }

func (kernel) Close() error { return nil }

func checkKernelNetwork(network string) error {
	switch network {
	case "tcp", "tcp4", "tcp6":
		return nil
	}
	return fmt.Errorf("%w %q", ErrUnsupportedNetwork, network)
}

func (kernel) Listen(ctx context.Context, network, address string) (net.Listener, error) {
	if err := checkKernelNetwork(network); err != nil {
		return nil, err
	}
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, network, address)
	if err != nil {
		return nil, err
	}
	return noDelayListener{l}, nil
}

func (kernel) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	if err := checkKernelNetwork(network); err != nil {
		return nil, err
	}
	d := net.Dialer{KeepAlive: -1}
	c, err := d.DialContext(ctx, network, address)
	if err != nil {
		return nil, err
	}
	setNoDelay(c)
	return c, nil
}

// noDelayListener sets TCP_NODELAY on every accepted connection. Go already
// does so by default; being explicit protects against GODEBUG changes and
// documents the choice.
type noDelayListener struct{ net.Listener }

func (l noDelayListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	setNoDelay(c)
	return c, nil
}

func setNoDelay(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
}
