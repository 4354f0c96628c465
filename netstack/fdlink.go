package netstack

import (
	"log/slog"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/rawfile"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/stopfd"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// fdLink is the link endpoint of a TAP fd or an AF_PACKET socket in the
// inline dispatch modes (DispatchNetpoll, the default, and DispatchInline):
// Ethernet frames in and out of one fd, with nothing between the fd and
// the network layer.
//
// Receive: one goroutine per link reads frames into pooled buffer views
// (readv(2) on a TAP, recvmmsg(2) of up to rxBatch frames on a socket) and
// hands each to the stack on that same goroutine. gVisor's fdbased link
// instead queues every frame to a "processor" goroutine, one wake-up more
// per packet, and its queue and iovec bookkeeping allocate two objects per
// frame; here a frame costs no allocation (the view and the PacketBuffer
// come from gVisor's pools) and no goroutine hop.
//
// With DispatchNetpoll the goroutine waits for frames in the Go runtime's
// poller (a dup of the fd registered there) rather than in a blocking
// ppoll(2) of its own, so that the thread it ran on goes on to run the
// goroutines a frame woke instead of handing them to another thread.
//
// Transmit: writeFrame, one writev(2) per frame straight from the packet's
// views.
//
// With a virtio-net header on the fd (vnet: PACKET_VNET_HDR on a socket,
// IFF_VNET_HDR on a TAP) every frame read starts with one, which the
// reader skips, and every frame written gets one in front; with
// Knobs.HostGSO the link is a stack.GSOEndpoint of the host kind, so
// gVisor's TCP hands it segments of up to gsoMaxSize whose header tells
// the kernel to cut them into frames and finish their checksums.
//
// What it leaves out, each available by choosing a fdbased mode instead:
// netstack's own GRO (fdbased's processors coalesce; with HostGSO the
// kernel does it before the link reads), software GSO, the PACKET_MMAP
// ring.
type fdLink struct {
	fd    int
	batch bool // fd is a socket: read with recvmmsg
	vnet  bool // every frame on fd carries a virtio-net header
	// gsoMax > 0 (Knobs.HostGSO, with vnet): the largest segment TCP may
	// hand the link for the kernel to cut (SupportedGSO: host).
	gsoMax uint32
	caps   stack.LinkEndpointCapabilities
	log    *slog.Logger

	mtu     atomic.Uint32
	stop    stopfd.StopFD
	stopped atomic.Bool // Attach(nil) was called: deliver nothing more
	wg      sync.WaitGroup

	// DispatchNetpoll: a dup of fd registered with the runtime's poller
	// (the link owns it and closes it once the reader stopped), and its
	// raw access.
	pf        *os.File
	rc        syscall.RawConn
	closePoll sync.Once
	// The read goroutine's state for rc.Read's callback (a method value
	// made once: a closure per read would allocate).
	pollD  stack.NetworkDispatcher
	pollRX *rxState
	pollFn func(fd uintptr) bool

	mu         sync.RWMutex
	addr       tcpip.LinkAddress
	dispatcher stack.NetworkDispatcher
	onClose    func()

	// bursts, when set (Knobs.CoalesceACKs, before Attach), hears when the
	// reader delivers received frames and when the goroutines they woke
	// have run (ackdelay.go).
	bursts bursts

	// busyPoll > 0 (Knobs.BusyPollMicros): how long the reader polls the
	// fd without blocking once it found it empty (busyRead; pollRead with netpoll).
	busyPoll time.Duration

	// Read-side counters (the read goroutine writes them).
	rxFrames  atomic.Uint64
	rxDropped atomic.Uint64 // short, truncated, or not for this address
}

// rxBatch is how many frames one recvmmsg may return. A burst rarely
// exceeds a few frames per wake-up on a request/response workload; bulk
// transfers fill it. 16 views of 2 KiB are held per link.
const rxBatch = 16

// gsoMaxSize is the largest segment a HostGSO link takes from TCP, as
// Linux's default gso_max_size: TCP keeps its segments 160 bytes below it,
// so that with their headers they fit an IPv4 packet's 16-bit length.
const gsoMaxSize = 1 << 16

var _ stack.LinkEndpoint = (*fdLink)(nil)
var _ stack.GSOEndpoint = (*fdLink)(nil)
var _ packetWriter = (*fdLink)(nil)

// newFDLink makes the endpoint. fd must be non-blocking; the link does not
// own it (the caller closes it after the stack is closed). vnet says that
// frames on fd carry a virtio-net header (the caller set the fd up so);
// with it, k.HostGSO makes the link offer host GSO.
func newFDLink(fd int, socket, vnet bool, mtu uint32, addr tcpip.LinkAddress, k Knobs, log *slog.Logger) (*fdLink, error) {
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil, err
	}
	sfd, err := stopfd.New()
	if err != nil {
		return nil, err
	}
	l := &fdLink{fd: fd, batch: socket, vnet: vnet, addr: addr, stop: sfd, log: log, busyPoll: time.Duration(k.BusyPollMicros) * time.Microsecond}
	if vnet && k.HostGSO {
		l.gsoMax = gsoMaxSize
	}
	if k.Dispatch == DispatchNetpoll {
		// A dup, so that the poller's registration and its close belong
		// to the link and never to the caller's fd number.
		dfd, err := unix.Dup(fd)
		if err != nil {
			unix.Close(sfd.EFD)
			return nil, err
		}
		l.pf = os.NewFile(uintptr(dfd), "netstack-link")
		l.pollFn = l.pollRead
		if l.rc, err = l.pf.SyscallConn(); err != nil {
			l.pf.Close()
			unix.Close(sfd.EFD)
			return nil, err
		}
	}
	l.mtu.Store(mtu)
	// Ethernet: the stack resolves neighbours with ARP.
	l.caps = stack.CapabilityResolutionRequired
	if k.RXChecksumOffload {
		l.caps |= stack.CapabilityRXChecksumOffload
	}
	if k.TXChecksumOffload {
		l.caps |= stack.CapabilityTXChecksumOffload
	}
	return l, nil
}

// MTU implements stack.LinkEndpoint.
func (l *fdLink) MTU() uint32 { return l.mtu.Load() }

// SetMTU implements stack.LinkEndpoint.
func (l *fdLink) SetMTU(mtu uint32) { l.mtu.Store(mtu) }

// MaxHeaderLength implements stack.LinkEndpoint.
func (*fdLink) MaxHeaderLength() uint16 { return header.EthernetMinimumSize }

// LinkAddress implements stack.LinkEndpoint.
func (l *fdLink) LinkAddress() tcpip.LinkAddress {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.addr
}

// SetLinkAddress implements stack.LinkEndpoint.
func (l *fdLink) SetLinkAddress(addr tcpip.LinkAddress) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.addr = addr
}

// Capabilities implements stack.LinkEndpoint.
func (l *fdLink) Capabilities() stack.LinkEndpointCapabilities { return l.caps }

// GSOMaxSize implements stack.GSOEndpoint.
func (l *fdLink) GSOMaxSize() uint32 { return l.gsoMax }

// SupportedGSO implements stack.GSOEndpoint: host GSO with Knobs.HostGSO,
// none otherwise.
func (l *fdLink) SupportedGSO() stack.SupportedGSO {
	if l.gsoMax > 0 {
		return stack.HostGSOSupported
	}
	return stack.GSONotSupported
}

// Attach implements stack.LinkEndpoint: a dispatcher starts the read
// goroutine; nil (the NIC going away) tells it to stop, without waiting:
// gVisor detaches and Waits with the stack's lock held, and the reader
// may be inside a delivery that needs that lock (a reset answered to a
// frame for a closed port, seen in tests), so waiting here deadlocks.
// Stack.Close waits for the reader (waitStopped) after the stack's
// teardown and before it closes the fd.
func (l *fdLink) Attach(d stack.NetworkDispatcher) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if d == nil {
		if l.dispatcher != nil {
			l.dispatcher = nil
			l.stopped.Store(true)
			l.stop.Stop()
			if l.pf != nil {
				// Wakes a reader parked in the poller.
				l.pf.SetReadDeadline(aLongTimeAgo)
			}
		}
		return
	}
	if l.dispatcher != nil || l.stopped.Load() {
		return
	}
	l.dispatcher = d
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		l.readLoop(d)
	}()
}

// IsAttached implements stack.LinkEndpoint.
func (l *fdLink) IsAttached() bool {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.dispatcher != nil
}

// Wait implements stack.LinkEndpoint. It returns at once: gVisor calls it
// with the stack's lock held (see Attach); waitStopped is the real wait.
func (l *fdLink) Wait() {}

// waitStopped waits until the read goroutine has returned (after
// Attach(nil)); only then may the fd be closed.
func (l *fdLink) waitStopped() {
	l.wg.Wait()
	if l.pf != nil {
		l.closePoll.Do(func() { l.pf.Close() })
	}
}

// aLongTimeAgo is a deadline in the past: it fails a pending read at once.
var aLongTimeAgo = time.Unix(1, 0)

// ARPHardwareType implements stack.LinkEndpoint.
func (*fdLink) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareEther }

// AddHeader implements stack.LinkEndpoint.
func (*fdLink) AddHeader(pkt *stack.PacketBuffer) {
	eth := header.Ethernet(pkt.LinkHeader().Push(header.EthernetMinimumSize))
	eth.Encode(&header.EthernetFields{
		SrcAddr: pkt.EgressRoute.LocalLinkAddress,
		DstAddr: pkt.EgressRoute.RemoteLinkAddress,
		Type:    pkt.NetworkProtocolNumber,
	})
}

// ParseHeader implements stack.LinkEndpoint.
func (*fdLink) ParseHeader(pkt *stack.PacketBuffer) bool {
	hdr, ok := pkt.LinkHeader().Consume(header.EthernetMinimumSize)
	if !ok {
		return false
	}
	pkt.NetworkProtocolNumber = header.Ethernet(hdr).Type()
	return true
}

// Close implements stack.LinkEndpoint. The read goroutine is stopped by
// Attach(nil), which the stack calls when it removes the NIC; the fd
// belongs to the caller.
func (l *fdLink) Close() {
	l.mu.RLock()
	f := l.onClose
	l.mu.RUnlock()
	if f != nil {
		f()
	}
}

// SetOnCloseAction implements stack.LinkEndpoint.
func (l *fdLink) SetOnCloseAction(f func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.onClose = f
}

// WritePackets implements stack.LinkWriter (used when a wrapper such as
// Faults sits between the qdisc and the link).
func (l *fdLink) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	return writeFrames(l.fd, pkts, l.vnet)
}

func (l *fdLink) writePacket(pkt *stack.PacketBuffer) tcpip.Error {
	if l.vnet {
		return writeFrameVnet(l.fd, pkt)
	}
	return writeFrame(l.fd, pkt)
}

// maxFrame is the largest frame the link reads: an IPv4 packet of the
// largest total length with its Ethernet header. AF_PACKET hands up GSO
// frames whole (a veth peer with TSO on sends up to 64 KiB at once), and
// gVisor's TCP accepts them with RX checksum offload; dropping them would
// stall every bulk transfer from such a peer.
const maxFrame = 65535 + header.EthernetMinimumSize

// rxSlot is one frame's receive buffer in two views: head, sized for an
// MTU-sized frame, and tail, for the rest of a larger one. Only what a
// frame filled goes to the stack, and only that is replaced from the pool,
// so the common small frame neither allocates nor holds 64 KiB. With a
// virtio-net header on the fd, the header lands in vh, ahead of head.
type rxSlot struct {
	head, tail *buffer.View
	vh         [vnetHdrLen]byte
	iovs       [3]unix.Iovec // vh, head, tail
}

// rxState is the read goroutine's buffers: rxBatch slots and the message
// headers pointing at their iovecs. Only the read goroutine touches it.
type rxState struct {
	headSize int
	first    int // the first iovec read into: 0 with a virtio-net header, else 1
	slots    [rxBatch]rxSlot
	hdrs     [rxBatch]rawfile.MMsgHdr
}

func (r *rxState) init(headSize int, vnet bool) {
	r.release()
	r.headSize = headSize
	r.first = 1
	if vnet {
		r.first = 0
	}
	for i := range r.slots {
		s := &r.slots[i]
		s.iovs[0] = unix.Iovec{Base: &s.vh[0]}
		s.iovs[0].SetLen(vnetHdrLen)
		r.fillHead(i)
		r.fillTail(i)
		r.hdrs[i].Msg.Iov = &s.iovs[r.first]
		r.hdrs[i].Msg.SetIovlen(len(s.iovs) - r.first)
	}
}

// iovs returns the iovecs a read of one frame into slot i fills.
func (r *rxState) iovs(i int) []unix.Iovec { return r.slots[i].iovs[r.first:] }

func (r *rxState) fillHead(i int) {
	s := &r.slots[i]
	s.head = buffer.NewViewSize(r.headSize)
	b := s.head.AsSlice()
	s.iovs[1] = unix.Iovec{Base: &b[0]}
	s.iovs[1].SetLen(len(b))
}

func (r *rxState) fillTail(i int) {
	s := &r.slots[i]
	s.tail = buffer.NewViewSize(maxFrame - r.headSize)
	b := s.tail.AsSlice()
	s.iovs[2] = unix.Iovec{Base: &b[0]}
	s.iovs[2].SetLen(len(b))
}

func (r *rxState) release() {
	for i := range r.slots {
		s := &r.slots[i]
		if s.head != nil {
			s.head.Release()
			s.tail.Release()
			s.head, s.tail = nil, nil
		}
	}
}

// readLoop is the read goroutine: pollLoop with DispatchNetpoll, and for
// DispatchInline a blocking ppoll(2) per read.
func (l *fdLink) readLoop(d stack.NetworkDispatcher) {
	r := &rxState{}
	defer r.release()
	if l.rc != nil {
		l.pollLoop(d, r)
		return
	}
	for {
		if head := int(l.mtu.Load()) + header.EthernetMinimumSize; head != r.headSize {
			r.init(min(head, maxFrame-1), l.vnet)
		}
		var n int
		var errno unix.Errno
		polled := false
		if l.busyPoll > 0 {
			n, errno, polled = l.busyRead(r)
		}
		switch {
		case polled:
		case l.batch:
			n, errno = rawfile.BlockingRecvMMsgUntilStopped(l.stop.EFD, l.fd, r.hdrs[:])
		default:
			n, errno = rawfile.BlockingReadvUntilStopped(l.stop.EFD, l.fd, r.iovs(0))
		}
		if !l.batch && n > 0 && errno == 0 {
			// readv: n bytes of one frame in slot 0.
			r.hdrs[0].Len = uint32(n)
			r.hdrs[0].Msg.Flags = 0
			n = 1
		}
		if n < 0 {
			return // stopped by Attach(nil)
		}
		if errno != 0 {
			if errno == unix.EINTR || errno == unix.EAGAIN || errno == unix.ENOBUFS {
				continue
			}
			l.log.Error("netstack: link read failed; the link stops receiving", "fd", l.fd, "err", errno)
			return
		}
		if l.bursts != nil {
			l.bursts.beginBurst()
		}
		for i := 0; i < n && !l.stopped.Load(); i++ {
			l.deliver(d, r, i)
		}
		if l.bursts != nil && !l.batch {
			// A TAP gives one frame per read: take what else is queued
			// now into the same burst (recvmmsg does that in one call),
			// so that the stack handles it before the yield below, as it
			// does without bursts, rather than a yield per frame.
			l.drainBurst(d, r)
		}
		l.endBurst()
	}
}

// drainBurst reads and delivers the frames queued on a TAP fd, up to
// rxBatch-1 more, without waiting for any.
func (l *fdLink) drainBurst(d stack.NetworkDispatcher, r *rxState) {
	iovs := r.iovs(0)
	for range rxBatch - 1 {
		if l.stopped.Load() {
			return
		}
		n, _, e := unix.RawSyscall(unix.SYS_READV, uintptr(l.fd), uintptr(unsafe.Pointer(&iovs[0])), uintptr(len(iovs)))
		if e != 0 {
			return // EAGAIN: the burst is over (anything else: the next read sees it)
		}
		r.hdrs[0].Len = uint32(n)
		r.hdrs[0].Msg.Flags = 0
		l.deliver(d, r, 0)
	}
}

// bursts is what the reader tells of its bursts (the ACK delayer).
type bursts interface {
	beginBurst()
	endBurst()
}

// burstLink is a link whose reader reports its bursts.
type burstLink interface {
	setBursts(b bursts)
}

// setBursts implements burstLink; it must be called before Attach.
func (l *fdLink) setBursts(b bursts) { l.bursts = b }

// pollLoop is DispatchNetpoll's receive loop. All of it runs inside one
// RawConn.Read: its callback (pollRead) reads and delivers until the fd
// is empty, then returns false and the goroutine parks in the runtime's
// poller until the fd is readable. It returns once the link is stopped
// (the deadline Attach(nil) sets, or the file closed) or a read fails.
//
// One Read for the whole loop, not one per wait, saves a system call per
// wake-up: Read clears the fd's readiness when it starts, so a new Read
// must read before it may wait, and the read that ended the previous
// wait's work had just found the fd empty (EAGAIN). Within one Read the
// readiness is kept between the callback's calls: a frame that arrives
// after the EAGAIN, even while the burst's goroutines run, wakes the
// wait (or finds it not yet parked and ends it at once).
func (l *fdLink) pollLoop(d stack.NetworkDispatcher, r *rxState) {
	l.pollD, l.pollRX = d, r
	_ = l.rc.Read(l.pollFn)
}

// pollRead is pollLoop's callback: it reads frames without blocking and
// delivers them until a read finds none (false: wait for the fd), the
// link is stopped, or a read fails (true: the loop ends). With bursts
// (Knobs.CoalesceACKs) a burst is every frame read before that EAGAIN,
// or rxBatch of them; it ends by yielding to the goroutines the frames
// woke (gVisor's TCP processor, then the connection's reader and its
// reply) and then telling the ACK delayer. With busy polling
// (Knobs.BusyPollMicros) an empty read yields and reads again until the
// window since the first empty read is over.
//
// The reads are raw system calls (no entersyscall), as gVisor's rawfile
// does for its non-blocking writes: they cannot block, so the scheduler
// need not hear of them. entersyscall wakes the runtime's sysmon thread
// whenever sysmon sleeps deeply (after every idle spell, so once per
// request at one client), and the kernel runs it on the other vCPU; an
// awake sysmon then takes the P of any call that spans two of its 20 us
// ticks and hands it to another thread. With one P (Knobs.GoProcs) the
// stack's work moved between two threads on both vCPUs: a netstack echo
// process served by this link woke sysmon on every frame (perf:
// futex from entersyscallWakeSysmon under this read) and ran on two
// threads with ~7,000 switches/s each; with the raw call, one thread
// does it all. (The echo's latency is still set mostly by whether the
// client and the stack share a vCPU; see Knobs.GoProcs.)
func (l *fdLink) pollRead(fd uintptr) bool {
	d, r := l.pollD, l.pollRX
	burst := 0 // frames delivered in the open burst
	var idleSince time.Time
	for {
		if l.stopped.Load() {
			return true
		}
		if head := int(l.mtu.Load()) + header.EthernetMinimumSize; head != r.headSize {
			r.init(min(head, maxFrame-1), l.vnet)
		}
		n, errno := l.readNow(fd, r)
		switch errno {
		case 0:
		case unix.EAGAIN:
			if burst > 0 {
				l.endBurst()
				burst = 0
			}
			if l.busyPoll > 0 {
				if idleSince.IsZero() {
					idleSince = time.Now()
				}
				if time.Since(idleSince) < l.busyPoll {
					runtime.Gosched()
					continue
				}
				idleSince = time.Time{}
			}
			return false
		case unix.EINTR, unix.ENOBUFS:
			continue
		default:
			l.log.Error("netstack: link read failed; the link stops receiving", "fd", l.fd, "err", errno)
			return true
		}
		idleSince = time.Time{}
		if !l.batch {
			// readv: n bytes of one frame in slot 0.
			r.hdrs[0].Len = uint32(n)
			r.hdrs[0].Msg.Flags = 0
			n = 1
		}
		if burst == 0 && l.bursts != nil {
			l.bursts.beginBurst()
		}
		for i := 0; i < n && !l.stopped.Load(); i++ {
			l.deliver(d, r, i)
		}
		if l.bursts != nil {
			if burst += n; burst >= rxBatch {
				l.endBurst()
				burst = 0
			}
		}
	}
}

// endBurst, with bursts, lets what a burst's frames woke run (the TCP
// processor, then the connection's reader and its reply), then closes
// the burst: with one P they run before this goroutine is scheduled
// again.
func (l *fdLink) endBurst() {
	if l.bursts == nil {
		return
	}
	runtime.Gosched()
	l.bursts.endBurst()
}

// readNow is one non-blocking raw read of fd into r: recvmmsg(2) of up to
// rxBatch frames on a socket (n frames), readv(2) of one frame on a TAP
// (n bytes). n is 0 when errno is set (EAGAIN: nothing queued).
func (l *fdLink) readNow(fd uintptr, r *rxState) (n int, errno unix.Errno) {
	var r1 uintptr
	var e unix.Errno
	if l.batch {
		r1, _, e = unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&r.hdrs[0])), uintptr(len(r.hdrs)), unix.MSG_DONTWAIT, 0, 0)
	} else {
		iovs := r.iovs(0)
		r1, _, e = unix.RawSyscall(unix.SYS_READV, fd, uintptr(unsafe.Pointer(&iovs[0])), uintptr(len(iovs)))
	}
	if e != 0 {
		return 0, e
	}
	return int(r1), 0
}

// busyRead polls the fd without blocking (Knobs.BusyPollMicros) until a
// read returns something other than EAGAIN, the link stops, or the
// window since the first empty read is over (ok false: wait for the fd
// as usual). Between reads it yields to the goroutines that are ready, so
// with one P the stack's and the server's work goes on beside it; the
// thread itself never sleeps, so its vCPU never halts, and a frame the
// peer queues meanwhile needs no wake-up to be read.
func (l *fdLink) busyRead(r *rxState) (n int, errno unix.Errno, ok bool) {
	var start time.Time
	for first := true; ; first = false {
		n, errno = l.readNow(uintptr(l.fd), r)
		if errno != unix.EAGAIN {
			return n, errno, true
		}
		if l.stopped.Load() {
			return -1, 0, true
		}
		if first {
			start = time.Now()
		} else if time.Since(start) >= l.busyPoll {
			return 0, 0, false
		}
		runtime.Gosched()
	}
}

// deliver hands frame i of r to the stack and refills what it used. A
// frame's virtio-net header, if any, is skipped: a coalesced segment needs
// nothing from it (its IP and TCP headers are the whole segment's), and
// its checksum is trusted like every frame's (Knobs.RXChecksumOffload).
func (l *fdLink) deliver(d stack.NetworkDispatcher, r *rxState, i int) {
	length := int(r.hdrs[i].Len)
	if l.vnet {
		length -= vnetHdrLen
	}
	if length < header.EthernetMinimumSize || r.hdrs[i].Msg.Flags&unix.MSG_TRUNC != 0 {
		l.rxDropped.Add(1)
		return // nothing taken from the slot: it is reused as it is
	}
	s := &r.slots[i]
	eth := header.Ethernet(s.head.AsSlice()[:header.EthernetMinimumSize])
	if dst := eth.DestinationAddress(); dst != l.LinkAddress() && dst[0]&0x01 == 0 {
		// Not ours and not broadcast or multicast: a bridge flooding, or
		// a frame for another address on a shared NIC.
		l.rxDropped.Add(1)
		return
	}
	var payload buffer.Buffer
	if length <= r.headSize {
		s.head.CapLength(length)
		payload = buffer.MakeWithView(s.head)
		r.fillHead(i)
	} else {
		s.tail.CapLength(length - r.headSize)
		payload = buffer.MakeWithView(s.head)
		payload.Append(s.tail)
		r.fillHead(i)
		r.fillTail(i)
	}
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: payload})
	if !l.ParseHeader(pkt) {
		l.rxDropped.Add(1)
		pkt.DecRef()
		return
	}
	l.rxFrames.Add(1)
	d.DeliverNetworkPacket(pkt.NetworkProtocolNumber, pkt)
	pkt.DecRef()
}
