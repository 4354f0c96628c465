package server

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/wormspace/wormspace/worm/paxos"
	"github.com/wormspace/wormspace/worm/wire"
)

// conn is one client connection: a reader goroutine (serve) that decodes
// requests and feeds the Engine, and a writer goroutine that drains the
// output buffer the replies are encoded into.
//
// Lock order: Engine.mu → Server.subMu → conn.mu. Nothing holding conn.mu
// calls into the Engine or takes subMu.
type conn struct {
	s      *Server
	nc     net.Conn
	id     uint64
	remote string
	client string // the client's hello ID

	stop       chan struct{} // closed by teardown
	wake       chan struct{} // cap 1: the writer has something to do
	room       chan struct{} // cap 1: the reader may continue
	writerDone chan struct{}
	once       sync.Once

	mu            sync.Mutex
	out           []byte // encoded frames not yet handed to the writer
	spare         []byte // the writer's previous buffer, for reuse
	writing       int    // bytes the writer is writing now
	peak          int    // highest out+writing seen (tests, status)
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

// slot remembers a request in flight; its index is the Engine tag.
type slot struct {
	id    uint64
	start time.Time
	kind  paxos.Kind
}

func newConn(s *Server, nc net.Conn) *conn {
	return &conn{
		s:          s,
		nc:         nc,
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
	hello, err := wire.ServerHandshake(ctx, c.nc, c.s.hello, c.s.key)
	cancel()
	if err != nil {
		c.s.handshakeFailed(c, err)
		c.teardown()
		return
	}
	c.client = hello.ID
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
	r := wire.NewReader(c.nc, c.s.maxFrame)
	var req paxos.Request
	for {
		switch c.waitRoom() {
		case roomOK:
		case roomDrain:
			c.finishReading(shutdownErr)
			return
		default:
			return
		}
		f, err := r.Next()
		if err != nil {
			c.readFailed(err)
			return
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
		c.dispatch(f.ID, &req)
	}
}

func (c *conn) readFailed(err error) {
	c.mu.Lock()
	draining, dead := c.draining, c.dead
	c.mu.Unlock()
	switch {
	case dead:
	case draining && errors.Is(err, os.ErrDeadlineExceeded):
		c.finishReading(shutdownErr)
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

// waitRoom blocks while the connection is over its in-flight or output
// cap (backpressure: the client's requests stay in its socket).
func (c *conn) waitRoom() roomResult {
	for {
		c.mu.Lock()
		switch {
		case c.dead || c.closing:
			c.mu.Unlock()
			return roomStop
		case c.draining:
			c.mu.Unlock()
			return roomDrain
		case c.inflight < c.s.maxInflight && len(c.out)+c.writing < c.s.maxPending:
			c.mu.Unlock()
			return roomOK
		}
		c.readerWaiting = true
		c.mu.Unlock()
		select {
		case <-c.room:
		case <-c.stop:
			return roomStop
		}
	}
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

func (c *conn) dispatch(id uint64, req *paxos.Request) {
	start := time.Now()
	c.mu.Lock()
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
		c.s.eng.Handle(req, c, uint64(tag))
		c.mu.Lock()
		c.freeLocked(uint32(tag))
		c.mu.Unlock()
		c.s.m.request(paxos.KindDecide, int(paxos.StatusOK), time.Since(start))
	default:
		c.s.eng.Handle(req, c, uint64(tag))
	}
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
// blocking on the network) and wakes the writer.
func (c *conn) Reply(tag uint64, resp *paxos.Response) {
	c.mu.Lock()
	sl := c.slots[tag]
	if !c.dead && !c.closing {
		n := len(c.out)
		c.out = wire.AppendResponse(c.out, sl.id, resp)
		if len(c.out)-n-4 > c.s.maxFrame {
			c.out = c.out[:n]
			c.out = wire.AppendResponse(c.out, sl.id, &paxos.Response{Kind: resp.Kind, Status: paxos.StatusError, Text: "the response does not fit in the frame limit"})
		}
		c.notePeakLocked()
		c.wakeWriter()
	}
	c.freeLocked(uint32(tag))
	c.mu.Unlock()
	c.s.m.request(sl.kind, int(resp.Status), time.Since(sl.start))
}

// Abandon implements Replier: the reply will never be sent.
func (c *conn) Abandon(tag uint64) {
	c.mu.Lock()
	sl := c.slots[tag]
	c.freeLocked(uint32(tag))
	c.mu.Unlock()
	c.s.m.request(sl.kind, statusDropped, time.Since(sl.start))
}

func (c *conn) notePeakLocked() {
	if p := len(c.out) + c.writing; p > c.peak {
		c.peak = p
	}
}

// push queues a write notification of seg (frame, an encoded push), or
// marks the subscription lost when the connection's output is over its
// cap.
func (c *conn) push(seg uint64, frame []byte) {
	c.mu.Lock()
	lost, ok := c.subs[seg]
	if !ok || c.dead || c.closing {
		c.mu.Unlock()
		return
	}
	if len(c.out)+c.writing >= c.s.maxPending {
		if !lost {
			c.subs[seg] = true
			c.nlost++
		}
		c.mu.Unlock()
		c.s.m.notifyLost.Add(1)
		return
	}
	if lost {
		c.out = wire.AppendPush(c.out, &paxos.Response{Kind: paxos.KindNotify, Seg: seg})
		c.subs[seg] = false
		c.nlost--
	}
	c.out = append(c.out, frame...)
	c.notePeakLocked()
	c.wakeWriter()
	c.mu.Unlock()
	c.s.m.notifySent.Add(1)
}

// appendLostLocked queues the lost markers (Count 0) of every
// subscription that dropped notifications.
func (c *conn) appendLostLocked() {
	for seg, lost := range c.subs {
		if lost {
			c.out = wire.AppendPush(c.out, &paxos.Response{Kind: paxos.KindNotify, Seg: seg})
			c.subs[seg] = false
		}
	}
	c.nlost = 0
	c.notePeakLocked()
}

// writeLoop hands the output buffer to the network whenever it holds
// something: replies that became ready together leave in one write.
func (c *conn) writeLoop() {
	defer close(c.writerDone)
	for {
		c.mu.Lock()
		for len(c.out) == 0 || c.nlost > 0 && !c.closing && len(c.out) < c.s.maxPending/2 {
			if c.dead {
				c.mu.Unlock()
				return
			}
			if c.nlost > 0 && !c.closing && len(c.out) < c.s.maxPending/2 {
				c.appendLostLocked()
				continue
			}
			if c.closing {
				// The error frame has been written.
				c.mu.Unlock()
				c.teardown()
				return
			}
			if c.readDone && c.inflight == 0 {
				if c.final == nil {
					c.mu.Unlock()
					c.teardown()
					return
				}
				c.out = wire.AppendErrorFrame(c.out, wire.CodeOf(c.final), c.final.Error())
				c.closing = true
				break
			}
			c.mu.Unlock()
			select {
			case <-c.wake:
			case <-c.stop:
			}
			c.mu.Lock()
		}
		buf := c.out
		c.out, c.spare = c.spare[:0], nil
		c.writing = len(buf)
		closing := c.closing
		c.mu.Unlock()

		timeout := c.s.writeTimeout
		if closing && (timeout < 0 || timeout > errorFlushTimeout) {
			timeout = errorFlushTimeout
		}
		if timeout > 0 {
			c.nc.SetWriteDeadline(time.Now().Add(timeout))
		}
		_, err := c.nc.Write(buf)

		c.mu.Lock()
		c.writing = 0
		if cap(buf) <= maxKeptBuffer {
			c.spare = buf[:0]
		}
		c.wakeReaderLocked()
		c.mu.Unlock()
		if err != nil {
			if !closing {
				c.s.logger.Debug("connection write failed", "conn", c.id, "remote", c.remote, "err", err)
			}
			c.teardown()
			return
		}
	}
}

// finishReading records that no more requests will be read; the writer
// closes the connection once every reply in flight has left, after
// sending final (an error frame) if it is not nil.
func (c *conn) finishReading(final error) {
	c.mu.Lock()
	c.readDone = true
	c.final = final
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
		c.out = wire.AppendErrorFrame(c.out, wire.CodeOf(err), err.Error())
		c.closing = true
		c.readDone = true
	}
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

// teardown closes the connection at once. Idempotent.
func (c *conn) teardown() {
	c.once.Do(func() {
		c.mu.Lock()
		c.dead = true
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
