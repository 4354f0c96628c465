package explore

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/paxos"
)

// msg is a message in flight. Messages are immutable; key is their
// canonical text, which names every field the receiver can observe.
type msg struct {
	toAcc  bool
	acc    int // destination of a request, source of a response
	client int
	opSeq  int
	tag    uint64
	req    *paxos.Request
	resp   *paxos.Response
	text   string // canonical text of req or resp
	key    string
	ch     int // channel: client, acceptor, direction
}

func newMsg(cfg *Config, m *msg) *msg {
	var b []byte
	b = append(b, cfg.Clients[m.client].Name...)
	b = strconv.AppendInt(b, int64(m.opSeq), 10)
	b = append(b, '#')
	b = strconv.AppendUint(b, m.tag, 10)
	if m.toAcc {
		b = append(b, " ->acc"...)
		m.text = string(appendRequest(nil, m.req))
	} else {
		b = append(b, " <-acc"...)
		if m.text == "" {
			m.text = string(appendResponse(nil, m.resp))
		}
	}
	b = strconv.AppendInt(b, int64(m.acc), 10)
	b = append(b, ' ')
	b = append(b, m.text...)
	m.key = string(b)
	m.ch = (m.client*8 + m.acc) * 2
	if !m.toAcc {
		m.ch++
	}
	return m
}

type accNode struct {
	up   bool
	key  string         // canonical text of the acceptor's state
	recs []paxos.Record // rebuild the state through Apply
}

type clientNode struct {
	log    []*input
	digest uint64
	flags  startFlags
	// The canonical form of log (see the package doc, "Reductions"):
	// canon chains the closed segments; open holds the quiet responses
	// of the segment in progress, sorted.
	canon [16]byte
	open  []string
}

type budget struct{ reorders, drops, dups, nudges, expires, breaks, crashes int }

// node is one explored state. Nodes are immutable once built.
type node struct {
	accs    []accNode
	net     []*msg // by channel, in send order (or by key when reordering is unbounded)
	clients []clientNode
	used    budget
	mon     monitor
	depth   int
	ev      Event // the event that led here
	text    string
}

type accLive struct {
	m   AcceptorModel
	key string
}

// explorer owns the live objects: acceptors and clients that are made to
// match a node (materialize) before an event is applied to them.
type explorer struct {
	cfg     Config
	quorum  int
	accs    []accLive
	clients []*client
	res     Result
	amemo   map[string]handled
	tracing bool // record effects (for traces)

	// the transition being built
	cur     *node
	effects []string
	viol    *violationError
	fails   []queuedFail
}

type queuedFail struct {
	opSeq, acc int
	tag        uint64
}

func newExplorer(cfg Config) (*explorer, error) {
	if err := cfg.normalize(); err != nil {
		return nil, err
	}
	e := &explorer{cfg: cfg, quorum: cfg.Acceptors/2 + 1, amemo: map[string]handled{}, tracing: true}
	e.res.Chosen = map[string]int{}
	e.res.Outcomes = map[string]int{}
	return e, nil
}

// metaValue is what the (pre-allocated) segment's metadata register holds.
var metaValue = paxos.EncodeSegmentInfo("explore", nil)

// initial builds the initial state: every acceptor holds the segment's
// allocation record, decided; every client has learnt it (prelude) and
// started the first op of its script.
func (e *explorer) initial() (n *node, err error) {
	n = &node{}
	e.cur = n
	e.viol = nil
	for i := 0; i < e.cfg.Acceptors; i++ {
		m := e.cfg.NewAcceptor(i)
		b := worm.Ballot{Round: 1, Node: 0xffff}
		for _, rec := range []paxos.Record{
			{Kind: paxos.RecordAccept, Seg: reg.Seg, Off: worm.MetaOffset, Ballot: b, Value: metaValue},
			{Kind: paxos.RecordDecide, Seg: reg.Seg, Off: worm.MetaOffset, Ballot: b},
		} {
			if err := m.Apply(rec); err != nil {
				return nil, err
			}
		}
		key, recs, err := snapshot(m)
		if err != nil {
			return nil, err
		}
		e.accs = append(e.accs, accLive{m: m, key: key})
		n.accs = append(n.accs, accNode{up: true, key: key, recs: recs})
	}
	n.clients = make([]clientNode, len(e.cfg.Clients))
	e.clients = make([]*client, len(e.cfg.Clients))
	for ci := range e.cfg.Clients {
		c := newClient(ci, &e.cfg.Clients[ci], e.cfg.Acceptors, e.cfg.MaxAttempts)
		e.clients[ci] = c
		var resp paxos.Response
		e.accs[0].m.Handle(&paxos.Request{Kind: paxos.KindRead, Seg: reg.Seg, Off: worm.MetaOffset}, &resp, nil)
		r := resp.Clone()
		e.feed(c, &input{kind: inStep, opSeq: 0, from: 0, tag: c.preTag, resp: r, text: string(appendResponse(nil, r))})
		if c.preErr != nil {
			return nil, fmt.Errorf("explore: prelude allocation check of %s: %w", c.spec.Name, c.preErr)
		}
	}
	e.finishNode(n)
	if e.viol != nil {
		return nil, fmt.Errorf("explore: initial state: %s", e.viol)
	}
	n.text = "initial: " + strings.Join(e.effects, "; ")
	return n, nil
}

// materialize makes the live clients match n. (Live acceptors are made
// to match lazily, in deliver, and only when the memo misses.)
func (e *explorer) materialize(n *node) error {
	for ci, c := range e.clients {
		want := n.clients[ci].log
		have := len(c.log)
		switch {
		case have == len(want) && c.lastHash() == lastHash(want):
		case have < len(want) && c.lastHash() == lastHash(want[:have]):
			for _, in := range want[have:] {
				c.call(in)
				c.settle(nil)
			}
			c.log = want
		default:
			c = replayClient(ci, &e.cfg.Clients[ci], e.cfg.Acceptors, e.cfg.MaxAttempts, want)
			e.clients[ci] = c
			e.res.Replays++
		}
		if c.digest != n.clients[ci].digest {
			panic(fmt.Sprintf("explore: client %s replayed to a different output digest: an op is not deterministic", c.spec.Name))
		}
	}
	return nil
}

func lastHash(log []*input) [16]byte {
	if len(log) == 0 {
		return [16]byte{}
	}
	return log[len(log)-1].h
}

func (e *explorer) rebuild(i int, recs []paxos.Record) (AcceptorModel, string, error) {
	m := e.cfg.NewAcceptor(i)
	for _, r := range recs {
		if err := m.Apply(r); err != nil {
			return nil, "", err
		}
	}
	key, _, err := snapshot(m)
	return m, key, err
}

// enabled lists the events enabled in n (materialized).
func (e *explorer) enabled(n *node) []Event {
	var evs []Event
	cfg := &e.cfg
	for i, m := range n.net {
		head := i == 0 || n.net[i-1].ch != m.ch
		dup := false
		for j := i - 1; j >= 0 && n.net[j].ch == m.ch; j-- {
			if n.net[j].key == m.key {
				dup = true // an identical copy ahead: same successors
				break
			}
		}
		if dup {
			continue
		}
		if head || cfg.Reorders == Unbounded || n.used.reorders < cfg.Reorders {
			evs = append(evs, Event{Kind: Deliver, Msg: m.key})
			if n.used.dups < cfg.Dups {
				evs = append(evs, Event{Kind: DeliverDup, Msg: m.key})
			}
		}
		if n.used.drops < cfg.Drops {
			evs = append(evs, Event{Kind: Drop, Msg: m.key})
		}
	}
	for ci, c := range e.clients {
		if !c.live() {
			continue
		}
		pend := c.op.Pending()
		if n.used.nudges < cfg.Nudges && len(pend) > 0 {
			evs = append(evs, Event{Kind: Nudge, Client: ci})
		}
		if n.used.expires < cfg.Expires {
			evs = append(evs, Event{Kind: Expire, Client: ci})
		}
		if n.used.breaks < cfg.Breaks {
			seen := uint64(0)
			for _, o := range pend {
				if o.To >= 0 && seen&(1<<o.To) == 0 && n.accs[o.To].up {
					seen |= 1 << o.To
					evs = append(evs, Event{Kind: Break, Client: ci, Acceptor: o.To})
				}
			}
		}
	}
	down := 0
	for _, a := range n.accs {
		if !a.up {
			down++
		}
	}
	for i, a := range n.accs {
		switch {
		case !a.up:
			evs = append(evs, Event{Kind: Restart, Acceptor: i})
		case n.used.crashes < cfg.Crashes && down+1 <= (cfg.Acceptors-1)/2:
			evs = append(evs, Event{Kind: Crash, Acceptor: i})
		}
	}
	return evs
}

// step applies ev to n and returns the successor.
func (e *explorer) step(n *node, ev Event) (child *node, verr *violationError) {
	defer func() {
		if r := recover(); r != nil {
			child, verr = nil, violate("panic", "%v\n%s", r, debug.Stack())
		}
	}()
	if err := e.materialize(n); err != nil {
		if v, ok := err.(*violationError); ok {
			return nil, v
		}
		return nil, violate("durability", "%v", err)
	}
	child = &node{
		accs:    slices.Clone(n.accs),
		net:     slices.Clone(n.net),
		clients: slices.Clone(n.clients),
		used:    n.used,
		mon:     n.mon,
		depth:   n.depth + 1,
		ev:      ev,
	}
	e.cur, e.effects, e.viol, e.fails = child, e.effects[:0], nil, e.fails[:0]
	switch ev.Kind {
	case Deliver, DeliverDup, Drop:
		i := slices.IndexFunc(child.net, func(m *msg) bool { return m.key == ev.Msg })
		if i < 0 {
			panic("explore: event names no message in flight")
		}
		m := child.net[i]
		if ev.Kind != Drop && i > 0 && child.net[i-1].ch == m.ch && e.cfg.Reorders != Unbounded {
			child.used.reorders++
		}
		switch ev.Kind {
		case Drop:
			child.used.drops++
			child.net = slices.Delete(child.net, i, i+1)
		case DeliverDup:
			child.used.dups++
			e.deliver(m)
		default:
			child.net = slices.Delete(child.net, i, i+1)
			e.deliver(m)
		}
	case Nudge:
		child.used.nudges++
		c := e.clients[ev.Client]
		e.feed(c, &input{kind: inNudge, opSeq: c.opSeq})
	case Expire:
		child.used.expires++
		c := e.clients[ev.Client]
		e.feed(c, &input{kind: inExpire, opSeq: c.opSeq})
	case Break:
		child.used.breaks++
		e.cut(func(m *msg) bool { return m.client == ev.Client && m.acc == ev.Acceptor })
		c := e.clients[ev.Client]
		e.feed(c, &input{kind: inFail, opSeq: c.opSeq, from: ev.Acceptor})
	case Crash:
		child.used.crashes++
		child.accs[ev.Acceptor].up = false
		e.cut(func(m *msg) bool { return m.acc == ev.Acceptor })
		for _, c := range e.clients {
			if c.live() {
				e.feed(c, &input{kind: inFail, opSeq: c.opSeq, from: ev.Acceptor})
			}
		}
	case Restart:
		// The acceptor comes back from its durable records, which
		// reproduce its state (checked after every request it handled).
		m, key, err := e.rebuild(ev.Acceptor, child.accs[ev.Acceptor].recs)
		if err != nil {
			return nil, violate("durability", "acc%d restart: %v", ev.Acceptor, err)
		}
		if key != child.accs[ev.Acceptor].key {
			return nil, violate("durability", "acc%d restarted as %s, want %s", ev.Acceptor, key, child.accs[ev.Acceptor].key)
		}
		e.accs[ev.Acceptor] = accLive{m: m, key: key}
		child.accs[ev.Acceptor].up = true
	}
	e.finishNode(child)
	child.text = ev.describe(&e.cfg)
	if len(e.effects) > 0 {
		child.text += " => " + strings.Join(e.effects, "; ")
	}
	child.ev.Effect = strings.Join(e.effects, "; ")
	return child, e.viol
}

func (e *explorer) finishNode(n *node) {
	if e.cfg.Reorders == Unbounded {
		slices.SortFunc(n.net, func(a, b *msg) int { return strings.Compare(a.key, b.key) })
	} else {
		slices.SortStableFunc(n.net, func(a, b *msg) int { return a.ch - b.ch })
	}
	for ci, c := range e.clients {
		n.clients[ci].log = c.log
		n.clients[ci].digest = c.digest
	}
}

func (e *explorer) cut(drop func(*msg) bool) {
	e.cur.net = slices.DeleteFunc(slices.Clone(e.cur.net), drop)
}

func (e *explorer) effect(format string, args ...any) {
	if !e.tracing {
		return
	}
	e.effects = append(e.effects, fmt.Sprintf(format, args...))
}

func (e *explorer) fail(v *violationError) {
	if v != nil && e.viol == nil {
		e.viol = v
	}
}

func (e *explorer) deliver(m *msg) {
	if !m.toAcc {
		c := e.clients[m.client]
		if c.opSeq != m.opSeq || !c.live() {
			panic("explore: response in flight for a finished op")
		}
		e.feed(c, &input{kind: inStep, opSeq: m.opSeq, from: m.acc, tag: m.tag, resp: m.resp, text: m.text})
		return
	}
	i := m.acc
	if !e.cur.accs[i].up {
		panic("explore: request in flight to a crashed acceptor")
	}
	pre := e.cur.accs[i]
	memoKey := pre.key + "\x00" + m.text
	h, ok := e.amemo[memoKey]
	if !ok {
		h = e.handle(i, pre, m)
		e.amemo[memoKey] = h
	}
	e.fail(h.viol)
	e.cur.accs[i] = accNode{up: true, key: h.key, recs: h.snap}
	recs, out := h.recs, h.resp
	for k := range recs {
		e.fail(e.cur.mon.record(i, e.quorum, &recs[k]))
	}
	if m.tag == 0 {
		return
	}
	e.effect("acc%d answers %s", i, h.text)
	if c := e.clients[m.client]; c.opSeq == m.opSeq && c.live() && (e.cfg.Exact || expected(c.op.Pending(), m)) {
		e.cur.net = append(e.cur.net, newMsg(&e.cfg, &msg{acc: i, client: m.client, opSeq: m.opSeq, tag: m.tag, resp: out, text: h.text}))
	}
}

// handled is the memoised effect of one request on one acceptor state
// (acceptors are deterministic).
type handled struct {
	key  string
	snap []paxos.Record
	recs []paxos.Record
	resp *paxos.Response
	text string // canonical text of resp
	viol *violationError
}

func (e *explorer) handle(i int, pre accNode, m *msg) handled {
	if e.accs[i].key != pre.key {
		a, key, err := e.rebuild(i, pre.recs)
		if err != nil {
			return handled{key: pre.key, snap: pre.recs, viol: violate("durability", "acc%d rebuild: %v", i, err)}
		}
		if key != pre.key {
			return handled{key: pre.key, snap: pre.recs, viol: violate("durability", "acc%d rebuilt from its records differs: %s, want %s", i, key, pre.key)}
		}
		e.accs[i] = accLive{m: a, key: key}
	}
	req := *m.req
	var resp paxos.Response
	recs := e.accs[i].m.Handle(&req, &resp, nil)
	h := handled{resp: resp.Clone(), recs: slices.Clone(recs)}
	h.text = string(appendResponse(nil, h.resp))
	for k := range h.recs {
		h.recs[k].Value = bytes.Clone(h.recs[k].Value)
	}
	key, snap, err := snapshot(e.accs[i].m)
	if err != nil {
		h.key, h.snap, h.viol = pre.key, pre.recs, violate("durability", "acc%d snapshot: %v", i, err)
		return h
	}
	e.accs[i].key = key
	h.key, h.snap = key, snap
	// Durability: the records Handle emitted, applied to the state before,
	// give the state after; so a restart loses nothing it answered about.
	if len(recs) == 0 {
		if key != pre.key {
			h.viol = violate("durability", "acc%d changed state without emitting a record: %s -> %s", i, pre.key, key)
		}
		return h
	}
	shadow, _, err := e.rebuild(i, pre.recs)
	if err == nil {
		for _, r := range h.recs {
			if err = shadow.Apply(r); err != nil {
				break
			}
		}
	}
	var skey string
	if err == nil {
		skey, _, err = snapshot(shadow)
	}
	if err != nil || skey != key {
		h.viol = violate("durability", "acc%d: its records rebuild %s (err %v), but its state is %s", i, skey, err, key)
	}
	return h
}

// feed gives one input to a client, then lets it run: its requests go in
// flight, and a request to a crashed acceptor is reported unsent at once
// (Op.Unsent, one input each), as a driver must do.
func (e *explorer) feed(c *client, in *input) {
	before, n := c.digest, len(c.log)
	c.apply(in)
	c.settle(e)
	for len(e.fails) > 0 {
		f := e.fails[0]
		e.fails = e.fails[1:]
		if f.opSeq != c.opSeq || !c.live() {
			continue
		}
		c.apply(&input{kind: inUnsent, opSeq: c.opSeq, from: f.acc, tag: f.tag})
		c.settle(e)
	}
	cn := &e.cur.clients[c.idx]
	if e.cfg.Exact {
		cn.canon = c.lastHash()
	} else if in.kind == inStep && c.digest == before && len(c.log) == n+1 {
		// A quiet response: the op answered nothing yet.
		cn.open = addSorted(cn.open, inputText(in))
	} else {
		// The segment closes: its responses as a set (the last one,
		// which made the op act, included), then whatever else the
		// op was given, in order.
		set, rest := cn.open, c.log[n:]
		if in.kind == inStep {
			set, rest = addSorted(set, inputText(in)), c.log[n+1:]
		}
		var b []byte
		b = append(b, cn.canon[:]...)
		for _, t := range set {
			b = append(b, t...)
			b = append(b, 0)
		}
		for _, x := range rest {
			b = append(b, 1)
			b = append(b, inputText(x)...)
		}
		sum := sha256.Sum256(b)
		copy(cn.canon[:], sum[:16])
		cn.open = nil
	}
	if !e.cfg.Exact {
		e.reap(c)
	}
}

func inputText(in *input) string {
	var b []byte
	b = append(b, byte('0'+in.kind))
	b = strconv.AppendInt(b, int64(in.opSeq), 10)
	b = append(b, '/')
	b = strconv.AppendInt(b, int64(in.from), 10)
	b = append(b, '#')
	b = strconv.AppendUint(b, in.tag, 10)
	b = append(b, ' ')
	b = append(b, in.text...)
	return string(b)
}

// reap drops the responses in flight to c that its op can no longer
// take: an Op takes a response only for an outstanding request of its
// current phase (Op.Pending); it ignores the others, now and later.
func (e *explorer) reap(c *client) {
	var pend []paxos.Out
	if c.live() {
		pend = c.op.Pending()
	}
	if slices.ContainsFunc(e.cur.net, func(m *msg) bool { return !m.toAcc && m.client == c.idx && !expected(pend, m) }) {
		e.cut(func(m *msg) bool { return !m.toAcc && m.client == c.idx && !expected(pend, m) })
	}
}

func expected(pend []paxos.Out, m *msg) bool {
	for _, o := range pend {
		if o.To == m.acc && o.Tag == m.tag {
			return true
		}
	}
	return false
}

// hooks

func (e *explorer) emit(c *client, out *paxos.Out) {
	if e.cfg.SkipDecides && out.Req.Kind == paxos.KindDecide {
		return
	}
	req := out.Req
	if req.Values != nil {
		req.Values = make([][]byte, len(out.Req.Values))
		for i, v := range out.Req.Values {
			req.Values[i] = bytes.Clone(v)
		}
	}
	for i := 0; i < e.cfg.Acceptors; i++ {
		if out.To != paxos.All && out.To != i {
			continue
		}
		if !e.cur.accs[i].up {
			if out.Tag != 0 && !slices.Contains(e.fails, queuedFail{c.opSeq, i, out.Tag}) {
				e.fails = append(e.fails, queuedFail{c.opSeq, i, out.Tag})
			}
			continue
		}
		r := req
		e.cur.net = append(e.cur.net, newMsg(&e.cfg, &msg{toAcc: true, acc: i, client: c.idx, opSeq: c.opSeq, tag: out.Tag, req: &r}))
	}
}

func (e *explorer) started(c *client, a Action) {
	cn := &e.cur.clients[c.idx]
	cn.flags = startFlags{chosen: e.cur.mon.hasChosen, observed: e.cur.mon.hasObserved}
	if a.Op == Write || a.Op == WriteUnsafe {
		e.cur.mon.written = addSorted(e.cur.mon.written, a.Value)
	}
	e.effect("%s%d starts %v", c.spec.Name, c.opSeq, a)
}

func (e *explorer) finished(c *client, a Action, res paxos.Result) {
	who := fmt.Sprintf("%s%d %v", c.spec.Name, c.opSeq, a)
	e.effect("%s -> %s", who, outcomeKind(&res))
	e.res.Outcomes[fmt.Sprintf("%s step %d %v: %s", c.spec.Name, c.pc+1, a, outcomeKind(&res))]++
	e.fail(e.cur.mon.finish(who, a, e.cur.clients[c.idx].flags, &res))
	e.cur.clients[c.idx].flags = startFlags{}
	// Its responses still in flight can only be ignored now: drop them.
	opSeq := c.opSeq
	e.cut(func(m *msg) bool { return !m.toAcc && m.client == c.idx && m.opSeq == opSeq })
}

// checkTerminal checks a state without successors: without lost messages
// or crashed acceptors every script must have run to its end.
func (e *explorer) checkTerminal(n *node) *violationError {
	if n.used.drops > 0 || n.used.breaks > 0 || n.used.crashes > 0 {
		return nil
	}
	for _, c := range e.clients {
		if c.op != nil {
			return violate("progress", "no event is enabled, but %s is stuck in step %d (%v) with nothing lost", c.spec.Name, c.pc+1, c.spec.Script[c.pc])
		}
	}
	return nil
}

func (e *explorer) fingerprint(n *node) [16]byte {
	h := sha256.New()
	var b []byte
	for _, a := range n.accs {
		if a.up {
			b = append(b, 'U')
		} else {
			b = append(b, 'D')
		}
		b = append(b, a.key...)
		b = append(b, '\n')
	}
	for _, m := range n.net {
		b = append(b, m.key...)
		b = append(b, '\n')
	}
	for _, c := range n.clients {
		b = append(b, c.canon[:]...)
		for _, t := range c.open {
			b = append(b, t...)
			b = append(b, 0)
		}
		b = binary.AppendUvarint(b, c.digest)
		if c.flags.chosen {
			b = append(b, 'c')
		}
		if c.flags.observed {
			b = append(b, 'o')
		}
		b = append(b, '\n')
	}
	u := n.used
	for _, x := range []int{u.reorders, u.drops, u.dups, u.nudges, u.expires, u.breaks, u.crashes} {
		b = binary.AppendUvarint(b, uint64(x))
	}
	b = n.mon.appendKey(b)
	h.Write(b)
	var fp [16]byte
	copy(fp[:], h.Sum(nil))
	return fp
}

type frame struct {
	n      *node
	events []Event
	next   int
}

// Explore visits every state reachable from cfg's initial state within its
// bounds, depth first, and checks the properties in each. It returns a
// *Violation for the first violation found, ErrStateLimit when it gave up,
// or a *ConfigError.
func Explore(cfg Config) (Result, error) {
	start := time.Now()
	e, err := newExplorer(cfg)
	if err != nil {
		return Result{}, err
	}
	e.tracing = false
	root, err := e.initial()
	if err != nil {
		return Result{}, err
	}
	visited := map[[16]byte]struct{}{e.fingerprint(root): {}}
	e.res.States = 1
	stack := []*frame{{n: root}}
	for len(stack) > 0 {
		f := stack[len(stack)-1]
		if f.events == nil {
			if err := e.materialize(f.n); err != nil {
				return e.done(start), e.explain(e.violation(stack, nil, asViolation(err)))
			}
			f.events = e.enabled(f.n)
			if len(f.events) == 0 {
				e.res.Terminal++
				e.res.Chosen[f.n.mon.chosen]++
				if v := e.checkTerminal(f.n); v != nil {
					return e.done(start), e.explain(e.violation(stack, nil, v))
				}
			}
		}
		if f.next == len(f.events) {
			stack = stack[:len(stack)-1]
			continue
		}
		ev := f.events[f.next]
		f.next++
		child, v := e.step(f.n, ev)
		e.res.Transitions++
		if v != nil {
			return e.done(start), e.explain(e.violation(stack, child, v, ev))
		}
		fp := e.fingerprint(child)
		if _, ok := visited[fp]; ok {
			continue
		}
		visited[fp] = struct{}{}
		e.res.States++
		if child.depth > e.res.MaxDepth {
			e.res.MaxDepth = child.depth
		}
		if e.res.States >= e.cfg.MaxStates {
			return e.done(start), ErrStateLimit
		}
		if e.cfg.Progress != nil && e.res.States%(1<<17) == 0 {
			e.cfg.Progress(e.done(start))
		}
		stack = append(stack, &frame{n: child})
	}
	return e.done(start), nil
}

// explain replays a violation found without tracing, to give its trace
// the effect of every event; the replay must reach the same violation.
func (e *explorer) explain(v *Violation) error {
	r := Replay(e.cfg, v.Trace)
	rv, ok := r.(*Violation)
	if !ok || rv.Property != v.Property || (rv.Property != "panic" && rv.What != v.What) {
		v.text = append(v.text, fmt.Sprintf("(replaying this trace did not reach the same violation: %v)", r))
		return v
	}
	return rv
}

func asViolation(err error) *violationError {
	if v, ok := err.(*violationError); ok {
		return v
	}
	return violate("durability", "%v", err)
}

func (e *explorer) done(start time.Time) Result {
	e.res.Elapsed = time.Since(start)
	return e.res
}

// violation builds the trace: the events along the stack, then the last
// one (which may have no successor node).
func (e *explorer) violation(stack []*frame, child *node, v *violationError, last ...Event) *Violation {
	out := &Violation{Property: v.prop, What: v.what}
	out.text = append(out.text, stack[0].n.text)
	for _, f := range stack[1:] {
		out.Trace = append(out.Trace, f.n.ev)
		out.text = append(out.text, f.n.text)
	}
	if child != nil {
		out.Trace = append(out.Trace, child.ev)
		out.text = append(out.text, child.text)
	} else if len(last) > 0 {
		out.Trace = append(out.Trace, last[0])
		out.text = append(out.text, last[0].describe(&e.cfg)+" => (panicked)")
	}
	return out
}

// ReplayError reports a trace that does not apply to a Config: its event
// At is not enabled in the state the earlier events reach.
type ReplayError struct {
	At    int
	Event Event
}

func (e *ReplayError) Error() string {
	return fmt.Sprintf("explore: replay: event %d (%v %q client %d acc %d) is not enabled", e.At+1, e.Event.Kind, e.Event.Msg, e.Event.Client, e.Event.Acceptor)
}

// Replay runs trace from cfg's initial state, checking every property on
// the way, as Explore does on that one path. It returns the *Violation the
// trace reaches (with the trace as replayed), nil if it reaches none, or a
// *ReplayError when the trace does not fit cfg.
func Replay(cfg Config, trace []Event) error {
	e, err := newExplorer(cfg)
	if err != nil {
		return err
	}
	n, err := e.initial()
	if err != nil {
		return err
	}
	stack := []*frame{{n: n}}
	for i, ev := range trace {
		if err := e.materialize(n); err != nil {
			return e.violation(stack, nil, asViolation(err))
		}
		en := e.enabled(n)
		if !slices.ContainsFunc(en, func(x Event) bool {
			return x.Kind == ev.Kind && x.Msg == ev.Msg && x.Client == ev.Client && x.Acceptor == ev.Acceptor
		}) {
			return &ReplayError{At: i, Event: ev}
		}
		ev.Effect = ""
		child, v := e.step(n, ev)
		if v != nil {
			return e.violation(stack, child, v, ev)
		}
		n = child
		stack = append(stack, &frame{n: n})
	}
	if err := e.materialize(n); err != nil {
		return e.violation(stack, nil, asViolation(err))
	}
	if len(e.enabled(n)) == 0 {
		if v := e.checkTerminal(n); v != nil {
			return e.violation(stack, nil, v)
		}
	}
	return nil
}
