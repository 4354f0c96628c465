package netstack

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// These tests drive the fault endpoint directly, over gVisor's channel
// link (a real link endpoint that queues what is written and delivers what
// is injected), with packets numbered in their payload.

// released counts packets whose last reference was dropped.
type released struct{ n atomic.Int64 }

func (r *released) packet(i uint32) *stack.PacketBuffer {
	b := make([]byte, 8)
	binary.BigEndian.PutUint32(b, i)
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{
		Payload:   buffer.MakeWithData(b),
		OnRelease: func() { r.n.Add(1) },
	})
	pkt.NetworkProtocolNumber = header.IPv4ProtocolNumber
	return pkt
}

func number(pkt *stack.PacketBuffer) uint32 {
	v := pkt.ToView()
	defer v.Release()
	return binary.BigEndian.Uint32(v.AsSlice())
}

// recorder is the stack side of the test: it records delivered packets.
type recorder struct {
	mu  sync.Mutex
	got []uint32
}

func (r *recorder) DeliverNetworkPacket(_ tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	// Consume a header, as the stack does, to show that a duplicate is
	// not the same packet object.
	pkt.NetworkHeader().Consume(0)
	r.mu.Lock()
	r.got = append(r.got, number(pkt))
	r.mu.Unlock()
}

func (r *recorder) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

func (r *recorder) seq() []uint32 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

type rig struct {
	f   *Faults
	ch  *channel.Endpoint
	ep  stack.LinkEndpoint
	rec *recorder
	rel released
}

func newRig(t *testing.T, seed uint64, c FaultConfig) *rig {
	t.Helper()
	r := &rig{f: NewFaults(seed), ch: channel.New(1<<16, 1500, ""), rec: &recorder{}}
	if err := r.f.Set(c); err != nil {
		t.Fatal(err)
	}
	ep, err := r.f.wrap(r.ch)
	if err != nil {
		t.Fatal(err)
	}
	r.ep = ep
	ep.Attach(r.rec)
	t.Cleanup(func() {
		ep.Attach(nil)
		ep.Wait()
		r.ch.Drain()
	})
	return r
}

// send writes packets 0..n-1, one per WritePackets call (as the stack's
// NIC does), and drops the caller's references.
func (r *rig) send(t *testing.T, n int) {
	t.Helper()
	for i := range n {
		var l stack.PacketBufferList
		p := r.rel.packet(uint32(i))
		l.PushBack(p)
		if w, err := r.ep.WritePackets(l); w != 1 || err != nil {
			t.Fatalf("WritePackets: %d, %v", w, err)
		}
		p.DecRef()
	}
}

// inject delivers packets 0..n-1 from the link side.
func (r *rig) inject(n int) {
	for i := range n {
		p := r.rel.packet(uint32(i))
		r.ch.InjectInbound(header.IPv4ProtocolNumber, p)
		p.DecRef()
	}
}

// written reads what reached the link below.
func (r *rig) written() []uint32 {
	var out []uint32
	for {
		p := r.ch.Read()
		if p == nil {
			return out
		}
		out = append(out, number(p))
		p.DecRef()
	}
}

func waitUntil(t *testing.T, what string, f func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !f(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// within checks that k of n events is a plausible outcome of probability
// p (5 standard deviations).
func within(t *testing.T, what string, k, n uint64, p float64) {
	t.Helper()
	mean := p * float64(n)
	sd := math.Sqrt(float64(n) * p * (1 - p))
	if math.Abs(float64(k)-mean) > 5*sd+1 {
		t.Errorf("%s: %d of %d, expected about %.0f (p=%v)", what, k, n, mean, p)
	}
}

func TestFaultsEgressDeterministic(t *testing.T) {
	const n = 5000
	cfg := FaultConfig{Egress: FaultRates{Loss: 0.1, Duplicate: 0.1, Reorder: 0.1, ReorderHold: time.Hour}}
	run := func(seed uint64) ([]uint32, FaultCounters) {
		r := newRig(t, seed, cfg)
		r.send(t, n)
		return r.written(), r.f.Stats().Egress
	}
	a, sa := run(7)
	b, _ := run(7)
	c, _ := run(8)
	if !slices.Equal(a, b) {
		t.Fatal("same seed, same packets: different fault decisions")
	}
	if slices.Equal(a, c) {
		t.Fatal("different seeds gave identical decisions")
	}
	within(t, "dropped", sa.Dropped, n, 0.1)
	within(t, "duplicated", sa.Duplicated, n-sa.Dropped, 0.1)
	if sa.Reordered == 0 {
		t.Error("nothing reordered")
	}
	// With an hour's hold, every held packet went out right behind the
	// next one (or is still held, at the very end).
	if sa.Packets != n || sa.Emitted+sa.Pending != n-sa.Dropped+sa.Duplicated || uint64(len(a)) != sa.Emitted {
		t.Fatalf("counters %+v, %d written", sa, len(a))
	}
	// What was written: each surviving packet once or twice, in order
	// except for held packets that went out one place later.
	seen := map[uint32]int{}
	inversions := 0
	for i, v := range a {
		seen[v]++
		if i > 0 && v < a[i-1] {
			inversions++
		}
	}
	dups := 0
	for _, k := range seen {
		if k == 2 {
			dups++
		} else if k != 1 {
			t.Fatalf("a packet written %d times", k)
		}
	}
	if uint64(len(seen)) != n-sa.Dropped-boolU(sa.Pending > 0) || uint64(dups)+pendingDup(sa) != sa.Duplicated {
		t.Fatalf("%d distinct packets written, %d twice; counters %+v", len(seen), dups, sa)
	}
	if inversions == 0 || uint64(inversions) > sa.Reordered {
		t.Fatalf("%d order inversions for %d reordered packets", inversions, sa.Reordered)
	}
}

func boolU(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

// pendingDup: a held packet that was also duplicated counts as one
// duplicated packet not yet written.
func pendingDup(s FaultCounters) uint64 {
	if s.Pending == 2 {
		return 1
	}
	return 0
}

// TestFaultsReferences checks that delayed, held and duplicated packets
// keep a reference until they went out, and that every packet is released
// exactly once (a second release would panic in gVisor's refcounting).
func TestFaultsReferences(t *testing.T) {
	const n = 400
	// Delayed for an hour: once the callers dropped their references,
	// exactly the dropped packets are released; the rest are alive until
	// the detach releases them unsent.
	r := newRig(t, 1, FaultConfig{Egress: FaultRates{Loss: 0.2, Duplicate: 0.3, Delay: time.Hour}, Ingress: FaultRates{Reorder: 1, ReorderHold: time.Hour}})
	r.send(t, n)
	r.inject(1)
	s := r.f.Stats()
	if got := r.rel.n.Load(); uint64(got) != s.Egress.Dropped || s.Egress.Pending != n-s.Egress.Dropped+s.Egress.Duplicated || s.Ingress.Pending != 1 {
		t.Fatalf("released %d right after sending, want the %d dropped; %+v", got, s.Egress.Dropped, s)
	}
	r.ep.Attach(nil)
	r.ep.Wait()
	if got := r.rel.n.Load(); got != n+1 {
		t.Fatalf("after detach %d of %d packets released", got, n+1)
	}
	if len(r.written()) != 0 || len(r.rec.seq()) != 0 {
		t.Fatal("pending packets went out after the detach")
	}

	// Delayed by 10-50 ms: every copy is written once due, in an order
	// the jitter shuffles, and every packet released once.
	r = newRig(t, 2, FaultConfig{Egress: FaultRates{Loss: 0.2, Duplicate: 0.3, Delay: 30 * time.Millisecond, Jitter: 20 * time.Millisecond}})
	r.send(t, n)
	waitUntil(t, "delayed packets written", func() bool { return r.f.Stats().Egress.Pending == 0 })
	got := r.written()
	s = r.f.Stats()
	if uint64(len(got)) != s.Egress.Emitted || s.Egress.Emitted != n-s.Egress.Dropped+s.Egress.Duplicated {
		t.Fatalf("written %d, counters %+v", len(got), s.Egress)
	}
	inv := 0
	for i := 1; i < len(got); i++ {
		if got[i] < got[i-1] {
			inv++
		}
	}
	if inv == 0 {
		t.Error("jitter of ±20ms reordered nothing")
	}
	waitUntil(t, "every packet released", func() bool { return r.rel.n.Load() == n })
}

func TestFaultsIngress(t *testing.T) {
	const n = 3000
	r := newRig(t, 3, FaultConfig{Ingress: FaultRates{Loss: 0.1, Duplicate: 0.2, Reorder: 0.2}})
	r.inject(n)
	waitUntil(t, "held packets delivered", func() bool { return r.f.Stats().Ingress.Pending == 0 })
	s := r.f.Stats().Ingress
	got := r.rec.seq()
	if s.Packets != n || uint64(len(got)) != s.Emitted || s.Emitted != n-s.Dropped+s.Duplicated {
		t.Fatalf("delivered %d, counters %+v", len(got), s)
	}
	within(t, "dropped", s.Dropped, n, 0.1)
	within(t, "duplicated", s.Duplicated, n-s.Dropped, 0.2)
	if s.Reordered == 0 {
		t.Fatalf("counters %+v", s)
	}
	if len(r.written()) != 0 {
		t.Fatal("ingress faults wrote to the link")
	}
	waitUntil(t, "every packet released", func() bool { return r.rel.n.Load() == n })
}

// TestFaultsRuntimeChange: rates change while packets flow; a packet held
// when faults are switched off still goes out (behind the next packet).
func TestFaultsRuntimeChange(t *testing.T) {
	r := newRig(t, 4, FaultConfig{Egress: FaultRates{Reorder: 1, ReorderHold: time.Hour}})
	r.send(t, 1)
	if s := r.f.Stats().Egress; s.Pending != 1 || s.Reordered != 1 {
		t.Fatalf("%+v", s)
	}
	if err := r.f.Set(FaultConfig{}); err != nil {
		t.Fatal(err)
	}
	r.send(t, 2) // packets 0 and 1: the new 0 goes out, then the held 0
	if got := r.written(); !slices.Equal(got, []uint32{0, 0, 1}) {
		t.Fatalf("written %v, want [0 0 1]", got)
	}
	if s := r.f.Stats().Egress; s.Pending != 0 || s.Emitted != 3 {
		t.Fatalf("%+v", s)
	}
	// Loss switched on and off again.
	r.f.Set(FaultConfig{Egress: FaultRates{Loss: 1}})
	r.send(t, 10)
	r.f.Set(FaultConfig{})
	r.send(t, 10)
	if got := r.written(); len(got) != 10 {
		t.Fatalf("written %d after loss on then off, want 10", len(got))
	}
	// A short hold expires by itself.
	r.f.Set(FaultConfig{Egress: FaultRates{Reorder: 1, ReorderHold: 5 * time.Millisecond}})
	r.send(t, 1)
	waitUntil(t, "hold expiry", func() bool { return r.f.Stats().Egress.Pending == 0 })
	if got := r.written(); len(got) != 1 {
		t.Fatalf("written %v", got)
	}
}

func TestFaultsConfig(t *testing.T) {
	f := NewFaults(1)
	for _, bad := range []FaultRates{{Loss: -0.1}, {Loss: 1.5}, {Duplicate: math.NaN()}, {Reorder: 2}, {Delay: -time.Second}, {Jitter: -1}, {ReorderHold: -1}} {
		if err := f.Set(FaultConfig{Ingress: bad}); !errors.Is(err, ErrBadOption) {
			t.Errorf("Set(%+v): %v, want ErrBadOption", bad, err)
		}
	}
	c := FaultConfig{Egress: FaultRates{Loss: 0.25, Delay: 5 * time.Millisecond, Jitter: time.Millisecond}, Ingress: FaultRates{Duplicate: 0.5, Reorder: 0.1, ReorderHold: 20 * time.Millisecond}}
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"egress":{"loss":0.25,"delay":"5ms","jitter":"1ms"},"ingress":{"duplicate":0.5,"reorder":0.1,"reorder_hold":"20ms"}}`
	if string(b) != want {
		t.Fatalf("JSON %s\nwant %s", b, want)
	}
	back, err := ParseFaultConfig(b)
	if err != nil || back != c {
		t.Fatalf("round trip: %+v, %v", back, err)
	}
	for _, bad := range []string{`{"egress":{"los":0.1}}`, `{"egres":{}}`, `{"egress":{"delay":"5 parsecs"}}`, `{"egress":{"loss":3}}`, `{} {}`} {
		if _, err := ParseFaultConfig([]byte(bad)); !errors.Is(err, ErrBadOption) {
			t.Errorf("ParseFaultConfig(%s): %v", bad, err)
		}
	}
	if s := c.String(); s != "egress: loss 25% delay 5ms ± 1ms; ingress: duplicate 50% reorder 10% (hold 20ms)" {
		t.Errorf("String: %s", s)
	}
	// One link per Faults.
	if _, err := f.wrap(channel.New(1, 1500, "")); err != nil {
		t.Fatal(err)
	}
	if _, err := f.wrap(channel.New(1, 1500, "")); !errors.Is(err, ErrBadOption) {
		t.Fatalf("second wrap: %v", err)
	}
}

// TestFaultsNoAllocWhenOff: with no fault configured, a packet passes in
// either direction without allocating.
func TestFaultsNoAllocWhenOff(t *testing.T) {
	f := NewFaults(1)
	sink := &discard{}
	ep, err := f.wrap(sink)
	if err != nil {
		t.Fatal(err)
	}
	rec := &countingDispatcher{}
	ep.Attach(rec)
	defer func() { ep.Attach(nil); ep.Wait() }()
	var rel released
	pkt := rel.packet(1)
	defer pkt.DecRef()
	var l stack.PacketBufferList
	l.PushBack(pkt)
	if a := testing.AllocsPerRun(1000, func() { ep.WritePackets(l) }); a != 0 {
		t.Errorf("egress: %v allocations per packet", a)
	}
	d := ep.(stack.NetworkDispatcher)
	if a := testing.AllocsPerRun(1000, func() { d.DeliverNetworkPacket(header.IPv4ProtocolNumber, pkt) }); a != 0 {
		t.Errorf("ingress: %v allocations per packet", a)
	}
	if s := f.Stats(); s.Egress.Emitted < 1000 || s.Ingress.Emitted < 1000 || rec.n < 1000 || sink.n < 1000 {
		t.Fatalf("%+v, delivered %d, written %d", s, rec.n, sink.n)
	}
}

// discard is a link that accepts and forgets every packet.
type discard struct {
	stack.LinkEndpoint // nil: only the methods below are called
	n                  int
}

func (d *discard) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	d.n += pkts.Len()
	return pkts.Len(), nil
}
func (d *discard) Attach(stack.NetworkDispatcher) {}
func (d *discard) Wait()                          {}

type countingDispatcher struct{ n int }

func (c *countingDispatcher) DeliverNetworkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {
	c.n++
}
func (c *countingDispatcher) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

// BenchmarkFaultLink compares writing one packet straight to a link with
// writing it through a Faults with nothing configured, and with 1% loss
// (the slow path with a packet that is not dropped). Compare the
// sub-benchmarks of one run.
func BenchmarkFaultLink(b *testing.B) {
	var rel released
	pkt := rel.packet(1)
	defer pkt.DecRef()
	for _, bc := range []struct {
		name  string
		cfg   *FaultConfig
		wrapT bool
	}{
		{"direct", nil, false},
		{"faults-off", &FaultConfig{}, true},
		{"loss-1pct", &FaultConfig{Egress: FaultRates{Loss: 0.01}}, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			sink := &discard{}
			var ep stack.LinkEndpoint = sink
			if bc.wrapT {
				f := NewFaults(1)
				f.Set(*bc.cfg)
				w, err := f.wrap(sink)
				if err != nil {
					b.Fatal(err)
				}
				w.Attach(&countingDispatcher{})
				defer func() { w.Attach(nil); w.Wait() }()
				ep = w
			}
			var l stack.PacketBufferList
			l.PushBack(pkt)
			b.ReportAllocs()
			for b.Loop() {
				ep.WritePackets(l)
			}
		})
	}
}
