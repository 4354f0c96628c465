package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/bits"
	"sync"

	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/paxos"
)

// listenQueue bounds the notifications queued for one listener that has
// not taken them; past it they are dropped for one Lost notification.
const listenQueue = 4096

// maxTallies bounds the registers one listener tallies reports for, and
// maxChosen the registers it remembers as announced chosen. Past either,
// the set is cleared: a register then announced again costs the listener
// a redundant hint, never a wrong value (every register was hinted or
// announced chosen at its first report).
const (
	maxTallies = 4096
	maxChosen  = 4096
)

// listener queues notifications for one Listen call without ever blocking
// a connection's reader: notify appends under mu, pump moves the queue to
// the caller's channel.
//
// It is also the Paxos learner of the registers of its segment: each
// wormserver reports the ballot and value it accepted (report), and a
// value that a quorum of distinct wormservers reported at one ballot is
// chosen. Reports are facts about the past (an acceptor did accept that
// value at that ballot), so they stay valid across reconnections and
// Lost, and counting them in any order is safe.
type listener struct {
	seg    uint64
	quorum int
	out    chan worm.Notification
	wake   chan struct{} // capacity 1

	mu      sync.Mutex
	queue   []worm.Notification
	lost    bool
	tallies map[uint32]*tally
	chosen  map[uint32]struct{}
}

// tally is what a listener heard about one register not yet known chosen.
type tally struct {
	hinted bool   // a hint was queued for it
	cands  []cand // distinct (ballot, value) pairs reported
}

// cand is one (ballot, value) pair and the wormservers that reported it.
type cand struct {
	ballot paxos.Ballot
	value  []byte // a copy; becomes the chosen notification's Value
	from   uint64 // bit i: server i reported it
}

// enqueueLocked queues n, or turns the queue into one Lost notification
// when the taker fell behind.
func (l *listener) enqueueLocked(n worm.Notification) {
	switch {
	case n.Lost || len(l.queue) >= listenQueue:
		// Whatever is queued is redundant with the rescan Lost asks for.
		clear(l.queue)
		l.queue, l.lost = l.queue[:0], true
	case !l.lost:
		l.queue = append(l.queue, n)
	}
}

func (l *listener) wakeUp() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

func (l *listener) push(n worm.Notification) {
	l.mu.Lock()
	l.enqueueLocked(n)
	l.mu.Unlock()
	l.wakeUp()
}

// report records that server from accepted a value for register off: g
// (ballot and value), or nil when the server announced the write without
// its value. It queues the register's chosen value when this report
// completes a quorum at one ballot (or the server says the register is
// decided), else a hint for the first report of the register. g and its
// value are only read during the call.
func (l *listener) report(from int, off uint32, g *paxos.RegState) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, done := l.chosen[off]; done {
		return
	}
	t := l.tallies[off]
	if t == nil {
		if len(l.tallies) >= maxTallies {
			clear(l.tallies)
		}
		t = &tally{}
		l.tallies[off] = t
	}
	if g != nil {
		var c *cand
		for i := range t.cands {
			if t.cands[i].ballot == g.Accepted && bytes.Equal(t.cands[i].value, g.Value) {
				c = &t.cands[i]
				break
			}
		}
		if c == nil {
			t.cands = append(t.cands, cand{ballot: g.Accepted, value: append([]byte{}, g.Value...)})
			c = &t.cands[len(t.cands)-1]
		}
		c.from |= 1 << uint(from)
		if g.Decided || bits.OnesCount64(c.from) >= l.quorum {
			delete(l.tallies, off)
			if len(l.chosen) >= maxChosen {
				clear(l.chosen)
			}
			l.chosen[off] = struct{}{}
			l.enqueueLocked(worm.Notification{Off: off, Chosen: true, Value: c.value})
			return
		}
	}
	if !t.hinted {
		t.hinted = true
		l.enqueueLocked(worm.Notification{Off: off})
	}
}

func (l *listener) pump(ctx context.Context, closed <-chan struct{}, detach func()) {
	defer close(l.out)
	defer detach()
	var batch []worm.Notification
	for {
		select {
		case <-ctx.Done():
			return
		case <-closed:
			return
		case <-l.wake:
		}
		l.mu.Lock()
		batch = append(batch[:0], l.queue...)
		lost := l.lost
		clear(l.queue)
		l.queue, l.lost = l.queue[:0], false
		l.mu.Unlock()
		if lost {
			batch = append([]worm.Notification{{Lost: true}}, batch...)
		}
		for _, n := range batch {
			select {
			case l.out <- n:
			case <-ctx.Done():
				return
			case <-closed:
				return
			}
		}
		clear(batch)
	}
}

// notify fans server from's KindNotify push out to the segment's
// listeners. A push with Count 0 is the server's "notifications were
// dropped" marker. resp.Regs carries the accepted ballot and value of the
// registers whose values the server sends (ascending offsets within
// [Off, Off+Count)); the others are reported without value.
func (cl *Client) notify(from int, resp *paxos.Response) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	ls := cl.listeners[resp.Seg]
	if len(ls) == 0 {
		return
	}
	if resp.Count == 0 {
		for l := range ls {
			l.push(worm.Notification{Lost: true})
		}
		return
	}
	j := 0
	for i := uint32(0); i < resp.Count; i++ {
		off := resp.Off + i
		var g *paxos.RegState
		for j < len(resp.Regs) && resp.Regs[j].Off < off {
			j++
		}
		if j < len(resp.Regs) && resp.Regs[j].Off == off && resp.Regs[j].HasValue {
			g = &resp.Regs[j]
		}
		if off == worm.MetaOffset {
			continue
		}
		for l := range ls {
			l.report(from, off, g)
		}
	}
	for l := range ls {
		l.wakeUp()
	}
}

// lostAll tells every listener that notifications may have been missed
// (a server connection went down).
func (cl *Client) lostAll() {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	for _, ls := range cl.listeners {
		for l := range ls {
			l.push(worm.Notification{Lost: true})
		}
	}
}

// resubscribe renews the subscriptions of every listened segment on a
// connection that has just come up.
func (cl *Client) resubscribe(cn *conn) {
	cl.mu.Lock()
	segs := make([]uint64, 0, len(cl.listeners))
	for seg := range cl.listeners {
		segs = append(segs, seg)
	}
	cl.mu.Unlock()
	for _, seg := range segs {
		cn.send(nil, cl.rawTag.Add(1), &paxos.Request{Kind: paxos.KindListen, Seg: seg})
	}
	if len(segs) > 0 {
		cl.lostAll()
	}
}

// Listen delivers write notifications for seg until ctx ends or the client
// closes; the channel is then closed. It returns once a quorum of servers
// has subscribed, so every register written afterwards is announced (by
// its chosen value once a quorum of servers reported it at one ballot,
// else as a hint). Errors: worm.ErrTrimmed, worm.ErrUnavailable.
func (cl *Client) Listen(ctx context.Context, seg uint64) (<-chan worm.Notification, error) {
	l := &listener{seg: seg, quorum: cl.quorum(), out: make(chan worm.Notification, 64), wake: make(chan struct{}, 1),
		tallies: map[uint32]*tally{}, chosen: map[uint32]struct{}{}}
	cl.mu.Lock()
	ls := cl.listeners[seg]
	if ls == nil {
		ls = map[*listener]struct{}{}
		cl.listeners[seg] = ls
	}
	ls[l] = struct{}{}
	cl.mu.Unlock()
	detach := func() {
		cl.mu.Lock()
		delete(cl.listeners[seg], l)
		last := len(cl.listeners[seg]) == 0
		if last {
			delete(cl.listeners, seg)
		}
		cl.mu.Unlock()
		if last {
			for _, cn := range cl.conns {
				cn.send(nil, 0, &paxos.Request{Kind: paxos.KindUnlisten, Seg: seg})
			}
		}
	}
	resps, err := cl.broadcast(ctx, paxos.Request{Kind: paxos.KindListen, Seg: seg}, cl.quorum())
	if err == nil {
		ok := 0
		for _, r := range resps {
			switch {
			case r.err != nil:
			case r.resp == nil:
			case r.resp.Status == paxos.StatusOK:
				ok++
			case r.resp.Status == paxos.StatusTrimmed:
				err = worm.ErrTrimmed
			}
		}
		if err == nil && ok < cl.quorum() {
			err = fmt.Errorf("client: listen: %d of %d servers subscribed: %w", ok, len(cl.conns), worm.ErrUnavailable)
		}
	}
	if err != nil {
		detach()
		return nil, err
	}
	go l.pump(ctx, cl.closed, detach)
	return l.out, nil
}

func (cl *Client) quorum() int { return len(cl.conns)/2 + 1 }

// ServerStatus is one wormserver's answer to a status request.
type ServerStatus struct {
	Addr string
	// Status is the server's status document (JSON), when it answered.
	Status string
	// Err says why there is no answer (unreachable, timed out, refused).
	Err error
}

// Status asks every wormserver for its status document and returns one
// entry per server, in the order of Config.Servers. Servers that do not
// answer before ctx ends have Err set.
func (cl *Client) Status(ctx context.Context) []ServerStatus {
	out := make([]ServerStatus, len(cl.conns))
	resps, err := cl.broadcast(ctx, paxos.Request{Kind: paxos.KindStatus}, len(cl.conns))
	for i, cn := range cl.conns {
		// The member's address in the client's view: after a
		// replacement, the new member's, not the one first dialed.
		out[i].Addr = cn.dialAddr()
		r := resps[i]
		switch {
		case r.err != nil:
			out[i].Err = r.err
		case r.resp == nil:
			out[i].Err = err
			if out[i].Err == nil {
				out[i].Err = errors.New("no answer")
			}
		case r.resp.Status != paxos.StatusOK:
			out[i].Err = fmt.Errorf("server answered %v: %s", r.resp.Status, r.resp.Text)
		default:
			out[i].Status = r.resp.Text
		}
	}
	return out
}

// rawResult is one server's answer to a broadcast.
type rawResult struct {
	resp *paxos.Response
	err  error
}

// rawCall collects the answers to a request sent outside the Paxos core
// (listen, status).
type rawCall struct {
	mu      sync.Mutex
	results []rawResult
	// n counts results of either kind, answered only responses: a call
	// is done when need servers answered, or when every server answered
	// or failed. A failure never counts towards need (a listen with one
	// server down used to return after one subscription and the
	// failure, short of a quorum, instead of waiting for the third).
	n, answered, need int
	closed            bool
	done              chan struct{}
}

func (r *rawCall) settle() {
	r.n++
	if !r.closed && (r.answered >= r.need || r.n == len(r.results)) {
		r.closed = true
		close(r.done)
	}
}

func (r *rawCall) deliver(from int, _ uint64, resp *paxos.Response) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.results[from].resp == nil && r.results[from].err == nil {
		r.results[from].resp = resp.Clone()
		r.answered++
		r.settle()
	}
}

func (r *rawCall) failed(from int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.results[from].resp == nil && r.results[from].err == nil {
		r.results[from].err = errors.New("unreachable (no connection)")
		r.settle()
	}
}

// broadcast sends req to every server and waits for need answers (or
// failures), or for ctx; it returns a copy of what arrived, by server.
func (cl *Client) broadcast(ctx context.Context, req paxos.Request, need int) ([]rawResult, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cl.cfg.OpTimeout)
		defer cancel()
	}
	rc := &rawCall{results: make([]rawResult, len(cl.conns)), need: need, done: make(chan struct{})}
	tag := cl.rawTag.Add(1)
	for i, cn := range cl.conns {
		if !cn.send(rc, tag, &req) {
			rc.failed(i)
		}
	}
	var err error
	select {
	case <-rc.done:
	case <-ctx.Done():
		err = fmt.Errorf("%w: %w", worm.ErrUnavailable, ctx.Err())
	case <-cl.closed:
		err = errClosed
	}
	for _, cn := range cl.conns {
		cn.forget(rc, tag)
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]rawResult(nil), rc.results...), err
}
