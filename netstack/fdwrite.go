package netstack

import (
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/rawfile"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// fdWriter replaces the transmit path of gVisor's fd link (fdbased) for
// TAP and AF_PACKET fds; everything else (receive dispatch, headers,
// attach, close) stays fdbased's, through the embedded endpoint.
//
// Why: fdbased's writePacket builds the iovecs from pkt.AsSlices, which
// allocates a [][]byte per packet, and on sockets its sendmmsg batch path
// allocates the message headers and one iovec slice per packet. Here a
// packet's views go straight into an iovec array on the stack and out in
// one writev(2): no allocation per packet. With directQDisc every
// WritePackets call carries one packet, so sendmmsg batching never had
// anything to batch; writev on an AF_PACKET socket sends one frame just as
// sendmmsg of one message does.
//
// Not used with Knobs.GSOMaxSize > 0: GSO packets need fdbased's own
// handling (the virtio-net header, batching), so the link stays fdbased's
// whole.
type fdWriter struct {
	stack.LinkEndpoint // the fdbased endpoint on fd
	fd                 int
}

var _ packetWriter = (*fdWriter)(nil)

// maxWriteIovecs bounds the iovecs built on the stack for one frame. A
// frame is the header view plus the payload's views (one or two for
// MTU-sized segments); a packet with more views takes the allocating
// fallback.
const maxWriteIovecs = 16

// WritePackets implements stack.LinkWriter (used when something sits
// between the qdisc and this link, such as the Faults wrapper).
func (w *fdWriter) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	return writeFrames(w.fd, pkts)
}

// writeFrames writes each packet of pkts with writeFrame, stopping at the
// first error; it returns how many were written.
func writeFrames(fd int, pkts stack.PacketBufferList) (int, tcpip.Error) {
	for i, pkt := range pkts.AsSlice() {
		if err := writeFrame(fd, pkt); err != nil {
			return i, err
		}
	}
	return pkts.Len(), nil
}

// writePacket writes one frame with writeFrame.
func (w *fdWriter) writePacket(pkt *stack.PacketBuffer) tcpip.Error {
	return writeFrame(w.fd, pkt)
}

// writeFrame writes one frame (link header included) to fd with writev(2),
// its views going straight into an iovec array on the stack: no allocation.
// The fd is non-blocking: a full TAP queue or socket buffer returns
// ErrWouldBlock and the frame is dropped, as with fdbased; TCP retransmits.
func writeFrame(fd int, pkt *stack.PacketBuffer) tcpip.Error {
	var arr [maxWriteIovecs]unix.Iovec
	iovs := arr[:0]
	views, off := pkt.AsViewList()
	for v := views.Front(); v != nil; v = v.Next() {
		b := v.AsSlice()
		if off >= len(b) {
			off -= len(b)
			continue
		}
		b, off = b[off:], 0
		if len(iovs) == maxWriteIovecs {
			return writeFrameSlow(fd, pkt)
		}
		iovs = append(iovs, unix.Iovec{Base: &b[0]})
		iovs[len(iovs)-1].SetLen(len(b))
	}
	if len(iovs) == 0 {
		return nil
	}
	if errno := rawfile.NonBlockingWriteIovec(fd, iovs); errno != 0 {
		return tcpip.TranslateErrno(errno)
	}
	return nil
}

// writeFrameSlow handles frames of more than maxWriteIovecs views (not seen
// with MTU-sized frames; kept for correctness).
func writeFrameSlow(fd int, pkt *stack.PacketBuffer) tcpip.Error {
	var iovs []unix.Iovec
	for _, b := range pkt.AsSlices() {
		iovs = rawfile.AppendIovecFromBytes(iovs, b, rawfile.MaxIovs)
	}
	if errno := rawfile.NonBlockingWriteIovec(fd, iovs); errno != 0 {
		return tcpip.TranslateErrno(errno)
	}
	return nil
}
