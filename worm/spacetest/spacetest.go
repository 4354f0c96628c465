package spacetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/check"
)

// OpTimeout bounds each subtest. It is generous because implementations
// run under emulation (QEMU without KVM) in CI; a correct one takes
// milliseconds.
var OpTimeout = 2 * time.Minute

// captureAttempts bounds the retries of a Capture that a Paxos
// implementation may report preempted under contention.
const captureAttempts = 50

// Open returns at least two fresh clients sharing one space.
type Open func(t *testing.T) []worm.Space

// segBase and segNext number the segments of a Run: a random base, so two
// runs against one long-lived cluster do not collide.
var (
	segBase = rand.Uint64N(1<<40) + 1<<20
	segNext atomic.Uint64
)

type env struct {
	t    *testing.T
	ctx  context.Context
	c    []worm.Space
	size uint32
}

func setup(t *testing.T, open Open) *env {
	t.Helper()
	c := open(t)
	if len(c) < 2 {
		t.Fatalf("open returned %d clients; the suite needs at least 2", len(c))
	}
	size := c[0].SegmentSize()
	if size < 16 {
		t.Fatalf("segment size %d; the suite needs at least 16", size)
	}
	ids := map[string]bool{}
	for i, s := range c {
		if s.SegmentSize() != size {
			t.Fatalf("client %d: segment size %d, client 0 says %d", i, s.SegmentSize(), size)
		}
		if ids[s.ID()] {
			t.Fatalf("client %d: identity %q is not unique", i, s.ID())
		}
		ids[s.ID()] = true
	}
	ctx, cancel := context.WithTimeout(context.Background(), OpTimeout)
	t.Cleanup(cancel)
	return &env{t: t, ctx: ctx, c: c, size: size}
}

// seg returns a fresh segment number, never used before in this process.
func (e *env) seg() uint64 { return segBase + segNext.Add(1) }

// alloc returns a fresh segment allocated by client 0.
func (e *env) alloc() uint64 {
	e.t.Helper()
	s := e.seg()
	info, err := e.c[0].Alloc(e.ctx, s, []byte("spacetest"))
	if err != nil {
		e.t.Fatalf("Alloc(%d): %v", s, err)
	}
	if !info.Won || info.Owner != e.c[0].ID() {
		e.t.Fatalf("Alloc(%d) of a fresh segment: %+v, want won by %q", s, info, e.c[0].ID())
	}
	return s
}

// capture captures addr with c, retrying a contended capture.
func (e *env) capture(c worm.Space, addr worm.Addr) (worm.Token, error) {
	for i := 0; ; i++ {
		tok, err := c.Capture(e.ctx, addr)
		if errors.Is(err, worm.ErrPreempted) && i < captureAttempts {
			continue
		}
		return tok, err
	}
}

// mustCapture captures an empty register.
func (e *env) mustCapture(c worm.Space, addr worm.Addr) worm.Token {
	e.t.Helper()
	tok, err := e.capture(c, addr)
	if err != nil {
		e.t.Fatalf("%s: Capture(%v): %v", c.ID(), addr, err)
	}
	if tok.IsZero() {
		e.t.Fatalf("%s: Capture(%v) returned the zero token", c.ID(), addr)
	}
	return tok
}

func (e *env) mustWrite(c worm.Space, addr worm.Addr, tok worm.Token, v []byte) {
	e.t.Helper()
	if err := c.Write(e.ctx, addr, tok, v); err != nil {
		e.t.Fatalf("%s: Write(%v, %v, %q): %v", c.ID(), addr, tok, v, err)
	}
}

// wantValue asserts that every client reads v at addr.
func (e *env) wantValue(addr worm.Addr, v []byte) {
	e.t.Helper()
	for _, c := range e.c {
		got, err := c.Read(e.ctx, addr)
		if err != nil {
			e.t.Fatalf("%s: Read(%v): %v, want %q", c.ID(), addr, err, v)
		}
		if !bytes.Equal(got, v) {
			e.t.Fatalf("%s: Read(%v) = %q, want %q", c.ID(), addr, got, v)
		}
	}
}

// wantEmpty asserts that every client reads addr as empty.
func (e *env) wantEmpty(addr worm.Addr) {
	e.t.Helper()
	for _, c := range e.c {
		got, err := c.Read(e.ctx, addr)
		if !errors.Is(err, worm.ErrEmpty) {
			e.t.Fatalf("%s: Read(%v) = %q, %v; want ErrEmpty", c.ID(), addr, got, err)
		}
	}
}

// wantWritten asserts err is a *WrittenError carrying v.
func wantWritten(t *testing.T, what string, err error, v []byte) {
	t.Helper()
	got, ok := worm.WrittenValue(err)
	if !ok || !errors.Is(err, worm.ErrWritten) {
		t.Fatalf("%s: %v, want *WrittenError(%q)", what, err, v)
	}
	if !bytes.Equal(got, v) {
		t.Fatalf("%s: WrittenError carries %q, want %q", what, got, v)
	}
}

func wantErr(t *testing.T, what string, err, kind error) {
	t.Helper()
	if !errors.Is(err, kind) {
		t.Fatalf("%s: %v, want %v", what, err, kind)
	}
}

// faultFree fails on errors a fault-free run must not produce.
func faultFree(t *testing.T, what string, err error) {
	t.Helper()
	if errors.Is(err, worm.ErrUnknownOutcome) || errors.Is(err, worm.ErrUnavailable) {
		t.Fatalf("%s: %v in a fault-free run", what, err)
	}
}

// Run runs the conformance suite against the spaces open returns.
func Run(t *testing.T, open Open) {
	tests := []struct {
		name string
		fn   func(*env)
	}{
		{"Identity", testIdentity},
		{"ReadEmpty", testReadEmpty},
		{"Unallocated", testUnallocated},
		{"OutOfRange", testOutOfRange},
		{"CaptureWriteRead", testCaptureWriteRead},
		{"WriteOnceStability", testWriteOnceStability},
		{"CapturePreempts", testCapturePreempts},
		{"CaptureWritten", testCaptureWritten},
		{"IdempotentRewrite", testIdempotentRewrite},
		{"UnsafeWrite", testUnsafeWrite},
		{"UnsafeThenCapture", testUnsafeThenCapture},
		{"ZeroLengthValue", testZeroLengthValue},
		{"AllocRace", testAllocRace},
		{"CaptureSegment", testCaptureSegment},
		{"WriteBatch", testWriteBatch},
		{"BatchPartialFailure", testBatchPartialFailure},
		{"Trim", testTrim},
		{"Listen", testListen},
		{"ValueAliasing", testValueAliasing},
		{"CanceledContext", testCanceledContext},
		{"ConcurrentWriters", testConcurrentWriters},
		{"Linearizable", testLinearizable},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(setup(t, open)) })
	}
}

func testIdentity(e *env) {
	for i, c := range e.c {
		if c.ID() == "" {
			e.t.Errorf("client %d has an empty identity", i)
		}
	}
}

func testReadEmpty(e *env) {
	s := e.alloc()
	for _, off := range []uint32{0, 1, e.size - 1} {
		e.wantEmpty(worm.Addr{Seg: s, Off: off})
	}
}

func testUnallocated(e *env) {
	s := e.seg()
	a := worm.Addr{Seg: s, Off: 3}
	for _, c := range e.c {
		_, err := c.Read(e.ctx, a)
		wantErr(e.t, c.ID()+": Read of an unallocated segment", err, worm.ErrUnallocated)
		_, err = c.Capture(e.ctx, a)
		wantErr(e.t, c.ID()+": Capture on an unallocated segment", err, worm.ErrUnallocated)
		_, err = c.CaptureSegment(e.ctx, s)
		wantErr(e.t, c.ID()+": CaptureSegment of an unallocated segment", err, worm.ErrUnallocated)
		err = c.WriteUnsafe(e.ctx, a, []byte("x"))
		wantErr(e.t, c.ID()+": WriteUnsafe on an unallocated segment", err, worm.ErrUnallocated)
		_, err = c.Check(e.ctx, s)
		wantErr(e.t, c.ID()+": Check of an unallocated segment", err, worm.ErrUnallocated)
	}
	// Allocation makes the segment usable and empty.
	info, err := e.c[1].Alloc(e.ctx, s, []byte("m"))
	if err != nil || !info.Won {
		e.t.Fatalf("Alloc after failed operations: %+v, %v", info, err)
	}
	e.wantEmpty(a)
}

func testOutOfRange(e *env) {
	s := e.alloc()
	c := e.c[0]
	tok := e.mustCapture(c, worm.Addr{Seg: s, Off: 0})
	for _, off := range []uint32{e.size, e.size + 1, worm.MetaOffset} {
		a := worm.Addr{Seg: s, Off: off}
		_, err := c.Read(e.ctx, a)
		wantErr(e.t, fmt.Sprintf("Read(%v)", a), err, worm.ErrOutOfRange)
		_, err = c.Capture(e.ctx, a)
		wantErr(e.t, fmt.Sprintf("Capture(%v)", a), err, worm.ErrOutOfRange)
		err = c.Write(e.ctx, a, tok, []byte("x"))
		wantErr(e.t, fmt.Sprintf("Write(%v)", a), err, worm.ErrOutOfRange)
		err = c.WriteUnsafe(e.ctx, a, []byte("x"))
		wantErr(e.t, fmt.Sprintf("WriteUnsafe(%v)", a), err, worm.ErrOutOfRange)
	}
	sc, err := c.CaptureSegment(e.ctx, s)
	if err != nil {
		e.t.Fatalf("CaptureSegment: %v", err)
	}
	// A batch that runs past the end fails (as a whole or per register).
	err = c.WriteBatch(e.ctx, s, e.size-1, sc.Token, [][]byte{[]byte("a"), []byte("b")})
	wantErr(e.t, "WriteBatch past the end", err, worm.ErrOutOfRange)
	// The allocation record is untouched by the attempts on MetaOffset.
	info, err := e.c[1].Check(e.ctx, s)
	if err != nil || info.Owner != c.ID() || string(info.Meta) != "spacetest" {
		e.t.Fatalf("Check after MetaOffset writes: %+v, %v", info, err)
	}
}

func testCaptureWriteRead(e *env) {
	s := e.alloc()
	a := worm.Addr{Seg: s, Off: 5}
	tok := e.mustCapture(e.c[0], a)
	e.wantEmpty(a) // a capture alone writes nothing
	e.mustWrite(e.c[0], a, tok, []byte("hello"))
	e.wantValue(a, []byte("hello"))
	e.wantEmpty(worm.Addr{Seg: s, Off: 4}) // neighbours untouched
	e.wantEmpty(worm.Addr{Seg: s, Off: 6})
}

func testWriteOnceStability(e *env) {
	s := e.alloc()
	a := worm.Addr{Seg: s, Off: 1}
	tok := e.mustCapture(e.c[0], a)
	e.mustWrite(e.c[0], a, tok, []byte("first"))
	for i, c := range e.c {
		// Every later attempt, by anyone, with any fresh token, fails and
		// reports the stored value; the value never changes.
		tok2, err := e.capture(c, a)
		wantWritten(e.t, fmt.Sprintf("%s: Capture of a written register", c.ID()), err, []byte("first"))
		if !tok2.IsZero() {
			e.t.Fatalf("%s: Capture of a written register returned token %v with its error", c.ID(), tok2)
		}
		err = c.Write(e.ctx, a, tok, []byte(fmt.Sprintf("other-%d", i)))
		if !errors.Is(err, worm.ErrWritten) && !errors.Is(err, worm.ErrPreempted) {
			e.t.Fatalf("%s: Write of another value: %v, want *WrittenError or ErrPreempted", c.ID(), err)
		}
		if v, ok := worm.WrittenValue(err); ok && string(v) != "first" {
			e.t.Fatalf("%s: WrittenError carries %q, want %q", c.ID(), v, "first")
		}
		err = c.WriteUnsafe(e.ctx, a, []byte("unsafe"))
		if !errors.Is(err, worm.ErrWritten) && !errors.Is(err, worm.ErrPreempted) {
			e.t.Fatalf("%s: WriteUnsafe on a written register: %v", c.ID(), err)
		}
		e.wantValue(a, []byte("first"))
	}
}

func testCapturePreempts(e *env) {
	s := e.alloc()
	a := worm.Addr{Seg: s, Off: 2}
	t1 := e.mustCapture(e.c[0], a)
	t2 := e.mustCapture(e.c[1], a)
	if !t1.Less(t2) {
		e.t.Fatalf("second capture's token %v is not higher than the first's %v", t2, t1)
	}
	err := e.c[0].Write(e.ctx, a, t1, []byte("old"))
	wantErr(e.t, "Write with a preempted token", err, worm.ErrPreempted)
	e.wantEmpty(a)
	e.mustWrite(e.c[1], a, t2, []byte("new"))
	e.wantValue(a, []byte("new"))
	// A capture by the same client also preempts its own older token.
	b := worm.Addr{Seg: s, Off: 3}
	u1 := e.mustCapture(e.c[0], b)
	u2 := e.mustCapture(e.c[0], b)
	if !u1.Less(u2) {
		e.t.Fatalf("re-capture's token %v is not higher than %v", u2, u1)
	}
	wantErr(e.t, "Write with own preempted token", e.c[0].Write(e.ctx, b, u1, []byte("x")), worm.ErrPreempted)
	e.mustWrite(e.c[0], b, u2, []byte("y"))
	e.wantValue(b, []byte("y"))
}

func testCaptureWritten(e *env) {
	s := e.alloc()
	a := worm.Addr{Seg: s, Off: 7}
	tok := e.mustCapture(e.c[1], a)
	e.mustWrite(e.c[1], a, tok, []byte("v"))
	for _, c := range e.c {
		_, err := e.capture(c, a)
		wantWritten(e.t, c.ID()+": Capture of a written register", err, []byte("v"))
	}
}

func testIdempotentRewrite(e *env) {
	s := e.alloc()
	a := worm.Addr{Seg: s, Off: 0}
	tok := e.mustCapture(e.c[0], a)
	e.mustWrite(e.c[0], a, tok, []byte("same"))
	e.mustWrite(e.c[0], a, tok, []byte("same")) // retry with the same token
	// A retry after another client's capture found the value (and, in
	// Paxos, raised the promise) still succeeds: retries are idempotent.
	_, err := e.capture(e.c[1], a)
	wantWritten(e.t, "Capture of a written register", err, []byte("same"))
	if err := e.c[0].Write(e.ctx, a, tok, []byte("same")); err != nil {
		e.t.Fatalf("identical retry after a later capture: %v, want nil", err)
	}
	e.wantValue(a, []byte("same"))
}

func testUnsafeWrite(e *env) {
	s := e.alloc()
	a := worm.Addr{Seg: s, Off: 4}
	if err := e.c[0].WriteUnsafe(e.ctx, a, []byte("yes")); err != nil {
		e.t.Fatalf("WriteUnsafe on a fresh register: %v", err)
	}
	e.wantValue(a, []byte("yes"))
	if err := e.c[0].WriteUnsafe(e.ctx, a, []byte("yes")); err != nil {
		e.t.Fatalf("identical WriteUnsafe retry: %v, want nil", err)
	}
	err := e.c[1].WriteUnsafe(e.ctx, a, []byte("no"))
	if !errors.Is(err, worm.ErrWritten) && !errors.Is(err, worm.ErrPreempted) {
		e.t.Fatalf("WriteUnsafe of another value: %v, want *WrittenError or ErrPreempted", err)
	}
	e.wantValue(a, []byte("yes"))
	// After a capture, a ballot-0 write to an empty register is preempted.
	b := worm.Addr{Seg: s, Off: 5}
	e.mustCapture(e.c[1], b)
	wantErr(e.t, "WriteUnsafe after a capture", e.c[0].WriteUnsafe(e.ctx, b, []byte("late")), worm.ErrPreempted)
	e.wantEmpty(b)
	// So is one under a segment capture.
	if _, err := e.c[1].CaptureSegment(e.ctx, s); err != nil {
		e.t.Fatalf("CaptureSegment: %v", err)
	}
	c := worm.Addr{Seg: s, Off: 9}
	wantErr(e.t, "WriteUnsafe after a segment capture", e.c[0].WriteUnsafe(e.ctx, c, []byte("late")), worm.ErrPreempted)
	e.wantEmpty(c)
}

func testUnsafeThenCapture(e *env) {
	s := e.alloc()
	a := worm.Addr{Seg: s, Off: 8}
	if err := e.c[0].WriteUnsafe(e.ctx, a, []byte("vote-yes")); err != nil {
		e.t.Fatalf("WriteUnsafe: %v", err)
	}
	// The capture carries the ballot-0 value over and reports it.
	_, err := e.capture(e.c[1], a)
	wantWritten(e.t, "Capture after WriteUnsafe", err, []byte("vote-yes"))
	e.wantValue(a, []byte("vote-yes"))
	// The same through a segment capture.
	b := worm.Addr{Seg: s, Off: 9}
	if err := e.c[0].WriteUnsafe(e.ctx, b, []byte("vote-no")); err != nil {
		e.t.Fatalf("WriteUnsafe: %v", err)
	}
	sc, err := e.c[1].CaptureSegment(e.ctx, s)
	if err != nil {
		e.t.Fatalf("CaptureSegment: %v", err)
	}
	want := []worm.Entry{{Off: 8, Value: []byte("vote-yes")}, {Off: 9, Value: []byte("vote-no")}}
	if !entriesEqual(sc.Written, want) {
		e.t.Fatalf("CaptureSegment.Written = %v, want %v", sc.Written, want)
	}
	// Writing "no" with the segment token does not replace it.
	err = e.c[1].Write(e.ctx, b, sc.Token, []byte("timeout-no"))
	wantWritten(e.t, "Write over a carried-over value", err, []byte("vote-no"))
	e.wantValue(b, []byte("vote-no"))
}

func entriesEqual(a, b []worm.Entry) bool {
	return slices.EqualFunc(a, b, func(x, y worm.Entry) bool { return x.Off == y.Off && bytes.Equal(x.Value, y.Value) })
}

func testZeroLengthValue(e *env) {
	s := e.alloc()
	a := worm.Addr{Seg: s, Off: 0}
	tok := e.mustCapture(e.c[0], a)
	e.mustWrite(e.c[0], a, tok, []byte{})
	// A zero-length value is a value: not empty, and write-once.
	e.wantValue(a, []byte{})
	_, err := e.capture(e.c[1], a)
	wantWritten(e.t, "Capture of a register holding a zero-length value", err, []byte{})
}

func testAllocRace(e *env) {
	s := e.seg()
	const perClient = 8
	type res struct {
		client int
		meta   string
		info   worm.SegmentInfo
		err    error
	}
	results := make(chan res, perClient*len(e.c))
	var wg sync.WaitGroup
	start := make(chan struct{})
	for ci, c := range e.c {
		for g := 0; g < perClient; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				meta := fmt.Sprintf("%s/%d", c.ID(), g)
				info, err := c.Alloc(e.ctx, s, []byte(meta))
				results <- res{ci, meta, info, err}
			}()
		}
	}
	close(start)
	wg.Wait()
	close(results)
	var first *worm.SegmentInfo
	offered := map[string]string{} // meta -> client id
	winners := map[string]bool{}
	var all []res
	for r := range results {
		all = append(all, r)
		offered[r.meta] = e.c[r.client].ID()
	}
	for _, r := range all {
		c := e.c[r.client]
		if r.err != nil {
			e.t.Fatalf("%s: Alloc: %v", c.ID(), r.err)
		}
		if first == nil {
			first = &r.info
		}
		if r.info.Owner != first.Owner || !bytes.Equal(r.info.Meta, first.Meta) {
			e.t.Fatalf("disagreement on the winner: %q/%q vs %q/%q", r.info.Owner, r.info.Meta, first.Owner, first.Meta)
		}
		if r.info.Won != (r.info.Owner == c.ID()) {
			e.t.Fatalf("%s: Won=%v but the owner is %q", c.ID(), r.info.Won, r.info.Owner)
		}
		if r.info.Won {
			winners[c.ID()] = true
		}
	}
	if len(winners) != 1 {
		e.t.Fatalf("%d clients won the allocation: %v", len(winners), winners)
	}
	if offered[string(first.Meta)] != first.Owner {
		e.t.Fatalf("the winning record %q/%q was not offered by its owner", first.Owner, first.Meta)
	}
	for _, c := range e.c {
		info, err := c.Check(e.ctx, s)
		if err != nil || info.Owner != first.Owner || !bytes.Equal(info.Meta, first.Meta) || info.Won != (info.Owner == c.ID()) {
			e.t.Fatalf("%s: Check = %+v, %v; want the winner %q/%q", c.ID(), info, err, first.Owner, first.Meta)
		}
		// A late Alloc learns the same winner.
		info, err = c.Alloc(e.ctx, s, []byte("late"))
		if err != nil || info.Owner != first.Owner || !bytes.Equal(info.Meta, first.Meta) {
			e.t.Fatalf("%s: late Alloc = %+v, %v", c.ID(), info, err)
		}
	}
}

func testCaptureSegment(e *env) {
	s := e.alloc()
	pre := worm.Addr{Seg: s, Off: 3}
	tok := e.mustCapture(e.c[0], pre)
	e.mustWrite(e.c[0], pre, tok, []byte("pre"))
	sc, err := e.c[0].CaptureSegment(e.ctx, s)
	if err != nil {
		e.t.Fatalf("CaptureSegment: %v", err)
	}
	if want := []worm.Entry{{Off: 3, Value: []byte("pre")}}; !entriesEqual(sc.Written, want) {
		e.t.Fatalf("Written = %v, want %v", sc.Written, want)
	}
	if len(sc.Contended) != 0 {
		e.t.Fatalf("Contended = %v without any per-register capture", sc.Contended)
	}
	// The token covers every other register: one write each, no capture.
	for _, off := range []uint32{0, 1, e.size - 1} {
		e.mustWrite(e.c[0], worm.Addr{Seg: s, Off: off}, sc.Token, []byte(fmt.Sprint("s", off)))
	}
	// A per-register capture preempts the segment token there only.
	b := worm.Addr{Seg: s, Off: 5}
	t5 := e.mustCapture(e.c[1], b)
	wantErr(e.t, "segment token after a per-register capture", e.c[0].Write(e.ctx, b, sc.Token, []byte("seg")), worm.ErrPreempted)
	e.mustWrite(e.c[0], worm.Addr{Seg: s, Off: 6}, sc.Token, []byte("s6"))
	e.mustWrite(e.c[1], b, t5, []byte("reg"))
	// A later segment capture by another client preempts the first.
	sc2, err := e.c[1].CaptureSegment(e.ctx, s)
	if err != nil {
		e.t.Fatalf("second CaptureSegment: %v", err)
	}
	if !sc.Token.Less(sc2.Token) {
		e.t.Fatalf("second segment token %v not higher than %v", sc2.Token, sc.Token)
	}
	wantErr(e.t, "first segment token after a second segment capture", e.c[0].Write(e.ctx, worm.Addr{Seg: s, Off: 7}, sc.Token, []byte("x")), worm.ErrPreempted)
	var offs []uint32
	for _, w := range sc2.Written {
		offs = append(offs, w.Off)
	}
	if want := []uint32{0, 1, 3, 5, 6, e.size - 1}; !slices.Equal(offs, want) {
		e.t.Fatalf("second CaptureSegment.Written offsets = %v, want %v", offs, want)
	}
	e.mustWrite(e.c[1], worm.Addr{Seg: s, Off: 7}, sc2.Token, []byte("s7"))
	e.wantValue(worm.Addr{Seg: s, Off: 7}, []byte("s7"))
	e.wantValue(b, []byte("reg"))
	// A register's effective capture is the higher of its own and its
	// segment's: a later segment capture with a higher token preempts an
	// earlier per-register capture. (Paxos may give the segment capture a
	// lower ballot than the register's; then it lists the register as
	// Contended and the register capture still holds. The spec never
	// does.)
	r8 := worm.Addr{Seg: s, Off: 8}
	t8 := e.mustCapture(e.c[0], r8)
	sc3, err := e.c[1].CaptureSegment(e.ctx, s)
	if err != nil {
		e.t.Fatalf("third CaptureSegment: %v", err)
	}
	if contended := slices.Contains(sc3.Contended, 8); contended != sc3.Token.Less(t8) {
		e.t.Fatalf("segment token %v, register token %v: Contended=%v", sc3.Token, t8, sc3.Contended)
	}
	if slices.Contains(sc3.Contended, 8) {
		wantErr(e.t, "segment token on a contended register", e.c[1].Write(e.ctx, r8, sc3.Token, []byte("s8")), worm.ErrPreempted)
		e.mustWrite(e.c[0], r8, t8, []byte("old"))
		e.wantValue(r8, []byte("old"))
		return
	}
	wantErr(e.t, "per-register token after a later segment capture", e.c[0].Write(e.ctx, r8, t8, []byte("old")), worm.ErrPreempted)
	e.mustWrite(e.c[1], r8, sc3.Token, []byte("s8"))
	e.wantValue(r8, []byte("s8"))
}

func testWriteBatch(e *env) {
	s := e.alloc()
	sc, err := e.c[0].CaptureSegment(e.ctx, s)
	if err != nil {
		e.t.Fatalf("CaptureSegment: %v", err)
	}
	vals := [][]byte{[]byte("b0"), []byte("b1"), []byte("b2"), []byte("b3")}
	if err := e.c[0].WriteBatch(e.ctx, s, 2, sc.Token, vals); err != nil {
		e.t.Fatalf("WriteBatch: %v", err)
	}
	for i, v := range vals {
		e.wantValue(worm.Addr{Seg: s, Off: 2 + uint32(i)}, v)
	}
	// Idempotent as a whole.
	if err := e.c[0].WriteBatch(e.ctx, s, 2, sc.Token, vals); err != nil {
		e.t.Fatalf("identical WriteBatch retry: %v", err)
	}
	wantErr(e.t, "empty WriteBatch", e.c[0].WriteBatch(e.ctx, s, 0, sc.Token, nil), worm.ErrInvalid)
}

func testBatchPartialFailure(e *env) {
	s := e.alloc()
	// Offset 1 holds a value before the segment capture; offset 2 is
	// captured by another client after it.
	if err := e.c[1].WriteUnsafe(e.ctx, worm.Addr{Seg: s, Off: 1}, []byte("taken")); err != nil {
		e.t.Fatalf("WriteUnsafe: %v", err)
	}
	sc, err := e.c[0].CaptureSegment(e.ctx, s)
	if err != nil {
		e.t.Fatalf("CaptureSegment: %v", err)
	}
	e.mustCapture(e.c[1], worm.Addr{Seg: s, Off: 2})
	vals := [][]byte{[]byte("a"), []byte("b"), []byte("c"), []byte("d")}
	err = e.c[0].WriteBatch(e.ctx, s, 0, sc.Token, vals)
	var be *worm.BatchError
	if !errors.As(err, &be) {
		e.t.Fatalf("WriteBatch over a written and a contended register: %v, want *BatchError", err)
	}
	if len(be.Errs) != 4 {
		e.t.Fatalf("BatchError has %d errors, want 4", len(be.Errs))
	}
	if be.Errs[0] != nil || be.Errs[3] != nil {
		e.t.Fatalf("BatchError: registers 0 and 3 failed: %v", be.Errs)
	}
	wantWritten(e.t, "batch register 1", be.Errs[1], []byte("taken"))
	wantErr(e.t, "batch register 2", be.Errs[2], worm.ErrPreempted)
	e.wantValue(worm.Addr{Seg: s, Off: 0}, []byte("a"))
	e.wantValue(worm.Addr{Seg: s, Off: 1}, []byte("taken"))
	e.wantEmpty(worm.Addr{Seg: s, Off: 2})
	e.wantValue(worm.Addr{Seg: s, Off: 3}, []byte("d"))
}

func testTrim(e *env) {
	s := e.alloc()
	keep := e.alloc()
	a := worm.Addr{Seg: s, Off: 0}
	tok := e.mustCapture(e.c[0], a)
	e.mustWrite(e.c[0], a, tok, []byte("gone"))
	k := worm.Addr{Seg: keep, Off: 0}
	ktok := e.mustCapture(e.c[0], k)
	e.mustWrite(e.c[0], k, ktok, []byte("kept"))
	if err := e.c[1].Trim(e.ctx, s); err != nil {
		e.t.Fatalf("Trim: %v", err)
	}
	if err := e.c[0].Trim(e.ctx, s); err != nil {
		e.t.Fatalf("second Trim: %v, want nil (idempotent)", err)
	}
	for _, c := range e.c {
		what := func(op string) string { return c.ID() + ": " + op + " on a trimmed segment" }
		for _, off := range []uint32{0, 1} {
			ad := worm.Addr{Seg: s, Off: off}
			_, err := c.Read(e.ctx, ad)
			wantErr(e.t, what("Read"), err, worm.ErrTrimmed)
			_, err = c.Capture(e.ctx, ad)
			wantErr(e.t, what("Capture"), err, worm.ErrTrimmed)
			wantErr(e.t, what("WriteUnsafe"), c.WriteUnsafe(e.ctx, ad, []byte("x")), worm.ErrTrimmed)
		}
		wantErr(e.t, what("Write"), c.Write(e.ctx, worm.Addr{Seg: s, Off: 1}, tok, []byte("x")), worm.ErrTrimmed)
		wantErr(e.t, what("WriteBatch"), c.WriteBatch(e.ctx, s, 1, tok, [][]byte{[]byte("x")}), worm.ErrTrimmed)
		_, err := c.CaptureSegment(e.ctx, s)
		wantErr(e.t, what("CaptureSegment"), err, worm.ErrTrimmed)
		_, err = c.Check(e.ctx, s)
		wantErr(e.t, what("Check"), err, worm.ErrTrimmed)
		_, err = c.Alloc(e.ctx, s, []byte("again"))
		wantErr(e.t, what("Alloc"), err, worm.ErrTrimmed)
		lctx, cancel := context.WithCancel(e.ctx)
		_, err = c.Listen(lctx, s)
		cancel()
		wantErr(e.t, what("Listen"), err, worm.ErrTrimmed)
	}
	e.wantValue(k, []byte("kept"))
}

func testListen(e *env) {
	s := e.alloc()
	lctx, cancel := context.WithCancel(e.ctx)
	ch, err := e.c[1].Listen(lctx, s)
	if err != nil {
		e.t.Fatalf("Listen: %v", err)
	}
	sc, err := e.c[0].CaptureSegment(e.ctx, s)
	if err != nil {
		e.t.Fatalf("CaptureSegment: %v", err)
	}
	want := map[uint32]bool{}
	for off := uint32(0); off < 6; off++ {
		e.mustWrite(e.c[0], worm.Addr{Seg: s, Off: off}, sc.Token, []byte{byte(off)})
		want[off] = true
	}
	if err := e.c[0].WriteUnsafe(e.ctx, worm.Addr{Seg: s, Off: 9}, []byte("u")); !errors.Is(err, worm.ErrPreempted) {
		e.t.Fatalf("WriteUnsafe under a segment capture: %v", err)
	}
	got := map[uint32]bool{}
	deadline := time.After(OpTimeout / 2)
	for len(got) < len(want) {
		select {
		case n, ok := <-ch:
			if !ok {
				e.t.Fatalf("listen channel closed early; got %v", got)
			}
			if n.Lost {
				// Rescan, as a listener must.
				for off := range want {
					if _, err := e.c[1].Read(e.ctx, worm.Addr{Seg: s, Off: off}); err == nil {
						got[off] = true
					}
				}
				continue
			}
			if n.Off == worm.MetaOffset {
				continue
			}
			if !want[n.Off] {
				e.t.Fatalf("notification for register %d, which was not written", n.Off)
			}
			if n.Chosen && !bytes.Equal(n.Value, []byte{byte(n.Off)}) {
				e.t.Fatalf("notification for register %d carries %q as chosen, want %q", n.Off, n.Value, []byte{byte(n.Off)})
			}
			// A notification is a hint that the value is readable.
			v, err := e.c[1].Read(e.ctx, worm.Addr{Seg: s, Off: n.Off})
			if err != nil || !bytes.Equal(v, []byte{byte(n.Off)}) {
				e.t.Fatalf("Read after notification for %d: %q, %v", n.Off, v, err)
			}
			got[n.Off] = true
		case <-deadline:
			e.t.Fatalf("notifications for %d of %d writes after %v", len(got), len(want), OpTimeout/2)
		}
	}
	cancel()
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-time.After(OpTimeout / 2):
			e.t.Fatalf("listen channel not closed after its context ended")
		}
	}
}

func testValueAliasing(e *env) {
	s := e.alloc()
	a := worm.Addr{Seg: s, Off: 0}
	buf := []byte("original")
	tok := e.mustCapture(e.c[0], a)
	e.mustWrite(e.c[0], a, tok, buf)
	copy(buf, "XXXXXXXX") // the caller reuses its buffer
	e.wantValue(a, []byte("original"))
	v, err := e.c[0].Read(e.ctx, a)
	if err != nil {
		e.t.Fatal(err)
	}
	copy(v, "YYYYYYYY") // the caller owns returned values
	e.wantValue(a, []byte("original"))
	_, err = e.capture(e.c[1], a)
	if w, ok := worm.WrittenValue(err); ok {
		copy(w, "ZZZZZZZZ")
	}
	e.wantValue(a, []byte("original"))

	ub := []byte("unsafe")
	if err := e.c[0].WriteUnsafe(e.ctx, worm.Addr{Seg: s, Off: 1}, ub); err != nil {
		e.t.Fatal(err)
	}
	copy(ub, "------")
	e.wantValue(worm.Addr{Seg: s, Off: 1}, []byte("unsafe"))

	sc, err := e.c[0].CaptureSegment(e.ctx, s)
	if err != nil {
		e.t.Fatal(err)
	}
	for _, w := range sc.Written {
		copy(w.Value, "########")
	}
	e.wantValue(a, []byte("original"))
	b0, b1 := []byte("batch0"), []byte("batch1")
	if err := e.c[0].WriteBatch(e.ctx, s, 2, sc.Token, [][]byte{b0, b1}); err != nil {
		e.t.Fatal(err)
	}
	copy(b0, "######")
	copy(b1, "######")
	e.wantValue(worm.Addr{Seg: s, Off: 2}, []byte("batch0"))
	e.wantValue(worm.Addr{Seg: s, Off: 3}, []byte("batch1"))

	s2 := e.seg()
	meta := []byte("meta-original")
	if _, err := e.c[0].Alloc(e.ctx, s2, meta); err != nil {
		e.t.Fatal(err)
	}
	copy(meta, "#############")
	info, err := e.c[1].Check(e.ctx, s2)
	if err != nil || string(info.Meta) != "meta-original" {
		e.t.Fatalf("Check after the caller reused its meta buffer: %q, %v", info.Meta, err)
	}
	copy(info.Meta, "#############")
	info, err = e.c[1].Check(e.ctx, s2)
	if err != nil || string(info.Meta) != "meta-original" {
		e.t.Fatalf("Check after the caller changed a returned meta: %q, %v", info.Meta, err)
	}
}

func testCanceledContext(e *env) {
	s := e.alloc()
	a := worm.Addr{Seg: s, Off: 0}
	ctx, cancel := context.WithCancel(e.ctx)
	cancel()
	_, err := e.c[0].Read(ctx, a)
	if !errors.Is(err, context.Canceled) || !errors.Is(err, worm.ErrUnavailable) {
		e.t.Fatalf("Read with a canceled context: %v, want context.Canceled wrapped in ErrUnavailable", err)
	}
	err = e.c[0].WriteUnsafe(ctx, a, []byte("x"))
	if !errors.Is(err, context.Canceled) || !(errors.Is(err, worm.ErrUnavailable) || errors.Is(err, worm.ErrUnknownOutcome)) {
		e.t.Fatalf("WriteUnsafe with a canceled context: %v", err)
	}
	if errors.Is(err, worm.ErrUnavailable) {
		e.wantEmpty(a) // unavailable: nothing was written
	}
}

// testConcurrentWriters: writers on every client race capture+write on the
// same registers; exactly one value wins each register, every writer learns
// it, and every reader agrees.
func testConcurrentWriters(e *env) {
	s := e.alloc()
	const regs, perClient = 6, 3
	type learned struct {
		writer string
		off    uint32
		value  string
		wrote  bool // this writer's Write returned nil
	}
	out := make(chan learned, regs*perClient*len(e.c))
	errs := make(chan error, regs*perClient*len(e.c))
	var wg sync.WaitGroup
	for ci, c := range e.c {
		for g := 0; g < perClient; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				me := fmt.Sprintf("c%d-g%d", ci, g)
				for off := uint32(0); off < regs; off++ {
					a := worm.Addr{Seg: s, Off: off}
					mine := []byte(me + "@" + fmt.Sprint(off))
					for attempt := 0; ; attempt++ {
						if attempt > 1000 {
							errs <- fmt.Errorf("%s: no progress on %v", me, a)
							return
						}
						tok, err := c.Capture(e.ctx, a)
						if v, ok := worm.WrittenValue(err); ok {
							out <- learned{me, off, string(v), false}
							break
						}
						if errors.Is(err, worm.ErrPreempted) {
							continue
						}
						if err != nil {
							errs <- fmt.Errorf("%s: Capture(%v): %w", me, a, err)
							return
						}
						err = c.Write(e.ctx, a, tok, mine)
						if err == nil {
							out <- learned{me, off, string(mine), true}
							break
						}
						if v, ok := worm.WrittenValue(err); ok {
							out <- learned{me, off, string(v), false}
							break
						}
						// Preempted: capture again. Unknown outcome (a
						// Paxos write preempted after reaching some
						// acceptors): capture again too; the capture
						// finishes our value if it may have been chosen.
						if !errors.Is(err, worm.ErrPreempted) && !errors.Is(err, worm.ErrUnknownOutcome) {
							errs <- fmt.Errorf("%s: Write(%v): %w", me, a, err)
							return
						}
					}
				}
			}()
		}
	}
	wg.Wait()
	close(out)
	close(errs)
	for err := range errs {
		faultFree(e.t, "concurrent writer", err)
		e.t.Fatal(err)
	}
	winner := map[uint32]string{}
	wrote := map[uint32]int{}
	learnedBy := map[uint32]int{}
	for l := range out {
		learnedBy[l.off]++
		if w, ok := winner[l.off]; ok && w != l.value {
			e.t.Fatalf("register %d: %s learned %q, another writer learned %q", l.off, l.writer, l.value, w)
		}
		winner[l.off] = l.value
		if l.wrote {
			wrote[l.off]++
			if l.value != l.writer+"@"+fmt.Sprint(l.off) {
				e.t.Fatalf("register %d: %s's write succeeded with value %q", l.off, l.writer, l.value)
			}
		}
	}
	for off := uint32(0); off < regs; off++ {
		// At most one write succeeds (values are unique per writer); none
		// may, when the winner's own write ended ambiguously.
		if wrote[off] > 1 {
			e.t.Fatalf("register %d: %d writers' writes succeeded, want at most 1", off, wrote[off])
		}
		if w := winner[off]; !strings.HasSuffix(w, "@"+fmt.Sprint(off)) || !strings.HasPrefix(w, "c") {
			e.t.Fatalf("register %d: winner %q is not a value any writer wrote there", off, w)
		}
		if n := perClient * len(e.c); learnedBy[off] != n {
			e.t.Fatalf("register %d: %d of %d writers learned the outcome", off, learnedBy[off], n)
		}
		e.wantValue(worm.Addr{Seg: s, Off: off}, []byte(winner[off]))
	}
}

// testLinearizable records a random concurrent workload through
// worm/check and checks the history against the atomic register model.
func testLinearizable(e *env) {
	rec := check.NewRecorder()
	var cs []worm.Space
	for _, c := range e.c {
		cs = append(cs, rec.Wrap(c))
	}
	// One segment allocated up front (through the recorder: the history
	// must contain every operation that changed a register), one left for
	// the workers to allocate.
	segs := []uint64{e.seg(), e.seg()}
	if _, err := cs[0].Alloc(e.ctx, segs[0], []byte("spacetest")); err != nil {
		e.t.Fatalf("Alloc: %v", err)
	}
	const workers, ops, regs = 4, 60, 4
	var wg sync.WaitGroup
	var unexpected atomic.Value
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), segBase))
			c := cs[w%len(cs)]
			var tok worm.Token
			for i := 0; i < ops; i++ {
				seg := segs[rng.IntN(len(segs))]
				a := worm.Addr{Seg: seg, Off: uint32(rng.IntN(regs))}
				v := []byte(fmt.Sprintf("w%d-%d", w, rng.IntN(3)))
				var err error
				switch rng.IntN(9) {
				case 0, 1:
					_, err = c.Read(e.ctx, a)
				case 2:
					tok, err = c.Capture(e.ctx, a)
				case 3:
					if !tok.IsZero() {
						err = c.Write(e.ctx, a, tok, v)
					}
				case 4:
					err = c.WriteUnsafe(e.ctx, a, v)
				case 5:
					_, err = c.Alloc(e.ctx, seg, []byte(fmt.Sprint("m", w)))
				case 6:
					_, err = c.Check(e.ctx, seg)
				case 7:
					var sc worm.SegmentCapture
					sc, err = c.CaptureSegment(e.ctx, seg)
					tok = sc.Token
				case 8:
					if !tok.IsZero() {
						err = c.WriteBatch(e.ctx, seg, a.Off, tok, [][]byte{v, v})
					}
				}
				// Contention may make a Paxos write ambiguous, never
				// unavailable.
				if errors.Is(err, worm.ErrUnavailable) {
					unexpected.CompareAndSwap(nil, fmt.Errorf("worker %d: %v on %v", w, err, a))
				}
			}
		}()
	}
	wg.Wait()
	if err, _ := unexpected.Load().(error); err != nil {
		e.t.Fatalf("fault-free run: %v", err)
	}
	check.Require(e.t, rec.History(), OpTimeout/2)
}
