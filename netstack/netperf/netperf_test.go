package netperf

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

func listen(t *testing.T) net.Listener {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func TestRoundTrip(t *testing.T) {
	l := listen(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- Serve(ctx, l, nil) }()
	dial := func() net.Conn {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	r, err := EchoRun(ctx, dial(), 64, 500, Config{})
	if err != nil || r.Count != 500 || r.P50 <= 0 || r.Max < r.P99 || r.P99 < r.P50 {
		t.Fatalf("echo: %+v %v", r, err)
	}
	const n = 5<<20 + 3 // not a multiple of anything
	if b, err := BulkSend(ctx, dial(), n, Config{}); err != nil || b.Bytes != n {
		t.Fatalf("send: %+v %v", b, err)
	}
	if b, err := BulkRecv(ctx, dial(), n, Config{}); err != nil || b.Bytes != n {
		t.Fatalf("recv: %+v %v", b, err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// corruptServer serves one 'R' request with a flipped byte, or answers
// one 'S' request with a wrong CRC.
func corruptServer(t *testing.T, l net.Listener) {
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		var hdr [hdrLen]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		n := int64(binary.BigEndian.Uint64(hdr[1:]))
		if hdr[0] == opSource {
			data := append([]byte(nil), window(0, int(n))...)
			data[n/2] ^= 1
			c.Write(data)
			c.Write([]byte{0, 0, 0, 0})
			return
		}
		io.CopyN(io.Discard, c, n)
		var resp [12]byte
		binary.BigEndian.PutUint64(resp[:], uint64(n))
		c.Write(resp[:])
	}()
}

func TestDetectsCorruption(t *testing.T) {
	for _, dir := range []string{"recv", "send"} {
		l := listen(t)
		corruptServer(t, l)
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		if dir == "recv" {
			_, err = BulkRecv(context.Background(), c, 1<<16, Config{})
		} else {
			_, err = BulkSend(context.Background(), c, 1<<16, Config{})
		}
		c.Close()
		if !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: got %v, want ErrCorrupt", dir, err)
		}
	}
}

func TestStallTimeout(t *testing.T) {
	l := listen(t)
	go func() {
		c, err := l.Accept()
		if err == nil {
			defer c.Close()
			time.Sleep(3 * time.Second) // read the request, send nothing
		}
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	_, err = BulkRecv(context.Background(), c, 1<<20, Config{StallTimeout: 200 * time.Millisecond})
	if err == nil || time.Since(start) > 2*time.Second {
		t.Fatalf("stall not detected: %v after %v", err, time.Since(start))
	}
}
