// Package netstack provides the TCP used by wormd and the worm client: either
// the host kernel's TCP/IP or gVisor's user-space netstack
// (gvisor.dev/gvisor/pkg/tcpip), behind one small interface, Network.
//
// # Choosing a provider
//
// Code that listens or dials takes a Network and never asks which one it
// got:
//
//	var n netstack.Network = netstack.Kernel() // kernel TCP, TCP_NODELAY on
//	l, err := n.Listen(ctx, "tcp", ":7070")
//	c, err := n.DialContext(ctx, "tcp", "10.77.0.12:7070")
//
// A *Stack is the netstack provider: one gVisor stack with a single NIC,
// ARP, IPv4 and TCP, a static address and an optional default gateway. New
// takes exactly one link option and the address:
//
//	// Inside the guest (wormd -stack netstack -iface eth0):
//	if err := netstack.PrepareNICFor("eth0", netstack.DefaultKnobs()); err != nil { ... } // no kernel address or IPv6; GRO/LRO as the link takes them
//	st, err := netstack.New(
//		netstack.PacketSocket("eth0"),
//		netstack.WithAddress(netip.MustParsePrefix("10.77.0.11/24")),
//		netstack.WithGateway(netip.MustParseAddr("10.77.0.1")), // optional
//	)
//	defer st.Close()
//	l, err := st.Listen(ctx, "tcp", ":7070")
//
//	// On the host, serving a TAP device the process owns:
//	st, err := netstack.New(netstack.TAPDevice("wtap0"), netstack.WithAddress(p))
//	// or an fd opened elsewhere (the Stack takes ownership):
//	st, err := netstack.New(netstack.TAP(fd), netstack.WithAddress(p))
//
//	// Two stacks joined in memory (tests, no privileges):
//	la, lb := netstack.Pipe()
//	a, _ := netstack.New(la, netstack.WithAddress(pa))
//	b, _ := netstack.New(lb, netstack.WithAddress(pb))
//
// WithMAC and WithMTU override the link defaults (the interface's own MAC
// and MTU for PacketSocket; a random locally administered MAC and 1500
// otherwise).
//
// Both providers report expected failures the same way: a refused dial
// satisfies errors.Is(err, syscall.ECONNREFUSED), a busy port
// syscall.EADDRINUSE, and Accept on a closed listener net.ErrClosed.
//
// The stack's own messages go to its WithLogger logger; gVisor's (its
// logger is process-wide) go to slog.Default() with component=gvisor,
// from the first New on, instead of glog-style lines on stderr.
//
// # The AF_PACKET contract
//
// netstack and the kernel share the NIC. The kernel must believe it has no
// business on it: no IPv4 address and IPv6 disabled, or it answers SYNs
// addressed to netstack with resets. With gVisor's fdbased link the NIC's
// GRO and LRO must be off, or the kernel hands AF_PACKET coalesced
// super-frames that fdbased's MTU-sized buffers truncate, and bulk
// transfers stall. This package's link reads frames of up to 64 KiB whole,
// and with Knobs.HostGSO (the default) it wants them: the socket carries a
// virtio-net header both ways (PACKET_VNET_HDR), TCP hands the kernel
// 64 KiB segments to cut, and GRO and LRO stay on. PrepareNICFor sets the
// NIC up for the knobs given (PrepareNIC: offloads off); the socket
// ignores outgoing frames (PACKET_IGNORE_OUTGOING) so netstack never sees
// its own transmissions.
//
// # Packet faults
//
// A Faults injects packet loss, delay (fixed plus jitter), duplication and
// reordering into the link of one Stack, on the way out (egress: frames
// the stack sends), on the way in (ingress: frames the link delivers), or
// both. It is what `tc qdisc ... netem` does in the kernel, done at
// netstack's link endpoint instead, so that it works on kernels without
// sch_netem and touches only the one stack it is attached to:
//
//	f := netstack.NewFaults(seed)
//	st, err := netstack.New(netstack.TAPDevice("wtap0"), netstack.WithAddress(p), netstack.WithFaults(f))
//	f.Set(netstack.BothWays(netstack.FaultRates{Loss: 0.1})) // any time, from any goroutine
//	s := f.Stats()                                          // counters per direction
//
// Decisions come from one PCG generator per direction seeded by NewFaults,
// drawn in packet order: the same seed and the same sequence of packets
// give the same faults. (A running stack's packet sequence depends on
// timing, so a seed fixes the fault stream, not a whole run.)
//
// Semantics, per direction, for each packet in order:
//
//   - Loss: dropped with probability Loss.
//   - Duplicate: with probability Duplicate it goes out twice, the copy
//     right after the original (egress: the same frame written twice;
//     ingress: a clone delivered first).
//   - Reorder: with probability Reorder (when no packet of the direction
//     is held already) the packet is held back, and goes out right after
//     the next packet that arrived after it and goes out itself (at once
//     or from the delay queue), or after ReorderHold plus the maximum
//     delay if none does.
//   - Delay: every packet not held waits Delay plus a uniform jitter in
//     [-Jitter, +Jitter] (clamped at zero); with jitter, later packets can
//     overtake earlier ones, as with netem.
//
// Delays run on Go timers: on a busy machine a delayed packet is
// typically late by a further 0.1-1 ms (4 x 200 us ± 200 us per round
// trip measured 2.4 ms at p50 over Pipe on the 2-core test machine).
//
// Cost: with no fault configured and nothing held or queued, a packet
// passes straight through with two atomic loads and two atomic adds, and
// no allocation (TestFaultsNoAllocWhenOff; BenchmarkFaultLink compares it
// with the bare link). Delayed and held packets keep a reference
// (PacketBuffer.IncRef) until they are sent or dropped; duplicates on
// ingress are clones (PacketBuffer.Clone) with their own reference.
// Pending packets are released when the link is detached.
//
// # Knobs
//
// Every setting that changes performance is in Knobs, explicit and
// printable as JSON (Stack.Knobs, Knobs.String) so the comparison harness
// can record what produced a figure. DefaultKnobs documents the reason for
// each value. ParseKnobs reads overrides as name=value pairs
// (dispatch=recvmmsg,processors=1) or JSON; wormd takes them in
// -netstack-knobs (a guest in worm.knobs=), worm compare in -netstack-knobs,
// the netecho command in -knobs, and KnobsFromEnv from WORM_NETSTACK_KNOBS.
//
// # Measuring
//
// Package netperf (echo round trips and checksummed bulk transfers) and the
// netecho command measure a path:
//
//	go test -run XXX -bench . -benchtime 2s ./netstack/
//	netecho -mode server -stack netstack -tap wtap0 -addr 10.0.0.2/24 -listen :7000
//	netecho -mode client -stack kernel -connect 10.0.0.2:7000
//
// Tests that need root create their own network namespace (TAP, veth) and
// skip with the reason when not root or /dev/net/tun is missing. The soak
// test runs 20 s, WORM_SOAK=5m runs longer.
//
// Figures with DefaultKnobs on the 2-core test machine (session 14, host
// GSO on; go test -run XXX -bench 'Echo64|Bulk' -benchtime 1s -count 2;
// kernel client in a test namespace, netstack server; "into"/"out of"
// netstack):
//
//	path                          echo64 p50/p99   bulk into / out of
//	kernel loopback               16 / 31-40 us    1190-1280 / 1270-1570 MB/s
//	netstack <-> netstack (Pipe)  26 / 92-114 us   107-133 / 124-161 MB/s
//	kernel -> netstack on TAP     24-25 / 172-238  1163-1197 / 1683-1722 MB/s
//	kernel -> netstack AF_PACKET  33-35 / 220-278  958-1030 / 1232-1248 MB/s
//
// With host GSO (the default) a TCP segment of up to 64 KiB crosses the
// TAP or the AF_PACKET socket as one frame, and the kernel cuts it (or a
// peer takes it whole): bulk through netstack on the host is now at the
// kernel's loopback rate, where with MTU-sized frames it was 100-300 MB/s
// (host_gso=false). The Pipe has no kernel to offload to and keeps MTU
// frames.
//
// # Imports
//
// This package is transport plumbing only. It must never import the
// WormSpace protocol packages (github.com/wormspace/wormspace/worm/...);
// they import it.
package netstack
