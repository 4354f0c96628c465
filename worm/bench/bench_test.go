package bench_test

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/bench"
	"github.com/wormspace/wormspace/worm/spec"
)

// Every workload runs against the spec and produces samples, writes where
// it should, and no errors.
func TestWorkloadsOnSpec(t *testing.T) {
	st := spec.New(64)
	a, b := st.Client("a"), st.Client("b")
	defer a.Close()
	defer b.Close()
	for _, w := range bench.Workloads {
		r, err := bench.Run(context.Background(), bench.Config{Spaces: []worm.Space{a, b}, Workload: w, Clients: 4,
			Duration: 100 * time.Millisecond, Warmup: 20 * time.Millisecond, Batch: 8})
		if err != nil {
			t.Fatalf("%s: %v", w, err)
		}
		if r.Ops == 0 || r.Errors != 0 || r.Latency.P50 <= 0 || r.Latency.P50 > r.Latency.P99 {
			t.Fatalf("%s: %+v", w, r)
		}
		wantWrites := int64(0)
		switch w {
		case bench.Write, bench.CaptureWrite:
			wantWrites = r.Ops
		case bench.Batch:
			wantWrites = 8 * r.Ops
		}
		if r.Writes != wantWrites {
			t.Fatalf("%s: %d writes for %d ops", w, r.Writes, r.Ops)
		}
		t.Log(r)
	}
}

// checkBeforeTrim is a Space that, before it trims a segment, reads every
// register of it and records what it found: the bench trims each segment
// once it is done with it, and this is the last moment to look.
type checkBeforeTrim struct {
	worm.Space
	t       *testing.T
	size    int            // the values' size
	written map[uint64]int // segment -> registers holding a value
}

func (c *checkBeforeTrim) Trim(ctx context.Context, seg uint64) error {
	n := 0
	for off := uint32(0); off < c.SegmentSize(); off++ {
		v, err := c.Read(ctx, worm.Addr{Seg: seg, Off: off})
		switch {
		case err == nil && len(v) == c.size:
			n++
		case err == nil:
			c.t.Errorf("register %d/%d holds %d bytes, want %d", seg, off, len(v), c.size)
		case !errors.Is(err, worm.ErrEmpty):
			c.t.Errorf("register %d/%d before its trim: %v", seg, off, err)
		}
	}
	c.written[seg] = n
	return c.Space.Trim(ctx, seg)
}

// The written registers really hold the values, and the run leaves
// nothing behind: every segment a Write run used is full when the run
// moves on from it and trimmed then, and the last one when the run ends.
func TestWritesLand(t *testing.T) {
	st := spec.New(16)
	c := &checkBeforeTrim{Space: st.Client("w"), t: t, size: 64, written: map[uint64]int{}}
	r, err := bench.Run(context.Background(), bench.Config{Spaces: []worm.Space{c}, Workload: bench.Write,
		Duration: 20 * time.Millisecond, Warmup: -1, SegBase: 1000})
	if err != nil || r.Ops < 20 {
		t.Fatalf("%+v %v", r, err)
	}
	// More than one segment was used: 1000 and 1001 were full.
	for _, seg := range []uint64{1000, 1001} {
		if c.written[seg] != 16 {
			t.Errorf("segment %d: %d registers written when trimmed, want 16 (trims: %v)", seg, c.written[seg], c.written)
		}
	}
	for seg := range c.written {
		if _, err := c.Read(context.Background(), worm.Addr{Seg: seg}); !errors.Is(err, worm.ErrTrimmed) {
			t.Errorf("segment %d after the run: %v, want trimmed", seg, err)
		}
	}
	if last := uint64(999 + len(c.written)); c.written[last] == 0 {
		t.Errorf("the last segment %d was not trimmed with a value in it (trims: %v)", last, c.written)
	}
}

// With large values a worker moves on after about a megabyte, not after a
// whole segment: 64 KiB values take 16 registers per segment, so a long
// run's live data stays bounded.
func TestSegmentBudget(t *testing.T) {
	st := spec.New(1024)
	c := &checkBeforeTrim{Space: st.Client("w"), t: t, size: 64 << 10, written: map[uint64]int{}}
	for _, w := range []bench.Workload{bench.Write, bench.CaptureWrite} {
		clear(c.written)
		r, err := bench.Run(context.Background(), bench.Config{Spaces: []worm.Space{c}, Workload: w, ValueSize: 64 << 10,
			Duration: 50 * time.Millisecond, Warmup: -1})
		if err != nil || r.Ops < 40 {
			t.Fatalf("%s: %+v %v", w, r, err)
		}
		full := 0
		for seg, n := range c.written {
			if n > 16 {
				t.Errorf("%s: segment %d had %d registers of 64 KiB", w, seg, n)
			}
			if n == 16 {
				full++
			}
		}
		if full < 2 {
			t.Errorf("%s: %d segments filled to the budget (trims: %v)", w, full, c.written)
		}
	}
}

func TestRawRTT(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go bench.EchoServer(l)
	r, err := bench.RawRTT(context.Background(), &net.Dialer{}, l.Addr().String(), 2, 64, 100*time.Millisecond)
	if err != nil || r.Ops == 0 || r.Latency.P50 <= 0 {
		t.Fatalf("%+v %v", r, err)
	}
	t.Log(r)
}

// TestRawFloorsOutlastAStall: an echo server silent for longer than the
// warm-up and the measurement window together (as after a retransmission
// timeout) yields a slow sample that counts the stall, not an empty one.
func TestRawFloorsOutlastAStall(t *testing.T) {
	const stall = 600 * time.Millisecond
	slowStart := func(c net.Conn) {
		defer c.Close()
		time.Sleep(stall)
		io.Copy(c, c)
	}
	addr := listenServe(t, slowStart)
	r, err := bench.RawRTT(context.Background(), &net.Dialer{}, addr, 1, 64, 100*time.Millisecond)
	if err != nil || r.Ops == 0 || r.Duration < stall-200*time.Millisecond {
		t.Fatalf("rtt: %+v %v", r, err)
	}
	r, err = bench.RawStream(context.Background(), &net.Dialer{}, listenServe(t, slowStart), 16<<10, 100*time.Millisecond)
	if err != nil || r.Ops == 0 || r.Duration < stall-200*time.Millisecond {
		t.Fatalf("stream: %+v %v", r, err)
	}
	// A server that hangs up is not waited for.
	start := time.Now()
	closing := listenServe(t, func(c net.Conn) { c.Close() })
	if r, err := bench.RawRTT(context.Background(), &net.Dialer{}, closing, 1, 64, 100*time.Millisecond); err == nil || time.Since(start) > 2*time.Second {
		t.Fatalf("rtt to a closing server: %+v %v after %v", r, err, time.Since(start))
	}
}

// listenServe serves each connection to a loopback listener with serve,
// until the test ends (listener and connections are closed then), and
// returns the address.
func listenServe(t *testing.T, serve func(net.Conn)) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
			go serve(c)
		}
	}()
	return l.Addr().String()
}

// TestRawStream: the stream floor moves chunks through an echo server and
// reports them; an echo that corrupts one byte in the stream fails it
// (the reader checks the pattern), and so does one that stops echoing.
func TestRawStream(t *testing.T) {
	good := listenServe(t, func(c net.Conn) { defer c.Close(); io.Copy(c, c) })
	const chunk = 16 << 10
	r, err := bench.RawStream(context.Background(), &net.Dialer{}, good, chunk, 100*time.Millisecond)
	if err != nil || r.Ops == 0 || r.Errors != 0 || r.Latency.P50 <= 0 || r.Workload != "raw-stream" {
		t.Fatalf("%+v %v", r, err)
	}
	t.Logf("%.0f MB/s", r.OpsPerSec*chunk/1e6)

	corrupt := listenServe(t, func(c net.Conn) {
		defer c.Close()
		buf := make([]byte, 4096)
		var off int
		for {
			n, err := c.Read(buf)
			for i := range n {
				if off+i == 3*chunk+5 {
					buf[i] ^= 0x40
				}
			}
			off += n
			if _, werr := c.Write(buf[:n]); werr != nil || err != nil {
				return
			}
		}
	})
	if r, err := bench.RawStream(context.Background(), &net.Dialer{}, corrupt, chunk, 100*time.Millisecond); err == nil || !strings.Contains(err.Error(), "chunk 3 came back different") {
		t.Fatalf("corrupting echo: %+v %v", r, err)
	}

	silent := listenServe(t, func(c net.Conn) { defer c.Close(); io.Copy(io.Discard, c) })
	if r, err := bench.RawStream(context.Background(), &net.Dialer{}, silent, chunk, 100*time.Millisecond); err == nil || r.Ops != 0 {
		t.Fatalf("silent echo: %+v %v", r, err)
	}
}

func TestSummarize(t *testing.T) {
	var s []time.Duration
	for i := 100; i >= 1; i-- {
		s = append(s, time.Duration(i))
	}
	l := bench.Summarize(s)
	if l.P50 != 50 || l.P99 != 99 || l.Max != 100 || l.Mean != 50 {
		t.Fatalf("%+v", l)
	}
}

// TestRawQuorumRTT checks that the quorum floor waits for the first
// quorum of echoes, no more and no fewer: with one echo server slowed by
// 20 ms per echo, a majority round trip does not wait for it and an
// all-of-three round trip does; a server that never answers does not stop
// a majority.
func TestRawQuorumRTT(t *testing.T) {
	const slow = 20 * time.Millisecond
	fast := func(c net.Conn) { io.Copy(c, c) }
	// The slow server echoes what it has read so far 20 ms later, in
	// batches, so that its backlog never fills a socket buffer.
	delayed := func(c net.Conn) {
		buf := make([]byte, 1<<16)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			time.Sleep(slow)
			if _, err := c.Write(buf[:n]); err != nil {
				return
			}
		}
	}
	silent := func(c net.Conn) { io.Copy(io.Discard, c) }
	addrs := []string{listenServe(t, fast), listenServe(t, fast), listenServe(t, delayed)}
	ctx := context.Background()

	maj, err := bench.RawQuorumRTT(ctx, &net.Dialer{}, addrs, 0, 1, 64, 300*time.Millisecond)
	if err != nil || maj.Ops == 0 || maj.Errors != 0 {
		t.Fatalf("majority: %+v %v", maj, err)
	}
	if maj.Latency.P50 >= slow {
		t.Errorf("majority of (fast, fast, slow): p50 %v, want under the slow server's %v", maj.Latency.P50, slow)
	}
	all, err := bench.RawQuorumRTT(ctx, &net.Dialer{}, addrs, 3, 1, 64, 300*time.Millisecond)
	if err != nil || all.Ops == 0 {
		t.Fatalf("all: %+v %v", all, err)
	}
	if all.Latency.P50 < slow {
		t.Errorf("all of (fast, fast, slow): p50 %v, want at least %v", all.Latency.P50, slow)
	}
	dead, err := bench.RawQuorumRTT(ctx, &net.Dialer{}, []string{addrs[0], listenServe(t, silent), addrs[1]}, 0, 2, 64, 200*time.Millisecond)
	if err != nil || dead.Ops == 0 || dead.Errors != 0 {
		t.Fatalf("majority with a silent server: %+v %v", dead, err)
	}
	if _, err := bench.RawQuorumRTT(ctx, &net.Dialer{}, addrs, 4, 1, 64, time.Millisecond); err == nil {
		t.Error("a quorum larger than the servers was accepted")
	}
	t.Log(maj, all, dead)
}
