package server

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wormspace/wormspace/worm/paxos"
	"github.com/wormspace/wormspace/worm/sockio"
	"github.com/wormspace/wormspace/worm/wire"
)

// conn is one client connection: a reader goroutine (serve) that decodes
// requests and feeds the Engine, and a writer goroutine that drains the
// output buffer the replies are encoded into. The reader writes the output
// itself, saving the hand-off to the writer, when it is about to wait for
// more requests and no write is in progress (see flushOutput).
//
// Memory: every byte held for the connection's replies (queued output, the
// buffer being written, responses the Engine holds until a sync) is
// counted in held and charged to the server's replyBudget; the reader
// stops reading requests while held is over MaxPending or while the
// server-wide budget has no room for one more reply.
//
// Lock order: Engine.mu → Server.subMu → conn.mu → replyBudget.mu. Nothing
// holding conn.mu calls into the Engine or takes subMu.
type conn struct {
	s  *Server
	nc net.Conn
	// rw reads and writes nc: with raw system calls when nc is a socket
	// of this process (sockio.ReadWriter), so that the connection loops
	// never wake the runtime's parked sysmon; nc itself under netstack.
	rw     io.ReadWriter
	id     uint64
	remote string
	client string // the client's hello ID
	// epoch is the configuration epoch the client bound the connection
	// to (its hello); membSeen the version of the membership it was last
	// told (membership.go).
	epoch    uint64
	membSeen atomic.Uint64

	stop       chan struct{} // closed by teardown
	wake       chan struct{} // cap 1: the writer has something to do
	room       chan struct{} // cap 1: the reader may continue
	writerDone chan struct{}
	once       sync.Once

	// wseq counts writes begun and ended: odd while one is in progress.
	// The server's watchdog reads it (and flushing) to close a connection
	// whose write stalls; wdSeq and wdSince are the watchdog's own.
	wseq     atomic.Uint64
	flushing atomic.Bool // an error frame is being flushed: shorter limit
	wdSeq    uint64
	wdSince  time.Time

	mu            sync.Mutex
	out           []byte // encoded frames not yet handed to a write
	spare         []byte // the previous write's buffer, for reuse
	busy          bool   // a write (writer goroutine or inline) is in progress
	writing       int    // bytes that write is writing
	held          int    // bytes charged to the budget: len(out) + writing + held responses
	resv          int    // budget the reader reserved ahead for its requests' replies
	active        bool   // the reader reserved: it sees to the output before it waits
	peak          int    // highest out+writing seen (tests, status)
	peakHeld      int    // highest held seen (tests)
	slots         []slot
	free          []uint32
	inflight      int
	readerWaiting bool
	draining      bool  // Shutdown: stop reading
	readDone      bool  // no more requests will be read
	final         error // error frame to send once everything in flight left
	closing       bool  // an error frame is queued: no more output, close after flush
	dead          bool  // torn down
	subs          map[uint64]bool
	nlost         int // subscriptions marked lost
}

// noTag stands for no request in chargeLocked: bytes that no admission
// covered (lost markers, error and control frames).
const noTag = ^uint32(0)

// slot remembers a request in flight; its index is the Engine tag.
type slot struct {
	id    uint64
	start time.Time
	kind  paxos.Kind
	hold  int // bytes charged for the response the Engine holds (Hold)
}

func newConn(s *Server, nc net.Conn) *conn {
	return &conn{
		s:          s,
		nc:         nc,
		rw:         sockio.ReadWriter(nc),
		id:         s.nextConn.Add(1),
		remote:     nc.RemoteAddr().String(),
		stop:       make(chan struct{}),
		wake:       make(chan struct{}, 1),
		room:       make(chan struct{}, 1),
		writerDone: make(chan struct{}),
	}
}

func (c *conn) serve() {
	defer c.s.connDone(c)
	ctx, cancel := context.WithTimeout(c.s.base, c.s.hsTimeout)
	hello, err := wire.ServerHandshake(ctx, c.nc, c.s.helloFor(c), c.s.key)
	cancel()
	if err != nil {
		c.s.handshakeFailed(c, err)
		c.teardown()
		return
	}
	c.client, c.epoch = hello.ID, hello.Epoch
	c.s.m.accepted.Add(1)
	c.s.logger.Debug("client connected", "conn", c.id, "remote", c.remote, "client", c.client)
	go c.writeLoop()
	c.readLoop()
	<-c.writerDone
	c.teardown()
	c.s.logger.Debug("client disconnected", "conn", c.id, "remote", c.remote)
}

// readLoop reads and dispatches requests until the stream ends, the
// connection is torn down or drained, or the client sends bad input.
func (c *conn) readLoop() {
	r := wire.NewReader(netReader{c}, c.s.maxFrame)
	var req paxos.Request
	for {
		switch c.waitRoom(false) {
		case roomOK:
		case roomDrain:
			c.finishReading(errShuttingDown)
			return
		default:
			return
		}
		f, err := r.Next()
		if err != nil {
			c.readFailed(err)
			return
		}
		if f.Type == wire.FrameControl {
			if !c.control(f.ID, f.Payload) {
				return
			}
			continue
		}
		if f.Type != wire.FrameRequest {
			if f.Type == wire.FrameErr {
				re, _ := wire.DecodeError(f.Payload)
				c.s.logger.Debug("client closed the connection with an error", "conn", c.id, "remote", c.remote, "err", re)
				c.teardown()
				return
			}
			c.bad(badFrameType, &wire.FrameError{Reason: "a client may only send request frames, got " + f.Type.String(), Err: wire.ErrMalformed})
			return
		}
		if err := wire.DecodeRequest(f.Payload, c.s.maxValue, &req); err != nil {
			reason := badMalformed
			if errors.Is(err, wire.ErrValueTooLarge) || errors.Is(err, wire.ErrFrameTooLarge) {
				reason = badTooLarge
			}
			c.bad(reason, err)
			return
		}
		if !c.dispatch(f.ID, &req) {
			return
		}
	}
}

// netReader is the io.Reader under the connection's wire.Reader: its
// buffer calls Read only when it needs more bytes from the network, which
// is when the reader has dispatched every request it holds. Before going
// to the network the reader gives its reservation back and sees to the
// replies those requests produced (flushOutput).
type netReader struct{ c *conn }

func (r netReader) Read(p []byte) (int, error) {
	r.c.flushOutput()
	return r.c.rw.Read(p)
}

// flushOutput ends the reader's burst of requests: it gives the
// reservation back, then writes the queued output from the reader
// goroutine while no other write is in progress, so that a reply ready on
// the reader goroutine leaves without a hand-off to the writer goroutine
// (the single-client round trip). It leaves to the writer goroutine every
// state the writer loop handles itself (lost markers to send, an error
// frame to flush, the end of the connection) and wakes it for them.
func (c *conn) flushOutput() {
	c.mu.Lock()
	c.unreserveLocked()
	for len(c.out) > 0 && !c.busy {
		if c.dead || c.closing || c.readDone || c.nlost > 0 {
			c.wakeWriter()
			break
		}
		buf := c.takeOutLocked()
		c.mu.Unlock()
		err := c.write(buf)
		c.mu.Lock()
		c.wroteLocked(buf)
		if err != nil {
			c.mu.Unlock()
			c.writeFailed(err, false)
			return
		}
	}
	c.mu.Unlock()
}

func (c *conn) readFailed(err error) {
	c.mu.Lock()
	draining, dead := c.draining, c.dead
	c.mu.Unlock()
	switch {
	case dead:
	case draining && errors.Is(err, os.ErrDeadlineExceeded):
		c.finishReading(errShuttingDown)
	case err == io.EOF:
		// The client closed its side between frames: answer what is in
		// flight, then close.
		c.finishReading(nil)
	case isUnexpectedEOF(err):
		c.s.m.badInput[badMalformed].Add(1)
		c.logBad("client closed the connection inside a frame", err)
		c.teardown()
	case errors.Is(err, wire.ErrFrameTooLarge):
		c.bad(badTooLarge, err)
	case errors.Is(err, wire.ErrMalformed):
		c.bad(badMalformed, err)
	default:
		c.s.logger.Debug("connection read failed", "conn", c.id, "remote", c.remote, "err", err)
		c.teardown()
	}
}

type roomResult int

const (
	roomOK roomResult = iota
	roomDrain
	roomStop
)

// waitRoom blocks while the connection is over its in-flight cap or its
// byte budget (MaxPending): backpressure, the client's requests stay in
// its socket. With reserve (a request was read and is about to be
// dispatched) it blocks instead until the reader has reserved the largest
// reply (see reserveLocked).
func (c *conn) waitRoom(reserve bool) roomResult {
	for {
		c.mu.Lock()
		switch {
		case c.dead || c.closing:
			c.mu.Unlock()
			return roomStop
		case c.draining:
			c.mu.Unlock()
			return roomDrain
		}
		var reason int
		var freed <-chan struct{}
		switch {
		case !reserve && c.inflight >= c.s.maxInflight:
			reason = throttleInflight
		case !reserve && c.held >= c.s.maxPending:
			reason = throttleConn
		case !reserve:
			c.mu.Unlock()
			return roomOK
		case c.reserveLocked():
			c.mu.Unlock()
			return roomOK
		default:
			// Waiting with part of a reply reserved could leave every
			// waiter holding a part: give it back first.
			reason = throttleServer
			c.unreserveLocked()
			freed = c.s.budget.wait()
			// Bytes released before the registration did not close freed.
			if c.reserveLocked() {
				c.s.budget.unwait()
				c.mu.Unlock()
				return roomOK
			}
		}
		// The reader reserves nothing while it waits, and will not write
		// what its requests produced: the writer must.
		c.unreserveLocked()
		if len(c.out) > 0 && !c.busy {
			c.wakeWriter()
		}
		// room also wakes a reader waiting for the server's budget when
		// the connection is drained.
		c.readerWaiting = true
		c.mu.Unlock()
		c.s.throttled(reason, 1)
		select {
		case <-freed:
		case <-c.room:
		case <-c.stop:
		}
		c.s.throttled(reason, -1)
		if reason == throttleServer {
			c.s.budget.unwait()
		}
	}
}

// The reader's reservation. A reader dispatches a request only while it
// has reserved the largest reply (maxReply) in the server's budget, so
// that what the request then adds never takes the server over its
// budget. It reserves in chunks (resvChunk beyond maxReply) and keeps the
// bytes its writes give back, up to maxResv, while it goes on with
// requests already received: a burst of pipelined requests costs no
// operation on the shared budget per request. It gives everything back
// before it waits for anything (the network, room), so an idle or
// throttled connection reserves nothing.
const resvChunk = 64 << 10

func (c *conn) maxResv() int { return c.s.maxReply + 2*resvChunk }

// reserveLocked makes sure the reader has reserved a reply: it tops the
// reservation up to a reply and a chunk (with less room, to a reply) and
// reports whether it holds a reply's worth.
func (c *conn) reserveLocked() bool {
	if c.resv >= c.s.maxReply {
		c.active = true
		return true
	}
	for _, want := range [2]int{c.s.maxReply + resvChunk, c.s.maxReply} {
		if c.s.budget.tryReserve(int64(want - c.resv)) {
			c.resv = want
			c.active = true
			return true
		}
	}
	return false
}

// unreserveLocked gives the reader's reservation back to the budget.
func (c *conn) unreserveLocked() {
	if c.resv > 0 {
		c.s.budget.release(int64(c.resv))
		c.resv = 0
	}
	c.active = false
}

// wakeReaderLocked lets a reader blocked in waitRoom re-check.
func (c *conn) wakeReaderLocked() {
	if c.readerWaiting {
		c.readerWaiting = false
		select {
		case c.room <- struct{}{}:
		default:
		}
	}
}

func (c *conn) wakeWriter() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// outputLocked wakes the writer for new output, unless the reader is
// active: it writes the output itself, or wakes the writer, before it
// waits for anything (when it gives its reservation back).
func (c *conn) outputLocked() {
	c.notePeakLocked()
	if !c.active {
		c.wakeWriter()
	}
}

// chargeLocked accounts delta more (or, negative, fewer) bytes held for
// the connection's replies. Bytes a request adds (tag: a held or encoded
// reply; a released held reply is encoded in no more than its charge, see
// replySize) come out of the reader's reservation, made before it
// dispatched the request. Bytes of no request (noTag: lost markers, error
// and control frames, a few bytes each) are added to the budget as they
// are. Bytes given back refill the reservation of an active reader; the
// rest returns to the server's budget.
func (c *conn) chargeLocked(tag uint32, delta int) {
	c.held += delta
	if c.held > c.peakHeld {
		c.peakHeld = c.held
	}
	switch {
	case delta > 0:
		take := 0
		if tag != noTag {
			take = min(delta, c.resv)
			c.resv -= take
		}
		if delta > take {
			c.s.budget.force(int64(delta - take))
		}
	case delta < 0:
		give := -delta
		if c.active {
			keep := min(give, max(c.maxResv()-c.resv, 0))
			c.resv += keep
			give -= keep
		}
		if give > 0 {
			c.s.budget.release(int64(give))
		}
	}
}

// dispatch hands a request to the Engine (or answers it) once the reader
// has reserved room for its reply. It reports false when the connection
// must stop reading (torn down; or drained, and the request is not
// served).
func (c *conn) dispatch(id uint64, req *paxos.Request) bool {
	start := time.Now()
	c.mu.Lock()
	for !c.reserveLocked() {
		c.mu.Unlock()
		switch c.waitRoom(true) {
		case roomOK:
		case roomDrain:
			c.finishReading(errShuttingDown)
			return false
		default:
			return false
		}
		c.mu.Lock()
	}
	var tag uint32
	if n := len(c.free); n > 0 {
		tag = c.free[n-1]
		c.free = c.free[:n-1]
	} else {
		tag = uint32(len(c.slots))
		c.slots = append(c.slots, slot{})
	}
	c.slots[tag] = slot{id: id, start: start, kind: req.Kind}
	c.inflight++
	c.mu.Unlock()
	switch req.Kind {
	case paxos.KindListen:
		c.s.listen(c, uint64(tag), req.Seg)
	case paxos.KindUnlisten:
		c.s.unlisten(c, req.Seg)
		c.Reply(uint64(tag), &paxos.Response{Kind: req.Kind})
	case paxos.KindStatus:
		c.Reply(uint64(tag), &paxos.Response{Kind: req.Kind, Text: c.s.statusText()})
	case paxos.KindNotify:
		c.Reply(uint64(tag), &paxos.Response{Kind: req.Kind, Status: paxos.StatusInvalid, Text: "notify is a server push, not a request"})
	case paxos.KindDecide:
		// Decide is never answered; the slot is free once handled.
		c.s.eng.HandleAt(c.epoch, req, c, uint64(tag))
		c.mu.Lock()
		c.freeLocked(tag)
		c.mu.Unlock()
		c.s.m.request(paxos.KindDecide, int(paxos.StatusOK), time.Since(start))
	default:
		c.s.eng.HandleAt(c.epoch, req, c, uint64(tag))
	}
	return true
}

func (c *conn) freeLocked(tag uint32) {
	c.free = append(c.free, tag)
	c.inflight--
	c.wakeReaderLocked()
	if c.readDone && c.inflight == 0 {
		c.wakeWriter()
	}
}

// Reply implements Replier: it encodes resp into the output buffer (never
// blocking on the network) and wakes the writer, unless the reader, which
// is active, will see to it.
func (c *conn) Reply(tag uint64, resp *paxos.Response) {
	c.mu.Lock()
	sl := &c.slots[tag]
	kind, start := sl.kind, sl.start
	added := 0
	if !c.dead && !c.closing {
		n := len(c.out)
		c.out = wire.AppendResponse(c.out, sl.id, resp)
		if len(c.out)-n-4 > c.s.maxFrame {
			c.out = c.out[:n]
			c.out = wire.AppendResponse(c.out, sl.id, &paxos.Response{Kind: resp.Kind, Status: paxos.StatusError, Text: "the response does not fit in the frame limit"})
		}
		added = len(c.out) - n
		c.outputLocked()
	}
	// The encoded reply replaces the held copy, if any.
	c.chargeLocked(uint32(tag), added-sl.hold)
	sl.hold = 0
	c.freeLocked(uint32(tag))
	c.mu.Unlock()
	c.s.m.request(kind, int(resp.Status), time.Since(start))
}

// Hold implements Holder: the Engine keeps a copy of the response to tag
// until a sync; it is charged to the connection until Reply or Abandon.
func (c *conn) Hold(tag uint64, resp *paxos.Response) {
	n := replySize(resp)
	c.mu.Lock()
	c.slots[tag].hold = n
	c.chargeLocked(uint32(tag), n)
	c.mu.Unlock()
}

// Abandon implements Replier: the reply will never be sent.
func (c *conn) Abandon(tag uint64) {
	c.mu.Lock()
	sl := &c.slots[tag]
	kind, start := sl.kind, sl.start
	c.chargeLocked(uint32(tag), -sl.hold)
	sl.hold = 0
	c.freeLocked(uint32(tag))
	c.mu.Unlock()
	c.s.m.request(kind, statusDropped, time.Since(start))
}

func (c *conn) notePeakLocked() {
	if p := len(c.out) + c.writing; p > c.peak {
		c.peak = p
	}
}

// push queues a write notification of seg (frame, an encoded push), or
// marks the subscription lost when the connection is over its byte budget
// or the server-wide budget has no room for it.
func (c *conn) push(seg uint64, frame []byte) {
	c.mu.Lock()
	lost, ok := c.subs[seg]
	if !ok || c.dead || c.closing {
		c.mu.Unlock()
		return
	}
	n := len(frame)
	if lost {
		n += lostMarkerSize
	}
	if c.held >= c.s.maxPending || !c.s.budget.tryReserve(int64(n)) {
		if !lost {
			c.subs[seg] = true
			c.nlost++
		}
		c.mu.Unlock()
		c.s.m.notifyLost.Add(1)
		return
	}
	start := len(c.out)
	if lost {
		c.out = wire.AppendPush(c.out, &paxos.Response{Kind: paxos.KindNotify, Seg: seg})
		c.subs[seg] = false
		c.nlost--
	}
	c.out = append(c.out, frame...)
	// Reserved above: the budget already counts these bytes.
	c.held += len(c.out) - start
	c.outputLocked()
	c.mu.Unlock()
	c.s.m.notifySent.Add(1)
}

// lostMarkerSize is the encoded size of a lost marker (a push of Seg with
// Count 0), which the Seg field sets.
var lostMarkerSize = len(wire.AppendPush(nil, &paxos.Response{Kind: paxos.KindNotify, Seg: 1}))

// appendLostLocked queues the lost markers (Count 0) of every
// subscription that dropped notifications.
func (c *conn) appendLostLocked() {
	start := len(c.out)
	for seg, lost := range c.subs {
		if lost {
			c.out = wire.AppendPush(c.out, &paxos.Response{Kind: paxos.KindNotify, Seg: seg})
			c.subs[seg] = false
		}
	}
	c.nlost = 0
	// A few bytes per listened segment, at most MaxSubscriptions of them:
	// not worth refusing.
	c.chargeLocked(noTag, len(c.out)-start)
	c.notePeakLocked()
}

// takeOutLocked hands the queued output to a write (the caller's).
func (c *conn) takeOutLocked() []byte {
	buf := c.out
	c.out, c.spare = c.spare[:0], nil
	c.busy, c.writing = true, len(buf)
	c.notePeakLocked()
	return buf
}

// write writes buf, counting the write for the watchdog; it is the only
// place output reaches the network after the handshake.
func (c *conn) write(buf []byte) error {
	c.wseq.Add(1)
	_, err := c.rw.Write(buf)
	c.wseq.Add(1)
	return err
}

// wroteLocked ends the write of buf: its bytes leave the budget and the
// buffer is kept for reuse when small enough.
func (c *conn) wroteLocked(buf []byte) {
	c.chargeLocked(noTag, -c.writing)
	c.busy, c.writing = false, 0
	if cap(buf) <= maxKeptBuffer {
		c.spare = buf[:0]
	}
	c.wakeReaderLocked()
}

func (c *conn) writeFailed(err error, closing bool) {
	if !closing {
		c.s.logger.Debug("connection write failed", "conn", c.id, "remote", c.remote, "err", err)
	}
	c.teardown()
}

// writeLoop hands the output buffer to the network whenever it holds
// something and the reader is not writing it: replies that became ready
// together leave in one write. It also sends the lost markers, the final
// error frame, and closes the connection when everything has left.
func (c *conn) writeLoop() {
	defer close(c.writerDone)
	c.mu.Lock()
	for {
		switch {
		case c.dead:
			c.mu.Unlock()
			return
		case c.busy:
			// The reader is writing inline; it wakes us if it leaves
			// output behind.
			c.waitLocked()
			continue
		case c.nlost > 0 && !c.closing && len(c.out) < c.s.maxPending/2:
			c.appendLostLocked()
		case len(c.out) > 0:
		case c.closing:
			// The error frame has been written.
			c.mu.Unlock()
			c.teardown()
			return
		case c.readDone && c.inflight == 0:
			if c.final == nil {
				c.mu.Unlock()
				c.teardown()
				return
			}
			n := len(c.out)
			c.out = wire.AppendErrorFrame(c.out, wire.CodeOf(c.final), c.final.Error())
			c.chargeLocked(noTag, len(c.out)-n)
			c.setClosingLocked()
		default:
			c.waitLocked()
			continue
		}
		buf := c.takeOutLocked()
		closing := c.closing
		c.mu.Unlock()
		err := c.write(buf)
		c.mu.Lock()
		c.wroteLocked(buf)
		if err != nil {
			c.mu.Unlock()
			c.writeFailed(err, closing)
			return
		}
	}
}

// waitLocked waits (c.mu released meanwhile) until the writer is woken or
// the connection torn down.
func (c *conn) waitLocked() {
	c.mu.Unlock()
	select {
	case <-c.wake:
	case <-c.stop:
	}
	c.mu.Lock()
}

// setClosingLocked records that an error frame is queued: no more output,
// and the watchdog bounds its flush by errorFlushTimeout.
func (c *conn) setClosingLocked() {
	c.closing = true
	c.flushing.Store(true)
}

// finishReading records that no more requests will be read; the writer
// closes the connection once every reply in flight has left, after
// sending final (an error frame) if it is not nil.
func (c *conn) finishReading(final error) {
	c.mu.Lock()
	c.readDone = true
	c.final = final
	c.unreserveLocked()
	c.mu.Unlock()
	c.wakeWriter()
}

// bad answers bad input with an error frame and closes the connection
// once it is flushed (replies still in flight are dropped).
func (c *conn) bad(reason int, err error) {
	c.s.m.badInput[reason].Add(1)
	c.logBad("closing a connection after bad input", err)
	c.mu.Lock()
	if !c.dead && !c.closing {
		n := len(c.out)
		c.out = wire.AppendErrorFrame(c.out, wire.CodeOf(err), err.Error())
		c.chargeLocked(noTag, len(c.out)-n)
		c.setClosingLocked()
		c.readDone = true
	}
	c.unreserveLocked()
	c.mu.Unlock()
	c.wakeWriter()
}

func (c *conn) logBad(msg string, err error) {
	if ok, supp := c.s.badLog.allow(); ok {
		c.s.logger.Warn(msg, "conn", c.id, "remote", c.remote, "client", c.client, "err", err, "suppressed", supp)
	}
}

// drain starts a graceful close (Shutdown).
func (c *conn) drain() {
	c.mu.Lock()
	c.draining = true
	c.wakeReaderLocked()
	c.mu.Unlock()
	// Unblock a reader waiting in Next; what it has not read is not
	// served.
	c.nc.SetReadDeadline(time.Unix(1, 0))
}

// teardown closes the connection at once: queued output is dropped (and
// leaves the budget). Idempotent.
func (c *conn) teardown() {
	c.once.Do(func() {
		c.mu.Lock()
		c.dead = true
		c.unreserveLocked()
		c.chargeLocked(noTag, -len(c.out))
		c.out = c.out[:0]
		c.mu.Unlock()
		close(c.stop)
		c.nc.Close()
	})
}

// peakOutput returns the highest output backlog the connection had.
func (c *conn) peakOutput() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.peak
}
