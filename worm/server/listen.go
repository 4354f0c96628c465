package server

import (
	"encoding/json"
	"runtime/debug"
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

// onWrite is the Engine's notification hook: called once the accepted
// registers [off, off+count) of seg are durable, after the accept's
// reply. It only encodes into output buffers.
func (s *Server) onWrite(seg uint64, off, count uint32) {
	s.subMu.RLock()
	for c := range s.subs[seg] {
		c.push(seg, off, count)
	}
	s.subMu.RUnlock()
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
