package kv

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/wormspace/wormspace/apps/wormpaxos"
)

// MaxFrame bounds a frame's payload.
const MaxFrame = 16 << 20

// Response status bytes.
const (
	statusOK     = 0
	statusFailed = 1
	statusStale  = 2
)

// ErrRemote is a failure reported by a remote replica (the client tries
// another one).
var ErrRemote = errors.New("kv: remote replica failed")

func writeFrame(w io.Writer, p []byte) error {
	b := make([]byte, 4, 4+len(p))
	binary.BigEndian.PutUint32(b, uint32(len(p)))
	_, err := w.Write(append(b, p...))
	return err
}

func readFrame(r io.Reader) ([]byte, error) {
	var h [4]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(h[:])
	if n > MaxFrame {
		return nil, fmt.Errorf("kv: frame of %d bytes exceeds %d", n, MaxFrame)
	}
	p := make([]byte, n)
	_, err := io.ReadFull(r, p)
	return p, err
}

// Serve answers the wire protocol on ln with replica until ctx ends (it
// then closes ln and every connection and returns nil) or Accept fails.
func Serve(ctx context.Context, replica Backend, ln net.Listener) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("kv: accept: %w", err)
		}
		wg.Go(func() { serveConn(ctx, replica, conn) })
	}
}

func serveConn(ctx context.Context, rep Backend, conn net.Conn) {
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	br := bufio.NewReader(conn)
	for {
		req, err := readFrame(br)
		if err != nil {
			return
		}
		if err := writeFrame(conn, handle(ctx, rep, req)); err != nil {
			return
		}
	}
}

func handle(ctx context.Context, rep Backend, req []byte) []byte {
	fail := func(status byte, err error) []byte { return append([]byte{status}, err.Error()...) }
	if len(req) < 1 {
		return fail(statusFailed, errors.New("empty request"))
	}
	kind := req[0]
	client, rest, err := readStr(req[1:])
	if err != nil {
		return fail(statusFailed, err)
	}
	seq, n := binary.Uvarint(rest)
	if n <= 0 {
		return fail(statusFailed, ErrBadOp)
	}
	op := rest[n:]
	var res []byte
	switch kind {
	case 'P':
		res, err = rep.Propose(ctx, wormpaxos.Command{Client: client, Seq: seq, Op: op})
	case 'L':
		if l, ok := rep.(interface {
			ProposeLocal(context.Context, wormpaxos.Command) ([]byte, error)
		}); ok {
			res, err = l.ProposeLocal(ctx, wormpaxos.Command{Client: client, Seq: seq, Op: op})
		} else {
			res, err = rep.Propose(ctx, wormpaxos.Command{Client: client, Seq: seq, Op: op})
		}
	case 'R':
		res, err = rep.Read(ctx, op)
	default:
		err = fmt.Errorf("kv: request kind %q", kind)
	}
	if errors.Is(err, wormpaxos.ErrStale) {
		return fail(statusStale, err)
	}
	if err != nil {
		slog.Debug("kv serve", "err", err)
		return fail(statusFailed, err)
	}
	return append([]byte{statusOK}, res...)
}

// Dialer opens connections; *net.Dialer and user-space stacks provide it.
type Dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// Dial returns a Client over the replicas at addrs ("tcp" addresses). It
// connects lazily; ctx bounds nothing after Dial returns (each operation
// takes its own). The client moves to the next address when one fails.
func Dial(ctx context.Context, d Dialer, addrs ...string) (*Client, error) {
	if len(addrs) == 0 {
		return nil, errors.New("kv: Dial needs at least one address")
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	bs := make([]Backend, len(addrs))
	for i, a := range addrs {
		bs[i] = &remote{d: d, addr: a}
	}
	return NewClient("", bs...), nil
}

// Forwarder returns a wormpaxos.Config.Forward function that sends a
// command to the leader's Serve front, found by replica ID in addrs; the
// leader proposes it without forwarding it again (ProposeLocal).
func Forwarder(d Dialer, addrs map[string]string) func(context.Context, string, wormpaxos.Command) ([]byte, error) {
	var mu sync.Mutex
	conns := map[string]*remote{}
	return func(ctx context.Context, leader string, cmd wormpaxos.Command) ([]byte, error) {
		mu.Lock()
		r := conns[leader]
		if r == nil {
			a, ok := addrs[leader]
			if !ok {
				mu.Unlock()
				return nil, fmt.Errorf("kv: no address for replica %q", leader)
			}
			r = &remote{d: d, addr: a}
			conns[leader] = r
		}
		mu.Unlock()
		return r.call(ctx, 'L', cmd.Client, cmd.Seq, cmd.Op)
	}
}

// remote is a Backend over one connection to Serve.
type remote struct {
	d    Dialer
	addr string
	mu   sync.Mutex
	conn net.Conn
}

func (r *remote) Propose(ctx context.Context, cmd wormpaxos.Command) ([]byte, error) {
	return r.call(ctx, 'P', cmd.Client, cmd.Seq, cmd.Op)
}

func (r *remote) Read(ctx context.Context, q []byte) ([]byte, error) {
	return r.call(ctx, 'R', "", 0, q)
}

func (r *remote) call(ctx context.Context, kind byte, client string, seq uint64, op []byte) ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.conn == nil {
		c, err := r.d.DialContext(ctx, "tcp", r.addr)
		if err != nil {
			return nil, fmt.Errorf("kv: dial %s: %w", r.addr, err)
		}
		r.conn = c
	}
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Time{}
	}
	_ = r.conn.SetDeadline(dl)
	stop := context.AfterFunc(ctx, func() { _ = r.conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	req := appendStr([]byte{kind}, client)
	req = binary.AppendUvarint(req, seq)
	req = append(req, op...)
	if err := writeFrame(r.conn, req); err != nil {
		r.drop()
		return nil, fmt.Errorf("kv: %s: %w", r.addr, err)
	}
	resp, err := readFrame(r.conn)
	if err != nil || len(resp) == 0 {
		r.drop()
		return nil, fmt.Errorf("kv: %s: %w", r.addr, errors.Join(err, io.ErrUnexpectedEOF))
	}
	switch resp[0] {
	case statusOK:
		return resp[1:], nil
	case statusStale:
		return nil, fmt.Errorf("%w: %s", wormpaxos.ErrStale, resp[1:])
	}
	return nil, fmt.Errorf("%w: %s: %s", ErrRemote, r.addr, resp[1:])
}

func (r *remote) drop() {
	if r.conn != nil {
		r.conn.Close()
		r.conn = nil
	}
}

// Close closes the connection.
func (r *remote) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.drop()
	return nil
}
