//go:build linux

package sockio

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			acc <- nil
			return
		}
		acc <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-acc
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

func mustOf(t *testing.T, nc net.Conn) *Conn {
	t.Helper()
	c := Of(nc)
	if c == nil {
		t.Fatalf("Of(%T) = nil, want a raw connection", nc)
	}
	return c
}

func TestOfOnlySocketsOfThisProcess(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if Of(a) != nil {
		t.Error("Of(net.Pipe) is not nil: a pipe has no socket to read raw")
	}
	c, _ := tcpPair(t)
	if Of(c) == nil {
		t.Error("Of(*net.TCPConn) = nil")
	}
	if rw, ok := ReadWriter(c).(*Conn); !ok || rw == nil {
		t.Errorf("ReadWriter(*net.TCPConn) is %T, want a raw *Conn", ReadWriter(c))
	}
	if rw := ReadWriter(a); rw != net.Conn(a) {
		t.Errorf("ReadWriter(net.Pipe) is %T, want the pipe itself", rw)
	}
	was := SetEnabled(false)
	defer SetEnabled(was)
	if !was {
		t.Error("raw I/O was not enabled by default")
	}
	if Of(c) != nil {
		t.Error("Of returned a raw connection with raw I/O turned off")
	}
}

func TestRoundTripAndEOF(t *testing.T) {
	c, s := tcpPair(t)
	rc, rs := mustOf(t, c), mustOf(t, s)
	msg := []byte("hello, wormd")
	if n, err := rc.Write(msg); n != len(msg) || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	got := make([]byte, 64)
	n, err := io.ReadAtLeast(rs, got, len(msg))
	if err != nil || !bytes.Equal(got[:n], msg) {
		t.Fatalf("read %q, %v; want %q", got[:n], err, msg)
	}
	// Zero-length calls do nothing.
	if n, err := rs.Read(nil); n != 0 || err != nil {
		t.Errorf("Read(nil) = %d, %v", n, err)
	}
	if n, err := rc.Write(nil); n != 0 || err != nil {
		t.Errorf("Write(nil) = %d, %v", n, err)
	}
	// The peer's close is io.EOF, as from net.Conn.
	c.Close()
	if n, err := rs.Read(got); n != 0 || err != io.EOF {
		t.Errorf("Read after the peer closed = %d, %v; want 0, io.EOF", n, err)
	}
}

// TestLargeWriteWaitsForRoom writes far more than a socket buffer holds
// while the peer reads slowly: Write must wait in the poller for room
// (the EAGAIN path) and deliver every byte in order.
func TestLargeWriteWaitsForRoom(t *testing.T) {
	c, s := tcpPair(t)
	rc, rs := mustOf(t, c), mustOf(t, s)
	const size = 16 << 20
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i*7 + i>>13)
	}
	done := make(chan error, 1)
	go func() {
		n, err := rc.Write(data)
		if err == nil && n != size {
			err = errors.New("short write without an error")
		}
		done <- err
	}()
	got := make([]byte, 0, size)
	buf := make([]byte, 100<<10)
	var werr error
	wrote := false
	for len(got) < size {
		if len(got) < 1<<20 {
			time.Sleep(time.Millisecond) // slow at first, so that the writer fills the buffer
		}
		if !wrote {
			select {
			case werr = <-done:
				wrote = true
				if werr != nil {
					t.Fatalf("Write after the reader took %d bytes: %v", len(got), werr)
				}
			default:
			}
		}
		s.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := rs.Read(buf)
		if err != nil {
			t.Fatalf("Read after %d bytes: %v", len(got), err)
		}
		got = append(got, buf[:n]...)
	}
	if !wrote {
		werr = <-done
	}
	if werr != nil {
		t.Fatalf("Write: %v", werr)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("the bytes read differ from the bytes written")
	}
}

func TestDeadlineAndCloseEndAWait(t *testing.T) {
	c, s := tcpPair(t)
	rs := mustOf(t, s)
	buf := make([]byte, 16)

	s.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	start := time.Now()
	_, err := rs.Read(buf)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past its deadline = %v, want os.ErrDeadlineExceeded", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("the deadline ended the read after %v", took)
	}
	s.SetReadDeadline(time.Time{})

	// A read waiting in the poller ends when its connection is closed.
	res := make(chan error, 1)
	go func() {
		_, err := rs.Read(buf)
		res <- err
	}()
	time.Sleep(20 * time.Millisecond)
	s.Close()
	select {
	case err := <-res:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Read ended by Close = %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end a waiting Read")
	}
	if _, err := mustOf(t, c).Write([]byte("x")); err != nil {
		t.Logf("write to a closed peer: %v (allowed)", err)
	}
}

func TestWriteToAResetPeerFails(t *testing.T) {
	c, s := tcpPair(t)
	rc := mustOf(t, c)
	// An abortive close (RST) of the peer: later writes must fail with an
	// error, not hang or kill the process with SIGPIPE.
	s.(*net.TCPConn).SetLinger(0)
	s.Close()
	time.Sleep(20 * time.Millisecond)
	var err error
	for i := 0; i < 100 && err == nil; i++ {
		_, err = rc.Write(make([]byte, 1024))
		time.Sleep(time.Millisecond)
	}
	if err == nil {
		t.Fatal("writes to a reset peer kept succeeding")
	}
	var op *net.OpError
	if !errors.As(err, &op) {
		t.Errorf("error %v (%T) is not a *net.OpError", err, err)
	}
}

func TestUnixSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rc := mustOf(t, c)
	if _, err := rc.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4)
	if _, err := io.ReadFull(rc, got); err != nil || string(got) != "ping" {
		t.Fatalf("echo = %q, %v", got, err)
	}
}

func TestNoAllocation(t *testing.T) {
	c, s := tcpPair(t)
	rc, rs := mustOf(t, c), mustOf(t, s)
	msg := make([]byte, 64)
	buf := make([]byte, 64)
	allocs := testing.AllocsPerRun(200, func() {
		if _, err := rc.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(rs, buf); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per write and read, want 0", allocs)
	}
}

func BenchmarkPingPong(b *testing.B) {
	for _, raw := range []bool{false, true} {
		name := "net"
		if raw {
			name = "raw"
		}
		b.Run(name, func(b *testing.B) {
			was := SetEnabled(raw)
			defer SetEnabled(was)
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer ln.Close()
			go func() {
				s, err := ln.Accept()
				if err != nil {
					return
				}
				defer s.Close()
				var rw io.ReadWriter = s
				if r := Of(s); r != nil {
					rw = r
				}
				buf := make([]byte, 64)
				for {
					if _, err := io.ReadFull(rw, buf); err != nil {
						return
					}
					if _, err := rw.Write(buf); err != nil {
						return
					}
				}
			}()
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			var rw io.ReadWriter = c
			if r := Of(c); r != nil {
				rw = r
			}
			buf := make([]byte, 64)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if _, err := rw.Write(buf); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(rw, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
