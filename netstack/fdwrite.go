package netstack

import (
	"fmt"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/rawfile"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
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
	return writeFrames(w.fd, pkts, false)
}

// writeFrames writes each packet of pkts with writeFrame (writeFrameVnet
// when the fd's frames carry a virtio-net header), stopping at the first
// error; it returns how many were written.
func writeFrames(fd int, pkts stack.PacketBufferList, vnet bool) (int, tcpip.Error) {
	for i, pkt := range pkts.AsSlice() {
		var err tcpip.Error
		if vnet {
			err = writeFrameVnet(fd, pkt)
		} else {
			err = writeFrame(fd, pkt)
		}
		if err != nil {
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
	return writeFrameAfter(fd, pkt, [vnetHdrLen]byte{}, false)
}

// writeFrameVnet is writeFrame for an fd whose frames carry a virtio-net
// header: pkt's header (vnetHeader) goes first, in the same writev.
func writeFrameVnet(fd int, pkt *stack.PacketBuffer) tcpip.Error {
	var vh [vnetHdrLen]byte
	vnetHeader(&vh, pkt)
	return writeFrameAfter(fd, pkt, vh, true)
}

// writeFrameAfter writes the virtio-net header vh (when withHdr) and then
// pkt's frame in one writev(2). vh is passed by value, and never by
// pointer to anything that keeps it, so that it stays on the stack.
func writeFrameAfter(fd int, pkt *stack.PacketBuffer, vh [vnetHdrLen]byte, withHdr bool) tcpip.Error {
	// Filled by index, not append: escape analysis takes a value appended
	// to a slice as stored on the heap, which would move vh there.
	var arr [maxWriteIovecs]unix.Iovec
	n := 0
	if withHdr {
		arr[0].Base = &vh[0]
		arr[0].SetLen(len(vh))
		n = 1
	}
	first := n
	views, off := pkt.AsViewList()
	for v := views.Front(); v != nil; v = v.Next() {
		b := v.AsSlice()
		if off >= len(b) {
			off -= len(b)
			continue
		}
		b, off = b[off:], 0
		if n == maxWriteIovecs {
			return writeFrameSlow(fd, pkt, vh, withHdr)
		}
		arr[n].Base = &b[0]
		arr[n].SetLen(len(b))
		n++
	}
	if n == first {
		return nil
	}
	if errno := rawfile.NonBlockingWriteIovec(fd, arr[:n]); errno != 0 {
		return tcpip.TranslateErrno(errno)
	}
	return nil
}

// writeFrameSlow handles frames of more than maxWriteIovecs views (not seen
// with MTU-sized frames; a 64 KiB GSO segment may have more).
func writeFrameSlow(fd int, pkt *stack.PacketBuffer, vh [vnetHdrLen]byte, withHdr bool) tcpip.Error {
	var iovs []unix.Iovec
	if withHdr {
		iovs = rawfile.AppendIovecFromBytes(iovs, vh[:], rawfile.MaxIovs)
	}
	for _, b := range pkt.AsSlices() {
		iovs = rawfile.AppendIovecFromBytes(iovs, b, rawfile.MaxIovs)
	}
	if errno := rawfile.NonBlockingWriteIovec(fd, iovs); errno != 0 {
		return tcpip.TranslateErrno(errno)
	}
	return nil
}

// vnetHdrLen is the size of struct virtio_net_hdr (linux/virtio_net.h),
// which starts every frame on a TAP with IFF_VNET_HDR and on an AF_PACKET
// socket with PACKET_VNET_HDR.
const vnetHdrLen = 10

// virtio_net_hdr's flags and GSO types (linux/virtio_net.h).
const (
	vnetFlagNeedsCsum = 1 // VIRTIO_NET_HDR_F_NEEDS_CSUM
	vnetGSOTCPv4      = 1 // VIRTIO_NET_HDR_GSO_TCPV4
	vnetGSOTCPv6      = 4 // VIRTIO_NET_HDR_GSO_TCPV6
)

// vnetHeader fills h, a virtio_net_hdr in little-endian order, for pkt,
// as gVisor's fdbased link does for host GSO: a packet TCP built for host
// GSO (pkt.GSOOptions) carries a partial checksum, which the header tells
// the kernel to finish (csum_start/csum_offset), and, when its payload is
// larger than one MSS, the segmentation to do (gso_type, gso_size). Any
// other frame (ARP, a TCP packet from a stack without GSO) gets an
// all-zero header: complete as it is.
func vnetHeader(h *[vnetHdrLen]byte, pkt *stack.PacketBuffer) {
	*h = [vnetHdrLen]byte{}
	g := &pkt.GSOOptions
	if g.Type == stack.GSONone {
		return
	}
	put16 := func(off int, v uint16) { h[off], h[off+1] = byte(v), byte(v>>8) }
	put16(2, uint16(pkt.HeaderSize())) // hdr_len
	if g.NeedsCsum {
		h[0] = vnetFlagNeedsCsum
		put16(6, uint16(header.EthernetMinimumSize)+g.L3HdrLen) // csum_start
		put16(8, g.CsumOffset)                                  // csum_offset
	}
	if pkt.Data().Size() > int(g.MSS) {
		switch g.Type {
		case stack.GSOTCPv4:
			h[1] = vnetGSOTCPv4
		case stack.GSOTCPv6:
			h[1] = vnetGSOTCPv6
		default:
			panic(fmt.Sprintf("netstack: GSO type %v on a host GSO link", g.Type))
		}
		put16(4, g.MSS) // gso_size
	}
}
