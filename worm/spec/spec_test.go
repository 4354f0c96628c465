package spec_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/check"
	"github.com/wormspace/wormspace/worm/spacetest"
	"github.com/wormspace/wormspace/worm/spec"
)

var ctx = context.Background()

func TestConformance(t *testing.T) {
	st := spec.New(32)
	n := 0
	spacetest.Run(t, func(t *testing.T) []worm.Space {
		n++
		a, b := st.Client(fmt.Sprint("a", n)), st.Client(fmt.Sprint("b", n))
		t.Cleanup(func() { a.Close(); b.Close() })
		return []worm.Space{a, b}
	})
}

func allocated(t *testing.T, segSize uint32) (*spec.Store, worm.Space, worm.Space) {
	t.Helper()
	st := spec.New(segSize)
	a, b := st.Client("a"), st.Client("b")
	if _, err := a.Alloc(ctx, 1, nil); err != nil {
		t.Fatal(err)
	}
	return st, a, b
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func wantErr(t *testing.T, what string, err, kind error) {
	t.Helper()
	if !errors.Is(err, kind) {
		t.Fatalf("%s: %v, want %v", what, err, kind)
	}
}

// The spec is stricter than Paxos about tokens: only the register's current
// capture may write it.
func TestTokenRules(t *testing.T) {
	_, a, b := allocated(t, 16)
	r0, r1 := worm.Addr{Seg: 1, Off: 0}, worm.Addr{Seg: 1, Off: 1}
	t0, err := a.Capture(ctx, r0)
	must(t, err)
	wantErr(t, "zero token", a.Write(ctx, r0, worm.Token{}, []byte("x")), worm.ErrInvalid)
	wantErr(t, "zero token batch", a.WriteBatch(ctx, 1, 0, worm.Token{}, [][]byte{[]byte("x")}), worm.ErrInvalid)
	wantErr(t, "token of another register", a.Write(ctx, r1, t0, []byte("x")), worm.ErrPreempted)
	wantErr(t, "token on a never-captured segment", a.Write(ctx, worm.Addr{Seg: 99, Off: 0}, t0, []byte("x")), worm.ErrPreempted)
	forged := worm.Token{Round: t0.Round + 100, Node: 1}
	wantErr(t, "forged higher token", a.Write(ctx, r0, forged, []byte("x")), worm.ErrPreempted)
	// Tokens are unique across clients and increase.
	t1, err := b.Capture(ctx, r0)
	must(t, err)
	if !t0.Less(t1) || t0.Node == t1.Node {
		t.Fatalf("tokens %v then %v: want increasing, distinct nodes", t0, t1)
	}
	// Idempotence is checked before preemption: the stored value wins.
	must(t, b.Write(ctx, r0, t1, []byte("v")))
	if err := a.Write(ctx, r0, t0, []byte("v")); err != nil {
		t.Fatalf("identical write with a preempted token: %v, want nil", err)
	}
	if v, ok := worm.WrittenValue(a.Write(ctx, r0, t0, []byte("w"))); !ok || string(v) != "v" {
		t.Fatalf("other value with a preempted token: want WrittenError(v)")
	}
	// A segment capture's token covers registers never captured one by one.
	sc, err := a.CaptureSegment(ctx, 1)
	must(t, err)
	if len(sc.Contended) != 0 {
		t.Fatalf("Contended = %v in the spec", sc.Contended)
	}
	must(t, a.Write(ctx, r1, sc.Token, []byte("s")))
	// Capture on a written register issues no token.
	tok, err := b.Capture(ctx, r1)
	if !tok.IsZero() || !errors.Is(err, worm.ErrWritten) {
		t.Fatalf("Capture of a written register: %v, %v", tok, err)
	}
}

func TestErrorOrder(t *testing.T) {
	st, a, _ := allocated(t, 16)
	must(t, a.Trim(ctx, 1))
	// Trimmed wins over out of range.
	_, err := a.Read(ctx, worm.Addr{Seg: 1, Off: 100})
	wantErr(t, "out-of-range read of a trimmed segment", err, worm.ErrTrimmed)
	// Out of range wins over unallocated.
	_, err = a.Read(ctx, worm.Addr{Seg: 2, Off: 100})
	wantErr(t, "out-of-range read of an unallocated segment", err, worm.ErrOutOfRange)
	// Trim needs no allocation.
	must(t, a.Trim(ctx, 3))
	_, err = a.Alloc(ctx, 3, nil)
	wantErr(t, "Alloc of a trimmed segment", err, worm.ErrTrimmed)
	// Size limit.
	st.SetMaxValueSize(4)
	_, err = a.Alloc(ctx, 4, []byte("12345"))
	wantErr(t, "Alloc with a large meta", err, worm.ErrTooLarge)
	_, err = a.Alloc(ctx, 4, []byte("1234"))
	must(t, err)
	wantErr(t, "large WriteUnsafe", a.WriteUnsafe(ctx, worm.Addr{Seg: 4, Off: 0}, []byte("12345")), worm.ErrTooLarge)
	must(t, a.WriteUnsafe(ctx, worm.Addr{Seg: 4, Off: 0}, []byte("1234")))
}

func TestAllocSameClientAgain(t *testing.T) {
	st := spec.New(16)
	a, b, a2 := st.Client("a"), st.Client("b"), st.Client("a")
	info, err := a.Alloc(ctx, 1, []byte("first"))
	if err != nil || !info.Won || info.Owner != "a" || string(info.Meta) != "first" {
		t.Fatalf("first Alloc: %+v, %v", info, err)
	}
	for _, c := range []worm.Space{a, a2} {
		info, err = c.Alloc(ctx, 1, []byte("second"))
		if err != nil || !info.Won || string(info.Meta) != "first" {
			t.Fatalf("same identity again: %+v, %v; want Won with the first meta", info, err)
		}
	}
	info, err = b.Alloc(ctx, 1, []byte("b"))
	if err != nil || info.Won || info.Owner != "a" {
		t.Fatalf("other client: %+v, %v", info, err)
	}
}

func TestClose(t *testing.T) {
	_, a, b := allocated(t, 16)
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch, err := a.Listen(lctx, 1)
	must(t, err)
	must(t, a.Close())
	must(t, a.Close()) // idempotent
	_, err = a.Read(ctx, worm.Addr{Seg: 1, Off: 0})
	if !errors.Is(err, spec.ErrClosed) || !errors.Is(err, worm.ErrUnavailable) {
		t.Fatalf("Read after Close: %v", err)
	}
	wantErr(t, "WriteUnsafe after Close", a.WriteUnsafe(ctx, worm.Addr{Seg: 1, Off: 0}, []byte("x")), spec.ErrClosed)
	select {
	case _, ok := <-ch:
		if ok {
			t.Fatal("notification after Close")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("listener not closed by Close")
	}
	// Other clients are unaffected.
	_, err = b.Read(ctx, worm.Addr{Seg: 1, Off: 0})
	wantErr(t, "other client's Read", err, worm.ErrEmpty)
}

func TestListenLostAndTrim(t *testing.T) {
	st, a, b := allocated(t, 64)
	st.SetListenBuffer(2)
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch, err := b.Listen(lctx, 1)
	must(t, err)
	// Nobody drains: 64 writes overflow the listener; writers never block.
	for off := uint32(0); off < 64; off++ {
		must(t, a.WriteUnsafe(ctx, worm.Addr{Seg: 1, Off: off}, []byte{1}))
	}
	lost := false
	timeout := time.After(10 * time.Second)
	for !lost {
		select {
		case n := <-ch:
			lost = n.Lost
		case <-timeout:
			t.Fatal("no Lost notification after overflowing the listener")
		}
	}
	// Trim closes the channel.
	must(t, a.Trim(ctx, 1))
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-time.After(10 * time.Second):
			t.Fatal("listener not closed by Trim")
		}
	}
}

func TestListenNoIdempotentNotification(t *testing.T) {
	_, a, b := allocated(t, 16)
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch, err := b.Listen(lctx, 1)
	must(t, err)
	r := worm.Addr{Seg: 1, Off: 3}
	must(t, a.WriteUnsafe(ctx, r, []byte("x")))
	must(t, a.WriteUnsafe(ctx, r, []byte("x")))
	must(t, a.WriteUnsafe(ctx, worm.Addr{Seg: 1, Off: 4}, []byte("y")))
	var got []uint32
	for len(got) < 2 {
		select {
		case n := <-ch:
			got = append(got, n.Off)
		case <-time.After(10 * time.Second):
			t.Fatalf("got %v", got)
		}
	}
	if got[0] != 3 || got[1] != 4 {
		t.Fatalf("notifications %v, want [3 4] (one per register that became written)", got)
	}
}

func TestFaults(t *testing.T) {
	st, a, b := allocated(t, 16)
	r := func(off uint32) worm.Addr { return worm.Addr{Seg: 1, Off: off} }
	read := func(off uint32) string {
		v, err := b.Read(ctx, r(off))
		if errors.Is(err, worm.ErrEmpty) {
			return "<empty>"
		}
		must(t, err)
		return string(v)
	}

	st.InjectFault("a", spec.FaultUnknownApplied, 1)
	wantErr(t, "applied", a.WriteUnsafe(ctx, r(0), []byte("x")), worm.ErrUnknownOutcome)
	if got := read(0); got != "x" {
		t.Fatalf("applied fault: register holds %q, want x", got)
	}
	st.InjectFault("a", spec.FaultUnknownDropped, 1)
	wantErr(t, "dropped", a.WriteUnsafe(ctx, r(1), []byte("x")), worm.ErrUnknownOutcome)
	if got := read(1); got != "<empty>" {
		t.Fatalf("dropped fault: register holds %q", got)
	}
	st.InjectFault("a", spec.FaultUnavailable, 1)
	err := a.WriteUnsafe(ctx, r(2), []byte("x"))
	if !errors.Is(err, worm.ErrUnavailable) || errors.Is(err, worm.ErrUnknownOutcome) {
		t.Fatalf("unavailable fault: %v", err)
	}
	if got := read(2); got != "<empty>" {
		t.Fatalf("unavailable fault: register holds %q", got)
	}
	// Faults count only the listed operations, and only for that identity.
	st.InjectFault("a", spec.FaultUnavailable, 2, spec.OpRead)
	must(t, a.WriteUnsafe(ctx, r(3), []byte("y")))
	must(t, b.WriteUnsafe(ctx, r(4), []byte("y")))
	for i := 0; i < 2; i++ {
		_, err := a.Read(ctx, r(3))
		wantErr(t, "read fault", err, worm.ErrUnavailable)
	}
	if st.PendingFaults("a") != 0 {
		t.Fatalf("%d faults pending", st.PendingFaults("a"))
	}
	if _, err := a.Read(ctx, r(3)); err != nil {
		t.Fatalf("read after the faults: %v", err)
	}
	// An applied capture preempts older tokens although its caller learns
	// nothing, and reports unavailability (never an unknown outcome).
	tb, err := b.Capture(ctx, r(5))
	must(t, err)
	st.InjectFault("a", spec.FaultUnknownApplied, 1)
	_, err = a.Capture(ctx, r(5))
	if !errors.Is(err, worm.ErrUnavailable) || errors.Is(err, worm.ErrUnknownOutcome) {
		t.Fatalf("faulted capture: %v", err)
	}
	wantErr(t, "write after an applied faulted capture", b.Write(ctx, r(5), tb, []byte("z")), worm.ErrPreempted)
	// A dropped capture does not.
	tb, err = b.Capture(ctx, r(6))
	must(t, err)
	st.InjectFault("a", spec.FaultUnknownDropped, 1)
	_, err = a.Capture(ctx, r(6))
	wantErr(t, "dropped capture", err, worm.ErrUnavailable)
	must(t, b.Write(ctx, r(6), tb, []byte("z")))
	// Batches: applied faults mark each register that succeeded.
	sc, err := b.CaptureSegment(ctx, 1)
	must(t, err)
	st.InjectFault("b", spec.FaultUnknownApplied, 1)
	err = b.WriteBatch(ctx, 1, 6, sc.Token, [][]byte{[]byte("other"), []byte("w7")})
	var be *worm.BatchError
	if !errors.As(err, &be) || !errors.Is(be.Errs[0], worm.ErrWritten) || !errors.Is(be.Errs[1], worm.ErrUnknownOutcome) {
		t.Fatalf("faulted batch: %v", err)
	}
	if got := read(7); got != "w7" {
		t.Fatalf("applied batch fault: register 7 holds %q", got)
	}
	// Clearing.
	st.InjectFault("a", spec.FaultUnavailable, 5)
	st.InjectFault("a", spec.FaultNone, 0)
	if _, err := a.Read(ctx, r(3)); err != nil {
		t.Fatalf("read after clearing faults: %v", err)
	}
}

func TestContext(t *testing.T) {
	_, a, _ := allocated(t, 16)
	c, cancel := context.WithCancel(ctx)
	cancel()
	err := a.WriteUnsafe(c, worm.Addr{Seg: 1, Off: 0}, []byte("x"))
	if !errors.Is(err, context.Canceled) || !errors.Is(err, worm.ErrUnavailable) {
		t.Fatalf("canceled: %v", err)
	}
	if _, err := a.Read(ctx, worm.Addr{Seg: 1, Off: 0}); !errors.Is(err, worm.ErrEmpty) {
		t.Fatalf("a canceled write took effect: %v", err)
	}
}

// TestConcurrentLinearizable: the spec under many goroutines, with faults,
// checked by worm/check.
func TestConcurrentLinearizable(t *testing.T) {
	t.Setenv("WORM_CHECK_DIR", t.TempDir())
	st := spec.New(16)
	rec := check.NewRecorder()
	var cs []worm.Space
	for i := 0; i < 4; i++ {
		cs = append(cs, rec.Wrap(st.Client(fmt.Sprint("c", i))))
	}
	st.InjectFault("c3", spec.FaultUnknownApplied, 30, spec.OpWrite, spec.OpWriteUnsafe)
	var wg sync.WaitGroup
	for w := 0; w < 12; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := cs[w%len(cs)]
			c.Alloc(ctx, 1, nil)
			for i := 0; i < 100; i++ {
				a := worm.Addr{Seg: 1, Off: uint32(i % 5)}
				v := []byte(fmt.Sprint(w))
				switch (i + w) % 4 {
				case 0:
					c.Read(ctx, a)
				case 1:
					if tok, err := c.Capture(ctx, a); err == nil {
						c.Write(ctx, a, tok, v)
					}
				case 2:
					c.WriteUnsafe(ctx, a, v)
				case 3:
					if v2, err := c.Read(ctx, a); err == nil && len(v2) == 0 {
						t.Errorf("read an empty value")
					}
				}
			}
		}()
	}
	wg.Wait()
	check.Require(t, rec.History(), time.Minute)
}

func BenchmarkCaptureWrite(b *testing.B) {
	st := spec.New(1 << 16)
	c := st.Client("bench")
	c.Alloc(ctx, 1, nil)
	v := bytes.Repeat([]byte("x"), 64)
	b.ReportAllocs()
	seg, off := uint64(1), uint32(0)
	for b.Loop() {
		a := worm.Addr{Seg: seg, Off: off}
		tok, err := c.Capture(ctx, a)
		if err != nil {
			b.Fatal(err)
		}
		if err := c.Write(ctx, a, tok, v); err != nil {
			b.Fatal(err)
		}
		if off++; off == st.SegmentSize() {
			c.Trim(ctx, seg)
			seg, off = seg+1, 0
			c.Alloc(ctx, seg, nil)
		}
	}
}

func BenchmarkSegmentWrite(b *testing.B) {
	st := spec.New(1 << 16)
	c := st.Client("bench")
	v := bytes.Repeat([]byte("x"), 64)
	b.ReportAllocs()
	seg, off := uint64(1), uint32(0)
	c.Alloc(ctx, seg, nil)
	sc, _ := c.CaptureSegment(ctx, seg)
	for b.Loop() {
		if err := c.Write(ctx, worm.Addr{Seg: seg, Off: off}, sc.Token, v); err != nil {
			b.Fatal(err)
		}
		if off++; off == st.SegmentSize() {
			c.Trim(ctx, seg)
			seg, off = seg+1, 0
			c.Alloc(ctx, seg, nil)
			sc, _ = c.CaptureSegment(ctx, seg)
		}
	}
}

func BenchmarkRead(b *testing.B) {
	st := spec.New(1024)
	c := st.Client("bench")
	c.Alloc(ctx, 1, nil)
	a := worm.Addr{Seg: 1, Off: 7}
	c.WriteUnsafe(ctx, a, bytes.Repeat([]byte("x"), 64))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Read(ctx, a); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkReadParallel(b *testing.B) {
	st := spec.New(1024)
	c := st.Client("bench")
	c.Alloc(ctx, 1, nil)
	a := worm.Addr{Seg: 1, Off: 7}
	c.WriteUnsafe(ctx, a, bytes.Repeat([]byte("x"), 64))
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.Read(ctx, a); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkWriteBatch16(b *testing.B) {
	st := spec.New(1 << 16)
	c := st.Client("bench")
	vals := make([][]byte, 16)
	for i := range vals {
		vals[i] = bytes.Repeat([]byte("x"), 64)
	}
	b.ReportAllocs()
	seg, off := uint64(1), uint32(0)
	c.Alloc(ctx, seg, nil)
	sc, _ := c.CaptureSegment(ctx, seg)
	for b.Loop() {
		if err := c.WriteBatch(ctx, seg, off, sc.Token, vals); err != nil {
			b.Fatal(err)
		}
		if off += 16; off == st.SegmentSize() {
			c.Trim(ctx, seg)
			seg, off = seg+1, 0
			c.Alloc(ctx, seg, nil)
			sc, _ = c.CaptureSegment(ctx, seg)
		}
	}
}

func BenchmarkAllocCheck(b *testing.B) {
	st := spec.New(16)
	c := st.Client("bench")
	b.ReportAllocs()
	seg := uint64(0)
	for b.Loop() {
		seg++
		if _, err := c.Alloc(ctx, seg, []byte("meta")); err != nil {
			b.Fatal(err)
		}
		if _, err := c.Check(ctx, seg); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkWriteWithListener(b *testing.B) {
	st := spec.New(1 << 16)
	c := st.Client("bench")
	v := bytes.Repeat([]byte("x"), 64)
	seg, off := uint64(1), uint32(0)
	c.Alloc(ctx, seg, nil)
	var cancels []context.CancelFunc
	defer func() {
		for _, f := range cancels {
			f()
		}
	}()
	listen := func() {
		lctx, cancel := context.WithCancel(ctx)
		cancels = append(cancels, cancel)
		ch, _ := c.Listen(lctx, seg)
		go func() {
			for range ch {
			}
		}()
	}
	listen()
	b.ReportAllocs()
	for b.Loop() {
		if err := c.WriteUnsafe(ctx, worm.Addr{Seg: seg, Off: off}, v); err != nil {
			b.Fatal(err)
		}
		off++
		if off == st.SegmentSize() {
			b.StopTimer()
			c.Trim(ctx, seg) // closes the listener
			seg, off = seg+1, 0
			c.Alloc(ctx, seg, nil)
			listen()
			b.StartTimer()
		}
	}
}
