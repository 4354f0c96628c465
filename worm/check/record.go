package check

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/wormspace/wormspace/worm"
)

// Pending is the Return time of an operation that never returned, or whose
// outcome is ambiguous: porcupine may linearize it at any point after its
// call (or, for the register model, treat it as never taking effect).
const Pending = math.MaxInt64

// Kind is the kind of a recorded operation.
type Kind uint8

// The recorded operation kinds. WriteBatch is recorded as one KindWrite per
// register; CaptureSegment as one KindCaptureSegment, which Check expands
// into per-register observations.
const (
	KindCapture Kind = iota + 1
	KindWrite
	KindWriteUnsafe
	KindRead
	KindAlloc
	KindCheck
	KindCaptureSegment
)

var kindNames = [...]string{"", "Capture", "Write", "WriteUnsafe", "Read", "Alloc", "Check", "CaptureSegment"}

func (k Kind) String() string {
	if k != 0 && int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// Op is one recorded operation. Times are nanoseconds of a monotonic clock
// since the Recorder started; an operation still in flight when History
// was taken has Return == Pending.
type Op struct {
	Client string // the Space's identity (ID())
	Handle int    // which wrapped handle issued it (0-based)
	Kind   Kind
	// Addr is the register; for Alloc and Check, Off is worm.MetaOffset;
	// for CaptureSegment, Off is 0.
	Addr  worm.Addr
	Value []byte     // value written (write kinds) or meta offered (Alloc)
	Token worm.Token // token used (Write) or returned (Capture, CaptureSegment)
	// Result: the value read (Read), the stored value of a WrittenError,
	// or nothing.
	Result  []byte
	Info    worm.SegmentInfo    // Alloc and Check results
	Capture worm.SegmentCapture // CaptureSegment result
	Err     error
	Call    int64
	Return  int64
}

// Recorder records the operations of wrapped Spaces. It is safe for
// concurrent use; one Recorder is shared by every client of one history.
type Recorder struct {
	start time.Time

	mu      sync.Mutex
	ops     []Op
	handles int
}

// NewRecorder returns a Recorder whose clock starts now.
func NewRecorder() *Recorder { return &Recorder{start: time.Now()} }

// now reads the monotonic clock (time.Since uses the monotonic reading).
func (r *Recorder) now() int64 { return int64(time.Since(r.start)) }

// Wrap returns s with every Capture, Write, WriteUnsafe, Read, Alloc,
// Check, CaptureSegment and WriteBatch recorded. Trim, Listen and the rest
// pass through unrecorded.
func (r *Recorder) Wrap(s worm.Space) worm.Space {
	r.mu.Lock()
	h := r.handles
	r.handles++
	r.mu.Unlock()
	return &recorded{Space: s, r: r, handle: h}
}

// Record appends a finished operation, for histories assembled by hand or
// from another source.
func (r *Recorder) Record(op Op) {
	r.mu.Lock()
	r.ops = append(r.ops, op)
	r.mu.Unlock()
}

// begin appends the call of op and returns its index.
func (r *Recorder) begin(op Op) int {
	op.Return = Pending
	r.mu.Lock()
	op.Call = r.now()
	r.ops = append(r.ops, op)
	i := len(r.ops) - 1
	r.mu.Unlock()
	return i
}

// end completes operation i; fill sets its results.
func (r *Recorder) end(i int, fill func(op *Op)) {
	t := r.now()
	r.mu.Lock()
	op := &r.ops[i]
	fill(op)
	op.Return = t
	r.mu.Unlock()
}

// History returns a copy of everything recorded so far, in call order.
func (r *Recorder) History() []Op {
	r.mu.Lock()
	defer r.mu.Unlock()
	h := slices.Clone(r.ops)
	slices.SortStableFunc(h, func(a, b Op) int {
		switch {
		case a.Call < b.Call:
			return -1
		case a.Call > b.Call:
			return 1
		}
		return 0
	})
	return h
}

// Len returns the number of operations recorded.
func (r *Recorder) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.ops)
}

type recorded struct {
	worm.Space
	r      *Recorder
	handle int
}

func clone(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append(make([]byte, 0, len(b)), b...)
}

func (s *recorded) op(k Kind, addr worm.Addr) Op {
	return Op{Client: s.Space.ID(), Handle: s.handle, Kind: k, Addr: addr}
}

func (s *recorded) Capture(ctx context.Context, addr worm.Addr) (worm.Token, error) {
	i := s.r.begin(s.op(KindCapture, addr))
	tok, err := s.Space.Capture(ctx, addr)
	s.r.end(i, func(op *Op) {
		op.Token, op.Err = tok, err
		op.Result, _ = worm.WrittenValue(err)
		op.Result = clone(op.Result)
	})
	return tok, err
}

func (s *recorded) Write(ctx context.Context, addr worm.Addr, tok worm.Token, value []byte) error {
	o := s.op(KindWrite, addr)
	o.Token, o.Value = tok, clone(value)
	i := s.r.begin(o)
	err := s.Space.Write(ctx, addr, tok, value)
	s.r.end(i, func(op *Op) {
		op.Err = err
		op.Result, _ = worm.WrittenValue(err)
		op.Result = clone(op.Result)
	})
	return err
}

func (s *recorded) WriteUnsafe(ctx context.Context, addr worm.Addr, value []byte) error {
	o := s.op(KindWriteUnsafe, addr)
	o.Value = clone(value)
	i := s.r.begin(o)
	err := s.Space.WriteUnsafe(ctx, addr, value)
	s.r.end(i, func(op *Op) {
		op.Err = err
		op.Result, _ = worm.WrittenValue(err)
		op.Result = clone(op.Result)
	})
	return err
}

func (s *recorded) Read(ctx context.Context, addr worm.Addr) ([]byte, error) {
	i := s.r.begin(s.op(KindRead, addr))
	v, err := s.Space.Read(ctx, addr)
	s.r.end(i, func(op *Op) {
		op.Err = err
		if err == nil {
			op.Result = clone(v)
			if op.Result == nil {
				op.Result = []byte{}
			}
		}
	})
	return v, err
}

func (s *recorded) Alloc(ctx context.Context, seg uint64, meta []byte) (worm.SegmentInfo, error) {
	o := s.op(KindAlloc, worm.Addr{Seg: seg, Off: worm.MetaOffset})
	o.Value = clone(meta)
	i := s.r.begin(o)
	info, err := s.Space.Alloc(ctx, seg, meta)
	s.r.end(i, func(op *Op) {
		op.Err = err
		op.Info = info
		op.Info.Meta = clone(info.Meta)
	})
	return info, err
}

func (s *recorded) Check(ctx context.Context, seg uint64) (worm.SegmentInfo, error) {
	i := s.r.begin(s.op(KindCheck, worm.Addr{Seg: seg, Off: worm.MetaOffset}))
	info, err := s.Space.Check(ctx, seg)
	s.r.end(i, func(op *Op) {
		op.Err = err
		op.Info = info
		op.Info.Meta = clone(info.Meta)
	})
	return info, err
}

func (s *recorded) CaptureSegment(ctx context.Context, seg uint64) (worm.SegmentCapture, error) {
	i := s.r.begin(s.op(KindCaptureSegment, worm.Addr{Seg: seg}))
	sc, err := s.Space.CaptureSegment(ctx, seg)
	s.r.end(i, func(op *Op) {
		op.Err = err
		op.Token = sc.Token
		c := worm.SegmentCapture{Token: sc.Token, Contended: slices.Clone(sc.Contended)}
		for _, e := range sc.Written {
			c.Written = append(c.Written, worm.Entry{Off: e.Off, Value: clone(e.Value)})
		}
		op.Capture = c
	})
	return sc, err
}

func (s *recorded) WriteBatch(ctx context.Context, seg uint64, off uint32, tok worm.Token, values [][]byte) error {
	idx := make([]int, len(values))
	for j, v := range values {
		o := s.op(KindWrite, worm.Addr{Seg: seg, Off: off + uint32(j)})
		o.Token, o.Value = tok, clone(v)
		idx[j] = s.r.begin(o)
	}
	err := s.Space.WriteBatch(ctx, seg, off, tok, values)
	var be *worm.BatchError
	isBatch := errors.As(err, &be) && len(be.Errs) == len(values)
	for j, i := range idx {
		e := err
		if isBatch {
			e = be.Errs[j]
		}
		s.r.end(i, func(op *Op) {
			op.Err = e
			op.Result, _ = worm.WrittenValue(e)
			op.Result = clone(op.Result)
		})
	}
	return err
}
