package paxos

import (
	"bytes"
	"errors"
	"testing"

	"github.com/wormspace/wormspace/worm"
)

// cluster routes an Op's requests synchronously to chosen acceptors, so a
// test decides exactly which acceptor sees which message.
type cluster struct {
	// unsent: report requests to acceptors out of reach with Unsent (the
	// connection is known down) instead of Fail.
	unsent bool
	t      *testing.T
	accs   []*Acceptor
	recs   [][]Record
}

func newCluster(t *testing.T, n int) *cluster {
	c := &cluster{t: t}
	for i := 0; i < n; i++ {
		c.accs = append(c.accs, NewAcceptor(8))
		c.recs = append(c.recs, nil)
	}
	return c
}

// run delivers op's outbox (repeatedly, as it produces more) to the
// acceptors in reach only; the others fail. It returns the op's result.
func (c *cluster) run(op *Op, reach ...int) Result {
	c.t.Helper()
	in := map[int]bool{}
	for _, i := range reach {
		in[i] = true
	}
	for round := 0; !op.Done(); round++ {
		if round > 100 {
			c.t.Fatal("op does not finish")
		}
		outs := append([]Out(nil), op.TakeOutbox()...)
		if len(outs) == 0 {
			op.Nudge()
			if op.Done() {
				break
			}
			if len(op.TakeOutbox()) == 0 && !op.Done() {
				c.t.Fatal("op is stuck with nothing to send")
			}
		}
		for _, out := range outs {
			if out.Tag != 0 {
				// The driver contract: a request that cannot be sent is
				// reported with Fail at once.
				for i := range c.accs {
					if !in[i] && (out.To == All || out.To == i) {
						if c.unsent {
							op.Unsent(i, out.Tag)
						} else {
							op.Fail(i)
						}
					}
				}
			}
			for _, i := range reach {
				if out.To != All && out.To != i {
					continue
				}
				c.deliver(op, i, out)
			}
		}
	}
	// Late decides.
	for _, out := range op.TakeOutbox() {
		for _, i := range reach {
			c.deliver(op, i, out)
		}
	}
	return op.Result()
}

func (c *cluster) deliver(op *Op, i int, out Out) {
	var resp Response
	c.recs[i] = c.accs[i].Handle(&out.Req, &resp, c.recs[i])
	if out.Tag != 0 {
		op.Step(i, out.Tag, &resp)
	}
}

var (
	x  = worm.Addr{Seg: 1, Off: 3}
	vA = []byte("from A")
	vB = []byte("from B")
)

func proposers(c *cluster) (*Proposer, *Proposer) {
	a := NewProposer(1, "A", len(c.accs), 8)
	b := NewProposer(2, "B", len(c.accs), 8)
	return a, b
}

func alloc(t *testing.T, c *cluster, p *Proposer) {
	t.Helper()
	if r := c.run(p.Alloc(1, nil), 0, 1, 2); r.Err != nil || !r.Info.Won {
		t.Fatalf("alloc: %+v", r)
	}
}

func TestCaptureWriteRead(t *testing.T) {
	c := newCluster(t, 3)
	a, b := proposers(c)
	alloc(t, c, a)
	r := c.run(a.Capture(x), 0, 1, 2)
	if r.Err != nil || r.Token.IsZero() {
		t.Fatalf("capture: %+v", r)
	}
	if r := c.run(a.Write(x.Seg, x.Off, r.Token, [][]byte{vA}), 0, 1, 2); r.Err != nil {
		t.Fatalf("write: %v", r.Err)
	}
	for _, reach := range [][]int{{0, 1}, {1, 2}, {0, 2}} {
		if r := c.run(b.Read(x), reach...); r.Err != nil || !bytes.Equal(r.Value, vA) {
			t.Fatalf("read via %v: %q %v", reach, r.Value, r.Err)
		}
	}
}

func TestReadEmptyAndUnallocated(t *testing.T) {
	c := newCluster(t, 3)
	a, _ := proposers(c)
	if r := c.run(a.Read(x), 0, 1, 2); !errors.Is(r.Err, worm.ErrUnallocated) {
		t.Fatalf("read of unallocated segment: %v", r.Err)
	}
	alloc(t, c, a)
	if r := c.run(a.Read(x), 0, 1); !errors.Is(r.Err, worm.ErrEmpty) {
		t.Fatalf("read of empty register: %v", r.Err)
	}
	if r := c.run(a.Read(x), 0); !errors.Is(r.Err, worm.ErrUnavailable) {
		t.Fatalf("read without quorum: %v", r.Err)
	}
}

func TestHigherCapturePreempts(t *testing.T) {
	c := newCluster(t, 3)
	a, b := proposers(c)
	alloc(t, c, a)
	ta := c.run(a.Capture(x), 0, 1, 2).Token
	tb := c.run(b.Capture(x), 0, 1, 2).Token
	if !ta.Less(tb) {
		t.Fatalf("B's capture %v does not exceed A's %v", tb, ta)
	}
	if r := c.run(a.Write(x.Seg, x.Off, ta, [][]byte{vA}), 0, 1, 2); !errors.Is(r.Err, worm.ErrPreempted) {
		t.Fatalf("A's write after B's capture: %v", r.Err)
	}
	if r := c.run(b.Write(x.Seg, x.Off, tb, [][]byte{vB}), 0, 1, 2); r.Err != nil {
		t.Fatalf("B's write: %v", r.Err)
	}
}

// A's write reaches one acceptor only; B's capture through a quorum that
// contains it must finish A's value and report it as written.
func TestCaptureFinishesMinorityValue(t *testing.T) {
	c := newCluster(t, 3)
	a, b := proposers(c)
	alloc(t, c, a)
	ta := c.run(a.Capture(x), 0, 1, 2).Token
	if r := c.run(a.Write(x.Seg, x.Off, ta, [][]byte{vA}), 0); !errors.Is(r.Err, worm.ErrUnknownOutcome) {
		t.Fatalf("write to a minority: %v, want unknown outcome", r.Err)
	}
	r := c.run(b.Capture(x), 0, 2)
	if v, ok := worm.WrittenValue(r.Err); !ok || !bytes.Equal(v, vA) {
		t.Fatalf("B's capture: %+v, want written(%q)", r, vA)
	}
	if r := c.run(b.Read(x), 1, 2); !bytes.Equal(r.Value, vA) {
		t.Fatalf("read after finish: %q %v", r.Value, r.Err)
	}
	// A retries the identical write: idempotent success.
	if r := c.run(a.Write(x.Seg, x.Off, ta, [][]byte{vA}), 0, 1, 2); r.Err != nil {
		t.Fatalf("identical retry: %v", r.Err)
	}
	// A different value with the same token is refused locally.
	if r := c.run(a.Write(x.Seg, x.Off, ta, [][]byte{vB}), 0, 1, 2); !errors.Is(r.Err, worm.ErrInvalid) {
		t.Fatalf("second value on one token after unknown outcome: %v", r.Err)
	}
}

// A read that sees a minority value repairs it.
func TestReadRepairsMinority(t *testing.T) {
	c := newCluster(t, 3)
	a, b := proposers(c)
	alloc(t, c, a)
	ta := c.run(a.Capture(x), 0, 1, 2).Token
	c.run(a.Write(x.Seg, x.Off, ta, [][]byte{vA}), 1)
	if r := c.run(b.Read(x), 0, 1, 2); r.Err != nil || !bytes.Equal(r.Value, vA) {
		t.Fatalf("read with repair: %q %v", r.Value, r.Err)
	}
	// Now chosen: any quorum reads it without repair.
	if r := c.run(b.Read(x), 0, 2); !bytes.Equal(r.Value, vA) {
		t.Fatalf("read after repair: %q %v", r.Value, r.Err)
	}
}

func TestUnsafeWriteCarriedOverByCapture(t *testing.T) {
	c := newCluster(t, 3)
	a, b := proposers(c)
	alloc(t, c, a)
	c.run(b.Read(x), 0, 1, 2) // B learns the segment is allocated
	c.run(a.Write(x.Seg, x.Off, worm.Token{}, [][]byte{vA}), 2)
	r := c.run(b.Capture(x), 1, 2)
	if v, ok := worm.WrittenValue(r.Err); !ok || !bytes.Equal(v, vA) {
		t.Fatalf("capture after a ballot-0 write reached one acceptor of its quorum: %+v", r)
	}
	// The designated writer's retry succeeds; a late unsafe write of
	// another value fails.
	if r := c.run(a.Write(x.Seg, x.Off, worm.Token{}, [][]byte{vA}), 0, 1, 2); r.Err != nil {
		t.Fatalf("unsafe retry: %v", r.Err)
	}
	if r := c.run(b.Write(x.Seg, x.Off, worm.Token{}, [][]byte{vB}), 0, 1, 2); !errors.Is(r.Err, worm.ErrWritten) {
		t.Fatalf("unsafe write of another value: %v", r.Err)
	}
}

func TestSegmentCaptureAndBatch(t *testing.T) {
	c := newCluster(t, 3)
	a, b := proposers(c)
	alloc(t, c, a)
	t1 := c.run(a.Capture(worm.Addr{Seg: 1, Off: 1}), 0, 1, 2).Token
	c.run(a.Write(1, 1, t1, [][]byte{vA}), 0) // a minority value at 1/1
	r := c.run(b.CaptureSegment(1), 0, 1)
	if r.Err != nil {
		t.Fatal(r.Err)
	}
	if w := r.Capture.Written; len(w) != 1 || w[0].Off != 1 || !bytes.Equal(w[0].Value, vA) {
		t.Fatalf("segment capture written = %+v", w)
	}
	// Writing registers 2..4 in one batch succeeds; rewriting register 1
	// with another value is answered from the binding, not the acceptors.
	if r := c.run(b.Write(1, 2, r.Capture.Token, [][]byte{[]byte("2"), []byte("3"), []byte("4")}), 0, 1, 2); r.Err != nil {
		t.Fatalf("batch: %v", r.Err)
	}
	if r2 := c.run(b.Write(1, 1, r.Capture.Token, [][]byte{vB}), 0, 1, 2); !errors.Is(r2.Err, worm.ErrWritten) {
		t.Fatalf("write over a finished register: %v", r2.Err)
	}
	// A per-register capture by A overrides B's range promise at 1/5.
	ta := c.run(a.Capture(worm.Addr{Seg: 1, Off: 5}), 0, 1, 2)
	if ta.Err != nil {
		t.Fatal(ta.Err)
	}
	var be *worm.BatchError
	rb := c.run(b.Write(1, 5, r.Capture.Token, [][]byte{vB, vB}), 0, 1, 2)
	if !errors.As(rb.Err, &be) || !errors.Is(be.Errs[0], worm.ErrPreempted) || be.Errs[1] != nil {
		t.Fatalf("batch over a register captured by A: %v", rb.Err)
	}
}

func TestAllocFirstWins(t *testing.T) {
	c := newCluster(t, 3)
	a, b := proposers(c)
	ra := c.run(a.Alloc(7, []byte("meta-a")), 0, 1, 2)
	rb := c.run(b.Alloc(7, []byte("meta-b")), 0, 1, 2)
	if !ra.Info.Won || rb.Info.Won || rb.Info.Owner != "A" || string(rb.Info.Meta) != "meta-a" {
		t.Fatalf("alloc: A %+v, B %+v", ra, rb)
	}
	if r := c.run(b.Check(7), 1, 2); r.Err != nil || r.Info.Owner != "A" {
		t.Fatalf("check: %+v", r)
	}
	if r := c.run(b.Check(8), 1, 2); !errors.Is(r.Err, worm.ErrUnallocated) {
		t.Fatalf("check of a free segment: %v", r.Err)
	}
}

func TestTrim(t *testing.T) {
	c := newCluster(t, 3)
	a, b := proposers(c)
	alloc(t, c, a)
	tok := c.run(a.Capture(x), 0, 1, 2).Token
	c.run(a.Write(x.Seg, x.Off, tok, [][]byte{vA}), 0, 1, 2)
	if r := c.run(a.Trim(1), 0, 1); r.Err != nil {
		t.Fatal(r.Err)
	}
	for _, reach := range [][]int{{0, 2}, {1, 2}} {
		if r := c.run(b.Read(x), reach...); !errors.Is(r.Err, worm.ErrTrimmed) {
			t.Fatalf("read via %v after trim: %v", reach, r.Err)
		}
	}
	if live, _ := c.accs[0].Segments(); live != 0 {
		t.Fatalf("acceptor kept %d segments after trim", live)
	}
}

// Replaying an acceptor's records rebuilds the same state: snapshots of
// the original and the replayed acceptor are identical.
func TestApplyRebuildsState(t *testing.T) {
	c := newCluster(t, 3)
	a, b := proposers(c)
	alloc(t, c, a)
	tok := c.run(b.CaptureSegment(1), 0, 1, 2).Token
	c.run(b.Write(1, 0, tok, [][]byte{vB, vA}), 0, 1, 2)
	c.run(a.Capture(x), 0, 1, 2)
	for i, acc := range c.accs {
		re := NewAcceptor(8)
		for _, r := range c.recs[i] {
			if err := re.Apply(r); err != nil {
				t.Fatal(err)
			}
		}
		if got, want := snapshot(re), snapshot(acc); got != want {
			t.Fatalf("acceptor %d: replayed\n%s\nwant\n%s", i, got, want)
		}
	}
}

func snapshot(a *Acceptor) string {
	var lines []string
	_ = a.Snapshot(func(r Record) error {
		lines = append(lines, r.Kind.String()+" "+worm.Addr{Seg: r.Seg, Off: r.Off}.String()+" "+r.Ballot.String()+" "+string(r.Value))
		return nil
	})
	sortStrings(lines)
	var b bytes.Buffer
	for _, l := range lines {
		b.WriteString(l + "\n")
	}
	return b.String()
}

func sortStrings(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

func TestOutOfRange(t *testing.T) {
	c := newCluster(t, 3)
	a, _ := proposers(c)
	if r := c.run(a.Read(worm.Addr{Seg: 1, Off: 8}), 0, 1, 2); !errors.Is(r.Err, worm.ErrOutOfRange) {
		t.Fatalf("read past the segment: %v", r.Err)
	}
	if r := c.run(a.Write(1, 6, worm.Token{Round: 1, Node: 1}, [][]byte{vA, vA, vA}), 0, 1, 2); !errors.Is(r.Err, worm.ErrOutOfRange) {
		t.Fatalf("batch past the segment: %v", r.Err)
	}
}

// A token captured for one register must not write another: the acceptor
// accepts only at a register's exact promise, so phase 2 never runs
// without phase 1, and a chosen value cannot be replaced by a higher
// ballot that never captured it.
func TestTokenOfAnotherRegisterCannotOverwrite(t *testing.T) {
	c := newCluster(t, 3)
	a, b := proposers(c)
	alloc(t, c, a)
	y := worm.Addr{Seg: 1, Off: 5}
	// A chooses vA at y through acceptors 0 and 1 only.
	ty := c.run(a.Capture(y), 0, 1, 2).Token
	// (By hand, so that no decide marks it: the acceptors' decided fast
	// path must not be what protects it.)
	w := a.Write(y.Seg, y.Off, ty, [][]byte{vA})
	for _, out := range append([]Out(nil), w.TakeOutbox()...) {
		c.deliver(w, 0, out)
		c.deliver(w, 1, out)
	}
	if !w.Done() || w.Result().Err != nil {
		t.Fatalf("A's write: done=%v %v", w.Done(), w.Result().Err)
	}
	// B captures x (a higher ballot than ty) and misuses the token on y.
	var tx Ballot
	for i := 0; i < 5 && !ty.Less(tx); i++ {
		tx = c.run(b.Capture(x), 0, 1, 2).Token
	}
	if !ty.Less(tx) {
		t.Fatalf("B's token %v not above A's %v", tx, ty)
	}
	r := c.run(b.Write(y.Seg, y.Off, tx, [][]byte{vB}), 0, 1, 2)
	if r.Err == nil {
		t.Fatal("a token captured for another register wrote y")
	}
	if v := c.run(b.Read(y), 1, 2); v.Err != nil || !bytes.Equal(v.Value, vA) {
		t.Fatalf("read of y: %q %v, want %q", v.Value, v.Err, vA)
	}
	if v := c.run(b.Read(y), 0, 2); v.Err != nil || !bytes.Equal(v.Value, vA) {
		t.Fatalf("read of y through the other quorum: %q %v, want %q", v.Value, v.Err, vA)
	}
}

// With one acceptor known down (its requests unsent), a write that both
// live acceptors refuse is a definite ErrPreempted, not an unknown
// outcome: the down acceptor never saw it, and a read finds nothing.
func TestPreemptedWithMinorityDown(t *testing.T) {
	c := newCluster(t, 3)
	c.unsent = true
	a, b := proposers(c)
	alloc(t, c, a)
	ta := c.run(a.Capture(x), 0, 1).Token
	c.run(b.Capture(x), 0, 1)
	if r := c.run(a.Write(x.Seg, x.Off, ta, [][]byte{vA}), 0, 1); !errors.Is(r.Err, worm.ErrPreempted) {
		t.Fatalf("refused write with acceptor 2 down: %v, want ErrPreempted", r.Err)
	}
	// Control: reported as lost (Fail) rather than unsent, the same write
	// is ambiguous, since acceptor 2 might have taken it.
	c.unsent = false
	tb := c.run(b.Capture(x), 0, 1).Token
	c.run(a.Capture(x), 0, 1)
	if r := c.run(b.Write(x.Seg, x.Off, tb, [][]byte{vB}), 0, 1); !errors.Is(r.Err, worm.ErrUnknownOutcome) {
		t.Fatalf("refused write with acceptor 2 lost: %v, want ErrUnknownOutcome", r.Err)
	}
}

// LiveBytes is derived from the state: repeated promises do not inflate
// it, a trim gives back everything of the segment, and an acceptor
// rebuilt from a snapshot reports the same figure.
func TestLiveBytesTracksState(t *testing.T) {
	a := NewAcceptor(8)
	var resp Response
	var recs []Record
	for round := uint64(1); round <= 50; round++ {
		recs = a.Handle(&Request{Kind: KindPrepare, Seg: 1, Off: 2, Ballot: Ballot{Round: round, Node: 1}}, &resp, recs)
		recs = a.Handle(&Request{Kind: KindPrepareSeg, Seg: 1, Ballot: Ballot{Round: round, Node: 1}}, &resp, recs)
	}
	afterPromises := a.LiveBytes()
	if afterPromises > 2*recordOverhead {
		t.Fatalf("100 promises on one register and one segment count %d bytes, want at most %d", afterPromises, 2*recordOverhead)
	}
	recs = a.Handle(&Request{Kind: KindAccept, Seg: 1, Off: 2, Ballot: Ballot{Round: 50, Node: 1}, Values: [][]byte{make([]byte, 1000)}}, &resp, recs)
	if got := a.LiveBytes(); got < 1000 || got > 1000+3*recordOverhead {
		t.Fatalf("after a 1000-byte accept: %d", got)
	}
	b := NewAcceptor(8)
	if err := a.Snapshot(func(r Record) error { return b.Apply(r) }); err != nil {
		t.Fatal(err)
	}
	if a.LiveBytes() != b.LiveBytes() {
		t.Fatalf("live bytes %d, rebuilt from a snapshot %d", a.LiveBytes(), b.LiveBytes())
	}
	a.Handle(&Request{Kind: KindTrim, Seg: 1}, &resp, recs)
	if got := a.LiveBytes(); got != recordOverhead {
		t.Fatalf("after trimming the only segment: %d, want %d (the trim record)", got, recordOverhead)
	}
}
