package chain

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/sockio"
	"github.com/wormspace/wormspace/worm/wire"
)

// Dialer makes connections (kernel TCP, gVisor netstack).
type Dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

type tcpDialer struct{ d net.Dialer }

func (t tcpDialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	c, err := t.d.DialContext(ctx, network, address)
	if err != nil {
		return nil, err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	return c, nil
}

// ServerConfig configures one replica's server.
type ServerConfig struct {
	// Chain is every replica's address, head first. Clients must be given
	// the same list; the replica at Index forwards writes to Chain[Index+1].
	Chain []string
	// Index is this replica's position in Chain.
	Index int
	// Cluster is the cluster name announced in the handshake.
	Cluster string
	// Key is the cluster key (nil: no authentication, as wormd without a
	// key). The link to the successor authenticates with it too.
	Key []byte
	// MaxValue is the largest value accepted (default wire.DefaultMaxValue).
	MaxValue int
	// Dialer makes the link to the successor (default: kernel TCP with
	// TCP_NODELAY).
	Dialer Dialer
	// MaxPendingBytes bounds what one connection (or the link) may have
	// queued and unread; past it a client connection is closed and the
	// link refuses to forward (default 64 MiB).
	MaxPendingBytes int
	// Logger (default slog.Default()).
	Logger *slog.Logger
}

// Server is one chain replica: it serves clients and its predecessor's
// link, applies requests to its Replica, makes their records durable
// (group commit) before anything that depends on them leaves, and
// forwards writes to its successor.
type Server struct {
	cfg      ServerConfig
	log      *slog.Logger
	segSize  uint32
	head     bool
	tail     bool
	maxFrame int
	desc     string // the chain as this replica knows it (hello text)

	mu        sync.Mutex // the engine lock: everything below
	rep       *Replica
	disk      *Disk
	recs      []Record
	end       uint64 // log position after the last appended record
	synced    uint64 // log position known durable
	waiting   []pending
	failed    error
	closed    bool
	inline    bool // the Disk syncs cheaply: a request may lead a sync itself
	syncing   bool
	sessions  map[uint64]*sconn
	listeners map[uint64]map[*sconn]struct{}
	// scratch, reused under mu
	enc       []byte
	outs      []WriteOut
	fwd       request
	resp      response
	written   []worm.Entry
	contended []uint32
	stats     serverStats

	kick chan struct{}
	done chan struct{}
	wg   sync.WaitGroup

	link *link

	netMu sync.Mutex
	lns   []net.Listener
	conns map[*sconn]struct{}
}

type serverStats struct {
	Requests   uint64 `json:"requests"`
	Writes     uint64 `json:"writes"`
	Forwarded  uint64 `json:"forwarded"`
	Answered   uint64 `json:"answered_writes"`
	Seals      uint64 `json:"seals"`
	Reads      uint64 `json:"reads"`
	NoSession  uint64 `json:"replies_without_session"`
	LinkRefuse uint64 `json:"link_refused"`
}

// pending is a frame waiting for the log to be durable up to need.
type pending struct {
	need uint64
	to   outlet
	buf  *[]byte
}

// outlet is where a frame goes: a client connection or the link.
//
// put copies frame (the caller reuses it at once) and queues it behind
// every frame put before it; it never blocks and is called with the
// engine lock held. false means the frame is dropped: the connection is
// gone, or its peer stopped reading (a client connection is then
// closed), or the link is down. A dropped frame's client learns nothing
// and times out, which is the truth: the outcome is unknown to it.
type outlet interface {
	put(frame []byte) bool
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 256); return &b }}

// NewServer returns a server for the replica recovered from disk. The
// server owns disk (Close closes it). It starts the link to the
// successor at once.
func NewServer(cfg ServerConfig, rep *Replica, disk *Disk) (*Server, error) {
	if len(cfg.Chain) == 0 || len(cfg.Chain) > maxChain {
		return nil, fmt.Errorf("chain: %d replicas (want 1..%d)", len(cfg.Chain), maxChain)
	}
	if cfg.Index < 0 || cfg.Index >= len(cfg.Chain) {
		return nil, fmt.Errorf("chain: index %d outside a chain of %d", cfg.Index, len(cfg.Chain))
	}
	if cfg.Key != nil && len(cfg.Key) < wire.MinKeySize {
		return nil, fmt.Errorf("chain: cluster key of %d bytes (want at least %d)", len(cfg.Key), wire.MinKeySize)
	}
	if cfg.MaxValue <= 0 {
		cfg.MaxValue = wire.DefaultMaxValue
	}
	if cfg.Dialer == nil {
		cfg.Dialer = tcpDialer{net.Dialer{KeepAlive: 15 * time.Second}}
	}
	if cfg.MaxPendingBytes <= 0 {
		cfg.MaxPendingBytes = 64 << 20
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Server{
		cfg:       cfg,
		log:       cfg.Logger.With("replica", cfg.Index),
		segSize:   rep.SegmentSize(),
		head:      cfg.Index == 0,
		tail:      cfg.Index == len(cfg.Chain)-1,
		maxFrame:  wire.DefaultMaxFrame,
		desc:      describeChain(cfg.Index, cfg.Chain),
		rep:       rep,
		disk:      disk,
		inline:    disk.SyncIsCheap(),
		sessions:  map[uint64]*sconn{},
		listeners: map[uint64]map[*sconn]struct{}{},
		kick:      make(chan struct{}, 1),
		done:      make(chan struct{}),
		conns:     map[*sconn]struct{}{},
	}
	s.wg.Add(1)
	go s.syncLoop()
	if !s.tail {
		s.link = newLink(s, cfg.Chain[cfg.Index+1])
		s.wg.Add(1)
		go s.link.run()
	}
	return s, nil
}

// describeChain is the hello text: "INDEX ADDR0,ADDR1,...".
func describeChain(index int, chain []string) string {
	return strconv.Itoa(index) + " " + strings.Join(chain, ",")
}

// Serve accepts connections on l until l is closed or the server is
// closed (which closes l).
func (s *Server) Serve(l net.Listener) error {
	s.netMu.Lock()
	if s.isClosed() {
		s.netMu.Unlock()
		l.Close()
		return errors.New("chain: server closed")
	}
	s.lns = append(s.lns, l)
	s.netMu.Unlock()
	var delay time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if s.isClosed() {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		if tc, ok := nc.(*net.TCPConn); ok {
			_ = tc.SetNoDelay(true)
		}
		c := &sconn{s: s, nc: nc, box: newOutbox(), stop: make(chan struct{})}
		s.netMu.Lock()
		if s.isClosed() {
			s.netMu.Unlock()
			nc.Close()
			return nil
		}
		s.conns[c] = struct{}{}
		s.netMu.Unlock()
		go c.serve()
	}
}

func (s *Server) isClosed() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// Close stops accepting, closes every connection and the link, flushes
// what waits for the log (one last sync) and closes the log. Idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.wg.Wait()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.netMu.Lock()
	close(s.done)
	for _, l := range s.lns {
		l.Close()
	}
	for c := range s.conns {
		c.nc.Close()
	}
	s.netMu.Unlock()
	s.wg.Wait()
	return s.disk.Close()
}

// abort stops the server as a crash would: what waits for the log is
// dropped unsynced, connections break, nothing more reaches the disk. For
// tests of recovery; a process that dies does the same.
func (s *Server) abort() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.failed = errors.New("chain: replica aborted")
	for i := range s.waiting {
		bufPool.Put(s.waiting[i].buf)
	}
	clear(s.waiting)
	s.waiting = s.waiting[:0]
	s.mu.Unlock()
	s.disk.abort()
	s.netMu.Lock()
	close(s.done)
	for _, l := range s.lns {
		l.Close()
	}
	for c := range s.conns {
		c.nc.Close()
	}
	s.netMu.Unlock()
	s.wg.Wait()
}

// ---------------------------------------------------------------------------
// Server-side connections

// sconn is one inbound connection: a client's, or the predecessor's link.
type sconn struct {
	s       *Server
	nc      net.Conn
	box     outbox
	stop    chan struct{}
	link    bool   // the predecessor's link (set by the handshake)
	session uint64 // registered by hello (under s.mu)
	dead    atomic.Bool
}

func (c *sconn) put(frame []byte) bool {
	if c.dead.Load() {
		return false
	}
	if !c.box.put(frame, c.s.cfg.MaxPendingBytes) {
		c.s.log.Warn("closing a connection that does not read its replies", "peer", c.nc.RemoteAddr())
		c.nc.Close()
		return false
	}
	return true
}

func (c *sconn) serve() {
	s := c.s
	defer func() {
		c.dead.Store(true)
		c.nc.Close()
		close(c.stop)
		s.forget(c)
		s.netMu.Lock()
		delete(s.conns, c)
		s.netMu.Unlock()
	}()
	hctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	ch, err := wire.ServerHandshake(hctx, c.nc, wire.ServerHello{
		Flags:       helloChain,
		AcceptorID:  uint32(s.cfg.Index + 1),
		Cluster:     s.cfg.Cluster,
		SegmentSize: s.segSize,
		MaxValue:    uint32(s.cfg.MaxValue),
		MaxFrame:    uint32(s.maxFrame),
	}, s.cfg.Key)
	cancel()
	if err != nil {
		s.log.Debug("handshake failed", "peer", c.nc.RemoteAddr(), "err", err)
		return
	}
	if ch.Flags&helloChain == 0 {
		c.nc.Write(wire.AppendErrorFrame(nil, wire.CodeOther, "this is a chain replica (apps/chain), not a wormserver: use the chain client"))
		return
	}
	c.link = ch.Flags&helloLink != 0
	go c.box.loop(c.nc, c.stop)
	rd := wire.NewReader(sockio.ReadWriter(c.nc), s.maxFrame)
	var req request
	for {
		f, err := rd.Next()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.EOF) {
				s.log.Debug("connection ended", "peer", c.nc.RemoteAddr(), "err", err)
			}
			if errors.Is(err, wire.ErrMalformed) || errors.Is(err, wire.ErrFrameTooLarge) {
				c.nc.Write(wire.AppendErrorFrame(nil, wire.CodeOf(err), err.Error()))
			}
			return
		}
		switch f.Type {
		case wire.FrameRequest:
		case wire.FrameErr:
			re, _ := wire.DecodeError(f.Payload)
			s.log.Debug("peer closed with an error", "peer", c.nc.RemoteAddr(), "err", re)
			return
		default:
			c.nc.Write(wire.AppendErrorFrame(nil, wire.CodeMalformed, "unexpected "+f.Type.String()+" frame"))
			return
		}
		if err := decodeRequest(f.Payload, s.cfg.MaxValue, &req); err != nil {
			c.nc.Write(wire.AppendErrorFrame(nil, wire.CodeMalformed, err.Error()))
			return
		}
		s.handle(c, f.ID, &req)
	}
}

// forget drops a closed connection's session and subscriptions.
func (s *Server) forget(c *sconn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c.session != 0 && s.sessions[c.session] == c {
		delete(s.sessions, c.session)
	}
	for seg, ls := range s.listeners {
		delete(ls, c)
		if len(ls) == 0 {
			delete(s.listeners, seg)
		}
	}
}

// ---------------------------------------------------------------------------
// The engine

// handle applies one request and arranges for its outputs (a response, a
// forwarded write, notifications) to leave once the log is durable up to
// every record appended before they were computed.
func (s *Server) handle(from *sconn, id uint64, req *request) {
	s.mu.Lock()
	s.stats.Requests++
	if s.failed != nil || s.closed {
		reason := "chain: replica stopped"
		if s.failed != nil {
			reason = s.failed.Error()
		}
		s.resp = response{op: req.op, status: StatusError, text: reason}
		s.enc = appendResponse(s.enc[:0], wire.FrameResponse, id, &s.resp)
		from.put(s.enc)
		s.mu.Unlock()
		return
	}
	recs := s.recs[:0]
	var to outlet = from
	// Reset the scratch response, keeping its entries' storage.
	s.resp = response{op: req.op, entries: s.resp.entries[:0]}
	r := &s.resp
	notify := false // a write stored registers here: tell the segment's listeners
	switch req.op {
	case opHello:
		if req.session != 0 && !from.link {
			if old := s.sessions[req.session]; old != nil && old != from {
				old.session = 0
			}
			s.sessions[req.session] = from
			from.session = req.session
		}
		r.text = s.desc
	case opSeal:
		s.stats.Seals++
		var res SealResult
		res, recs = s.rep.Seal(req.seg, req.off, req.tok, recs)
		r.status, r.promised, r.has, r.value = res.Status, res.Promised, res.Has, res.Value
	case opSealSeg:
		s.stats.Seals++
		var res SegSealResult
		res, recs = s.rep.SealSeg(req.seg, req.tok, s.written, s.contended, recs)
		s.written, s.contended = res.Written, res.Contended
		r.status, r.promised, r.contended = res.Status, res.Promised, res.Contended
		r.entries = r.entries[:0]
		for _, e := range res.Written {
			r.entries = append(r.entries, entry{off: e.Off, value: e.Value})
		}
	case opRead:
		s.stats.Reads++
		res := s.rep.Read(req.seg, req.off)
		r.status, r.value, r.has, r.allocated = res.Status, res.Value, res.Status == StatusOK, res.Allocated
	case opTrim:
		recs = s.rep.Trim(req.seg, recs)
		delete(s.listeners, req.seg)
	case opListen:
		if s.rep.IsTrimmed(req.seg) {
			r.status = StatusTrimmed
			break
		}
		ls := s.listeners[req.seg]
		if ls == nil {
			ls = map[*sconn]struct{}{}
			s.listeners[req.seg] = ls
		}
		ls[from] = struct{}{}
	case opUnlisten:
		if ls := s.listeners[req.seg]; ls != nil {
			delete(ls, from)
			if len(ls) == 0 {
				delete(s.listeners, req.seg)
			}
		}
	case opStatus:
		r.text = s.statusLocked()
	case opWrite:
		s.stats.Writes++
		to, recs = s.writeLocked(from, id, req, recs)
		notify = len(s.listeners[req.seg]) > 0 && req.off != worm.MetaOffset
	default:
		r.status, r.text = StatusInvalid, "unknown operation "+opName(req.op)
	}
	if req.op != opWrite {
		s.enc = appendResponse(s.enc[:0], wire.FrameResponse, id, r)
		if len(s.enc)-4 > s.maxFrame {
			*r = response{op: req.op, status: StatusError, text: fmt.Sprintf("response of %d bytes exceeds the frame limit", len(s.enc))}
			s.enc = appendResponse(s.enc[:0], wire.FrameResponse, id, r)
		}
	}
	if len(recs) > 0 {
		s.end = s.disk.Append(recs)
	}
	s.recs = recs[:0]
	need := s.end
	s.emitLocked(need, to, s.enc)
	if notify {
		s.notifyLocked(need, req.seg, req.off)
	}
	s.releaseLocked()
}

// notifyLocked tells seg's listeners about every run of registers the
// write just handled (s.outs, from off) stored here for the first time.
func (s *Server) notifyLocked(need, seg uint64, off uint32) {
	start := -1
	emit := func(end int) {
		s.enc = appendNotify(s.enc[:0], seg, off+uint32(start), uint32(end-start))
		for l := range s.listeners[seg] {
			s.emitLocked(need, l, s.enc)
		}
		start = -1
	}
	for i, o := range s.outs {
		if o.Fresh {
			if start < 0 {
				start = i
			}
		} else if start >= 0 {
			emit(i)
		}
	}
	if start >= 0 {
		emit(len(s.outs))
	}
}

// emitLocked sends frame to to now, or queues it until the log is durable
// up to need. Frames leave in the order they were emitted.
func (s *Server) emitLocked(need uint64, to outlet, frame []byte) {
	if len(s.waiting) == 0 && s.synced >= need {
		to.put(frame)
		return
	}
	bp := bufPool.Get().(*[]byte)
	*bp = append((*bp)[:0], frame...)
	s.waiting = append(s.waiting, pending{need: need, to: to, buf: bp})
}

// releaseLocked arranges for a sync when frames wait for one: it leads
// the sync itself when the log syncs cheaply and nobody else is syncing,
// else it wakes the sync goroutine. s.mu is held on entry and on return.
func (s *Server) releaseLocked() {
	if len(s.waiting) == 0 {
		s.mu.Unlock()
		return
	}
	if !s.inline {
		s.mu.Unlock()
		select {
		case s.kick <- struct{}{}:
		default:
		}
		return
	}
	if s.syncing {
		s.mu.Unlock()
		return
	}
	s.syncing = true
	s.mu.Unlock()
	s.syncOnce()
	s.mu.Lock()
	more := len(s.waiting) > 0
	if !more {
		s.syncing = false
	}
	s.mu.Unlock()
	if more {
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
}

// writeLocked applies a write at this replica and returns where its
// frame (in s.enc) goes: the successor's link, or the client's session.
// nil: nothing to send.
func (s *Server) writeLocked(from *sconn, id uint64, req *request, recs []Record) (outlet, []Record) {
	r := &s.resp
	s.outs = s.outs[:0]
	if from.link == s.head {
		// Writes enter at the head, from a client; every other replica
		// takes them only from its predecessor. Anything else would let a
		// value bypass the head, which keeps the register write-once.
		r.status, r.text = StatusInvalid, fmt.Sprintf("replica %d of %d does not take writes from a %s", s.cfg.Index, len(s.cfg.Chain), map[bool]string{true: "replica link", false: "client"}[from.link])
		s.enc = appendResponse(s.enc[:0], wire.FrameResponse, id, r)
		return s.replyTo(from, req.session), recs
	}
	if st := s.rep.WriteCheck(req.seg, req.off, len(req.regs)); st != StatusOK {
		r.status = st
		s.enc = appendResponse(s.enc[:0], wire.FrameResponse, id, r)
		return s.replyTo(from, req.session), recs
	}
	linkUp := s.tail || s.link.up()
	open := false
	for i := range req.regs {
		in := req.regs[i].in
		var out WriteOut
		if !linkUp && !in.Status.final() {
			// The successor is unreachable: store nothing, so the write
			// has no effect unless a predecessor already stored it.
			out.Status = StatusUnavailable
			if in.Status == StatusOK && in.Stored {
				out.Status, out.Stored = StatusUnknown, true
			}
		} else {
			out, recs = s.rep.Write(req.seg, req.off+uint32(i), req.tok, req.regs[i].value, in, s.tail, recs)
		}
		s.outs = append(s.outs, out)
		open = open || !out.Status.final()
	}
	if open && !s.tail {
		f := &s.fwd
		f.op, f.seg, f.off, f.tok, f.session = opWrite, req.seg, req.off, req.tok, req.session
		f.regs = f.regs[:0]
		for i, o := range s.outs {
			f.regs = append(f.regs, regIn{in: WriteIn{Status: o.Status, Stored: o.Stored}, value: req.regs[i].value})
		}
		s.enc = appendRequest(s.enc[:0], id, f)
		s.stats.Forwarded++
		return s.link, recs
	}
	r.entries = r.entries[:0]
	for i, o := range s.outs {
		e := entry{off: req.off + uint32(i), status: o.Status}
		if o.Status == StatusWritten {
			e.value = o.Value
		}
		r.entries = append(r.entries, e)
	}
	s.enc = appendResponse(s.enc[:0], wire.FrameResponse, id, r)
	s.stats.Answered++
	return s.replyTo(from, req.session), recs
}

// replyTo returns the client connection that answers for session: the
// client's own connection to this replica, or from when it is a client's.
func (s *Server) replyTo(from *sconn, session uint64) outlet {
	if c := s.sessions[session]; c != nil {
		return c
	}
	if !from.link {
		return from
	}
	s.stats.NoSession++
	return discard{}
}

type discard struct{}

func (discard) put([]byte) bool { return false }

func (s *Server) syncLoop() {
	defer s.wg.Done()
	for {
		stop := false
		select {
		case <-s.kick:
		case <-s.done:
			stop = true
		}
		for s.syncOnce() {
		}
		if stop {
			return
		}
	}
}

// syncOnce syncs the log if frames wait for it and releases those it
// covers, in order. It reports whether it did anything.
func (s *Server) syncOnce() bool {
	s.mu.Lock()
	if len(s.waiting) == 0 || s.failed != nil {
		s.syncing = false
		s.mu.Unlock()
		return false
	}
	s.syncing = true
	s.mu.Unlock()
	durable, err := s.disk.Sync()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		if s.failed == nil {
			s.failed = err
			s.log.Error("storage failed; the replica stops acknowledging", "err", err)
		}
		// Frames that waited must never leave: what they reveal may not
		// be durable. Their clients time out (unknown outcome), which is
		// the truth.
		for i := range s.waiting {
			bufPool.Put(s.waiting[i].buf)
		}
		clear(s.waiting)
		s.waiting = s.waiting[:0]
		return false
	}
	if durable > s.synced {
		s.synced = durable
	}
	i := 0
	for i < len(s.waiting) && s.waiting[i].need <= s.synced {
		p := &s.waiting[i]
		p.to.put(*p.buf)
		bufPool.Put(p.buf)
		i++
	}
	n := copy(s.waiting, s.waiting[i:])
	clear(s.waiting[n:])
	s.waiting = s.waiting[:n]
	return true
}

func (s *Server) statusLocked() string {
	live, trimmed := s.rep.Segments()
	doc := struct {
		Index        int         `json:"index"`
		Chain        []string    `json:"chain"`
		Cluster      string      `json:"cluster"`
		SegmentSize  uint32      `json:"segment_size"`
		LinkUp       bool        `json:"link_up,omitempty"`
		Sessions     int         `json:"sessions"`
		LiveSegments int         `json:"live_segments"`
		Trimmed      int         `json:"trimmed_segments"`
		LiveBytes    int64       `json:"live_bytes"`
		Durable      uint64      `json:"durable"`
		Appended     uint64      `json:"appended"`
		Disk         DiskStats   `json:"disk"`
		Counters     serverStats `json:"counters"`
		Failed       string      `json:"failed,omitempty"`
	}{Index: s.cfg.Index, Chain: s.cfg.Chain, Cluster: s.cfg.Cluster, SegmentSize: s.segSize, Sessions: len(s.sessions),
		LiveSegments: live, Trimmed: trimmed, LiveBytes: s.rep.LiveBytes(), Durable: s.synced, Appended: s.end,
		Disk: s.disk.Stats(), Counters: s.stats}
	if s.link != nil {
		doc.LinkUp = s.link.up()
	}
	if s.failed != nil {
		doc.Failed = s.failed.Error()
	}
	b, _ := json.Marshal(doc)
	return string(b)
}

// ---------------------------------------------------------------------------
// The link to the successor

// link is a replica's connection to its successor, redialed in the
// background. Forwarded writes are queued on it in log order; frames
// queued when it breaks are lost (their clients time out with an unknown
// outcome, or see their own connection to a dead replica break first).
type link struct {
	s      *Server
	addr   string
	box    outbox
	isUp   atomic.Bool
	redial chan struct{} // capacity 1: a write found the link down
}

func newLink(s *Server, addr string) *link {
	return &link{s: s, addr: addr, box: newOutbox(), redial: make(chan struct{}, 1)}
}

// up reports whether the link is established; when it is not, it cuts
// the redial backoff short (a write is waiting for the successor).
func (l *link) up() bool {
	if l.isUp.Load() {
		return true
	}
	select {
	case l.redial <- struct{}{}:
	default:
	}
	return false
}

func (l *link) put(frame []byte) bool {
	if !l.isUp.Load() || !l.box.put(frame, l.s.cfg.MaxPendingBytes) {
		l.s.stats.LinkRefuse++ // under s.mu: put is called with it held
		return false
	}
	return true
}

func (l *link) run() {
	defer l.s.wg.Done()
	var backoff time.Duration
	logged := false
	for {
		err := l.session()
		if l.s.isClosed() {
			return
		}
		if err != nil && !logged {
			l.s.log.Warn("link to the successor is down; writes are refused until it is back", "successor", l.addr, "err", err)
			logged = true
		} else if err == nil {
			logged = false
		}
		// Redial quickly: while the link is down this replica refuses
		// writes. A write that finds it down cuts the wait short.
		backoff = min(max(2*backoff, 5*time.Millisecond), 250*time.Millisecond)
		t := time.NewTimer(backoff/2 + rand.N(backoff/2+1))
		select {
		case <-t.C:
		case <-l.redial:
			t.Stop()
		case <-l.s.done:
			t.Stop()
			return
		}
	}
}

// session dials the successor, checks it, and forwards until the
// connection breaks or the server closes. It returns nil after a session
// that was up.
func (l *link) session() error {
	s := l.s
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	nc, err := s.cfg.Dialer.DialContext(ctx, "tcp", l.addr)
	if err != nil {
		return err
	}
	defer nc.Close()
	sh, err := wire.ClientHandshake(ctx, nc, wire.ClientHello{ID: fmt.Sprintf("chain-replica-%d", s.cfg.Index), Flags: helloChain | helloLink}, s.cfg.Key)
	if err != nil {
		return err
	}
	if sh.Flags&helloChain == 0 {
		return fmt.Errorf("%w: successor %s is not a chain replica", ErrConfig, l.addr)
	}
	if sh.SegmentSize != s.segSize || sh.Cluster != s.cfg.Cluster {
		return fmt.Errorf("%w: successor %s has cluster %q and segment size %d, this replica %q and %d", ErrConfig, l.addr, sh.Cluster, sh.SegmentSize, s.cfg.Cluster, s.segSize)
	}
	rd := wire.NewReader(sockio.ReadWriter(nc), int(sh.MaxFrame))
	desc, err := helloSync(ctx, nc, rd, 0, int(sh.MaxValue))
	if err != nil {
		return err
	}
	if want := describeChain(s.cfg.Index+1, s.cfg.Chain); desc != want {
		return fmt.Errorf("%w: successor %s describes the chain as %q, this replica expects %q", ErrConfig, l.addr, desc, want)
	}
	// Frames queued while the link was down belong to no session of it.
	l.box.reset()
	linkStop := make(chan struct{})
	go func() {
		l.box.loop(nc, linkStop)
	}()
	l.isUp.Store(true)
	s.log.Info("link to the successor is up", "successor", l.addr)
	defer func() {
		l.isUp.Store(false)
		close(linkStop)
		l.box.reset()
	}()
	closed := make(chan struct{})
	go func() {
		select {
		case <-s.done:
			nc.Close()
		case <-closed:
		}
	}()
	defer close(closed)
	// The successor sends nothing on a link but an error frame before it
	// closes; read until then.
	for {
		f, err := rd.Next()
		if err != nil {
			return nil
		}
		if f.Type == wire.FrameErr {
			re, _ := wire.DecodeError(f.Payload)
			s.log.Warn("successor closed the link", "successor", l.addr, "err", re)
			return nil
		}
	}
}

// helloSync sends a hello on a fresh connection and waits for its
// answer, before the connection's reader starts: it returns the chain
// description the replica gave.
func helloSync(ctx context.Context, nc net.Conn, rd *wire.Reader, session uint64, maxValue int) (string, error) {
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
		defer nc.SetDeadline(time.Time{})
	}
	req := request{op: opHello, session: session}
	if _, err := nc.Write(appendRequest(nil, 1, &req)); err != nil {
		return "", err
	}
	f, err := rd.Next()
	if err != nil {
		return "", err
	}
	if f.Type == wire.FrameErr {
		re, derr := wire.DecodeError(f.Payload)
		if derr != nil {
			return "", derr
		}
		return "", re
	}
	var resp response
	if f.Type != wire.FrameResponse || f.ID != 1 {
		return "", fmt.Errorf("%w: hello answered by a %v frame with id %d", ErrMalformed, f.Type, f.ID)
	}
	if err := decodeResponse(f.Payload, maxValue, &resp); err != nil {
		return "", err
	}
	if resp.op != opHello || resp.status != StatusOK {
		return "", fmt.Errorf("chain: hello refused: %v %s", resp.status, resp.text)
	}
	return resp.text, nil
}

// ErrConfig reports replicas that disagree about the chain, or a client
// configured differently from them.
var ErrConfig = errors.New("chain: bad configuration")
