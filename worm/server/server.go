package server

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wormspace/wormspace/worm/wire"
)

// Defaults for the zero values of Config.
const (
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultMaxConns         = 4096
	// DefaultMaxPending (per connection): four replies carrying a value
	// of the default MaxValue (1 MiB) queued or waiting for a sync, which
	// keeps a LAN or loopback link busy; 16 connections that stopped
	// reading fill DefaultMaxPendingTotal.
	DefaultMaxPending = 4 << 20
	// DefaultMaxPendingTotal (all connections): sized for the boot
	// image's 256 MiB VMs. The Go heap may grow to about twice what is
	// live (GOGC=100), so replies take at most about half the guest's
	// memory, leaving the rest to the acceptor state and the netstack.
	DefaultMaxPendingTotal  = 64 << 20
	DefaultMaxInflight      = 1024
	DefaultMaxSubscriptions = 4096
	DefaultWriteTimeout     = time.Minute
	// DefaultPressureTimeout: under budget pressure a connection that has
	// not taken a write for 5 s (its client reads nothing, or less than
	// its backlog in 5 s) yields its bytes to connections that wait.
	DefaultPressureTimeout = 5 * time.Second
)

const (
	// refuseTimeout bounds the refusal of a connection over MaxConns;
	// maxRefusing bounds how many refusals run at once (beyond that,
	// excess connections are closed without a message).
	refuseTimeout = time.Second
	maxRefusing   = 64
	// errorFlushTimeout bounds the flush of an error frame to a client
	// that may not be reading.
	errorFlushTimeout = 2 * time.Second
	// maxKeptBuffer: a connection keeps an output buffer up to this
	// capacity between bursts; larger ones are dropped after use.
	maxKeptBuffer = 1 << 20
	// The watchdog looks at every connection's write once per
	// watchdogDivisor-th of the shortest write limit, clamped to
	// [minWatchdogTick, maxWatchdogTick]: a stalled write is closed between
	// its limit and 1.5 times it, and an idle server wakes at most once a
	// second.
	watchdogDivisor = 4
	minWatchdogTick = 5 * time.Millisecond
	maxWatchdogTick = time.Second
)

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("server: closed")

// ErrConfig is wrapped by New's errors for an invalid Config.
var ErrConfig = errors.New("server: invalid config")

// Config configures a Server. Zero values mean the defaults.
type Config struct {
	// Engine is the acceptor engine the server feeds (required). The
	// Server installs its notification hook on it (Engine.SetOnWrite), so
	// one Engine serves one Server; the caller keeps ownership and closes
	// it after Shutdown.
	Engine *Engine
	// AcceptorID and Cluster are announced in the server hello.
	AcceptorID uint32
	Cluster    string
	// SegmentSize, when set, must equal the acceptor's (it is announced).
	SegmentSize uint32
	// MaxValue and MaxFrame are the limits announced to clients and
	// enforced on their requests (0: wire.DefaultMaxValue, and the larger
	// of wire.DefaultMaxFrame and MaxValue + 64 KiB). MaxFrame must leave
	// room for a read of a MaxValue value.
	MaxValue, MaxFrame uint32
	// Key is the pre-shared cluster key (at least wire.MinKeySize bytes);
	// nil: no authentication.
	Key []byte
	// Logger receives connection events; nil: slog.Default().
	Logger *slog.Logger
	// HandshakeTimeout bounds each handshake (DefaultHandshakeTimeout).
	HandshakeTimeout time.Duration
	// MaxConns caps open connections, handshaking ones included
	// (DefaultMaxConns); an excess connection is refused.
	MaxConns int
	// MaxPending caps the bytes held for one connection's replies: its
	// queued output and the responses the Engine holds for it until a
	// sync (DefaultMaxPending). At or above it the server stops reading
	// that connection's requests until its writes drain (backpressure
	// through TCP: the connection is neither dropped nor closed), and
	// drops (marks lost) its notifications. A connection may go over it by
	// one reply.
	MaxPending int
	// MaxPendingTotal caps the bytes held for the replies of all
	// connections together (DefaultMaxPendingTotal, raised to four times
	// the largest reply, MaxFrame, when that is more). A connection
	// reads a request only once the server has room for the largest
	// reply, so the total stays within the cap (a response to a segment
	// capture larger than a frame, answered with an error, and a few
	// bytes of error frames and lost markers excepted). When it is full,
	// every connection waits, and PressureTimeout frees the bytes of those
	// that do not read. It must be at least twice MaxFrame.
	MaxPendingTotal int
	// MaxInflight caps one connection's requests read but not yet
	// answered (DefaultMaxInflight); at the cap the server stops reading
	// that connection.
	MaxInflight int
	// MaxSubscriptions caps one connection's listened segments
	// (DefaultMaxSubscriptions); a Listen beyond it gets StatusError.
	MaxSubscriptions int
	// WriteTimeout closes a connection whose write makes no progress for
	// this long (DefaultWriteTimeout; negative: never). A watchdog checks
	// the writes in flight, so the connection is closed between
	// WriteTimeout and 1.5 times it (no deadline is armed per write).
	WriteTimeout time.Duration
	// PressureTimeout is the write timeout that applies while a
	// connection waits for room in MaxPendingTotal: a connection whose
	// write makes no progress for this long is closed, giving its bytes
	// back (DefaultPressureTimeout; negative: WriteTimeout applies). Only
	// clients that read nothing for that long are affected; they would
	// otherwise keep everyone else waiting until WriteTimeout.
	PressureTimeout time.Duration
}

// Server serves the wire protocol over an Engine on any number of
// listeners. All methods are safe for concurrent use.
type Server struct {
	eng    *Engine
	logger *slog.Logger
	hello  wire.ServerHello
	key    []byte
	start  time.Time

	maxValue, maxFrame int
	hsTimeout          time.Duration
	maxConns           int
	maxPending         int
	maxInflight        int
	maxSubs            int
	writeTimeout       time.Duration
	pressureTimeout    time.Duration
	// maxReply is the largest reply a request can produce (a frame of
	// maxFrame); each reader reserves it in budget before it dispatches.
	maxReply int
	budget   replyBudget

	base   context.Context // cancelled by Shutdown and Close
	cancel context.CancelFunc

	mu        sync.Mutex
	state     int // stateRunning, stateDraining, stateClosed
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	connWG    sync.WaitGroup
	nconns    atomic.Int64
	nextConn  atomic.Uint64
	refusing  chan struct{}

	subMu  sync.RWMutex
	subs   map[uint64]map[*conn]struct{}
	recent recentWrites // notifications replayed to new subscribers (listen.go)

	m         metrics
	badLog    limiter
	hsLog     limiter
	budgetLog limiter
	wdLog     limiter
	version   string

	// The write watchdog: started by the first Serve (wdStarted, under
	// mu), stopped once Close or Shutdown saw every connection end.
	wdStarted bool
	wdStop    chan struct{}
	wdEnded   sync.Once
	wdWG      sync.WaitGroup
	wdConns   []*conn // the watchdog's scratch
}

const (
	stateRunning = iota
	stateDraining
	stateClosed
)

// New validates cfg and returns a Server ready to Serve. It installs the
// server's write-notification hook on cfg.Engine.
func New(cfg Config) (*Server, error) {
	if cfg.Engine == nil {
		return nil, fmt.Errorf("%w: no Engine", ErrConfig)
	}
	if cfg.Key != nil && len(cfg.Key) < wire.MinKeySize {
		return nil, fmt.Errorf("%w: cluster key of %d bytes is shorter than %d", ErrConfig, len(cfg.Key), wire.MinKeySize)
	}
	if len(cfg.Cluster) > wire.MaxIdentity {
		return nil, fmt.Errorf("%w: cluster name longer than %d bytes", ErrConfig, wire.MaxIdentity)
	}
	segSize := cfg.Engine.SegmentSize()
	if cfg.SegmentSize != 0 && cfg.SegmentSize != segSize {
		return nil, fmt.Errorf("%w: SegmentSize %d differs from the acceptor's %d", ErrConfig, cfg.SegmentSize, segSize)
	}
	s := &Server{
		eng:             cfg.Engine,
		logger:          cfg.Logger,
		key:             cfg.Key,
		start:           time.Now(),
		maxValue:        orDefault(int(cfg.MaxValue), wire.DefaultMaxValue),
		maxFrame:        int(cfg.MaxFrame),
		hsTimeout:       cfg.HandshakeTimeout,
		maxConns:        orDefault(cfg.MaxConns, DefaultMaxConns),
		maxPending:      orDefault(cfg.MaxPending, DefaultMaxPending),
		maxInflight:     orDefault(cfg.MaxInflight, DefaultMaxInflight),
		maxSubs:         orDefault(cfg.MaxSubscriptions, DefaultMaxSubscriptions),
		writeTimeout:    cfg.WriteTimeout,
		pressureTimeout: cfg.PressureTimeout,
		listeners:       make(map[net.Listener]struct{}),
		wdStop:          make(chan struct{}),
		conns:           make(map[*conn]struct{}),
		subs:            make(map[uint64]map[*conn]struct{}),
		refusing:        make(chan struct{}, maxRefusing),
		version:         buildVersion(),
	}
	if s.maxFrame == 0 {
		s.maxFrame = max(wire.DefaultMaxFrame, s.maxValue+64<<10)
	}
	if s.maxFrame < s.maxValue+1024 {
		return nil, fmt.Errorf("%w: MaxFrame %d leaves no room for a reply carrying a value of MaxValue %d bytes", ErrConfig, s.maxFrame, s.maxValue)
	}
	if s.logger == nil {
		s.logger = slog.Default()
	}
	if s.hsTimeout <= 0 {
		s.hsTimeout = DefaultHandshakeTimeout
	}
	if s.writeTimeout == 0 {
		s.writeTimeout = DefaultWriteTimeout
	}
	if s.pressureTimeout == 0 {
		s.pressureTimeout = DefaultPressureTimeout
	}
	s.maxReply = s.maxFrame + 4
	total := cfg.MaxPendingTotal
	if total <= 0 {
		total = max(DefaultMaxPendingTotal, 4*s.maxReply)
	}
	if total < 2*s.maxReply {
		return nil, fmt.Errorf("%w: MaxPendingTotal %d is less than twice the largest reply (MaxFrame %d)", ErrConfig, total, s.maxFrame)
	}
	s.budget.init(int64(total))
	s.hello = wire.ServerHello{AcceptorID: cfg.AcceptorID, Cluster: cfg.Cluster, SegmentSize: segSize, MaxValue: uint32(s.maxValue), MaxFrame: uint32(s.maxFrame)}
	s.base, s.cancel = context.WithCancel(context.Background())
	s.m.init()
	s.badLog.init(10, time.Second)
	s.hsLog.init(10, time.Second)
	s.budgetLog.init(1, 10*time.Second)
	s.wdLog.init(10, time.Second)
	s.eng.SetOnWrite(s.onWrite)
	return s, nil
}

func orDefault(v, def int) int {
	if v <= 0 {
		return def
	}
	return v
}

// Serve accepts connections on l and serves each in its own goroutines
// until l fails or the server is shut down; it then returns
// ErrServerClosed (after Shutdown or Close) or the listener's error.
// Serve closes l when it returns. Several Serve calls on different
// listeners may run at once.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.state != stateRunning {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	if !s.wdStarted {
		s.wdStarted = true
		s.wdWG.Add(1)
		go s.watchdog()
	}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
		l.Close()
	}()
	var delay time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if s.stopping() {
				return ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// Out of file descriptors, aborted handshakes and the like:
			// back off and keep serving.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.logger.Warn("accept failed; retrying", "err", err, "delay", delay)
			select {
			case <-time.After(delay):
			case <-s.base.Done():
				return ErrServerClosed
			}
			continue
		}
		delay = 0
		s.accept(nc)
	}
}

func (s *Server) stopping() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state != stateRunning
}

func (s *Server) accept(nc net.Conn) {
	if n := s.nconns.Add(1); n > int64(s.maxConns) {
		s.nconns.Add(-1)
		s.m.handshake[hsRefused].Add(1)
		if ok, supp := s.hsLog.allow(); ok {
			s.logger.Warn("connection refused: too many connections", "remote", nc.RemoteAddr().String(), "max_conns", s.maxConns, "suppressed", supp)
		}
		select {
		case s.refusing <- struct{}{}:
			go func() {
				defer func() { <-s.refusing }()
				refuse(nc, fmt.Sprintf("too many connections: this server serves at most %d", s.maxConns))
			}()
		default:
			nc.Close()
		}
		return
	}
	c := newConn(s, nc)
	s.mu.Lock()
	if s.state != stateRunning {
		s.mu.Unlock()
		s.nconns.Add(-1)
		nc.Close()
		return
	}
	s.conns[c] = struct{}{}
	s.connWG.Add(1)
	s.mu.Unlock()
	go c.serve()
}

// refuse answers a client hello with a handshake error message (the
// layout wire documents and freezes across versions: "WORM", u16
// version, u8 type 4, u16 body size, then u8 code and text) and closes
// the connection. Reading the hello first lets the close end the stream
// with a FIN rather than a reset that could destroy the message before the
// client reads it. Best effort, bounded by refuseTimeout.
func refuse(nc net.Conn, text string) {
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(refuseTimeout))
	var hello [9 + 2048]byte
	nc.Read(hello[:])
	b := make([]byte, 0, 9+1+len(text))
	b = append(b, wire.Magic...)
	b = binary.LittleEndian.AppendUint16(b, wire.Version)
	b = append(b, 4) // error message
	b = binary.LittleEndian.AppendUint16(b, uint16(1+len(text)))
	b = append(b, byte(wire.CodeOther))
	b = append(b, text...)
	nc.Write(b)
}

// Shutdown stops the server gracefully: it closes the listeners, stops
// reading new requests, lets every request already read finish (replies
// wait for their sync as always) and flush, then sends each client a
// wire.CodeShutdown error frame and closes its connection. Connections
// still in the handshake are closed. If ctx ends first, Shutdown closes
// everything at once (as Close) and returns ctx's error. The Engine is
// not closed: close it after Shutdown returns.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if s.state == stateRunning {
		s.state = stateDraining
	}
	conns := s.stopLocked()
	s.mu.Unlock()
	for _, c := range conns {
		c.drain()
	}
	done := make(chan struct{})
	go func() {
		s.connWG.Wait()
		close(done)
	}()
	select {
	case <-done:
		s.stopWatchdog()
		return nil
	case <-ctx.Done():
		s.Close()
		<-done
		return fmt.Errorf("server: shutdown: %w", ctx.Err())
	}
}

// Close closes the listeners and every connection at once; replies not
// yet sent are lost (clients see an unknown outcome). It waits for the
// connection goroutines to end.
func (s *Server) Close() error {
	s.mu.Lock()
	s.state = stateClosed
	conns := s.stopLocked()
	s.mu.Unlock()
	for _, c := range conns {
		c.teardown()
	}
	s.connWG.Wait()
	s.stopWatchdog()
	return nil
}

// stopWatchdog ends the watchdog once no connection is left to watch. The
// state is no longer stateRunning, so no Serve starts it again.
func (s *Server) stopWatchdog() {
	s.wdEnded.Do(func() { close(s.wdStop) })
	s.wdWG.Wait()
}

// stopLocked closes the listeners, cancels handshakes and returns the
// open connections.
func (s *Server) stopLocked() []*conn {
	s.cancel()
	for l := range s.listeners {
		l.Close()
	}
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	return conns
}

func (s *Server) connDone(c *conn) {
	s.unsubscribeAll(c)
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.nconns.Add(-1)
	s.connWG.Done()
}

func (s *Server) handshakeFailed(c *conn, err error) {
	reason := hsIO
	switch {
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded):
		reason = hsTimeout
	case errors.Is(err, wire.ErrAuth):
		reason = hsAuth
	case errors.Is(err, wire.ErrVersion):
		reason = hsVersion
	case errors.Is(err, wire.ErrMalformed), errors.Is(err, wire.ErrFrameTooLarge):
		reason = hsMalformed
	case errors.Is(err, context.Canceled):
		return // shutting down
	}
	s.m.handshake[reason].Add(1)
	if ok, supp := s.hsLog.allow(); ok {
		s.logger.Warn("handshake failed", "remote", c.remote, "reason", hsReasonNames[reason], "err", err, "suppressed", supp)
	}
}

// limiter allows n events per interval and counts the rest, so that a
// flood of bad clients yields a bounded log.
type limiter struct {
	mu         sync.Mutex
	n          int
	interval   time.Duration
	window     time.Time
	used       int
	suppressed int
}

func (l *limiter) init(n int, interval time.Duration) { l.n, l.interval = n, interval }

// allow reports whether to log this event, and how many events were
// suppressed since the last one allowed.
func (l *limiter) allow() (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if now.Sub(l.window) >= l.interval {
		l.window, l.used = now, 0
	}
	if l.used >= l.n {
		l.suppressed++
		return false, 0
	}
	l.used++
	supp := l.suppressed
	l.suppressed = 0
	return true, supp
}

// errShuttingDown is sent to clients in the error frame that ends a graceful
// shutdown.
var errShuttingDown = fmt.Errorf("server is shutting down: %w", wire.ErrShutdown)

// isUnexpectedEOF reports a stream that ended inside a frame.
func isUnexpectedEOF(err error) bool { return errors.Is(err, io.ErrUnexpectedEOF) }
