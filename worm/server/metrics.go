package server

import (
	"bufio"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/wormspace/wormspace/worm/paxos"
)

// Bucket upper bounds, in seconds.
var (
	requestBuckets = []float64{50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1, 2.5, 10}
	fsyncBuckets   = []float64{10e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1, 10}
)

// histogram is a Prometheus histogram with fixed buckets whose counters
// are atomics: observe does not allocate or lock.
type histogram struct {
	bounds []time.Duration // upper bounds; an implicit +Inf follows
	le     []float64       // the same bounds in seconds, for exposition
	counts []atomic.Uint64 // len(bounds)+1, not cumulative
	sum    atomic.Int64    // nanoseconds
	count  atomic.Uint64
}

func (h *histogram) init(le []float64) {
	h.le = le
	h.bounds = make([]time.Duration, len(le))
	for i, s := range le {
		h.bounds[i] = time.Duration(s * float64(time.Second))
	}
	h.counts = make([]atomic.Uint64, len(le)+1)
}

func (h *histogram) observe(d time.Duration) {
	i := 0
	for i < len(h.bounds) && d > h.bounds[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sum.Add(int64(d))
	h.count.Add(1)
}

// Number of request kinds and statuses counted (paxos's valid values).
const (
	numKinds  = int(paxos.KindStatus) + 1
	numStatus = int(paxos.StatusSealed) + 2 // the last one is "dropped"
	// statusDropped counts requests whose reply was never sent (storage
	// failure, or the connection closed before the reply was ready).
	statusDropped = numStatus - 1
)

func statusName(i int) string {
	if i == statusDropped {
		return "dropped"
	}
	return paxos.Status(i).String()
}

// Handshake failure reasons (worm_handshake_failures_total{reason}).
const (
	hsTimeout = iota
	hsAuth
	hsVersion
	hsMalformed
	hsIO
	hsRefused // over MaxConns
	numHSReasons
)

var hsReasonNames = [numHSReasons]string{"timeout", "auth", "version", "malformed", "io", "max_conns"}

// Bad-input reasons (worm_bad_input_total{reason}): connections closed
// with an error frame after the handshake.
const (
	badMalformed = iota
	badTooLarge
	badFrameType
	numBadReasons
)

var badReasonNames = [numBadReasons]string{"malformed", "too_large", "frame_type"}

// Why a connection's reader stopped reading requests
// (worm_connections_throttled{reason}, worm_throttled_total{reason}).
const (
	throttleInflight = iota // MaxInflight requests unanswered
	throttleConn            // MaxPending bytes held for its replies
	throttleServer          // no room in MaxPendingTotal
	numThrottleReasons
)

var throttleReasonNames = [numThrottleReasons]string{"inflight", "connection_bytes", "server_bytes"}

// metrics holds the server's counters. Everything on the request path is
// an atomic.
type metrics struct {
	requests      [numKinds][numStatus]atomic.Uint64
	latency       [numKinds]histogram
	handshake     [numHSReasons]atomic.Uint64
	badInput      [numBadReasons]atomic.Uint64
	accepted      atomic.Uint64 // connections that completed the handshake
	notifySent    atomic.Uint64
	notifyLost    atomic.Uint64
	throttledNow  [numThrottleReasons]atomic.Int64  // readers waiting now
	throttled     [numThrottleReasons]atomic.Uint64 // times a reader waited
	writeTimeouts [numWDReasons]atomic.Uint64       // connections closed by the watchdog
}

// throttled records a reader that starts (delta 1) or stops (-1) waiting
// for reason; the first wait for the server-wide budget in a while is
// logged.
func (s *Server) throttled(reason int, delta int64) {
	s.m.throttledNow[reason].Add(delta)
	if delta < 0 {
		return
	}
	s.m.throttled[reason].Add(1)
	if reason == throttleServer {
		if ok, supp := s.budgetLog.allow(); ok {
			s.logger.Warn("the server's reply budget is full: connections wait before reading more requests", "budget_used", s.budget.used.Load(), "budget", s.budget.limit,
				"waiting", s.m.throttledNow[throttleServer].Load(), "suppressed", supp)
		}
	}
}

func (m *metrics) init() {
	for i := range m.latency {
		m.latency[i].init(requestBuckets)
	}
}

func (m *metrics) request(kind paxos.Kind, status int, d time.Duration) {
	k := int(kind)
	if k >= numKinds {
		k = 0
	}
	if status < 0 || status >= numStatus {
		status = int(paxos.StatusError)
	}
	m.requests[k][status].Add(1)
	m.latency[k].observe(d)
}

// Metrics returns an http.Handler that serves the server's metrics in the
// Prometheus text exposition format (version 0.0.4):
//
//	worm_requests_total{kind,status}       counter
//	worm_request_seconds{kind}             histogram: from the request being read to its reply being released (fsync wait included)
//	worm_fsync_seconds                     histogram of Log.Sync durations
//	worm_connections                       gauge: open connections (handshaking included)
//	worm_live_bytes                        gauge: approximate live acceptor state
//	worm_segments{state="live|trimmed"}    gauge
//	worm_handshake_failures_total{reason}  counter: timeout, auth, version, malformed, io, max_conns
//	worm_bad_input_total{reason}           counter: connections closed for malformed, too_large or frame_type input
//	worm_notifications_total{result}       counter: sent, lost
//	worm_reply_bytes                       gauge: bytes held for replies (queued output, responses held until a sync, readers' reservations)
//	worm_reply_bytes_max                   gauge: the highest worm_reply_bytes since start
//	worm_reply_bytes_limit                 gauge: MaxPendingTotal
//	worm_connections_throttled{reason}     gauge: connections not read now, by reason: inflight, connection_bytes, server_bytes
//	worm_throttled_total{reason}           counter: times a connection stopped being read, by reason
//	worm_write_timeouts_total{reason}      counter: connections closed for a stalled write: write_timeout, budget_pressure
//	worm_engine_syncs_total, worm_durable_position, worm_storage_failed
func (s *Server) Metrics() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		bw := bufio.NewWriter(w)
		s.writeMetrics(bw)
		bw.Flush()
	})
}

type promWriter struct {
	w   *bufio.Writer
	buf []byte
}

func (p *promWriter) header(name, typ, help string) {
	p.w.WriteString("# HELP " + name + " " + help + "\n# TYPE " + name + " " + typ + "\n")
}

// sample writes name{labels} value; labels are alternating names and
// values (values are escaped).
func (p *promWriter) sample(name string, value float64, labels ...string) {
	b := append(p.buf[:0], name...)
	if len(labels) > 0 {
		b = append(b, '{')
		for i := 0; i+1 < len(labels); i += 2 {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, labels[i]...)
			b = append(b, '=')
			b = strconv.AppendQuote(b, labels[i+1])
		}
		b = append(b, '}')
	}
	b = append(b, ' ')
	b = strconv.AppendFloat(b, value, 'g', -1, 64)
	b = append(b, '\n')
	p.buf = b
	p.w.Write(b)
}

func (p *promWriter) histogram(name string, h *histogram, labels ...string) {
	var cum uint64
	for i := range h.counts {
		cum += h.counts[i].Load()
		le := "+Inf"
		if i < len(h.le) {
			le = strconv.FormatFloat(h.le[i], 'g', -1, 64)
		}
		p.sample(name+"_bucket", float64(cum), append(labels[:len(labels):len(labels)], "le", le)...)
	}
	p.sample(name+"_sum", time.Duration(h.sum.Load()).Seconds(), labels...)
	p.sample(name+"_count", float64(h.count.Load()), labels...)
}

func (s *Server) writeMetrics(w *bufio.Writer) {
	p := &promWriter{w: w}
	m := &s.m
	p.header("worm_requests_total", "counter", "Requests answered, by kind and status (dropped: no reply was ever sent).")
	for k := 1; k < numKinds; k++ {
		for st := 0; st < numStatus; st++ {
			if v := m.requests[k][st].Load(); v > 0 {
				p.sample("worm_requests_total", float64(v), "kind", paxos.Kind(k).String(), "status", statusName(st))
			}
		}
	}
	p.header("worm_request_seconds", "histogram", "Time from a request being read to its reply being released, fsync wait included.")
	for k := 1; k < numKinds; k++ {
		if paxos.Kind(k) == paxos.KindNotify {
			continue
		}
		p.histogram("worm_request_seconds", &m.latency[k], "kind", paxos.Kind(k).String())
	}
	p.header("worm_fsync_seconds", "histogram", "Duration of each storage sync.")
	p.histogram("worm_fsync_seconds", &s.eng.fsync)
	st := s.eng.Stats()
	p.header("worm_connections", "gauge", "Open client connections (including those still in the handshake).")
	p.sample("worm_connections", float64(s.nconns.Load()))
	p.header("worm_live_bytes", "gauge", "Approximate size of the live acceptor state.")
	p.sample("worm_live_bytes", float64(st.LiveBytes))
	p.header("worm_storage_refused_total", "counter", "Requests refused because storage could not reserve room (full disk).")
	p.sample("worm_storage_refused_total", float64(st.Refused))
	p.header("worm_compactions_total", "counter", "Storage compactions (space of trimmed segments reclaimed).")
	p.sample("worm_compactions_total", float64(st.Compactions))
	p.header("worm_segments", "gauge", "Segments by state.")
	p.sample("worm_segments", float64(st.LiveSegments), "state", "live")
	p.sample("worm_segments", float64(st.TrimmedSegments), "state", "trimmed")
	p.header("worm_handshake_failures_total", "counter", "Connections refused or failed before the handshake completed, by reason.")
	for i := range m.handshake {
		p.sample("worm_handshake_failures_total", float64(m.handshake[i].Load()), "reason", hsReasonNames[i])
	}
	p.header("worm_bad_input_total", "counter", "Connections closed with an error frame for bad input, by reason.")
	for i := range m.badInput {
		p.sample("worm_bad_input_total", float64(m.badInput[i].Load()), "reason", badReasonNames[i])
	}
	p.header("worm_notifications_total", "counter", "Write notifications pushed to listeners (sent) or dropped for a full connection (lost).")
	p.sample("worm_notifications_total", float64(m.notifySent.Load()), "result", "sent")
	p.sample("worm_notifications_total", float64(m.notifyLost.Load()), "result", "lost")
	p.header("worm_reply_bytes", "gauge", "Bytes held for replies: queued output, responses held until a sync, and readers' reservations of one reply.")
	p.sample("worm_reply_bytes", float64(s.budget.used.Load()))
	p.header("worm_reply_bytes_max", "gauge", "The highest worm_reply_bytes since the server started.")
	p.sample("worm_reply_bytes_max", float64(s.budget.peak.Load()))
	p.header("worm_reply_bytes_limit", "gauge", "The server-wide budget for bytes held for replies (MaxPendingTotal).")
	p.sample("worm_reply_bytes_limit", float64(s.budget.limit))
	p.header("worm_connections_throttled", "gauge", "Connections whose requests are not read now (backpressure), by reason.")
	for i := range m.throttledNow {
		p.sample("worm_connections_throttled", float64(m.throttledNow[i].Load()), "reason", throttleReasonNames[i])
	}
	p.header("worm_throttled_total", "counter", "Times a connection's requests stopped being read (backpressure), by reason.")
	for i := range m.throttled {
		p.sample("worm_throttled_total", float64(m.throttled[i].Load()), "reason", throttleReasonNames[i])
	}
	p.header("worm_write_timeouts_total", "counter", "Connections closed because a write to them stalled, by the limit that applied.")
	for i := range m.writeTimeouts {
		p.sample("worm_write_timeouts_total", float64(m.writeTimeouts[i].Load()), "reason", wdReasonNames[i])
	}
	p.header("worm_engine_syncs_total", "counter", "Storage syncs completed by the engine (group commits).")
	p.sample("worm_engine_syncs_total", float64(st.Syncs))
	p.header("worm_engine_gathered_syncs_total", "counter", "Syncs held for a burst's usual followers (adaptive group commit).")
	p.sample("worm_engine_gathered_syncs_total", float64(st.Gathered))
	p.header("worm_durable_position", "gauge", "Log position known durable.")
	p.sample("worm_durable_position", float64(st.Durable))
	failed := 0.0
	if st.Failed != "" {
		failed = 1
	}
	p.header("worm_storage_failed", "gauge", "1 once storage failed and the server stopped acknowledging.")
	p.sample("worm_storage_failed", failed)
}
