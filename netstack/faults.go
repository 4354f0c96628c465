package netstack

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/link/nested"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// FaultRates are the faults of one direction. The zero value injects
// nothing.
type FaultRates struct {
	// Loss is the probability that a packet is dropped, in [0, 1].
	Loss float64
	// Duplicate is the probability that a packet (not dropped) goes out
	// twice, in [0, 1].
	Duplicate float64
	// Reorder is the probability that a packet is held back until the
	// next one has gone out, in [0, 1].
	Reorder float64
	// Delay is added to every packet; Jitter is the half-width of a
	// uniform variation around it.
	Delay, Jitter time.Duration
	// ReorderHold bounds how long a held packet waits for a later one,
	// beyond Delay + Jitter (default DefaultReorderHold).
	ReorderHold time.Duration
}

// DefaultReorderHold is the default FaultRates.ReorderHold: long enough
// that under load later packets overtake the held one, short against TCP's
// minimum retransmission timeout (200 ms in netstack and Linux), so that
// on an idle connection a held packet is late, not lost.
const DefaultReorderHold = 10 * time.Millisecond

// Active reports whether r injects anything.
func (r FaultRates) Active() bool {
	return r.Loss > 0 || r.Duplicate > 0 || r.Reorder > 0 || r.Delay > 0 || r.Jitter > 0
}

func (r FaultRates) validate() error {
	for _, p := range []struct {
		name string
		v    float64
	}{{"loss", r.Loss}, {"duplicate", r.Duplicate}, {"reorder", r.Reorder}} {
		if !(p.v >= 0 && p.v <= 1) { // also refuses NaN
			return fmt.Errorf("%w: fault %s probability %v outside [0, 1]", ErrBadOption, p.name, p.v)
		}
	}
	if r.Delay < 0 || r.Jitter < 0 || r.ReorderHold < 0 {
		return fmt.Errorf("%w: negative fault duration (delay %v, jitter %v, reorder hold %v)", ErrBadOption, r.Delay, r.Jitter, r.ReorderHold)
	}
	return nil
}

// String renders r like a netem command line ("none" when inactive).
func (r FaultRates) String() string {
	if !r.Active() {
		return "none"
	}
	s := ""
	add := func(f string, a ...any) {
		if s != "" {
			s += " "
		}
		s += fmt.Sprintf(f, a...)
	}
	if r.Loss > 0 {
		add("loss %g%%", 100*r.Loss)
	}
	if r.Duplicate > 0 {
		add("duplicate %g%%", 100*r.Duplicate)
	}
	if r.Reorder > 0 {
		add("reorder %g%% (hold %v)", 100*r.Reorder, r.hold())
	}
	if r.Delay > 0 || r.Jitter > 0 {
		add("delay %v ± %v", r.Delay, r.Jitter)
	}
	return s
}

func (r FaultRates) hold() time.Duration {
	if r.ReorderHold > 0 {
		return r.ReorderHold
	}
	return DefaultReorderHold
}

// faultRatesJSON is FaultRates on the wire: durations as Go duration
// strings ("5ms").
type faultRatesJSON struct {
	Loss        float64 `json:"loss,omitempty"`
	Duplicate   float64 `json:"duplicate,omitempty"`
	Reorder     float64 `json:"reorder,omitempty"`
	Delay       string  `json:"delay,omitempty"`
	Jitter      string  `json:"jitter,omitempty"`
	ReorderHold string  `json:"reorder_hold,omitempty"`
}

// MarshalJSON encodes r with durations as strings ("5ms").
func (r FaultRates) MarshalJSON() ([]byte, error) {
	j := faultRatesJSON{Loss: r.Loss, Duplicate: r.Duplicate, Reorder: r.Reorder}
	for _, d := range []struct {
		v   time.Duration
		out *string
	}{{r.Delay, &j.Delay}, {r.Jitter, &j.Jitter}, {r.ReorderHold, &j.ReorderHold}} {
		if d.v != 0 {
			*d.out = d.v.String()
		}
	}
	return json.Marshal(j)
}

// UnmarshalJSON decodes what MarshalJSON encodes; unknown fields are
// refused.
func (r *FaultRates) UnmarshalJSON(b []byte) error {
	var j faultRatesJSON
	if err := strictJSON(b, &j); err != nil {
		return err
	}
	out := FaultRates{Loss: j.Loss, Duplicate: j.Duplicate, Reorder: j.Reorder}
	for _, d := range []struct {
		in  string
		out *time.Duration
	}{{j.Delay, &out.Delay}, {j.Jitter, &out.Jitter}, {j.ReorderHold, &out.ReorderHold}} {
		if d.in == "" {
			continue
		}
		v, err := time.ParseDuration(d.in)
		if err != nil {
			return fmt.Errorf("%w: fault duration: %w", ErrBadOption, err)
		}
		*d.out = v
	}
	*r = out
	return nil
}

// strictJSON decodes b into v, refusing unknown fields.
func strictJSON(b []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return fmt.Errorf("%w: %w", ErrBadOption, err)
	}
	if d.More() {
		return fmt.Errorf("%w: trailing data after the JSON value", ErrBadOption)
	}
	return nil
}

// ParseFaultConfig decodes a FaultConfig from JSON, e.g.
// {"egress":{"loss":0.1,"delay":"5ms","jitter":"2ms"},"ingress":{"duplicate":0.05}},
// refusing unknown fields and invalid values (errors wrap ErrBadOption).
func ParseFaultConfig(b []byte) (FaultConfig, error) {
	var c FaultConfig
	if err := strictJSON(b, &c); err != nil {
		return FaultConfig{}, err
	}
	return c, c.Validate()
}

// FaultConfig is the faults of both directions of a link.
type FaultConfig struct {
	// Egress applies to frames the stack sends.
	Egress FaultRates `json:"egress"`
	// Ingress applies to frames the link delivers to the stack.
	Ingress FaultRates `json:"ingress"`
}

// BothWays returns a FaultConfig with r in both directions.
func BothWays(r FaultRates) FaultConfig { return FaultConfig{Egress: r, Ingress: r} }

// Validate checks every probability is in [0, 1] and no duration is
// negative; the error wraps ErrBadOption.
func (c FaultConfig) Validate() error {
	if err := c.Egress.validate(); err != nil {
		return fmt.Errorf("egress: %w", err)
	}
	if err := c.Ingress.validate(); err != nil {
		return fmt.Errorf("ingress: %w", err)
	}
	return nil
}

// String is "egress: ...; ingress: ...".
func (c FaultConfig) String() string {
	return "egress: " + c.Egress.String() + "; ingress: " + c.Ingress.String()
}

// FaultCounters count one direction's packets. Every packet that reaches
// the link in that direction is counted in Packets; once nothing is
// pending, Emitted = Packets - Dropped + Duplicated, less any packets the
// link below refused and any a detach released unsent.
type FaultCounters struct {
	// Packets reached the fault injector.
	Packets uint64 `json:"packets"`
	// Emitted went on: written to the link (egress) or delivered to the
	// stack (ingress), duplicates included.
	Emitted uint64 `json:"emitted"`
	// Dropped were lost on purpose.
	Dropped uint64 `json:"dropped"`
	// Duplicated went out twice (each counts once here, twice in
	// Emitted).
	Duplicated uint64 `json:"duplicated"`
	// Delayed waited Delay ± Jitter.
	Delayed uint64 `json:"delayed"`
	// Reordered were held back behind a later packet (or ReorderHold).
	Reordered uint64 `json:"reordered"`
	// Pending are delayed or held now, not yet emitted (copies count
	// separately).
	Pending uint64 `json:"pending"`
}

// FaultStats are the counters of both directions.
type FaultStats struct {
	Egress  FaultCounters `json:"egress"`
	Ingress FaultCounters `json:"ingress"`
}

type direction int

const (
	egress direction = iota
	ingress
)

func (d direction) String() string {
	if d == egress {
		return "egress"
	}
	return "ingress"
}

// counters are one direction's FaultCounters, updated atomically.
type counters struct {
	packets, emitted, dropped, duplicated, delayed, reordered atomic.Uint64
}

// faultState is an immutable configuration as the data path reads it.
type faultState struct {
	cfg FaultConfig
	on  [2]bool
}

// pending is a packet delayed or held, with the reference it keeps.
type pending struct {
	due   time.Time
	seq   uint64 // arrival order in dir; FIFO among equal due times
	dir   direction
	proto tcpip.NetworkProtocolNumber
	pkt   *stack.PacketBuffer
}

// held is the packet a direction holds back for reordering (and its
// duplicate, if it had one).
type held struct {
	pkts  [2]*stack.PacketBuffer
	n     int
	seq   uint64 // arrival order: a packet with a higher one releases it
	proto tcpip.NetworkProtocolNumber
	until time.Time
}

// Faults is the fault injector of one link; see the package
// documentation's section on packet faults. Create it with NewFaults and
// attach it with WithFaults (one link per Faults). Its methods are safe
// for concurrent use, before, during and after the stack runs.
type Faults struct {
	state atomic.Pointer[faultState]
	ctr   [2]counters
	// npending counts packets delayed or held; while it is non-zero
	// the data path takes the slow path even with faults off, so that a
	// held packet is released behind the next one.
	npending atomic.Int64
	// flying counts packets taken from the queue or the hold slot and
	// not yet emitted, so that Stats never reports a packet in transit
	// as neither pending nor emitted.
	flying [2]atomic.Int64

	mu       sync.Mutex
	rng      [2]*rand.Rand
	queue    []pending // min-heap by (due, seq)
	arrivals [2]uint64 // packets admitted per direction
	hold     [2]held
	attached bool
	ep       *faultEndpoint
	kick     chan struct{}
	stop     chan struct{}
	done     chan struct{}
}

// NewFaults returns an injector with no fault configured whose random
// decisions derive from seed.
func NewFaults(seed uint64) *Faults {
	f := &Faults{kick: make(chan struct{}, 1)}
	// The two streams differ so that egress and ingress faults are not
	// mirror images of each other.
	f.rng[egress] = rand.New(rand.NewPCG(seed, 0x6567726573730001))
	f.rng[ingress] = rand.New(rand.NewPCG(seed, 0x696e677265730002))
	f.state.Store(&faultState{})
	return f
}

// WithFaults attaches f to the stack's link: every frame the stack sends
// and receives passes through it. f must not be attached to another
// stack.
func WithFaults(f *Faults) Option {
	return func(c *config) {
		if f == nil {
			c.err = fmt.Errorf("%w: WithFaults(nil)", ErrBadOption)
			return
		}
		c.faults = f
	}
}

// Set replaces the configuration; it takes effect for the next packet of
// each direction. Packets already delayed or held keep their schedule.
func (f *Faults) Set(c FaultConfig) error {
	if err := c.Validate(); err != nil {
		return err
	}
	f.state.Store(&faultState{cfg: c, on: [2]bool{c.Egress.Active(), c.Ingress.Active()}})
	return nil
}

// Config returns the configuration in force.
func (f *Faults) Config() FaultConfig { return f.state.Load().cfg }

// Stats returns the counters.
func (f *Faults) Stats() FaultStats {
	var s FaultStats
	f.mu.Lock()
	var pend [2]uint64
	for _, p := range f.queue {
		pend[p.dir]++
	}
	for d := range f.hold {
		pend[d] += uint64(f.hold[d].n) + uint64(f.flying[d].Load())
	}
	f.mu.Unlock()
	for d, out := range []*FaultCounters{&s.Egress, &s.Ingress} {
		c := &f.ctr[d]
		*out = FaultCounters{
			Packets: c.packets.Load(), Emitted: c.emitted.Load(), Dropped: c.dropped.Load(),
			Duplicated: c.duplicated.Load(), Delayed: c.delayed.Load(), Reordered: c.reordered.Load(),
			Pending: pend[d],
		}
	}
	return s
}

// wrap returns child wrapped by f.
func (f *Faults) wrap(child stack.LinkEndpoint) (stack.LinkEndpoint, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ep != nil {
		return nil, fmt.Errorf("%w: a Faults attached to a second link", ErrBadOption)
	}
	e := &faultEndpoint{f: f}
	e.Endpoint.Init(child, e)
	f.ep = e
	return e, nil
}

// delay draws a packet's delay (0: none).
func (r *FaultRates) delay(rng *rand.Rand) time.Duration {
	if r.Jitter == 0 {
		return r.Delay
	}
	d := r.Delay + time.Duration((2*rng.Float64()-1)*float64(r.Jitter))
	return max(d, 0)
}

// admitLocked decides the fate of pkt, which arrived in direction d, and
// returns the number of copies to emit now (0, 1 or 2) and whether the
// held packet of d is to go out right after them (the caller then takes
// it with takeHeldLocked). Delayed and held copies get their own
// reference here.
func (f *Faults) admitLocked(d direction, r *FaultRates, pkt *stack.PacketBuffer, proto tcpip.NetworkProtocolNumber, now time.Time) (copies int, release bool) {
	rng := f.rng[d]
	c := &f.ctr[d]
	f.arrivals[d]++
	seq := f.arrivals[d]
	if r.Loss > 0 && rng.Float64() < r.Loss {
		c.dropped.Add(1)
		return 0, false
	}
	copies = 1
	if r.Duplicate > 0 && rng.Float64() < r.Duplicate {
		copies = 2
		c.duplicated.Add(1)
	}
	h := &f.hold[d]
	// A detached link has no scheduler: nothing may wait.
	if r.Reorder > 0 && h.n == 0 && f.attached && rng.Float64() < r.Reorder {
		c.reordered.Add(1)
		for k := range copies {
			h.pkts[k] = copyOf(d, pkt, k)
		}
		h.n, h.seq, h.proto, h.until = copies, seq, proto, now.Add(r.hold()+r.Delay+r.Jitter)
		f.npending.Add(int64(copies))
		f.kickLocked()
		return 0, false
	}
	if delay := r.delay(rng); delay > 0 && f.attached {
		c.delayed.Add(1)
		for k := range copies {
			f.pushLocked(pending{due: now.Add(delay), seq: seq, dir: d, proto: proto, pkt: copyOf(d, pkt, k)})
		}
		return 0, false
	}
	return copies, h.n > 0
}

// copyOf returns a referenced copy k of pkt for later emission: the
// packet itself for egress (the same frame is written again), a clone for
// a second copy on ingress (the stack consumes headers of what it is
// given).
func copyOf(d direction, pkt *stack.PacketBuffer, k int) *stack.PacketBuffer {
	if d == ingress && k > 0 {
		return pkt.Clone()
	}
	return pkt.IncRef()
}

// takeHeldLocked empties d's hold slot into dst.
func (f *Faults) takeHeldLocked(d direction, dst []*stack.PacketBuffer) ([]*stack.PacketBuffer, tcpip.NetworkProtocolNumber) {
	h := &f.hold[d]
	dst = append(dst, h.pkts[:h.n]...)
	proto := h.proto
	f.npending.Add(-int64(h.n))
	f.flying[d].Add(int64(h.n))
	*h = held{}
	return dst, proto
}

func (f *Faults) pushLocked(p pending) {
	f.queue = append(f.queue, p)
	// Sift up.
	q := f.queue
	for i := len(q) - 1; i > 0; {
		parent := (i - 1) / 2
		if !q[i].before(&q[parent]) {
			break
		}
		q[i], q[parent] = q[parent], q[i]
		i = parent
	}
	f.npending.Add(1)
	if q[0].pkt == p.pkt {
		f.kickLocked() // a new earliest deadline
	}
}

func (p *pending) before(o *pending) bool {
	if p.due.Equal(o.due) {
		return p.seq < o.seq
	}
	return p.due.Before(o.due)
}

func (f *Faults) popLocked() pending {
	q := f.queue
	top := q[0]
	last := len(q) - 1
	q[0] = q[last]
	q[last] = pending{}
	q = q[:last]
	// Sift down.
	for i := 0; ; {
		l, small := 2*i+1, i
		if l < len(q) && q[l].before(&q[small]) {
			small = l
		}
		if r := l + 1; r < len(q) && q[r].before(&q[small]) {
			small = r
		}
		if small == i {
			break
		}
		q[i], q[small] = q[small], q[i]
		i = small
	}
	f.queue = q
	f.npending.Add(-1)
	f.flying[top.dir].Add(1)
	return top
}

func (f *Faults) kickLocked() {
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

// start launches the scheduler that emits delayed and held packets (on
// Attach). A scheduler still cleaning up after a detach is waited for.
func (f *Faults) start() {
	f.mu.Lock()
	if f.attached {
		f.mu.Unlock()
		return
	}
	prev := f.done
	f.mu.Unlock()
	if prev != nil {
		<-prev
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.attached = true
	f.stop, f.done = make(chan struct{}), make(chan struct{})
	go f.run(f.stop, f.done)
}

// detach tells the scheduler to stop (on Attach(nil)); it then releases
// every pending packet unsent. It does not wait: the stack detaches links
// with its own locks held, and Wait is the place to wait (as for gVisor's
// fd link).
func (f *Faults) detach() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.attached {
		return
	}
	f.attached = false
	close(f.stop)
}

// releaseAllLocked drops every pending packet's reference.
func (f *Faults) releaseAllLocked() {
	for len(f.queue) > 0 {
		p := f.popLocked()
		p.pkt.DecRef()
		f.flying[p.dir].Add(-1)
	}
	for d := range f.hold {
		var rel [2]*stack.PacketBuffer
		pk, _ := f.takeHeldLocked(direction(d), rel[:0])
		for _, p := range pk {
			p.DecRef()
		}
		f.flying[d].Add(-int64(len(pk)))
	}
}

// wait waits for the scheduler of a detached injector to end.
func (f *Faults) wait() {
	f.mu.Lock()
	done, attached := f.done, f.attached
	f.mu.Unlock()
	if done != nil && !attached {
		<-done
	}
}

// run is the scheduler: it emits delayed packets when they are due and
// held packets whose hold expired, in due order.
func (f *Faults) run(stop, done chan struct{}) {
	defer close(done)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var due [2][]*stack.PacketBuffer
	var protos []tcpip.NetworkProtocolNumber // of due[ingress]
	for {
		now := time.Now()
		next := time.Time{}
		f.mu.Lock()
		for len(f.queue) > 0 && !f.queue[0].due.After(now) {
			p := f.popLocked()
			due[p.dir] = append(due[p.dir], p.pkt)
			if p.dir == ingress {
				protos = append(protos, p.proto)
			}
			// A packet that arrived after the held one overtook it:
			// the held one follows.
			if h := &f.hold[p.dir]; h.n > 0 && p.seq > h.seq {
				var proto tcpip.NetworkProtocolNumber
				due[p.dir], proto = f.takeHeldLocked(p.dir, due[p.dir])
				for p.dir == ingress && len(protos) < len(due[ingress]) {
					protos = append(protos, proto)
				}
			}
		}
		if len(f.queue) > 0 {
			next = f.queue[0].due
		}
		for d := range f.hold {
			h := &f.hold[d]
			if h.n == 0 {
				continue
			}
			if !h.until.After(now) {
				var proto tcpip.NetworkProtocolNumber
				due[d], proto = f.takeHeldLocked(direction(d), due[d])
				if d == int(ingress) {
					for len(protos) < len(due[ingress]) {
						protos = append(protos, proto)
					}
				}
			} else if next.IsZero() || h.until.Before(next) {
				next = h.until
			}
		}
		f.mu.Unlock()
		if len(due[egress]) > 0 {
			f.ep.writeOwned(due[egress])
			f.flying[egress].Add(-int64(len(due[egress])))
			clear(due[egress])
			due[egress] = due[egress][:0]
		}
		for i, p := range due[ingress] {
			f.ep.deliver(protos[i], p)
			p.DecRef()
			f.flying[ingress].Add(-1)
		}
		clear(due[ingress])
		due[ingress], protos = due[ingress][:0], protos[:0]

		wait := time.Hour
		if !next.IsZero() {
			wait = time.Until(next)
		}
		timer.Reset(max(wait, 0))
		select {
		case <-stop:
			f.mu.Lock()
			f.releaseAllLocked()
			f.mu.Unlock()
			return
		case <-f.kick:
		case <-timer.C:
		}
	}
}

// faultEndpoint is the link endpoint a Faults wraps around the real one
// (gVisor's nested-endpoint pattern, as in its sniffer): the stack's NIC
// writes to it and the child link delivers to it.
type faultEndpoint struct {
	nested.Endpoint
	f *Faults
}

var _ stack.LinkEndpoint = (*faultEndpoint)(nil)
var _ stack.NetworkDispatcher = (*faultEndpoint)(nil)

// Attach implements stack.LinkEndpoint: the scheduler runs while the
// endpoint is attached; detaching releases pending packets.
func (e *faultEndpoint) Attach(d stack.NetworkDispatcher) {
	if d == nil {
		e.f.detach()
	} else {
		e.f.start()
	}
	e.Endpoint.Attach(d)
}

// Wait implements stack.LinkEndpoint.
func (e *faultEndpoint) Wait() {
	e.f.wait()
	e.Endpoint.Wait()
}

// WritePackets implements stack.LinkEndpoint. It reports every packet as
// written, dropped ones included (a lossy wire does not tell the sender),
// unless the link below fails.
func (e *faultEndpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	f := e.f
	n := pkts.Len()
	c := &f.ctr[egress]
	c.packets.Add(uint64(n))
	st := f.state.Load()
	if !st.on[egress] && f.npending.Load() == 0 {
		w, err := e.Endpoint.WritePackets(pkts)
		c.emitted.Add(uint64(w))
		return w, err
	}
	r := &st.cfg.Egress
	var out []*stack.PacketBuffer // each with a reference of ours
	ends := make([]int, n)        // len(out) once input i was placed
	released := 0                 // held packets in out
	now := time.Now()
	f.mu.Lock()
	for i, pkt := range pkts.AsSlice() {
		copies, release := f.admitLocked(egress, r, pkt, pkt.NetworkProtocolNumber, now)
		for range copies {
			out = append(out, pkt.IncRef())
		}
		if release {
			k := len(out)
			out, _ = f.takeHeldLocked(egress, out)
			released += len(out) - k
		}
		ends[i] = len(out)
	}
	f.mu.Unlock()
	if len(out) == 0 {
		return n, nil
	}
	written, err := e.writeOwned(out)
	f.flying[egress].Add(-int64(released))
	if err == nil {
		return n, nil
	}
	done := 0
	for done < n && ends[done] <= written {
		done++
	}
	return done, err
}

// writeOwned writes pkts, whose references it drops, to the child link and
// returns how many the child took.
func (e *faultEndpoint) writeOwned(pkts []*stack.PacketBuffer) (int, tcpip.Error) {
	var l stack.PacketBufferList
	for _, p := range pkts {
		l.PushBack(p)
	}
	written, err := e.Endpoint.WritePackets(l)
	e.f.ctr[egress].emitted.Add(uint64(written))
	for _, p := range pkts {
		p.DecRef()
	}
	return written, err
}

// DeliverNetworkPacket implements stack.NetworkDispatcher for the child
// link: the ingress direction.
func (e *faultEndpoint) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	f := e.f
	c := &f.ctr[ingress]
	c.packets.Add(1)
	st := f.state.Load()
	if !st.on[ingress] && f.npending.Load() == 0 {
		e.deliver(proto, pkt)
		return
	}
	var relBuf [2]*stack.PacketBuffer
	f.mu.Lock()
	copies, release := f.admitLocked(ingress, &st.cfg.Ingress, pkt, proto, time.Now())
	var dup *stack.PacketBuffer
	if copies == 2 {
		dup = pkt.Clone() // before the stack consumes pkt's headers
	}
	rel, relProto := relBuf[:0], tcpip.NetworkProtocolNumber(0)
	if release {
		rel, relProto = f.takeHeldLocked(ingress, rel)
	}
	f.mu.Unlock()
	if dup != nil {
		e.deliver(proto, dup)
		dup.DecRef()
	}
	if copies > 0 {
		e.deliver(proto, pkt) // the caller's reference covers this call
	}
	for _, p := range rel {
		e.deliver(relProto, p)
		p.DecRef()
	}
	f.flying[ingress].Add(-int64(len(rel)))
}

// deliver hands pkt to the stack.
func (e *faultEndpoint) deliver(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	e.f.ctr[ingress].emitted.Add(1)
	e.Endpoint.DeliverNetworkPacket(proto, pkt)
}
