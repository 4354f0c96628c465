package wormlog_test

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
	"testing"
	"time"

	"github.com/wormspace/wormspace/apps/wormlog"
	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/spec"
)

// pipeListener is an in-memory net.Listener over net.Pipe: the server
// must work over any listener, not just TCP.
type pipeListener struct {
	conns chan net.Conn
	once  sync.Once
	done  chan struct{}
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

func (l *pipeListener) Dial(ctx context.Context) (net.Conn, error) {
	a, b := net.Pipe()
	select {
	case l.conns <- b:
		return a, nil
	case <-l.done:
		return nil, net.ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }

var logSeq atomic.Uint64

var quiet = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

func testConfig() wormlog.Config {
	n := logSeq.Add(1)
	return wormlog.Config{Name: fmt.Sprint("t", n), FirstSeg: n << 20, HoleTimeout: 20 * time.Millisecond, Logger: quiet}
}

// serve starts a sequencer server on l and returns a Remote dialing dial.
func serve(t *testing.T, src wormlog.TokenSource, l net.Listener, dial wormlog.Dialer) *wormlog.Remote {
	t.Helper()
	srv := wormlog.NewServer(src, nil)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	r := wormlog.NewRemote(dial)
	t.Cleanup(func() {
		r.Close()
		srv.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return r
}

// concurrentAppends appends n values through k clients over src and
// checks that the positions are exactly [0, n) with the right values.
func concurrentAppends(t *testing.T, ctx context.Context, st *spec.Store, cfg wormlog.Config, src wormlog.TokenSource, k, n int) {
	t.Helper()
	var mu sync.Mutex
	got := map[uint64]string{}
	var wg sync.WaitGroup
	var ctr atomic.Int64
	for w := range k {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := wormlog.NewClient(st.Client(fmt.Sprint("a", w)), cfg, src)
			for i := ctr.Add(1); i <= int64(n); i = ctr.Add(1) {
				v := fmt.Sprint("v", i)
				pos, err := c.Append(ctx, []byte(v))
				if err != nil {
					t.Errorf("Append: %v", err)
					return
				}
				mu.Lock()
				if old, dup := got[pos]; dup {
					t.Errorf("position %d acknowledged twice: %q, %q", pos, old, v)
				}
				got[pos] = v
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	r := wormlog.NewClient(st.Client("reader"), cfg, nil)
	for pos := range uint64(n) {
		rec, err := r.Read(ctx, pos)
		if err != nil || rec.Hole || string(rec.Value) != got[pos] {
			t.Fatalf("Read(%d) = %+v, %v; want %q", pos, rec, err, got[pos])
		}
	}
}

func TestRemotePipe(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st := spec.New(16)
	cfg := testConfig()
	seq := wormlog.NewSequencer(st.Client("seq"), cfg)
	defer seq.Close()
	l := newPipeListener()
	r := serve(t, seq, l, l.Dial)
	concurrentAppends(t, ctx, st, cfg, r, 8, 100)
	if tail, err := r.Tail(ctx); err != nil || tail != 100 {
		t.Fatalf("remote Tail = %d, %v; want 100", tail, err)
	}
	g, err := r.NextN(ctx, 5)
	if err != nil || g.Pos != 100 || g.N != 5 || g.Token.IsZero() {
		t.Fatalf("remote NextN(5) = %+v, %v; want 5 positions from 100", g, err)
	}
	if err := r.Fenced(ctx, g, g.Pos); err != nil {
		t.Fatalf("remote Fenced: %v", err)
	}
	if _, err := r.NextN(ctx, 0); !errors.Is(err, worm.ErrInvalid) {
		t.Fatalf("NextN(0): %v, want ErrInvalid", err)
	}
}

func TestRemoteTCP(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st := spec.New(16)
	cfg := testConfig()
	seq := wormlog.NewSequencer(st.Client("seq"), cfg)
	defer seq.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Skipf("no loopback TCP: %v", err)
	}
	var d net.Dialer
	r := serve(t, seq, l, func(ctx context.Context) (net.Conn, error) {
		return d.DialContext(ctx, "tcp", l.Addr().String())
	})
	concurrentAppends(t, ctx, st, cfg, r, 4, 60)
}

// TestRemoteRestart: the sequencer process dies and another takes over at
// a new address; appenders ride it out (connection failures are
// ErrUnavailable, which Append retries).
func TestRemoteRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st := spec.New(16)
	cfg := testConfig()
	var cur atomic.Pointer[pipeListener]
	start := func(id string) (*wormlog.Sequencer, *wormlog.Server, chan error) {
		seq := wormlog.NewSequencer(st.Client(id), cfg)
		srv := wormlog.NewServer(seq, nil)
		l := newPipeListener()
		cur.Store(l)
		done := make(chan error, 1)
		go func() { done <- srv.Serve(l) }()
		return seq, srv, done
	}
	seq1, srv1, done1 := start("seq1")
	r := wormlog.NewRemote(func(ctx context.Context) (net.Conn, error) { return cur.Load().Dial(ctx) })
	defer r.Close()
	c := wormlog.NewClient(st.Client("app"), cfg, r)
	for i := range 10 {
		if pos, err := c.Append(ctx, []byte("x")); err != nil || pos != uint64(i) {
			t.Fatalf("Append %d = %d, %v", i, pos, err)
		}
	}
	srv1.Close()
	seq1.Close()
	if err := <-done1; err != nil {
		t.Fatal(err)
	}
	// Appends while no sequencer runs are retried until one comes up.
	res := make(chan error, 1)
	go func() {
		pos, err := c.Append(ctx, []byte("during restart"))
		if err == nil && pos != 10 {
			err = fmt.Errorf("append during restart at %d, want 10", pos)
		}
		res <- err
	}()
	time.Sleep(20 * time.Millisecond)
	seq2, srv2, done2 := start("seq2")
	defer func() {
		srv2.Close()
		seq2.Close()
		<-done2
	}()
	if err := <-res; err != nil {
		t.Fatal(err)
	}
}

// TestRemoteDeadline: a request the sequencer cannot answer (its space is
// down) ends with the caller's context, as ErrUnavailable.
func TestRemoteDeadline(t *testing.T) {
	st := spec.New(16)
	st.InjectFault("down", spec.FaultUnavailable, 1<<30)
	seq := wormlog.NewSequencer(st.Client("down"), testConfig())
	defer seq.Close()
	l := newPipeListener()
	r := serve(t, seq, l, l.Dial)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	startT := time.Now()
	_, err := r.NextN(ctx, 1)
	if !errors.Is(err, worm.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("NextN with the space down: %v, want ErrUnavailable and DeadlineExceeded", err)
	}
	if el := time.Since(startT); el > 5*time.Second {
		t.Fatalf("NextN took %v after its deadline", el)
	}
	// The in-process sequencer says the same, naming the last failure.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel2()
	if _, err := seq.NextN(ctx2, 1); !errors.Is(err, worm.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("in-process NextN: %v", err)
	}
}

// TestServerProtocol speaks the wire protocol by hand: a bad op is
// answered with an error status, and a closed sequencer with ErrClosed.
func TestServerProtocol(t *testing.T) {
	st := spec.New(16)
	seq := wormlog.NewSequencer(st.Client("seq"), testConfig())
	l := newPipeListener()
	srv := wormlog.NewServer(seq, nil)
	go srv.Serve(l)
	defer srv.Close()
	ctx := context.Background()
	conn, err := l.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	req := make([]byte, 29)
	req[0] = 99
	if _, err := conn.Write(req); err != nil {
		t.Fatal(err)
	}
	resp := make([]byte, 29+2)
	if _, err := io.ReadFull(conn, resp); err != nil {
		t.Fatal(err)
	}
	msg := make([]byte, binary.BigEndian.Uint16(resp[29:]))
	if _, err := io.ReadFull(conn, msg); err != nil {
		t.Fatal(err)
	}
	if resp[0] == 0 || len(msg) == 0 {
		t.Fatalf("bad op answered with status %d %q", resp[0], msg)
	}
	r := wormlog.NewRemote(l.Dial)
	defer r.Close()
	// A sequencer that stopped on ErrForeign says so over the network.
	cfg := testConfig()
	if _, err := st.Client("other").Alloc(ctx, cfg.FirstSeg, []byte("not a wormlog")); err != nil {
		t.Fatal(err)
	}
	foreign := wormlog.NewSequencer(st.Client("seq2"), cfg)
	defer foreign.Close()
	lf := newPipeListener()
	rf := serve(t, foreign, lf, lf.Dial)
	if _, err := rf.NextN(ctx, 1); !errors.Is(err, wormlog.ErrForeign) {
		t.Fatalf("NextN of a sequencer over a foreign segment: %v, want ErrForeign", err)
	}
	seq.Close()
	if _, err := r.NextN(ctx, 1); !errors.Is(err, wormlog.ErrClosed) {
		t.Fatalf("NextN on a closed sequencer over the network: %v, want ErrClosed", err)
	}
}
