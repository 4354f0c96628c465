package netstack_test

import (
	"context"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/wormspace/wormspace/netstack"
	"github.com/wormspace/wormspace/netstack/netperf"
)

// segmentsPerEcho runs n 64-byte echo round trips from a to a server on b
// and returns the TCP segments b sent per round trip.
func segmentsPerEcho(t *testing.T, a, b *netstack.Stack, n int) float64 {
	t.Helper()
	addr := fmt.Sprintf("%v:%d", b.Addr().Addr(), 7400+int(nsSeq.Add(1)))
	startServer(t, b, addr)
	rt, err := netperf.Echo(dial(t, a, addr), 64)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 50; i++ {
		if err := rt(); err != nil {
			t.Fatal(err)
		}
	}
	// gVisor counts a held ACK as sent; the filter's Saved are the ones
	// that never left.
	sent := b.Stats().TCP.SegmentsSent
	before, saved := sent.Value(), b.DelayedACKStats().Saved
	for i := 0; i < n; i++ {
		if err := rt(); err != nil {
			t.Fatal(err)
		}
	}
	out := (sent.Value() - before) - (b.DelayedACKStats().Saved - saved)
	return float64(out) / float64(n)
}

// TestDelayedACK: with DelayedACKMicros the reply carries the request's
// acknowledgement (one segment per round trip instead of two), and an ACK
// with no reply to ride on still goes out by its timer: the sender never
// retransmits.
func TestDelayedACK(t *testing.T) {
	off := netstack.DefaultKnobs()
	off.DelayedACKMicros = 0
	a, b := pipePairWith(t, off)
	if got := segmentsPerEcho(t, a, b, 500); got < 1.9 {
		t.Fatalf("without delayed ACKs the server sent %.2f segments per round trip; want 2 (reply + pure ACK), or this test measures nothing", got)
	}

	on := netstack.DefaultKnobs()
	on.DelayedACKMicros = 5000 // far longer than a pipe round trip
	a, b = pipePairWith(t, on)
	if got := segmentsPerEcho(t, a, b, 500); got > 1.1 {
		t.Fatalf("with delayed ACKs the server sent %.2f segments per round trip; want about 1", got)
	}

	// No reply: a message whose first byte is 'r' is answered, any other
	// is read and left unanswered. The server has just answered, so the
	// ACK of an unanswered message is held; it must leave by the timer,
	// well before the client's retransmission timeout (at least 200 ms in
	// gVisor).
	addr := fmt.Sprintf("%v:7499", b.Addr().Addr())
	l, err := b.Listen(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	got := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			got <- err
			return
		}
		defer c.Close()
		buf := make([]byte, 64)
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				got <- err
				return
			}
			if buf[0] == 'r' {
				if _, err := c.Write(buf); err != nil {
					got <- err
					return
				}
			}
			got <- nil
		}
	}()
	c := dial(t, a, addr)
	retrans := a.Stats().TCP.Retransmits
	msg := make([]byte, 64)
	for i := 0; i < 5; i++ {
		msg[0] = 'r'
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		if err := <-got; err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, msg); err != nil {
			t.Fatal(err)
		}
		r0, f0 := retrans.Value(), b.DelayedACKStats().Flushed
		msg[0] = 's'
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		if err := <-got; err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(150 * time.Millisecond)
		for b.DelayedACKStats().Flushed == f0 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		if b.DelayedACKStats().Flushed == f0 {
			t.Fatalf("round %d: no held ACK flushed within 150 ms (%+v)", i, b.DelayedACKStats())
		}
		time.Sleep(300 * time.Millisecond) // past the client's RTO
		if r := retrans.Value() - r0; r != 0 {
			t.Fatalf("round %d: the client retransmitted %d segments: the held ACK was lost", i, r)
		}
	}
}

// TestDelayedACKBulk: holding ACKs must not stall a bulk transfer in
// either direction (a second ACK while one is held goes out at once).
func TestDelayedACKBulk(t *testing.T) {
	on := netstack.DefaultKnobs()
	on.DelayedACKMicros = 5000
	a, b := pipePairWith(t, on)
	addr := startServer(t, b, fmt.Sprintf("%v:7498", b.Addr().Addr()))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := netperf.BulkSend(ctx, dial(t, a, addr), 16<<20, netperf.Config{})
	if err != nil {
		t.Fatal(err)
	}
	r, err := netperf.BulkRecv(ctx, dial(t, a, addr), 16<<20, netperf.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("bulk with delayed ACKs: %.0f MB/s out, %.0f MB/s in; client retransmits %d", s.MBps, r.MBps, a.Stats().TCP.Retransmits.Value())
	if s.MBps < 5 || r.MBps < 5 {
		t.Fatalf("bulk at %.1f / %.1f MB/s: stalled by held ACKs", s.MBps, r.MBps)
	}
}
