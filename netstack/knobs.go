package netstack

import (
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/link/fdbased"
)

// DispatchMode selects how a TAP or AF_PACKET link reads frames from the
// kernel. DispatchInline is this package's own link (fdlink.go); the others
// are gVisor's fdbased link in that mode, where a TAP fd, not being a
// socket, is always read with readv.
type DispatchMode string

const (
	// DispatchInline reads frames (recvmmsg on a socket, readv on a TAP)
	// and delivers each to the stack on the reading goroutine: no
	// processor goroutine, no allocation per frame. Offloads are the
	// kernel's (Knobs.HostGSO), not netstack's GRO or software GSO.
	DispatchInline DispatchMode = "inline"
	// DispatchNetpoll is DispatchInline waiting for frames in the Go
	// runtime's poller instead of a blocking ppoll(2): while the link
	// waits, its thread runs the goroutines a frame woke (gVisor's TCP
	// processor, the reader of the connection) instead of leaving them
	// for another thread to be woken.
	DispatchNetpoll DispatchMode = "netpoll"
	// DispatchReadv reads one frame per readv(2) call.
	DispatchReadv DispatchMode = "readv"
	// DispatchRecvMMsg reads up to a batch of frames per recvmmsg(2) call.
	DispatchRecvMMsg DispatchMode = "recvmmsg"
	// DispatchPacketMMap reads frames from a PACKET_RX_RING shared with the
	// kernel. Ring slots are sized to the MTU.
	DispatchPacketMMap DispatchMode = "mmap"
)

// own reports whether the mode is this package's link (fdlink.go), not
// gVisor's fdbased.
func (m DispatchMode) own() bool { return m == DispatchInline || m == DispatchNetpoll }

// fdbased maps a mode to gVisor's fdbased link (not for DispatchInline).
func (m DispatchMode) fdbased() (fdbased.PacketDispatchMode, error) {
	switch m {
	case DispatchReadv, "":
		return fdbased.Readv, nil
	case DispatchRecvMMsg:
		return fdbased.RecvMMsg, nil
	case DispatchPacketMMap:
		return fdbased.PacketMMap, nil
	}
	return 0, fmt.Errorf("%w: dispatch mode %q", ErrBadOption, string(m))
}

// BufferRange is a TCP buffer size range in bytes, as in the Linux sysctls
// net.ipv4.tcp_rmem / tcp_wmem: new sockets start at Default; with receive
// buffer moderation the receive buffer grows up to Max.
type BufferRange struct {
	Min     int `json:"min"`
	Default int `json:"default"`
	Max     int `json:"max"`
}

// Knobs are every TCP and link setting of a Stack that influences its
// performance. DefaultKnobs documents why each default was chosen; the
// comparison harness records Stack.Knobs() next to its figures.
type Knobs struct {
	// SACK enables selective acknowledgements (RFC 2018).
	SACK bool `json:"sack"`
	// RACK enables RACK-TLP loss detection (RFC 8985); it needs SACK.
	RACK bool `json:"rack"`
	// CongestionControl is "reno" or "cubic".
	CongestionControl string `json:"congestion_control"`
	// ModerateReceiveBuffer lets the receive buffer grow with the measured
	// bandwidth-delay product (Linux tcp_moderate_rcvbuf).
	ModerateReceiveBuffer bool `json:"moderate_receive_buffer"`
	// SendBuffer and ReceiveBuffer are the TCP buffer size ranges.
	SendBuffer    BufferRange `json:"send_buffer"`
	ReceiveBuffer BufferRange `json:"receive_buffer"`
	// Nagle enables Nagle's algorithm (the inverse of TCP_NODELAY).
	Nagle bool `json:"nagle"`
	// DelayedACKMicros > 0 holds a pure ACK up to this many microseconds
	// so that the reply carries it (gVisor's TCP has no delayed ACK; see
	// ackdelay.go). 0 sends every ACK at once.
	DelayedACKMicros int `json:"delayed_ack_us"`
	// CoalesceACKs holds gVisor's pure ACKs while the goroutines that a
	// burst of received frames woke run, and sends those that the reply
	// did not supersede when the link's reader is scheduled again: the
	// reply carries the acknowledgement, with no timer (ackdelay.go).
	// Only this package's links (inline, netpoll) report bursts (and not
	// through the fault-injection wrapper, where nothing is held); with
	// gVisor's links a stack runs with it off and Stack.Knobs says so.
	// Naming it together with one of those in ParseKnobs's syntax is an
	// error. Off by default until session 13: in two alternating `worm
	// compare -configs host-kernel,host-netstack -workloads write,read
	// -clients 1,16,64 -reps 2 -duration 2s` runs (session 7,
	// go_procs=1) it cost more than the frame it saves: netstack wormds'
	// CPU per write at 16 clients 64-68 vs 36-42 us, the echo floor
	// 154-161 vs 73-91 us p50.
	// Part of that was the TAP link yielding after every frame, so that a
	// burst of requests was handled one frame at a time; a burst now
	// takes every queued frame first (fdLink.drainBurst). Session 10, four
	// alternating pairs of the same runs (workloads write,read and in two
	// pairs also log-append,kv-put; clients 1,16; storage writes raw):
	// CPU per write at 16 clients 25-31 vs 26-30 us, no longer a cost;
	// at one client write p50 104-125 vs 108-137 us, read 54-57 vs 58-63
	// us, log-append 96-107 vs 106-124 us, kv-put 126-162 vs 158-174 us;
	// at 16 clients throughput ratios to the kernel scattered both ways
	// (kv-put 0.61-1.08x vs 0.72-0.81x). Within this machine's noise.
	// Session 11, side by side in one run (`worm compare -configs
	// host-kernel,host-netstack,host-netstack@coalesce_acks=true
	// -workloads write,read,kv-put,log-append -clients 1,16,64 -reps 3
	// -duration 2s`): it does what it is for (frames out of a wormd per
	// one-client write, counted on its TAP: 2.05 without, 0.84 with),
	// but the figures go both ways: p50 vs the kernel at one client
	// write 1.30x vs 1.42x, kv-put 1.28x vs 1.49x, echo floor 79 vs 115
	// us, yet read 1.57x vs 1.43x, log-append 1.44x vs 1.29x, and
	// log-append at 64 clients 0.82x vs 1.14x of the kernel's
	// throughput; server CPU per op 2-14% lower in most cells, higher in
	// log-append's. So it stayed off.
	// Session 13, two more side-by-side runs of the same kind (-reps 4
	// with clients 1,64, then -reps 6 with clients 1,16): in the second,
	// lower p50 against the kernel at one client in all five rows (echo
	// floor 1.16x vs 1.36x, write 1.47x vs 1.55x, read 1.62x vs 1.72x,
	// log-append 1.51x vs 1.71x, kv-put 1.27x vs 1.49x) and lower server
	// CPU per operation in all four workloads (write 120 vs 132 us,
	// log-append 126 vs 144); at 16 clients two better (log-append 1.18x
	// vs 1.29x, kv-put 1.19x vs 1.37x), two slightly worse (write 1.29x
	// vs 1.21x, read 1.28x vs 1.24x), CPU alike; in the first, 64 clients
	// within 0.90-1.06x of the kernel's throughput either way. In the
	// four runs of sessions 11-13 one client's write and kv-put were
	// better every time, log-append in three, read in two; session 11's
	// loss at 64 clients (log-append 0.82x vs 1.14x) did not repeat. So
	// it is on (DefaultKnobs).
	CoalesceACKs bool `json:"coalesce_acks"`
	// BusyPollMicros > 0 has the link's reader poll its fd without
	// blocking for up to this many microseconds after it found it empty
	// (as Linux's net.core.busy_poll does for sockets), yielding to ready
	// goroutines in between, before it waits for the fd. This package's
	// links only (inline, netpoll). Off by default: it trades a core for
	// latency, and on this machine's 2 vCPUs shared by three wormds and
	// the client there is no core to spare. In alternating `worm compare
	// -configs host-kernel,host-netstack -workloads write,read,kv-put
	// -clients 1,16 -reps 2 -duration 2s -warmup 500ms` runs (session
	// 11), busy_poll_us=100 halved the echo floor at one client (one
	// netstack process: 54 vs 107 us p50, its vCPU no longer halting
	// between frames) but made the 3-wormd cluster worse: write p50 at
	// one client 176 vs 131 us, server CPU per write 254 vs 147 us, kv-put
	// 239 vs 160 us; at 16 clients write throughput 0.71x of the kernel
	// config's vs 0.77x. For a wormd with a core to itself.
	BusyPollMicros int `json:"busy_poll_us"`
	// TimeWaitMillis is how long a connection this stack closed first
	// stays in TIME_WAIT (gVisor's TCPTimeWaitTimeoutOption); 0 keeps
	// gVisor's default, 60 s.
	TimeWaitMillis int `json:"time_wait_ms"`
	// Dispatch is the link's receive mode (see DispatchMode).
	Dispatch DispatchMode `json:"dispatch"`
	// GSOMaxSize > 0 enables gVisor's software GSO: TCP hands segments of
	// up to this many bytes to the link, which splits them and writes the
	// frames in one sendmmsg batch (sockets only). 0 disables GSO.
	GSOMaxSize uint32 `json:"gso_max_size"`
	// HostGSO puts a virtio-net header on every frame of the link's fd
	// (PACKET_VNET_HDR on an AF_PACKET socket, IFF_VNET_HDR on a TAP), as
	// gVisor's runsc does with --host-gso, and lets the kernel do per
	// frame what a NIC would. Out: TCP hands the link segments of up to
	// 64 KiB with their checksum unfinished, and the kernel cuts and
	// checksums them, or passes them whole to whatever can take them (a
	// local socket behind a TAP, a veth peer, virtio-net to QEMU with
	// host TSO). In: the kernel may hand netstack coalesced segments (the
	// TAP's offloads are set with TUNSETOFFLOAD; on a NIC, Open leaves GRO
	// and LRO on), which this package's link reads whole. One system
	// call and one pass through gVisor's TCP per 64 KiB instead of per
	// frame. This package's links only (inline, netpoll); GSOMaxSize and
	// GRO are the fdbased modes' software equivalents. A TAP fd handed
	// over without IFF_VNET_HDR cannot carry the header: its stack runs
	// without (Stack.Knobs says so).
	HostGSO bool `json:"host_gso"`
	// GRO enables netstack's own receive coalescing of TCP segments
	// (fdbased recvmmsg dispatch only). Unrelated to the kernel NIC's GRO, which
	// PrepareNIC always turns off.
	GRO bool `json:"gro"`
	// RXChecksumOffload trusts the link: inbound IPv4/TCP checksums are not
	// verified.
	RXChecksumOffload bool `json:"rx_checksum_offload"`
	// TXChecksumOffload skips computing outbound checksums.
	TXChecksumOffload bool `json:"tx_checksum_offload"`
	// SocketBuffer > 0 sets the AF_PACKET socket's kernel receive and
	// send buffers (SO_RCVBUFFORCE, SO_SNDBUFFORCE; bytes), as runsc does;
	// 0 keeps the kernel defaults (net.core.rmem_default and
	// wmem_default, about 208 KiB). Frames that arrive while the receive
	// buffer is full are dropped before netstack sees them; a frame
	// written while the send buffer is full (the NIC's queue not yet
	// drained) is dropped, and TCP retransmits it. With host GSO a frame
	// is up to 64 KiB, so 208 KiB holds three.
	SocketBuffer int `json:"socket_buffer"`
	// Processors is the number of goroutines handling inbound frames per
	// link fd (0: GOMAXPROCS).
	Processors int `json:"processors"`
	// GoProcs is the Go scheduler's processor count (GOMAXPROCS) for the
	// process that owns the stack. It is process-wide, so a Stack never
	// sets it: the program serving the stack applies it when it opens the
	// stack (wormd does, with ApplyGoProcs). 0 leaves the runtime's
	// choice (the GOMAXPROCS environment variable, or the CPU count).
	GoProcs int `json:"go_procs"`
}

// DefaultKnobs returns the settings used unless WithKnobs is given. Figures
// quoted are from `WORM_NETSTACK_KNOBS=... go test -bench
// 'Echo64|Bulk' ./netstack` on a 2-core Debian 12 machine (kernel client in
// a namespace, netstack server on a TAP or on AF_PACKET over veth; "into"
// = kernel to netstack, "out of" = netstack to kernel). Run-to-run noise
// on that machine is about ±20%, so only larger differences decided.
func DefaultKnobs() Knobs {
	return Knobs{
		// SACK on (netstack defaults to off): without it bulk into
		// netstack over veth fell from ~600 to 7 MB/s, every loss in a
		// large window costing a timeout.
		SACK: true,
		// RACK on (netstack default): time-based loss detection recovers
		// tail losses without an RTO, which matters for short request /
		// response exchanges where there are no dupacks to count.
		RACK: true,
		// Reno (netstack's default): cubic measured the same within
		// noise on every path (3 runs each; e.g. AF_PACKET into netstack
		// 628 vs 664 MB/s, out of it 116 vs 114 MB/s). On a sub-ms RTT
		// the window is not limited by the growth curve; reno does less
		// per ACK, which counts in a TCG guest.
		CongestionControl: "reno",
		// Moderation on: off, bulk into netstack on TAP fell from ~170 to
		// 117 MB/s (the window stays at the 1 MiB default).
		ModerateReceiveBuffer: true,
		// 1 MiB start, 4 MiB ceiling (netstack's own values). 4 MiB
		// start / 8 MiB ceiling gave no consistent gain (TAP into 206,
		// out of 98 MB/s vs ~170/125): the limit is per-frame CPU, not
		// the window.
		SendBuffer:    BufferRange{Min: 4 << 10, Default: 1 << 20, Max: 4 << 20},
		ReceiveBuffer: BufferRange{Min: 4 << 10, Default: 1 << 20, Max: 4 << 20},
		// Nagle off: WormSpace sends small requests and waits for the
		// reply; Nagle plus delayed ACKs would add up to 40 ms per round
		// trip.
		Nagle: false,
		// Delayed ACK off. It does what it promises on a bare echo (1 TCP
		// segment per round trip instead of 2; Echo64 p50 on TAP 23/18/17
		// vs 17/22/26 us, AF_PACKET 18/18/21 vs 26/19/20 us at 100 us,
		// within noise), but wormd did not gain: in two alternating
		// `worm compare -quick -configs host-kernel,host-netstack
		// -netstack-knobs delayed_ack_us=0|200` rounds (load 5-10),
		// write with 1 client went from 0.63x/1.59x and 0.64x/1.74x of the
		// kernel (throughput/p50) to 0.48x/2.11x and 0.45x/2.21x, server
		// CPU per op 148/163 to 225/195 us; with 16 clients 0.67x and
		// 0.55x to 0.85x and 0.86x. Mixed at best; the timer's cost per
		// held ACK is not repaid on wormd's path.
		DelayedACKMicros: 0,
		// Coalesced ACKs on: the reply carries the acknowledgement of
		// the request it answers, as Linux's delayed ACK does, without a
		// timer (see the field).
		CoalesceACKs: true,
		// Inline (this package's link, fdlink.go) for TAP and AF_PACKET:
		// frames are read (recvmmsg on a socket, a burst per syscall) and
		// delivered on the reading goroutine, with no allocation per frame.
		// Against fdbased with recvmmsg, 3 alternating runs of Echo64
		// (5000 round trips; load 0.3): p50 TAP 24/17/25 vs 26/19/26 us,
		// AF_PACKET 28/19/27 vs 29/28/20 us, 0 vs 2 allocations per round
		// trip; Bulk over TAP into netstack 300/293 vs 189/172 MB/s, other
		// directions alike within noise. fdbased's modes remain for
		// GRO/GSO and sweeps; of those, recvmmsg measured best (on veth:
		// into netstack readv 604, recvmmsg 628, mmap 651 MB/s, echo p50
		// 38-55 us each) and PACKET_MMAP was not a candidate: gVisor's ring
		// has only 32 slots, so a burst of more than 32 MTU-sized frames is
		// dropped, whereas recvmmsg is backed by the socket buffer.
		//
		// Session 6: DispatchNetpoll, the same link waiting in the Go
		// poller, is the default. A blocking ppoll keeps its thread in a
		// system call, so what a frame wakes (gVisor's TCP processor, the
		// connection's reader) runs on another thread woken for it, or,
		// with one P (a 1-vCPU guest, GOMAXPROCS=1), only once sysmon
		// takes the P back. `worm compare -netstack-knobs
		// dispatch=netpoll|inline`, alternating runs, 2 reps each, p50 or
		// throughput as a ratio to the kernel config:
		//   - VM guests (1 vCPU; TCG, KVM does not boot them on that
		//     machine): raw echo 1.09 vs 1.96 ms; read 2.25x vs 3.67x (1
		//     client), 0.50x vs 0.29x (16); write 2.86x vs 2.53x (1),
		//     0.565x both (16).
		//   - host, wormds with GOMAXPROCS=1: write 1.91x vs 5.61x (1),
		//     0.73x vs 0.53x (16); read 1.72x vs 7.96x, 0.65x vs 0.45x.
		//   - host, GOMAXPROCS=2: write 2.56x vs 3.31x (1), 0.70x vs 0.59x
		//     (16); read 2.66x vs 2.62x, 0.77x vs 0.65x; raw echo 70 vs
		//     140 us. An earlier run with 64 clients had netpoll behind
		//     (write 0.51x vs 0.65x, read 0.53x vs 0.70x).
		// Ahead in most cells and far ahead with one P; inline remains a
		// knob.
		Dispatch: DispatchNetpoll,
		// GSO off: software GSO of 64 KiB gave nothing (AF_PACKET out of
		// netstack 111 vs 110 MB/s, into 481 vs 544 MB/s).
		GSOMaxSize: 0,
		// Host GSO on (session 14): a 64 KiB segment is one frame, one
		// system call and one pass through gVisor's TCP, where it was
		// 45. `go test -bench 'Bulk/netstack-(tap|afpacket)' -benchtime
		// 200x ./netstack`, off vs on: out of netstack 125 vs 1908 MB/s
		// on a TAP, 101 vs 1944 over AF_PACKET; into it 295 vs 1379 on a
		// TAP (the TAP's offloads now let the kernel pass coalesced
		// segments), 1028 vs 1053 over AF_PACKET (a veth with TSO did so
		// already). Echo64 p50 alike (TAP 28.9/24.9 vs 27.6/24.6 us,
		// AF_PACKET 40.5/31.7 vs 31.8/33.3 us); no allocation per frame
		// either way (TestInlineNoAllocPerPacket). In a TCG guest, where
		// every frame costs emulated system calls and a virtio exchange,
		// it is most of the gap the feasibility study found: 256 KiB
		// values written and read back through wormd (TestGuestSoak),
		// 5.6 vs 14.3 MB/s (the guest kernel's TCP: 17.3 and 15.0 MB/s
		// in the same runs); a 16 MiB echo stream 2.6-4.0 vs 8-36 MB/s
		// (guest kernel 27-50). The spread on is the host's TCP sizing
		// its segments by the rate it measures: once the guest is slow,
		// the host sends 4-5 KiB segments instead of 32 KiB ones and the
		// guest stays slow for that connection. Small requests, judged
		// as a variant in one run (`worm compare -configs
		// host-kernel,host-netstack,host-netstack@host_gso=false,vm-kernel,
		// vm-netstack,vm-netstack@host_gso=false -workloads write,read
		// -clients 1,16 -reps 2 -duration 2s -warmup 500ms`): on the
		// host, on vs off, write p50 at one client 117 vs 125 us, read 73
		// vs 88 us, read at 16 clients 64.3k vs 50.2k/s, server CPU per
		// operation 7-20% lower (the kernel finishes the checksums); in
		// the TCG guests reads gained (one client 819 vs 1166 us, 16
		// clients 6.5k vs 4.2k/s) and one client's writes and the echo
		// floor lost 8-60% and 12% in two runs of two, gained in a third:
		// TCG's spread. A guest with it keeps its NIC's receive offloads
		// and GRO, as the guest kernel's TCP does.
		HostGSO: true,
		// netstack GRO off: WormSpace is latency bound. On, echo p50 on
		// TAP rose to 49-70 us (34-55 off); bulk into netstack over
		// AF_PACKET with MTU-sized frames gained ~30% (220 vs 171 MB/s).
		// Turn it on for bulk-heavy uses.
		GRO: false,
		// Trust the link. Over virtio-net (QEMU TAP with offloads) and
		// veth, frames from the kernel carry unfinished (CHECKSUM_PARTIAL)
		// TCP checksums; netstack drops every one of them and all
		// connections time out (boot-notes; on veth, verified here: every
		// AF_PACKET test fails with this off). The link is a local wire or
		// a hypervisor queue, with nothing to corrupt frames.
		RXChecksumOffload: true,
		// Outbound checksums must be complete: the kernel on the other side
		// of a TAP without a virtio-net header has no way to learn that a
		// checksum is pending and would drop the frames.
		TXChecksumOffload: false,
		// 4 MiB: with MTU-sized frames (veth with the kernel side's TSO
		// off, as a guest with GRO off receives them) the default
		// ~208 KiB overflows during bulk transfers and bulk into netstack
		// ran 41-87 MB/s; with 4 MiB, 160-176 MB/s. Echo latency and the
		// other direction were unchanged. Only AF_PACKET uses it.
		SocketBuffer: 4 << 20,
		// One processor goroutine per core (fdbased's default; the inline
		// link has none).
		Processors: 0,
		// One P. Every request crosses goroutines inside gVisor's TCP (the
		// link's reader readies the TCP processor, which readies the
		// connection's reader); with an idle second P each of those
		// readies wakes a thread to run it (a futex wake-up and a
		// spinning M), which on 2 vCPUs shared with the other wormds and
		// the client costs more than the parallelism returns. With one P
		// the readied goroutine runs on the same thread as soon as the
		// current one parks. Alternating `worm compare -configs
		// host-kernel,host-netstack -workloads write,read -clients 1,16,64
		// -reps 2 -duration 2s` runs (session 7; netstack wormds at 1 P
		// through a WORMD= wrapper in 4 runs vs the runtime's 2 in 2):
		// server CPU per operation fell 25-35% (write, 16 clients: 40-54
		// vs 63-66 us; 64 clients: 33-41 vs 45-55 us; read, 16 clients:
		// 27-40 vs 36-57 us), and against the kernel config write with 64
		// clients went from 0.44-0.64x to 0.68-0.81x of its throughput,
		// read from 0.65-0.74x to 0.75-0.91x; one client's write p50
		// from 1.94-2.82x to 1.68-1.92x. The kernel config's wormds at 1 P
		// measured alike within noise in two such runs, so it keeps the
		// runtime's default. A guest with one vCPU has one P anyway.
		// Raise it for a wormd with cores to itself under heavy load.
		GoProcs: 1,
		// TIME_WAIT 3 s, not 60. gVisor lets a SYN reopen a 4-tuple in
		// TIME_WAIT only when its sequence number is past the old
		// connection's last byte; Linux also lets a newer timestamp
		// through (PAWS), and gVisor drops RSTs in TIME_WAIT (RFC 1337).
		// A Linux client's ISN for a 4-tuple grows by about 15.6 million
		// a second, so a client that sent more than that many bytes per
		// second of the old connection's life, and then picks the same
		// source port, is refused until TIME_WAIT ends: its connect
		// timed out (TestSoakTAP, in one run of four to eight, after a
		// few hundred 32 MiB transfers into netstack that netstack's
		// side closed first; TestTimeWaitReopen reproduces it on one
		// port). On a TAP or a VM's link a segment cannot outlive a few
		// seconds, which is all TIME_WAIT guards against here; 3 s also
		// covers the peer's retransmissions of its FIN, and a refused
		// SYN gets through with the client's retransmission at 3 or 7 s.
		TimeWaitMillis: 3000,
	}
}

// ApplyGoProcs sets the process's GOMAXPROCS to k.GoProcs when it is
// set, and returns the value it replaced (0 when it changed nothing). A
// program calls it once, when it opens the stack it serves.
func (k Knobs) ApplyGoProcs() (previous int) {
	if k.GoProcs <= 0 {
		return 0
	}
	return runtime.GOMAXPROCS(k.GoProcs)
}

// KnobsFromEnv returns DefaultKnobs overridden by the environment variable
// WORM_NETSTACK_KNOBS, if set, in ParseKnobs's syntax (used for measurement
// sweeps: WORM_NETSTACK_KNOBS=congestion_control=cubic,processors=1).
func KnobsFromEnv() (Knobs, error) {
	k, err := ParseKnobs(os.Getenv("WORM_NETSTACK_KNOBS"))
	if err != nil {
		return k, fmt.Errorf("WORM_NETSTACK_KNOBS: %w", err)
	}
	return k, nil
}

// ParseKnobs returns DefaultKnobs with the overrides in s, validated. s is
// either a JSON object with Knobs' field names ({"dispatch":"recvmmsg"}) or
// the same as a comma-separated list of name=value, which passes through a
// kernel command line unquoted (wormd -netstack-knobs, worm.knobs=):
//
//	dispatch=recvmmsg,gro=true,processors=1,send_buffer=4096/65536/65536
//
// A buffer range is min/default/max. Unknown names are errors, not ignored:
// a misspelt knob would otherwise silently measure the defaults.
func ParseKnobs(s string) (Knobs, error) {
	k, err := DefaultKnobs().With(s)
	if err != nil {
		return DefaultKnobs(), err
	}
	return k, nil
}

// With returns k with the overrides in s (ParseKnobs's syntax) applied
// and the result validated; on error it returns k unchanged. It layers
// one set of overrides on another (a run's, then one configuration's).
func (k Knobs) With(s string) (Knobs, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return k, k.validate()
	}
	js := s
	if !strings.HasPrefix(s, "{") {
		var err error
		if js, err = knobListJSON(s); err != nil {
			return k, err
		}
	}
	out := k
	d := json.NewDecoder(strings.NewReader(js))
	d.DisallowUnknownFields()
	if err := d.Decode(&out); err != nil {
		return k, fmt.Errorf("%w: knobs %q: %w", ErrBadOption, s, err)
	}
	if !out.Dispatch.own() && out.CoalesceACKs && !names(js)["coalesce_acks"] {
		// coalesce_acks is on by default but only this package's links
		// report bursts: choosing one of gVisor's links without naming
		// coalesce_acks turns it off rather than failing. Naming both is
		// still an error (validate).
		out.CoalesceACKs = false
	}
	if !out.Dispatch.own() && out.HostGSO && !names(js)["host_gso"] {
		// The same for host_gso: only this package's links add the
		// virtio-net header.
		out.HostGSO = false
	}
	if err := out.validate(); err != nil {
		return k, err
	}
	return out, nil
}

// effective returns k as a stack runs it: CoalesceACKs off with gVisor's
// links, which report no bursts, and HostGSO off (they add no virtio-net
// header on a TAP).
func (k Knobs) effective() Knobs {
	if !k.Dispatch.own() {
		k.CoalesceACKs = false
		k.HostGSO = false
	}
	return k
}

// names returns the top-level field names of the JSON object js (already
// decoded once, so known to be well formed).
func names(js string) map[string]bool {
	var m map[string]json.RawMessage
	_ = json.Unmarshal([]byte(js), &m)
	out := make(map[string]bool, len(m))
	for n := range m {
		out[strings.ToLower(n)] = true
	}
	return out
}

// knobListJSON turns name=value,... into a JSON object: integers and
// booleans stay bare, a/b/c becomes a buffer range, anything else a string.
func knobListJSON(s string) (string, error) {
	var b strings.Builder
	b.WriteByte('{')
	for i, kv := range strings.Split(s, ",") {
		name, val, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok || name == "" || val == "" {
			return "", fmt.Errorf("%w: knob %q: want name=value", ErrBadOption, kv)
		}
		if i > 0 {
			b.WriteByte(',')
		}
		nb, _ := json.Marshal(name)
		b.Write(nb)
		b.WriteByte(':')
		if parts := strings.Split(val, "/"); len(parts) == 3 {
			var r [3]int
			for j, p := range parts {
				n, err := strconv.Atoi(p)
				if err != nil {
					return "", fmt.Errorf("%w: knob %s=%s: want min/default/max in bytes", ErrBadOption, name, val)
				}
				r[j] = n
			}
			fmt.Fprintf(&b, `{"min":%d,"default":%d,"max":%d}`, r[0], r[1], r[2])
			continue
		}
		if _, err := strconv.ParseInt(val, 10, 64); err == nil || val == "true" || val == "false" {
			b.WriteString(val)
			continue
		}
		vb, _ := json.Marshal(val)
		b.Write(vb)
	}
	b.WriteByte('}')
	return b.String(), nil
}

// Overrides renders the knobs that differ from DefaultKnobs in
// ParseKnobs's name=value syntax ("" when none do), so that
// ParseKnobs(k.Overrides()) == k.
func (k Knobs) Overrides() string {
	var have, def map[string]json.RawMessage
	hb, _ := json.Marshal(k)
	db, _ := json.Marshal(DefaultKnobs())
	_ = json.Unmarshal(hb, &have)
	_ = json.Unmarshal(db, &def)
	names := make([]string, 0, len(have))
	for n, v := range have {
		if string(v) != string(def[n]) {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	out := make([]string, 0, len(names))
	for _, n := range names {
		v := have[n]
		var r BufferRange
		var str string
		switch {
		case json.Unmarshal(v, &r) == nil && r.Max != 0:
			out = append(out, fmt.Sprintf("%s=%d/%d/%d", n, r.Min, r.Default, r.Max))
		case json.Unmarshal(v, &str) == nil:
			out = append(out, n+"="+str)
		default:
			out = append(out, n+"="+string(v))
		}
	}
	return strings.Join(out, ",")
}

func (k Knobs) validate() error {
	switch k.CongestionControl {
	case "reno", "cubic":
	default:
		return fmt.Errorf("%w: congestion control %q (want reno or cubic)", ErrBadOption, k.CongestionControl)
	}
	if k.RACK && !k.SACK {
		return fmt.Errorf("%w: RACK needs SACK", ErrBadOption)
	}
	if k.GoProcs < 0 || k.GoProcs > 1024 {
		return fmt.Errorf("%w: go_procs %d (want 0..1024; 0 leaves the runtime's choice)", ErrBadOption, k.GoProcs)
	}
	if k.DelayedACKMicros < 0 || k.DelayedACKMicros > 200_000 {
		return fmt.Errorf("%w: delayed ACK %d us (want 0..200000; Linux's maximum is 200 ms)", ErrBadOption, k.DelayedACKMicros)
	}
	for _, r := range []BufferRange{k.SendBuffer, k.ReceiveBuffer} {
		if r.Min <= 0 || r.Min > r.Default || r.Default > r.Max {
			return fmt.Errorf("%w: buffer range %+v", ErrBadOption, r)
		}
	}
	if k.TimeWaitMillis < 0 || k.TimeWaitMillis > 600_000 {
		return fmt.Errorf("%w: time_wait_ms %d (want 0..600000; 0 keeps gVisor's 60 s)", ErrBadOption, k.TimeWaitMillis)
	}
	if k.BusyPollMicros < 0 || k.BusyPollMicros > 1_000_000 {
		return fmt.Errorf("%w: busy_poll_us %d (want 0..1000000)", ErrBadOption, k.BusyPollMicros)
	}
	if k.BusyPollMicros > 0 && !k.Dispatch.own() {
		return fmt.Errorf("%w: busy_poll_us needs dispatch inline or netpoll (this package's links), not %q", ErrBadOption, k.Dispatch)
	}
	if k.CoalesceACKs && !k.Dispatch.own() {
		return fmt.Errorf("%w: coalesce_acks needs dispatch inline or netpoll (this package's links report bursts), not %q", ErrBadOption, k.Dispatch)
	}
	if k.HostGSO && !k.Dispatch.own() {
		return fmt.Errorf("%w: host_gso needs dispatch inline or netpoll (this package's links), not %q; gso_max_size is fdbased's software GSO", ErrBadOption, k.Dispatch)
	}
	if k.Dispatch.own() {
		if k.GRO || k.GSOMaxSize > 0 {
			return fmt.Errorf("%w: GRO and GSO need a fdbased dispatch mode (readv, recvmmsg or mmap), not %q", ErrBadOption, k.Dispatch)
		}
		return nil
	}
	if _, err := k.Dispatch.fdbased(); err != nil {
		return err
	}
	return nil
}

// String renders the knobs as one JSON object.
func (k Knobs) String() string {
	b, _ := json.Marshal(k)
	return string(b)
}

func (k Knobs) recovery() tcpip.TCPRecovery {
	if k.RACK {
		return tcpip.TCPRACKLossDetection
	}
	return 0
}
