package server

import (
	"encoding/json"
	"runtime/debug"
	"sync"
	"time"

	"github.com/wormspace/wormspace/worm/paxos"
	"github.com/wormspace/wormspace/worm/wire"
)

// listen subscribes c to seg and answers the Listen request (tag). The
// reply is queued while notifications of seg are held off, so it precedes
// every notification of the subscription.
func (s *Server) listen(c *conn, tag uint64, seg uint64) {
	if s.eng.IsTrimmed(seg) {
		c.Reply(tag, &paxos.Response{Kind: paxos.KindListen, Status: paxos.StatusTrimmed})
		return
	}
	s.subMu.Lock()
	defer s.subMu.Unlock()
	c.mu.Lock()
	if _, ok := c.subs[seg]; !ok {
		if len(c.subs) >= s.maxSubs {
			c.mu.Unlock()
			c.Reply(tag, &paxos.Response{Kind: paxos.KindListen, Status: paxos.StatusError, Text: "too many listened segments on this connection"})
			return
		}
		if c.subs == nil {
			c.subs = make(map[uint64]bool)
		}
		c.subs[seg] = false
	}
	c.mu.Unlock()
	set := s.subs[seg]
	if set == nil {
		set = make(map[*conn]struct{})
		s.subs[seg] = set
	}
	set[c] = struct{}{}
	c.Reply(tag, &paxos.Response{Kind: paxos.KindListen})
	// Replay what seg accepted recently. Under subMu no notification is
	// being pushed: every write is either in the replay or pushed to c
	// after it (or, harmlessly, both).
	if f := s.recent.frames(seg); len(f) > 0 {
		c.push(seg, f)
	}
}

func (s *Server) unlisten(c *conn, seg uint64) {
	s.subMu.Lock()
	defer s.subMu.Unlock()
	c.mu.Lock()
	if lost, ok := c.subs[seg]; ok {
		if lost {
			c.nlost--
		}
		delete(c.subs, seg)
	}
	c.mu.Unlock()
	if set := s.subs[seg]; set != nil {
		delete(set, c)
		if len(set) == 0 {
			delete(s.subs, seg)
		}
	}
}

func (s *Server) unsubscribeAll(c *conn) {
	s.subMu.Lock()
	defer s.subMu.Unlock()
	c.mu.Lock()
	subs := c.subs
	c.subs, c.nlost = nil, 0
	c.mu.Unlock()
	for seg := range subs {
		if set := s.subs[seg]; set != nil {
			delete(set, c)
			if len(set) == 0 {
				delete(s.subs, seg)
			}
		}
	}
}

// WriteHook is the Engine's write notification hook: registers [off,
// off+len(values)) of seg accepted values[i] at ballot b, and the records
// saying so are durable. values and their bytes are valid only during the
// call. A nil values[i] means the value is not carried (it was larger
// than notifyValueMax when the notification had to wait for a sync); an
// empty value is non-nil.
type WriteHook func(seg uint64, off uint32, b paxos.Ballot, values [][]byte)

// notifyValueMax is the largest value a write notification carries; a
// larger one is announced as a hint without value, and listeners read it.
// Notifications carry values so that a listener learns a chosen value
// from a quorum of them without reading (the classic Paxos learner, see
// worm/client's Listen), which for small values (votes, log records,
// commands) halves the latency of learning. The cap bounds what one write
// costs the server beyond its own storage: the value is copied while the
// notification waits for the write's sync and then into the output
// buffer of every subscribed connection, so a large value would multiply
// its bytes by the number of listeners and crowd out replies under the
// per-connection output cap (whose overflow loses notifications). For
// values above 1 KiB the transfer dominates the extra read anyway.
const notifyValueMax = 1 << 10

// writeNote is a write notification waiting for its write's sync: the
// accepted ballot and copies of the values it will carry. Pooled: the
// buffers are reused, so a steady stream of notifications does not
// allocate.
type writeNote struct {
	ballot paxos.Ballot
	buf    []byte   // the copied values, back to back
	vals   [][]byte // slices of buf; nil for values over notifyValueMax
}

var notePool = sync.Pool{New: func() any { return &writeNote{buf: make([]byte, 0, 64)} }}

// newWriteNote copies what a notification of values accepted at b needs.
func newWriteNote(b paxos.Ballot, values [][]byte) *writeNote {
	n := notePool.Get().(*writeNote)
	n.ballot = b
	size := 0
	for _, v := range values {
		if len(v) <= notifyValueMax {
			size += len(v)
		}
	}
	if cap(n.buf) < size {
		n.buf = make([]byte, 0, size)
	}
	buf := n.buf[:0] // non-nil, so an empty value stays non-nil
	for _, v := range values {
		if len(v) > notifyValueMax {
			n.vals = append(n.vals, nil)
			continue
		}
		start := len(buf)
		buf = append(buf, v...)
		n.vals = append(n.vals, buf[start:len(buf):len(buf)])
	}
	n.buf = buf
	return n
}

func (n *writeNote) release() {
	clear(n.vals)
	n.vals, n.buf = n.vals[:0], n.buf[:0]
	notePool.Put(n)
}

// pushBuf is the scratch space onWrite encodes one notification in.
type pushBuf struct {
	resp  paxos.Response
	regs  []paxos.RegState
	frame []byte
}

var pushPool = sync.Pool{New: func() any { return new(pushBuf) }}

// onWrite is the Engine's notification hook (a WriteHook): called once the
// accepted registers [off, off+len(values)) of seg are durable, after the
// accept's reply. It encodes the push frame once, with the ballot and
// every value of at most notifyValueMax bytes, and copies it into each
// subscriber's output buffer; it never blocks.
func (s *Server) onWrite(seg uint64, off uint32, b paxos.Ballot, values [][]byte) {
	s.subMu.RLock()
	defer s.subMu.RUnlock()
	subs := s.subs[seg]
	pb := pushPool.Get().(*pushBuf)
	regs := pb.regs[:0]
	for i, v := range values {
		if v != nil && len(v) <= notifyValueMax {
			regs = append(regs, paxos.RegState{Off: off + uint32(i), Accepted: b, HasValue: true, Value: v})
		}
	}
	pb.resp = paxos.Response{Kind: paxos.KindNotify, Seg: seg, Off: off, Count: uint32(len(values)), Regs: regs}
	pb.frame = wire.AppendPush(pb.frame[:0], &pb.resp)
	for c := range subs {
		c.push(seg, pb.frame)
	}
	if len(pb.frame) <= recentFrameMax {
		s.recent.record(seg, pb.frame)
	}
	clear(regs) // drop the references to values
	pb.regs, pb.resp = regs[:0], paxos.Response{}
	pushPool.Put(pb)
}

// Replay. A connection that subscribes to a segment is sent, after the
// Listen reply, the notifications of the segment's recent writes, so that
// a listener learns writes that raced with its subscription from the
// notifications, like those that follow it, instead of reading them. This
// is what makes a new learner of a register useful at once: in WormTX a
// participant subscribes to a transaction's segment when it is asked to
// vote, at the moment the other participants' votes arrive. The replay
// is a cache (bounded, volatile, of small notifications only), so a listener
// must still rescan after subscribing, as before; it only makes the
// rescan unnecessary in the common case.
const (
	// recentSegMax bounds the notifications kept for one segment (a
	// WormTX transaction writes about 2n+3 registers of a few bytes,
	// under 1 KiB with n = 3); past it the segment's first ones are kept.
	recentSegMax = 8 << 10
	// recentMax bounds the bytes kept for all segments, and recentSegs
	// the segments: past either, the segment recorded first is dropped.
	recentMax  = 4 << 20
	recentSegs = 4096
	// recentFrameMax: only notifications of at most this many bytes are
	// recorded (those of batches of small values are larger; a value
	// over notifyValueMax is announced, and recorded, without it).
	recentFrameMax = 4 << 10
)

// recentWrites keeps the encoded notifications of recent small writes per
// segment, in the order they were pushed. The zero value is ready.
type recentWrites struct {
	mu    sync.Mutex
	segs  map[uint64][]byte // segment -> concatenated push frames
	order []uint64          // segments, first recorded first
	head  int               // order[head:] are live
	bytes int
	spare [][]byte // buffers of dropped segments, for reuse
}

// record appends one encoded notification of seg.
func (r *recentWrites) record(seg uint64, frame []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.segs == nil {
		r.segs = make(map[uint64][]byte)
	}
	b, ok := r.segs[seg]
	if !ok {
		for len(r.segs) >= recentSegs || r.bytes+len(frame) > recentMax {
			if !r.dropOldest() {
				break
			}
		}
		if n := len(r.spare); n > 0 {
			b, r.spare = r.spare[n-1][:0], r.spare[:n-1]
		}
		r.order = append(r.order, seg)
	}
	if len(b)+len(frame) > recentSegMax {
		if !ok {
			r.segs[seg] = b
		}
		return
	}
	r.segs[seg] = append(b, frame...)
	r.bytes += len(frame)
}

// dropOldest forgets the segment recorded first.
func (r *recentWrites) dropOldest() bool {
	if r.head >= len(r.order) {
		return false
	}
	seg := r.order[r.head]
	r.head++
	if r.head > len(r.order)/2 && r.head > 64 {
		n := copy(r.order, r.order[r.head:])
		r.order, r.head = r.order[:n], 0
	}
	if b, ok := r.segs[seg]; ok {
		r.bytes -= len(b)
		delete(r.segs, seg)
		if cap(b) <= recentSegMax && len(r.spare) < 64 {
			r.spare = append(r.spare, b)
		}
	}
	return true
}

// frames returns a copy of seg's recorded notifications (nil if none).
func (r *recentWrites) frames(seg uint64) []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	b := r.segs[seg]
	if len(b) == 0 {
		return nil
	}
	return append([]byte(nil), b...)
}

// statusDoc is the JSON document answering KindStatus.
type statusDoc struct {
	Version           string                       `json:"version"`
	Protocol          uint16                       `json:"protocol"`
	AcceptorID        uint32                       `json:"acceptor_id"`
	Cluster           string                       `json:"cluster"`
	UptimeSeconds     float64                      `json:"uptime_seconds"`
	SegmentSize       uint32                       `json:"segment_size"`
	MaxValue          uint32                       `json:"max_value"`
	MaxFrame          uint32                       `json:"max_frame"`
	Connections       int64                        `json:"connections"`
	Requests          map[string]map[string]uint64 `json:"requests"`
	Engine            EngineStats                  `json:"engine"`
	LiveBytes         int64                        `json:"live_bytes"`
	Segments          segmentCounts                `json:"segments"`
	HandshakeFailures map[string]uint64            `json:"handshake_failures"`
	BadInput          map[string]uint64            `json:"bad_input"`
	Notifications     map[string]uint64            `json:"notifications"`
	Storage           any                          `json:"storage,omitempty"`
}

type segmentCounts struct {
	Live    int `json:"live"`
	Trimmed int `json:"trimmed"`
}

// Status returns the document a KindStatus request is answered with, as
// JSON: version, acceptor id, cluster, uptime, limits, connections,
// requests by kind and status, engine counters (syncs, durable position),
// live bytes, live and trimmed segments, connection failures and the
// Log's own statistics when it implements StatsLog.
func (s *Server) Status() ([]byte, error) {
	st := s.eng.Stats()
	d := statusDoc{
		Version:           s.version,
		Protocol:          wire.Version,
		AcceptorID:        s.hello.AcceptorID,
		Cluster:           s.hello.Cluster,
		UptimeSeconds:     time.Since(s.start).Seconds(),
		SegmentSize:       s.hello.SegmentSize,
		MaxValue:          s.hello.MaxValue,
		MaxFrame:          s.hello.MaxFrame,
		Connections:       s.nconns.Load(),
		Requests:          make(map[string]map[string]uint64),
		Engine:            st,
		LiveBytes:         st.LiveBytes,
		Segments:          segmentCounts{Live: st.LiveSegments, Trimmed: st.TrimmedSegments},
		HandshakeFailures: make(map[string]uint64),
		BadInput:          make(map[string]uint64),
		Notifications:     map[string]uint64{"sent": s.m.notifySent.Load(), "lost": s.m.notifyLost.Load()},
		Storage:           s.eng.LogStats(),
	}
	for k := 1; k < numKinds; k++ {
		for st := 0; st < numStatus; st++ {
			if v := s.m.requests[k][st].Load(); v > 0 {
				byStatus := d.Requests[paxos.Kind(k).String()]
				if byStatus == nil {
					byStatus = make(map[string]uint64)
					d.Requests[paxos.Kind(k).String()] = byStatus
				}
				byStatus[statusName(st)] = v
			}
		}
	}
	for i := range s.m.handshake {
		d.HandshakeFailures[hsReasonNames[i]] = s.m.handshake[i].Load()
	}
	for i := range s.m.badInput {
		d.BadInput[badReasonNames[i]] = s.m.badInput[i].Load()
	}
	return json.Marshal(d)
}

func (s *Server) statusText() string {
	b, err := s.Status()
	if err != nil {
		// Only a Log whose Stats cannot be marshalled gets here.
		s.logger.Error("status document", "err", err)
		return `{"error":` + jsonString(err.Error()) + `}`
	}
	return string(b)
}

func jsonString(v string) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func buildVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "devel"
}
