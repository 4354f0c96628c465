package wormlog

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/sockio"
)

// The sequencer protocol: a connection carries requests and responses one
// at a time, each a fixed-size big-endian frame.
//
//	request  (29 bytes): op u8 | n u32 | pos u64 | round u64 | node u64
//	response (29 bytes): status u8 | pos u64 | n u32 | round u64 | node u64
//	                     then, when status != 0: len u16 | message
//
// Ops: opNext (n: positions wanted; answers a Grant), opTail (answers
// pos), opFenced (pos, round, node: a Fenced report; answers nothing).
const (
	opNext   = 1
	opTail   = 2
	opFenced = 3

	statusOK          = 0
	statusUnavailable = 1 // transient: retry
	statusClosed      = 2
	statusFailed      = 3 // the sequencer failed (ErrForeign, ...)
	statusInvalid     = 4
	statusForeign     = 5 // the sequencer stopped on ErrForeign

	frameLen = 29
	maxMsg   = 1024
)

// ServerTimeout bounds how long the server waits on the sequencer for one
// request (it cannot see the remote caller's deadline).
var ServerTimeout = 10 * time.Second

// Server serves a TokenSource (normally a *Sequencer) to Remote clients
// over any net.Listener: TCP, a netstack listener, an in-memory pipe
// listener.
type Server struct {
	src TokenSource
	log *slog.Logger

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]struct{}
	closed    bool
	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup
}

// NewServer returns a server for src. logger may be nil (slog.Default()).
func NewServer(src TokenSource, logger *slog.Logger) *Server {
	if logger == nil {
		logger = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		src:       src,
		log:       logger.With("component", "sequencer-server"),
		listeners: map[net.Listener]struct{}{},
		conns:     map[net.Conn]struct{}{},
		ctx:       ctx,
		cancel:    cancel,
	}
}

// Serve accepts connections on l until l fails or the server is closed.
// It returns nil after Close, the accept error otherwise. Serve closes l.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return nil
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
		l.Close()
	}()
	for {
		conn, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return nil
			}
			return fmt.Errorf("wormlog: sequencer server: %w", err)
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			conn.Close()
			return nil
		}
		s.conns[conn] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serveConn(conn)
	}
}

// Close stops every Serve, closes every connection and waits for the
// connection goroutines. It does not close the TokenSource.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	for l := range s.listeners {
		l.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	return nil
}

func (s *Server) serveConn(conn net.Conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, conn)
		s.mu.Unlock()
		conn.Close()
	}()
	var req, resp [frameLen]byte
	rw := sockio.ReadWriter(conn)
	for {
		if _, err := io.ReadFull(rw, req[:]); err != nil {
			if !errors.Is(err, io.EOF) && s.ctx.Err() == nil {
				s.log.Debug("wormlog: sequencer server: read", "remote", conn.RemoteAddr(), "err", err)
			}
			return
		}
		out := s.handle(req)
		if _, err := rw.Write(out.encode(resp[:0])); err != nil {
			return
		}
	}
}

type response struct {
	status byte
	g      Grant
	msg    string
}

func (r response) encode(b []byte) []byte {
	b = append(b, r.status)
	b = binary.BigEndian.AppendUint64(b, r.g.Pos)
	b = binary.BigEndian.AppendUint32(b, uint32(r.g.N))
	b = binary.BigEndian.AppendUint64(b, r.g.Token.Round)
	b = binary.BigEndian.AppendUint64(b, r.g.Token.Node)
	if r.status != statusOK {
		msg := r.msg
		if len(msg) > maxMsg {
			msg = msg[:maxMsg]
		}
		b = binary.BigEndian.AppendUint16(b, uint16(len(msg)))
		b = append(b, msg...)
	}
	return b
}

func (s *Server) handle(req [frameLen]byte) response {
	op := req[0]
	n := binary.BigEndian.Uint32(req[1:])
	g := Grant{
		Pos:   binary.BigEndian.Uint64(req[5:]),
		Token: worm.Token{Round: binary.BigEndian.Uint64(req[13:]), Node: binary.BigEndian.Uint64(req[21:])},
	}
	ctx, cancel := context.WithTimeout(s.ctx, ServerTimeout)
	defer cancel()
	var err error
	var out Grant
	switch op {
	case opNext:
		if n == 0 || n > 1<<20 {
			return response{status: statusInvalid, msg: fmt.Sprintf("bad count %d", n)}
		}
		out, err = s.src.NextN(ctx, int(n))
	case opTail:
		out.Pos, err = s.src.Tail(ctx)
	case opFenced:
		err = s.src.Fenced(ctx, g, g.Pos)
	default:
		return response{status: statusInvalid, msg: fmt.Sprintf("bad op %d", op)}
	}
	switch {
	case err == nil:
		return response{g: out}
	case errors.Is(err, ErrClosed):
		return response{status: statusClosed, msg: err.Error()}
	case errors.Is(err, ErrForeign):
		return response{status: statusForeign, msg: err.Error()}
	case errors.Is(err, worm.ErrUnavailable):
		return response{status: statusUnavailable, msg: err.Error()}
	default:
		return response{status: statusFailed, msg: err.Error()}
	}
}

// Dialer opens a connection to a sequencer Server: net.Dialer.DialContext
// bound to an address, a netstack dialer, net.Pipe in tests.
type Dialer func(ctx context.Context) (net.Conn, error)

// Remote is a TokenSource served by a Server elsewhere. It keeps a small
// pool of connections, one request in flight on each, so concurrent
// appenders do not queue behind one another. Connection failures are
// reported as worm.ErrUnavailable (Append retries them), so appenders ride
// out a sequencer restart as long as dial reaches the new one.
type Remote struct {
	dial    Dialer
	maxIdle int

	mu     sync.Mutex
	idle   []seqConn
	closed bool
}

// seqConn is a pooled connection to the sequencer and its reader and
// writer (sockio.ReadWriter).
type seqConn struct {
	nc net.Conn
	rw io.ReadWriter
}

var _ TokenSource = (*Remote)(nil)

// NewRemote returns a Remote that dials with dial. It dials lazily.
func NewRemote(dial Dialer) *Remote { return &Remote{dial: dial, maxIdle: 32} }

// Close closes the pooled connections; later calls return ErrClosed.
func (r *Remote) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	for _, c := range r.idle {
		c.nc.Close()
	}
	r.idle = nil
	return nil
}

func (r *Remote) get(ctx context.Context) (seqConn, error) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return seqConn{}, ErrClosed
	}
	if n := len(r.idle); n > 0 {
		c := r.idle[n-1]
		r.idle = r.idle[:n-1]
		r.mu.Unlock()
		return c, nil
	}
	r.mu.Unlock()
	nc, err := r.dial(ctx)
	if err != nil {
		return seqConn{}, fmt.Errorf("wormlog: dial sequencer: %w: %w", worm.ErrUnavailable, err)
	}
	return seqConn{nc: nc, rw: sockio.ReadWriter(nc)}, nil
}

func (r *Remote) put(c seqConn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed || len(r.idle) >= r.maxIdle {
		c.nc.Close()
		return
	}
	r.idle = append(r.idle, c)
}

// call sends one request and reads its response.
func (r *Remote) call(ctx context.Context, op byte, n int, g Grant) (Grant, error) {
	if err := ctx.Err(); err != nil {
		return Grant{}, ctxErr(ctx, nil)
	}
	c, err := r.get(ctx)
	if err != nil {
		return Grant{}, err
	}
	stop := context.AfterFunc(ctx, func() { c.nc.SetDeadline(time.Unix(1, 0)) })
	var buf [frameLen]byte
	b := append(buf[:0], op)
	b = binary.BigEndian.AppendUint32(b, uint32(n))
	b = binary.BigEndian.AppendUint64(b, g.Pos)
	b = binary.BigEndian.AppendUint64(b, g.Token.Round)
	b = binary.BigEndian.AppendUint64(b, g.Token.Node)
	resp, msg, err := roundTrip(c.rw, b)
	if !stop() || err != nil {
		c.nc.Close()
		if ctx.Err() != nil {
			return Grant{}, fmt.Errorf("wormlog: sequencer: %w", ctxErr(ctx, err))
		}
		return Grant{}, fmt.Errorf("wormlog: sequencer: %w: %w", worm.ErrUnavailable, err)
	}
	r.put(c)
	out := Grant{
		Pos:   binary.BigEndian.Uint64(resp[1:]),
		N:     int(binary.BigEndian.Uint32(resp[9:])),
		Token: worm.Token{Round: binary.BigEndian.Uint64(resp[13:]), Node: binary.BigEndian.Uint64(resp[21:])},
	}
	switch resp[0] {
	case statusOK:
		return out, nil
	case statusUnavailable:
		return Grant{}, fmt.Errorf("wormlog: sequencer: %w: %s", worm.ErrUnavailable, msg)
	case statusClosed:
		return Grant{}, fmt.Errorf("%w: remote: %s", ErrClosed, msg)
	case statusInvalid:
		return Grant{}, fmt.Errorf("wormlog: sequencer: %w: %s", worm.ErrInvalid, msg)
	case statusForeign:
		return Grant{}, fmt.Errorf("%w: remote: %s", ErrForeign, msg)
	default:
		return Grant{}, fmt.Errorf("wormlog: sequencer failed: %s", msg)
	}
}

func roundTrip(c io.ReadWriter, req []byte) (resp [frameLen]byte, msg string, err error) {
	if _, err = c.Write(req); err != nil {
		return resp, "", err
	}
	if _, err = io.ReadFull(c, resp[:]); err != nil {
		return resp, "", err
	}
	if resp[0] == statusOK {
		return resp, "", nil
	}
	var l [2]byte
	if _, err = io.ReadFull(c, l[:]); err != nil {
		return resp, "", err
	}
	m := make([]byte, binary.BigEndian.Uint16(l[:]))
	if _, err = io.ReadFull(c, m); err != nil {
		return resp, "", err
	}
	return resp, string(m), nil
}

// NextN asks the remote sequencer for a grant of up to n positions.
func (r *Remote) NextN(ctx context.Context, n int) (Grant, error) {
	if n < 1 {
		return Grant{}, fmt.Errorf("wormlog: NextN(%d): %w", n, worm.ErrInvalid)
	}
	return r.call(ctx, opNext, n, Grant{})
}

// Tail asks the remote sequencer for its tail.
func (r *Remote) Tail(ctx context.Context) (uint64, error) {
	g, err := r.call(ctx, opTail, 0, Grant{})
	return g.Pos, err
}

// Fenced forwards a Fenced report.
func (r *Remote) Fenced(ctx context.Context, g Grant, pos uint64) error {
	g.Pos = pos
	_, err := r.call(ctx, opFenced, 0, g)
	return err
}
