package netstack

import (
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/seqnum"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// ackDelayer gives gVisor's TCP the delayed ACK it lacks, at the link.
//
// gVisor acknowledges every batch of received segments at once, with a
// pure ACK of its own (tcp.Endpoint.handleSegmentsLocked), before the
// application has had a chance to answer. On a request/response
// connection that is two frames out per request where Linux sends one
// (its delayed ACK rides on the reply): measured on a TAP, 2.00 TCP
// segments sent per 64-byte echo round trip. Each extra frame is a
// write(2) here and a receive on the peer.
//
// The delayer holds such an ACK for up to delay instead. If the flow
// sends anything before then (the reply, typically), that segment carries
// a newer acknowledgement and window, and the held ACK is dropped;
// otherwise a timer sends it. Only ACKs that add information nothing
// later would carry are held: pure ACKs (no payload, no SYN/FIN/RST/PSH)
// that advance the acknowledgement number, with nothing but timestamps in
// their options. Duplicate ACKs, window updates, SACK blocks and
// everything else go out at once and unchanged. A second ACK while one is
// held sends the newer one at once and drops the older, so a bulk
// receiver acknowledges at least every other batch, as Linux does every
// second segment.
//
// With coalescing (Knobs.CoalesceACKs) no timer is needed while the link
// delivers a burst of received frames: the link opens a burst before it
// hands frames to the stack, yields so that the goroutines they woke run
// (gVisor's TCP processor, which acknowledges, then the connection's
// reader, which answers), and closes the burst when it is scheduled
// again, sending the ACKs held in the meantime that nothing superseded.
// ACKs produced outside a burst are held by the timer (delay > 0) or sent
// at once.
//
// Safety: TCP acknowledgements are cumulative, so a held ACK superseded by
// a later segment of the same flow is redundant. A flushed ACK that a
// segment written concurrently overtakes is an old ACK to the peer, which
// ignores it.
type ackDelayer struct {
	delay time.Duration
	write func(*stack.PacketBuffer) tcpip.Error
	// coalesce: hold ACKs during a link's burst (beginBurst/endBurst).
	coalesce bool
	burst    atomic.Bool

	mu    sync.Mutex
	flows map[flowKey]*ackFlow
	// inBurst lists the flows holding an ACK taken during the current
	// burst, for endBurst; due is endBurst's scratch (only the link's
	// reader calls it), so that closing a burst allocates nothing.
	inBurst []*ackFlow
	due     []*stack.PacketBuffer

	// Counters (DelayedACKStats).
	held, saved, flushed atomic.Uint64
}

// DelayedACKStats counts what the delayed-ACK filter did (Knobs.DelayedACKMicros).
type DelayedACKStats struct {
	// Held pure ACKs; of them, Saved were superseded by a later segment
	// of their flow and never sent, Flushed went out by their timer or at
	// the end of their burst (the rest are held now or were sent when
	// their flow ended).
	Held, Saved, Flushed uint64
}

func (d *ackDelayer) stats() DelayedACKStats {
	return DelayedACKStats{Held: d.held.Load(), Saved: d.saved.Load(), Flushed: d.flushed.Load()}
}

// maxAckFlows bounds the flow table; beyond it, new flows' ACKs are not
// held (and idle entries are swept).
const maxAckFlows = 4096

type flowKey struct {
	src, dst         [4]byte
	srcPort, dstPort uint16
}

type ackFlow struct {
	d       *ackDelayer
	key     flowKey
	held    *stack.PacketBuffer // the held ACK (its own reference), or nil
	timer   *time.Timer
	lastAck seqnum.Value // acknowledgement number of the last segment sent or held
	haveAck bool
	// lastData: the flow's previous segment out carried data. An ACK is
	// held only then: the flow is answering requests (what was received
	// will likely be answered too). A flow that only acknowledges, a bulk
	// receiver, has its ACKs sent at once, as Linux's quick-ACK mode does
	// outside interactive ("ping-pong") exchanges; holding those would
	// only stall its sender and trip its tail-loss probes.
	lastData bool
	seen     bool // a segment since the last sweep
}

// newAckDelayer holds ACKs for up to delay (0: only during bursts, with
// coalesce) and hands what it sends to write.
func newAckDelayer(delay time.Duration, coalesce bool, write func(*stack.PacketBuffer) tcpip.Error) *ackDelayer {
	return &ackDelayer{delay: delay, coalesce: coalesce, write: write, flows: make(map[flowKey]*ackFlow)}
}

// beginBurst is called by the link's reader before it delivers received
// frames; endBurst once the goroutines they woke have had their turn.
func (d *ackDelayer) beginBurst() {
	if d.coalesce {
		d.burst.Store(true)
	}
}

// endBurst closes the burst and sends the ACKs held during it that no
// later segment superseded.
func (d *ackDelayer) endBurst() {
	if !d.coalesce {
		return
	}
	d.mu.Lock()
	d.burst.Store(false)
	if len(d.inBurst) == 0 {
		d.mu.Unlock()
		return
	}
	due := d.due[:0]
	for i, f := range d.inBurst {
		if p := f.take(); p != nil {
			due = append(due, p)
		}
		d.inBurst[i] = nil
	}
	d.inBurst = d.inBurst[:0]
	d.mu.Unlock()
	for i, p := range due {
		d.flushed.Add(1)
		d.write(p)
		p.DecRef()
		due[i] = nil
	}
	d.due = due[:0]
}

// writePacket sends pkt, or holds it if it is a pure ACK worth holding.
// Like the qdisc's, the caller keeps its reference to pkt.
func (d *ackDelayer) writePacket(pkt *stack.PacketBuffer) tcpip.Error {
	if pkt.NetworkProtocolNumber != header.IPv4ProtocolNumber || pkt.TransportProtocolNumber != header.TCPProtocolNumber {
		return d.write(pkt)
	}
	ip := header.IPv4(pkt.NetworkHeader().Slice())
	tcp := header.TCP(pkt.TransportHeader().Slice())
	if len(ip) < header.IPv4MinimumSize || len(tcp) < header.TCPMinimumSize {
		return d.write(pkt)
	}
	key := flowKey{src: ip.SourceAddress().As4(), dst: ip.DestinationAddress().As4(),
		srcPort: tcp.SourcePort(), dstPort: tcp.DestinationPort()}
	flags := tcp.Flags()
	ack := seqnum.Value(tcp.AckNumber())

	d.mu.Lock()
	f := d.flows[key]
	if flags&(header.TCPFlagFin|header.TCPFlagRst) != 0 || (flags&header.TCPFlagSyn != 0 && flags&header.TCPFlagAck == 0) {
		// Connection end, or our SYN: send now and forget the flow (a
		// held ACK is superseded by this segment, which acknowledges as
		// much). After it, the flow's first ACK is not held: it may be
		// the handshake's last.
		var old *stack.PacketBuffer
		if f != nil {
			old = f.take()
			delete(d.flows, key)
		}
		d.mu.Unlock()
		if old != nil {
			old.DecRef()
		}
		return d.write(pkt)
	}
	if f == nil {
		if len(d.flows) >= maxAckFlows && !d.sweepLocked() {
			d.mu.Unlock()
			return d.write(pkt)
		}
		f = &ackFlow{d: d, key: key}
		d.flows[key] = f
	}
	f.seen = true
	old := f.take()
	hasData := pkt.Data().Size() > 0
	advances := f.haveAck && f.lastAck.LessThan(ack)
	inBurst := d.coalesce && d.burst.Load()
	hold := flags == header.TCPFlagAck && !hasData && advances && f.lastData &&
		tcpOptionsTimestampsOnly(tcp) && old == nil && (inBurst || d.delay > 0)
	f.lastAck, f.haveAck, f.lastData = ack, true, hasData
	if hold {
		d.held.Add(1)
		f.held = pkt.IncRef()
		switch {
		case inBurst:
			// endBurst sends it unless the reply does first.
			d.inBurst = append(d.inBurst, f)
		case f.timer == nil:
			f.timer = time.AfterFunc(d.delay, f.flush)
		default:
			f.timer.Reset(d.delay)
		}
		d.mu.Unlock()
		return nil
	}
	d.mu.Unlock()
	if old != nil {
		// Superseded: pkt acknowledges at least as much.
		d.saved.Add(1)
		old.DecRef()
	}
	return d.write(pkt)
}

// take removes and returns the held ACK (nil if none). d.mu is held.
func (f *ackFlow) take() *stack.PacketBuffer {
	p := f.held
	if p != nil {
		f.held = nil
		if f.timer != nil {
			f.timer.Stop()
		}
	}
	return p
}

// flush sends the held ACK when its delay ran out.
func (f *ackFlow) flush() {
	f.d.mu.Lock()
	p := f.held
	f.held = nil
	f.d.mu.Unlock()
	if p != nil {
		f.d.flushed.Add(1)
		f.d.write(p)
		p.DecRef()
	}
}

// sweepLocked, run when the table is full, drops the flows that sent
// nothing since the previous sweep and hold nothing; it reports whether
// there is room now.
func (d *ackDelayer) sweepLocked() bool {
	for k, f := range d.flows {
		if f.held == nil && !f.seen {
			if f.timer != nil {
				f.timer.Stop()
			}
			delete(d.flows, k)
		} else {
			f.seen = false
		}
	}
	return len(d.flows) < maxAckFlows
}

// close sends every held ACK (the NIC is going away) and stops the timers.
func (d *ackDelayer) close() {
	d.mu.Lock()
	var held []*stack.PacketBuffer
	for k, f := range d.flows {
		if p := f.take(); p != nil {
			held = append(held, p)
		}
		delete(d.flows, k)
	}
	d.mu.Unlock()
	for _, p := range held {
		d.write(p)
		p.DecRef()
	}
}

// tcpOptionsTimestampsOnly reports whether a TCP header carries no options
// or only the timestamp option (with its usual NOP padding): anything else
// (SACK blocks above all) must not be delayed or dropped.
func tcpOptionsTimestampsOnly(tcp header.TCP) bool {
	off := int(tcp.DataOffset())
	if off < header.TCPMinimumSize || off > len(tcp) {
		return false
	}
	opts := tcp[header.TCPMinimumSize:off]
	for i := 0; i < len(opts); {
		switch opts[i] {
		case header.TCPOptionEOL:
			return true
		case header.TCPOptionNOP:
			i++
		case header.TCPOptionTS:
			if i+1 >= len(opts) || opts[i+1] != header.TCPOptionTSLength {
				return false
			}
			i += header.TCPOptionTSLength
		default:
			return false
		}
	}
	return true
}
