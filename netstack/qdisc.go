package netstack

import (
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// directQDisc is the NIC's queueing discipline: like gVisor's default
// (stack.delegatingQueueingDiscipline, used when NICOptions.QDisc is nil)
// it hands every packet to the link synchronously on the caller's
// goroutine, with no queue and no goroutine of its own, so a Write's
// segment leaves in the Write. The default builds a one-packet
// PacketBufferList per packet, which allocates its backing slice every
// time (three times per echo round trip measured). directQDisc avoids it:
//
//   - if the link writes single packets itself (packetWriter, our fd
//     link), the packet goes straight to it, no list at all;
//   - otherwise (Pipe, the Faults wrapper) it borrows a one-slot list from
//     a pool, which keeps its backing array between uses.
//
// gVisor's fifo qdisc was not used: it queues packets to dispatcher
// goroutines, adding a goroutine hop and its wakeup to every packet, which
// is what the latency-bound request/response traffic cannot afford.
type directQDisc struct {
	link   stack.LinkWriter
	direct packetWriter // non-nil when link implements it
	acks   *ackDelayer  // non-nil with Knobs.DelayedACKMicros > 0 or CoalesceACKs
}

// packetWriter is implemented by links that write one packet without
// needing a list. writePacket must not keep pkt (or its reference) after
// returning; the caller keeps ownership.
type packetWriter interface {
	writePacket(pkt *stack.PacketBuffer) tcpip.Error
}

var _ stack.QueueingDiscipline = (*directQDisc)(nil)

func newDirectQDisc(link stack.LinkWriter, ackDelay time.Duration, coalesceACKs bool) *directQDisc {
	q := &directQDisc{link: link}
	q.direct, _ = link.(packetWriter)
	if ackDelay > 0 || coalesceACKs {
		q.acks = newAckDelayer(ackDelay, coalesceACKs, q.send)
	}
	return q
}

// listPool holds one-slot PacketBufferLists for links without
// writePacket. A list's backing array survives Reset, so after warm-up
// borrowing one does not allocate.
var listPool = sync.Pool{New: func() any { return new(stack.PacketBufferList) }}

// WritePacket implements stack.QueueingDiscipline. The caller (the NIC)
// keeps its reference to pkt.
func (q *directQDisc) WritePacket(pkt *stack.PacketBuffer) tcpip.Error {
	if q.acks != nil {
		return q.acks.writePacket(pkt)
	}
	return q.send(pkt)
}

// send hands pkt to the link.
func (q *directQDisc) send(pkt *stack.PacketBuffer) tcpip.Error {
	if q.direct != nil {
		return q.direct.writePacket(pkt)
	}
	l := listPool.Get().(*stack.PacketBufferList)
	// LinkWriter.WritePackets takes the list, not the packets'
	// references: the list holds one reference of its own so that Reset
	// (which drops the references it holds and keeps the backing array)
	// leaves the caller's intact. No link below keeps the list's slice
	// after WritePackets returns (fdbased, pipe, the Faults wrapper copy or
	// IncRef what they keep), which is what makes the reuse safe.
	l.PushBack(pkt.IncRef())
	_, err := q.link.WritePackets(*l)
	l.Reset()
	listPool.Put(l)
	return err
}

// Close implements stack.QueueingDiscipline: held ACKs go out.
func (q *directQDisc) Close() {
	if q.acks != nil {
		q.acks.close()
	}
}
