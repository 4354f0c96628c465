package netstack_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/nettest"

	"github.com/wormspace/wormspace/netstack"
)

var connPort atomic.Int32

// connPair returns a MakePipe connecting a conn of server (accepted) and
// a conn of client (dialed) at host:port on a fresh port each time.
func connPair(server, client netstack.Network, host string) nettest.MakePipe {
	return func() (c1, c2 net.Conn, stop func(), err error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		port := 7600 + int(connPort.Add(1))
		l, err := server.Listen(ctx, "tcp", fmt.Sprintf(":%d", port))
		if err != nil {
			return nil, nil, nil, err
		}
		defer l.Close()
		accepted := make(chan net.Conn, 1)
		errc := make(chan error, 1)
		go func() {
			c, err := l.Accept()
			if err != nil {
				errc <- err
				return
			}
			accepted <- c
		}()
		d, err := client.DialContext(ctx, "tcp", fmt.Sprintf("%s:%d", host, port))
		if err != nil {
			return nil, nil, nil, err
		}
		select {
		case a := <-accepted:
			return a, d, func() { a.Close(); d.Close() }, nil
		case err := <-errc:
			d.Close()
			return nil, nil, nil, err
		}
	}
}

// swap returns mp with c1 and c2 exchanged, so that the conn under test
// (c1 in nettest) is the other end.
func swap(mp nettest.MakePipe) nettest.MakePipe {
	return func() (net.Conn, net.Conn, func(), error) {
		a, b, stop, err := mp()
		return b, a, stop, err
	}
}

// TestConnConformance runs x/net/nettest's net.Conn suite on the Stack's
// conns: between two stacks over Pipe (both ends netstack), and over TAP
// against the kernel with the netstack conn accepted and dialed.
func TestConnConformance(t *testing.T) {
	t.Run("pipe", func(t *testing.T) {
		a, b := pipePair(t)
		nettest.TestConn(t, connPair(a, b, addrA.Addr().String()))
	})
	t.Run("tap-accepted", func(t *testing.T) {
		e, st := tapEnv(t)
		nettest.TestConn(t, connPair(st, nsKernel{e}, tapStack.Addr().String()))
	})
	t.Run("tap-dialed", func(t *testing.T) {
		e, st := tapEnv(t)
		nettest.TestConn(t, swap(connPair(nsKernel{e}, st, tapKernel.Addr().String())))
	})
}

// pipeConns returns an accepted and a dialed conn between two Pipe stacks.
func pipeConns(t *testing.T) (srv, cli net.Conn) {
	t.Helper()
	a, b := pipePair(t)
	s, c, stop, err := connPair(a, b, addrA.Addr().String())()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return s, c
}

func readAll(t *testing.T, c net.Conn) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read to EOF: %v", err)
	}
	return b
}

type halfCloser interface {
	CloseRead() error
	CloseWrite() error
}

// TestConnHalfClose checks CloseWrite (the peer reads EOF and can still
// send), writes after it (EPIPE), and CloseRead (reads return EOF), for
// the netstack conn against a netstack peer and against the kernel.
func TestConnHalfClose(t *testing.T) {
	check := func(t *testing.T, ns, peer net.Conn) {
		hc, ok := ns.(halfCloser)
		if !ok {
			t.Fatalf("%T has no CloseRead/CloseWrite", ns)
		}
		if _, err := ns.Write([]byte("request")); err != nil {
			t.Fatal(err)
		}
		if err := hc.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		if got := readAll(t, peer); string(got) != "request" {
			t.Fatalf("peer read %q, want %q", got, "request")
		}
		if _, err := ns.Write([]byte("x")); !errors.Is(err, syscall.EPIPE) {
			t.Fatalf("write after CloseWrite: %v, want EPIPE", err)
		}
		// The other direction still works until the peer closes.
		if _, err := peer.Write([]byte("reply")); err != nil {
			t.Fatal(err)
		}
		peer.(halfCloser).CloseWrite()
		if got := readAll(t, ns); string(got) != "reply" {
			t.Fatalf("read %q, want %q", got, "reply")
		}
		if n, err := ns.Read(make([]byte, 8)); n != 0 || err != io.EOF {
			t.Fatalf("read after EOF: %d %v, want 0 EOF", n, err)
		}
	}
	t.Run("pipe", func(t *testing.T) {
		s, c := pipeConns(t)
		check(t, c, s)
	})
	t.Run("tap", func(t *testing.T) {
		e, st := tapEnv(t)
		s, c, stop, err := connPair(st, nsKernel{e}, tapStack.Addr().String())()
		if err != nil {
			t.Fatal(err)
		}
		defer stop()
		check(t, s, c)
	})
	t.Run("CloseRead", func(t *testing.T) {
		s, c := pipeConns(t)
		if err := c.(halfCloser).CloseRead(); err != nil {
			t.Fatal(err)
		}
		if n, err := c.Read(make([]byte, 8)); n != 0 || err != io.EOF {
			t.Fatalf("read after CloseRead: %d %v, want 0 EOF", n, err)
		}
		// Writing still works.
		if _, err := c.Write([]byte("still")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 5)
		s.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(s, buf); err != nil || string(buf) != "still" {
			t.Fatalf("peer read %q %v", buf, err)
		}
	})
}

// TestConnErrors checks the error values callers test: closed conns,
// deadlines, resets, zero-length reads.
func TestConnErrors(t *testing.T) {
	s, c := pipeConns(t)

	if n, err := c.Read(nil); n != 0 || err != nil {
		t.Fatalf("zero-length read: %d %v, want 0 nil", n, err)
	}

	c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read past deadline: %v, want a timeout matching os.ErrDeadlineExceeded", err)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "read" || oe.Addr == nil || oe.Source == nil {
		t.Fatalf("read past deadline: %#v, want *net.OpError with op read and addresses", err)
	}
	// Clearing the deadline makes the conn usable again.
	c.SetReadDeadline(time.Time{})
	if _, err := s.Write([]byte("y")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatalf("read after clearing the deadline: %v", err)
	}
	if c.LocalAddr().String() != s.RemoteAddr().String() || c.RemoteAddr().String() != s.LocalAddr().String() {
		t.Fatalf("addresses %v->%v vs %v->%v", c.LocalAddr(), c.RemoteAddr(), s.LocalAddr(), s.RemoteAddr())
	}

	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	for _, op := range []struct {
		name string
		f    func() error
	}{
		{"read", func() error { _, err := c.Read(make([]byte, 1)); return err }},
		{"write", func() error { _, err := c.Write([]byte("x")); return err }},
		{"close", c.Close},
		{"deadline", func() error { return c.SetDeadline(time.Now()) }},
	} {
		if err := op.f(); !errors.Is(err, net.ErrClosed) {
			t.Errorf("%s after Close: %v, want net.ErrClosed", op.name, err)
		}
	}

	// The peer sees EOF, then (its writes answered by a reset) ECONNRESET
	// or EPIPE, as with the kernel.
	if n, err := s.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("peer read after close: %d %v, want EOF", n, err)
	}
	var werr error
	for i := 0; i < 100 && werr == nil; i++ {
		_, werr = s.Write([]byte("late"))
		time.Sleep(5 * time.Millisecond)
	}
	if !errors.Is(werr, syscall.ECONNRESET) && !errors.Is(werr, syscall.EPIPE) {
		t.Fatalf("peer write after close: %v, want ECONNRESET or EPIPE", werr)
	}
}

// TestConnCloseUnblocks checks that Close ends a Read and a Write blocked
// without deadline, with net.ErrClosed.
func TestConnCloseUnblocks(t *testing.T) {
	_, c := pipeConns(t) // the peer never reads: Write fills the window and blocks
	errs := make(chan error, 2)
	go func() {
		_, err := c.Read(make([]byte, 16))
		errs <- err
	}()
	go func() {
		buf := make([]byte, 1<<20)
		for {
			if _, err := c.Write(buf); err != nil {
				errs <- err
				return
			}
		}
	}()
	time.Sleep(100 * time.Millisecond) // both block
	c.Close()
	for i := 0; i < 2; i++ {
		select {
		case err := <-errs:
			if !errors.Is(err, net.ErrClosed) {
				t.Errorf("blocked call after Close: %v, want net.ErrClosed", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Close did not unblock Read and Write")
		}
	}
}

// TestConnDeadlineRace sets, moves and clears deadlines from several
// goroutines while echo traffic flows and calls block, then closes the
// conn under them. Run with -race. Every call must end with data, a
// timeout or net.ErrClosed, and the echo must stay in order.
func TestConnDeadlineRace(t *testing.T) {
	s, c := pipeConns(t)
	go io.Copy(s, s) // echo until closed

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for j := 0; ; j++ {
				select {
				case <-stop:
					return
				default:
				}
				d := time.Duration(j%7) * time.Millisecond
				switch (i + j) % 4 {
				case 0:
					c.SetReadDeadline(time.Now().Add(d))
				case 1:
					c.SetWriteDeadline(time.Now().Add(d))
				case 2:
					c.SetDeadline(time.Time{})
				case 3:
					c.SetDeadline(time.Now().Add(-time.Second))
				}
				time.Sleep(200 * time.Microsecond)
			}
		}(i)
	}
	var sent, got bytes.Buffer
	wg.Add(2)
	go func() { // writer
		defer wg.Done()
		for k := 0; ; k++ {
			msg := fmt.Appendf(nil, "%08d", k)
			for len(msg) > 0 {
				n, err := c.Write(msg)
				sent.Write(msg[:n])
				msg = msg[n:]
				if errors.Is(err, net.ErrClosed) {
					return
				}
				if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
					t.Errorf("write: %v", err)
					return
				}
			}
		}
	}()
	go func() { // reader
		defer wg.Done()
		buf := make([]byte, 64)
		for {
			n, err := c.Read(buf)
			got.Write(buf[:n])
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("read: %v", err)
				return
			}
		}
	}()
	time.Sleep(500 * time.Millisecond)
	close(stop)
	c.Close()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("calls still blocked 10 s after Close")
	}
	if got.Len() == 0 {
		t.Fatal("no data echoed while deadlines changed")
	}
	if !bytes.HasPrefix(sent.Bytes(), got.Bytes()) {
		t.Fatalf("echo out of order: sent %d bytes, got %d not a prefix", sent.Len(), got.Len())
	}
	t.Logf("echoed %d of %d bytes", got.Len(), sent.Len())
}

// TestConnNoAlloc checks that the steady state of a request/response
// conn allocates nothing in the conn: setting deadlines, a write and a
// blocking read of the reply. (The whole path, stack and link included,
// is measured by BenchmarkEcho64's allocs/op.)
func TestConnNoAlloc(t *testing.T) {
	s, c := pipeConns(t)
	go io.Copy(s, s)
	msg := make([]byte, 64)
	buf := make([]byte, 64)
	rt := func() {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 100; i++ { // warm up: timers, pools, windows
		rt()
	}
	conn := testing.AllocsPerRun(200, func() {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		c.SetWriteDeadline(time.Time{})
	})
	if conn != 0 {
		t.Errorf("setting deadlines: %v allocs, want 0", conn)
	}
}
