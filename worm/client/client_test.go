package client_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/check"
	"github.com/wormspace/wormspace/worm/client"
	"github.com/wormspace/wormspace/worm/spacetest"
	"github.com/wormspace/wormspace/worm/wire"
)

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestConformance runs the worm.Space conformance suite against the
// distributed client over three in-process wormservers on loopback TCP,
// with authentication on.
func TestConformance(t *testing.T) {
	key := make([]byte, 32)
	rand.Read(key)
	c := newProcCluster(t, 3, 64, key)
	n := 0
	spacetest.Run(t, func(t *testing.T) []worm.Space {
		n++
		a := c.dial(t, fmt.Sprintf("a%d", n))
		b := c.dial(t, fmt.Sprintf("b%d", n))
		return []worm.Space{a, b}
	})
}

// TestMinorityAndMajorityDown: with one of three servers down operations
// succeed; with two down they fail with ErrUnavailable (never a wrong
// answer, and promptly: a down connection fails requests at once); after
// the servers come back service resumes without any action.
func TestMinorityAndMajorityDown(t *testing.T) {
	c := newProcCluster(t, 3, 16, nil)
	cl := c.dial(t, "w")
	ctx := ctxT(t, 30*time.Second)
	if _, err := cl.Alloc(ctx, 1, nil); err != nil {
		t.Fatal(err)
	}
	write := func(off uint32, v string) error {
		a := worm.Addr{Seg: 1, Off: off}
		tok, err := cl.Capture(ctx, a)
		if err != nil {
			return err
		}
		return cl.Write(ctx, a, tok, []byte(v))
	}
	if err := write(0, "all up"); err != nil {
		t.Fatal(err)
	}
	c.Stop(2)
	if err := write(1, "one down"); err != nil {
		t.Fatalf("write with one of three down: %v", err)
	}
	if v, err := cl.Read(ctx, worm.Addr{Seg: 1, Off: 0}); err != nil || string(v) != "all up" {
		t.Fatalf("read with one down: %q %v", v, err)
	}
	c.Stop(1)
	start := time.Now()
	err := write(2, "two down")
	if !errors.Is(err, worm.ErrUnavailable) {
		t.Fatalf("write with two of three down: %v, want ErrUnavailable", err)
	}
	if _, err := cl.Read(ctx, worm.Addr{Seg: 1, Off: 0}); !errors.Is(err, worm.ErrUnavailable) {
		t.Fatalf("read with two of three down: %v, want ErrUnavailable", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("failing with a majority down took %v; down connections should fail requests at once", d)
	}
	c.Start(1)
	c.Start(2)
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := write(3, "healed")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no service 10s after healing: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for off, want := range map[uint32]string{0: "all up", 1: "one down", 3: "healed"} {
		if v, err := cl.Read(ctx, worm.Addr{Seg: 1, Off: off}); err != nil || string(v) != want {
			t.Fatalf("read %d after healing: %q %v, want %q", off, v, err, want)
		}
	}
	// Register 2 saw no accept anywhere: it is empty.
	if _, err := cl.Read(ctx, worm.Addr{Seg: 1, Off: 2}); !errors.Is(err, worm.ErrEmpty) {
		t.Fatalf("read of the failed write's register: %v, want ErrEmpty", err)
	}
}

// TestAuth: a client without the key, or with another key, is refused at
// Dial with an authentication error.
func TestAuth(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 32)
	c := newProcCluster(t, 3, 16, key)
	ctx := ctxT(t, 10*time.Second)
	for name, k := range map[string][]byte{"no key": nil, "wrong key": bytes.Repeat([]byte{8}, 32)} {
		_, err := client.Dial(ctx, client.Config{Servers: c.Servers(), Key: k, Logger: quiet()})
		if !errors.Is(err, wire.ErrAuth) {
			t.Errorf("%s: Dial: %v, want wire.ErrAuth", name, err)
		}
	}
	cl := c.dial(t, "ok")
	if _, err := cl.Alloc(ctx, 3, nil); err != nil {
		t.Fatal(err)
	}
}

// TestSameAcceptorTwice: two addresses of one acceptor would make two
// "votes" of one server; Dial refuses.
func TestSameAcceptorTwice(t *testing.T) {
	c := newProcCluster(t, 2, 16, nil)
	s := c.Servers()
	ctx := ctxT(t, 5*time.Second)
	_, err := client.Dial(ctx, client.Config{Servers: []string{s[0], s[1], s[0]}, Logger: quiet()})
	if err == nil {
		t.Fatal("Dial accepted the same acceptor under two entries")
	}
	t.Logf("refused as expected: %v", err)
}

// TestTooLarge: values over the cluster's limit fail before anything is
// sent, and the connection stays usable.
func TestTooLarge(t *testing.T) {
	c := newProcCluster(t, 3, 16, nil)
	cl := c.dial(t, "big")
	ctx := ctxT(t, 10*time.Second)
	cl.Alloc(ctx, 1, nil)
	a := worm.Addr{Seg: 1, Off: 0}
	tok, err := cl.Capture(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	big := make([]byte, cl.MaxValue()+1)
	if err := cl.Write(ctx, a, tok, big); !errors.Is(err, worm.ErrTooLarge) {
		t.Fatalf("oversize write: %v, want ErrTooLarge", err)
	}
	if err := cl.WriteUnsafe(ctx, worm.Addr{Seg: 1, Off: 1}, big); !errors.Is(err, worm.ErrTooLarge) {
		t.Fatalf("oversize unsafe write: %v, want ErrTooLarge", err)
	}
	if err := cl.Write(ctx, a, tok, []byte("fits")); err != nil {
		t.Fatalf("write after refusal: %v", err)
	}
}

// TestDialUnavailable: with no server reachable, Dial fails with
// ErrUnavailable when its context ends.
func TestDialUnavailable(t *testing.T) {
	ctx := ctxT(t, 300*time.Millisecond)
	_, err := client.Dial(ctx, client.Config{Servers: []string{"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"}, Logger: quiet()})
	if !errors.Is(err, worm.ErrUnavailable) {
		t.Fatalf("Dial to nothing: %v, want ErrUnavailable", err)
	}
}

// TestLinearizableUnderRestarts: concurrent clients capture, write and
// read a small set of registers while servers are stopped and restarted
// (a minority at a time, connections broken); the recorded history must be
// linearizable. The seed is logged and replays the fault schedule (thread
// interleavings are the machine's).
func TestLinearizableUnderRestarts(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("WORM_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("seed %d (WORM_SEED=%d replays the fault schedule)", seed, seed)
	c := newProcCluster(t, 3, 8, nil)
	rec := check.NewRecorder()
	ctx := ctxT(t, 60*time.Second)
	const clients, segs = 4, 2
	var spaces []worm.Space
	for i := 0; i < clients; i++ {
		spaces = append(spaces, rec.Wrap(c.dial(t, fmt.Sprintf("c%d", i))))
	}
	for s := uint64(0); s < segs; s++ {
		if _, err := spaces[0].Alloc(ctx, 100+s, nil); err != nil {
			t.Fatal(err)
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var ops, errs atomic.Int64
	for i, sp := range spaces {
		wg.Add(1)
		go func(i int, sp worm.Space) {
			defer wg.Done()
			r := mrand.New(mrand.NewPCG(seed, uint64(i)))
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				a := worm.Addr{Seg: 100 + uint64(r.IntN(segs)), Off: uint32(r.IntN(8))}
				octx, cancel := context.WithTimeout(ctx, 2*time.Second)
				var err error
				switch r.IntN(3) {
				case 0:
					_, err = sp.Read(octx, a)
				default:
					var tok worm.Token
					tok, err = sp.Capture(octx, a)
					if err == nil {
						err = sp.Write(octx, a, tok, []byte(fmt.Sprintf("c%d-%d", i, n)))
					}
				}
				cancel()
				ops.Add(1)
				if err != nil && !errors.Is(err, worm.ErrEmpty) && !errors.Is(err, worm.ErrWritten) && !errors.Is(err, worm.ErrPreempted) {
					errs.Add(1)
				}
			}
		}(i, sp)
	}
	r := mrand.New(mrand.NewPCG(seed, 99))
	deadline := time.Now().Add(4 * time.Second)
	faults := 0
	for time.Now().Before(deadline) {
		i := r.IntN(3)
		c.Stop(i)
		time.Sleep(time.Duration(20+r.IntN(150)) * time.Millisecond)
		c.Start(i)
		faults++
		time.Sleep(time.Duration(20+r.IntN(150)) * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	t.Logf("%d operations (%d failed as unavailable/unknown), %d restarts", ops.Load(), errs.Load(), faults)
	res := check.Require(t, rec.History(), time.Minute)
	if res.Outcome != porcupine.Ok {
		t.Fatalf("no definite verdict: %v", res)
	}
	t.Log(res)
}

// BenchmarkWrite measures one client writing registers of a captured
// segment, one at a time (the latency path), and RawRTT a loopback TCP
// round trip of the same machine for comparison.
func BenchmarkWrite(b *testing.B) {
	c := newProcCluster(b, 3, 1<<16, nil)
	cl := c.dial(b, "bench")
	ctx := context.Background()
	seg := uint64(1)
	cl.Alloc(ctx, seg, nil)
	sc, err := cl.CaptureSegment(ctx, seg)
	if err != nil {
		b.Fatal(err)
	}
	v := make([]byte, 64)
	b.ReportAllocs()
	b.ResetTimer()
	off := uint32(0)
	for i := 0; i < b.N; i++ {
		if off == 1<<16 {
			b.StopTimer()
			seg++
			cl.Alloc(ctx, seg, nil)
			sc, _ = cl.CaptureSegment(ctx, seg)
			off = 0
			b.StartTimer()
		}
		if err := cl.Write(ctx, worm.Addr{Seg: seg, Off: off}, sc.Token, v); err != nil {
			b.Fatal(err)
		}
		off++
	}
}

// BenchmarkRead measures one client reading written registers, one at a
// time: the same path as BenchmarkWrite but for the acceptors' side
// (a read touches no log).
func BenchmarkRead(b *testing.B) {
	c := newProcCluster(b, 3, 1<<16, nil)
	cl := c.dial(b, "bench")
	ctx := context.Background()
	if _, err := cl.Alloc(ctx, 1, nil); err != nil {
		b.Fatal(err)
	}
	sc, err := cl.CaptureSegment(ctx, 1)
	if err != nil {
		b.Fatal(err)
	}
	v := make([]byte, 64)
	if err := cl.WriteBatch(ctx, 1, 0, sc.Token, [][]byte{v, v, v, v, v, v, v, v}); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := cl.Read(ctx, worm.Addr{Seg: 1, Off: uint32(i % 8)}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkWriteParallel: many goroutines share one client, each writing
// its own registers of captured segments.
func BenchmarkWriteParallel(b *testing.B) {
	c := newProcCluster(b, 3, 1<<16, nil)
	cl := c.dial(b, "bench")
	ctx := context.Background()
	var next atomic.Uint64
	b.ReportAllocs()
	b.SetParallelism(16)
	b.RunParallel(func(pb *testing.PB) {
		seg := 1000 + next.Add(1)
		cl.Alloc(ctx, seg, nil)
		sc, err := cl.CaptureSegment(ctx, seg)
		if err != nil {
			b.Error(err)
			return
		}
		v := make([]byte, 64)
		off := uint32(0)
		for pb.Next() {
			if err := cl.Write(ctx, worm.Addr{Seg: seg, Off: off}, sc.Token, v); err != nil {
				b.Error(err)
				return
			}
			off++
		}
	})
}
