package chain

import (
	"bytes"
	"fmt"

	"github.com/wormspace/wormspace/worm"
)

// Status is a replica's verdict on one register of a request, or on a
// whole request. The write statuses travel down the chain with the
// request: each replica reads the status its predecessor left for a
// register and replaces it with its own (see Replica.Write).
type Status uint8

const (
	// StatusOK: sealed (capture), found a value (read), or, for a write,
	// the register holds the written value at this replica and every
	// replica before it. On the way down the chain it means "apply here".
	StatusOK Status = iota
	// StatusPreempted: the write's token is not the register's current
	// seal at some replica, and no replica stored the value: the write had
	// no effect.
	StatusPreempted
	// StatusWritten: the register holds another value. Upstream of the
	// tail it means "held at the head; the tail must confirm it is
	// committed"; from the tail it carries the committed value.
	StatusWritten
	// StatusUnknown: some replica holds the written value and a later one
	// refused it (a higher seal came between them): the value is stranded
	// upstream and a capture may yet finish it.
	StatusUnknown
	// StatusStranded: the tail is empty where the head holds another value
	// (a write or capture that carried it died on the way): the client
	// must finish it (capture) before it may report it.
	StatusStranded
	// StatusTrimmed: the segment is trimmed.
	StatusTrimmed
	// StatusOutOfRange: the offset is outside the segment.
	StatusOutOfRange
	// StatusEmpty: a read found the register empty.
	StatusEmpty
	// StatusUnallocated: a read at the tail found the segment's metadata
	// register empty.
	StatusUnallocated
	// StatusNack: a seal met a higher (or equal but foreign) seal; the
	// response carries it.
	StatusNack
	// StatusUnavailable: a replica could not forward the request to its
	// successor; it stored nothing, and neither did anyone upstream
	// unless the register says StatusUnknown.
	StatusUnavailable
	// StatusInvalid: a malformed or misdirected request (the text says
	// why).
	StatusInvalid
	// StatusError: the replica could not serve the request (its storage
	// failed or refused); nothing changed.
	StatusError
	statusCount
)

var statusNames = [...]string{"ok", "preempted", "written", "unknown", "stranded", "trimmed", "out-of-range",
	"empty", "unallocated", "nack", "unavailable", "invalid", "error"}

func (s Status) String() string {
	if s < statusCount {
		return statusNames[s]
	}
	return fmt.Sprintf("status(%d)", uint8(s))
}

// final reports whether a write status is settled: a replica passes it
// down the chain unchanged, and a request whose registers are all final
// is answered at once by the replica that settled the last one.
func (s Status) final() bool { return s != StatusOK && s != StatusWritten }

// RecordKind names a durable change of replica state.
type RecordKind uint8

const (
	recInvalid RecordKind = iota
	// RecSeal: register (Seg, Off) sealed at Ballot.
	RecSeal
	// RecSealSeg: segment Seg sealed at Ballot (every data register whose
	// own seal is lower).
	RecSealSeg
	// RecWrite: register (Seg, Off) holds Value.
	RecWrite
	// RecTrim: segment Seg is trimmed.
	RecTrim
	recKindCount
)

// Record is one durable change of replica state. The state machine emits
// records; the server makes them durable before any response that
// depends on them leaves; Apply replays them after a restart. Replaying a
// record twice is harmless.
//
// Ownership: Value aliases the replica's state; encode it before the
// replica handles its next request.
type Record struct {
	Kind   RecordKind
	Seg    uint64
	Off    uint32
	Ballot worm.Ballot
	Value  []byte
}

// reg is one register at one replica.
type reg struct {
	seal worm.Ballot // per-register seal (capture)
	has  bool
	val  []byte
}

// segment is one segment at one replica. Registers are a dense slice,
// allocated on first use; values are carved out of arena chunks so that a
// write allocates nothing in steady state.
type segment struct {
	seal    worm.Ballot // segment seal (CaptureSegment)
	regs    []reg       // len segSize once any data register is touched
	meta    reg         // the metadata register (MetaOffset); segment seals do not cover it
	arena   []byte      // current chunk; values are appended until it is full
	written int         // data registers holding a value
}

// arenaChunk is the size of one value chunk of a segment; a value larger
// than a quarter of it gets an allocation of its own.
const arenaChunk = 64 << 10

func (g *segment) keep(v []byte) []byte {
	if len(v) > arenaChunk/4 {
		return append(make([]byte, 0, len(v)), v...)
	}
	if cap(g.arena)-len(g.arena) < len(v) {
		g.arena = make([]byte, 0, arenaChunk)
	}
	start := len(g.arena)
	g.arena = append(g.arena, v...)
	return g.arena[start:len(g.arena):len(g.arena)]
}

// Replica is one chain replica's state machine: every register's seal and
// value, every segment's seal, the trimmed segments. It is pure: no I/O,
// no clock, no goroutines, not safe for concurrent use (the server calls
// it under its lock). Methods that change state append the Records that
// must be durable before their result may be revealed.
//
// Rules (the whole protocol's safety rests on them, see the package doc):
//   - a register's value is written once and never changes;
//   - a register's effective seal is the higher of its own and its
//     segment's (the metadata register has only its own);
//   - a seal succeeds only with a ballot at least the effective seal, and
//     raises it;
//   - a write stores its value only into an empty register whose
//     effective seal equals the write's ballot (zero: never sealed).
type Replica struct {
	segSize uint32
	segs    map[uint64]*segment
	trimmed map[uint64]struct{}
	live    int64 // bytes of values held (approximate live size)
}

// NewReplica returns an empty replica with segSize data registers per
// segment. It panics on a size of 0 or one that reaches worm.MetaOffset.
func NewReplica(segSize uint32) *Replica {
	if segSize == 0 || segSize >= worm.MetaOffset {
		panic(fmt.Sprintf("chain: bad segment size %d", segSize))
	}
	return &Replica{segSize: segSize, segs: map[uint64]*segment{}, trimmed: map[uint64]struct{}{}}
}

// SegmentSize returns the number of data registers per segment.
func (r *Replica) SegmentSize() uint32 { return r.segSize }

// LiveBytes approximates the bytes of values the replica holds.
func (r *Replica) LiveBytes() int64 { return r.live }

// Segments returns the number of live and of trimmed segments.
func (r *Replica) Segments() (live, trimmed int) { return len(r.segs), len(r.trimmed) }

// IsTrimmed reports whether seg is trimmed.
func (r *Replica) IsTrimmed(seg uint64) bool {
	_, ok := r.trimmed[seg]
	return ok
}

func (r *Replica) validOff(off uint32) bool { return off < r.segSize || off == worm.MetaOffset }

// seg returns the segment, creating it when create is set (nil otherwise
// for an untouched one). The caller has checked trim.
func (r *Replica) seg(n uint64, create bool) *segment {
	g := r.segs[n]
	if g == nil && create {
		g = &segment{}
		r.segs[n] = g
	}
	return g
}

// reg returns the register (creating the segment's registers when create
// is set); nil for an untouched register without create.
func (r *Replica) reg(g *segment, off uint32, create bool) *reg {
	if off == worm.MetaOffset {
		return &g.meta
	}
	if g.regs == nil {
		if !create {
			return nil
		}
		g.regs = make([]reg, r.segSize)
	}
	return &g.regs[off]
}

// effective returns a register's effective seal.
func effective(g *segment, off uint32, rg *reg) worm.Ballot {
	var own worm.Ballot
	if rg != nil {
		own = rg.seal
	}
	if off == worm.MetaOffset || g == nil {
		return own
	}
	return g.seal.Max(own)
}

// SealResult is a replica's answer to a register seal.
type SealResult struct {
	Status   Status      // OK, Nack, Trimmed, OutOfRange
	Promised worm.Ballot // the effective seal after the call
	Has      bool        // the register holds Value here
	Value    []byte      // aliases replica state
}

// Seal seals register (seg, off) at tok: it succeeds (StatusOK) when tok
// is at least the register's effective seal, and reports the register's
// value either way.
func (r *Replica) Seal(seg uint64, off uint32, tok worm.Ballot, recs []Record) (SealResult, []Record) {
	if r.IsTrimmed(seg) {
		return SealResult{Status: StatusTrimmed}, recs
	}
	if !r.validOff(off) {
		return SealResult{Status: StatusOutOfRange}, recs
	}
	g := r.seg(seg, true)
	rg := r.reg(g, off, true)
	eff := effective(g, off, rg)
	res := SealResult{Status: StatusOK, Promised: eff, Has: rg.has, Value: rg.val}
	if tok.Less(eff) || tok.IsZero() {
		res.Status = StatusNack
		return res, recs
	}
	if rg.seal != tok {
		rg.seal = tok
		recs = append(recs, Record{Kind: RecSeal, Seg: seg, Off: off, Ballot: tok})
	}
	res.Promised = tok
	return res, recs
}

// SegSealResult is a replica's answer to a segment seal.
type SegSealResult struct {
	Status   Status      // OK, Nack, Trimmed
	Promised worm.Ballot // the segment's seal after the call
	// Written lists every data register holding a value, ascending;
	// values alias replica state.
	Written []worm.Entry
	// Contended lists data registers whose own seal is higher than tok.
	Contended []uint32
}

// SealSeg seals every data register of seg at tok (the segment seal; a
// register's own higher seal still overrides it). It succeeds when tok is
// at least the segment's seal. written and contended are reused for the
// result.
func (r *Replica) SealSeg(seg uint64, tok worm.Ballot, written []worm.Entry, contended []uint32, recs []Record) (SegSealResult, []Record) {
	if r.IsTrimmed(seg) {
		return SegSealResult{Status: StatusTrimmed}, recs
	}
	g := r.seg(seg, true)
	res := SegSealResult{Status: StatusOK, Promised: g.seal, Written: written[:0], Contended: contended[:0]}
	if tok.Less(g.seal) || tok.IsZero() {
		res.Status = StatusNack
	} else if g.seal != tok {
		g.seal = tok
		res.Promised = tok
		recs = append(recs, Record{Kind: RecSealSeg, Seg: seg, Ballot: tok})
	}
	for off := range g.regs {
		rg := &g.regs[off]
		if rg.has {
			res.Written = append(res.Written, worm.Entry{Off: uint32(off), Value: rg.val})
		}
		if tok.Less(rg.seal) {
			res.Contended = append(res.Contended, uint32(off))
		}
	}
	return res, recs
}

// WriteIn is what a write request carries for one register when it
// reaches a replica.
type WriteIn struct {
	// Status is the verdict so far: OK (apply here), Written (the head
	// holds another value; the tail confirms), or a final status that
	// passes through.
	Status Status
	// Stored: a replica upstream holds this write's value.
	Stored bool
}

// WriteOut is a replica's verdict on one register of a write.
type WriteOut struct {
	Status Status
	Stored bool   // this replica (or one upstream) holds the written value
	Fresh  bool   // this call stored it here
	Value  []byte // the held value with StatusWritten (aliases replica state)
}

// Write applies one register of a write with ballot tok (zero: unsafe)
// at this replica. in is the verdict the request carries; tail says
// whether this replica is the chain's last. See Status for the verdicts.
// The caller has checked that the segment is not trimmed and the offset
// is valid (WriteCheck).
func (r *Replica) Write(seg uint64, off uint32, tok worm.Ballot, value []byte, in WriteIn, tail bool, recs []Record) (WriteOut, []Record) {
	switch in.Status {
	case StatusOK:
	case StatusWritten:
		if !tail {
			return WriteOut{Status: StatusWritten}, recs
		}
		// The head holds another value: confirm that it is committed.
		g := r.seg(seg, false)
		var rg *reg
		if g != nil {
			rg = r.reg(g, off, false)
		}
		if rg != nil && rg.has {
			return WriteOut{Status: StatusWritten, Value: rg.val}, recs
		}
		return WriteOut{Status: StatusStranded}, recs
	default:
		return WriteOut{Status: in.Status, Stored: in.Stored}, recs
	}
	g := r.seg(seg, true)
	rg := r.reg(g, off, true)
	if rg.has {
		if bytes.Equal(rg.val, value) {
			return WriteOut{Status: StatusOK, Stored: true}, recs
		}
		// Values enter at the head only, so a replica downstream of one
		// that holds value cannot hold another: in.Stored here means a
		// broken chain (replicas restarted on each other's data).
		// Report what is here; the tail's answer is the truth.
		return WriteOut{Status: StatusWritten, Value: rg.val}, recs
	}
	if effective(g, off, rg) != tok {
		if in.Stored {
			return WriteOut{Status: StatusUnknown, Stored: true}, recs
		}
		return WriteOut{Status: StatusPreempted}, recs
	}
	rg.val, rg.has = g.keep(value), true
	if off != worm.MetaOffset {
		g.written++
	}
	r.live += int64(len(value))
	recs = append(recs, Record{Kind: RecWrite, Seg: seg, Off: off, Ballot: tok, Value: rg.val})
	return WriteOut{Status: StatusOK, Stored: true, Fresh: true}, recs
}

// WriteCheck returns the whole-request status of a write of n registers
// from (seg, off): Trimmed, OutOfRange, or OK.
func (r *Replica) WriteCheck(seg uint64, off uint32, n int) Status {
	if r.IsTrimmed(seg) {
		return StatusTrimmed
	}
	if off == worm.MetaOffset {
		if n != 1 {
			return StatusOutOfRange
		}
		return StatusOK
	}
	if n == 0 || uint64(off)+uint64(n) > uint64(r.segSize) {
		return StatusOutOfRange
	}
	return StatusOK
}

// ReadResult is a replica's answer to a read.
type ReadResult struct {
	Status    Status // OK (Value holds), Empty, Trimmed, OutOfRange
	Value     []byte // aliases replica state
	Allocated bool   // the segment's metadata register holds a value here
}

// Read reports register (seg, off): its value, and whether the segment's
// metadata register holds a value at this replica.
func (r *Replica) Read(seg uint64, off uint32) ReadResult {
	if r.IsTrimmed(seg) {
		return ReadResult{Status: StatusTrimmed}
	}
	if !r.validOff(off) {
		return ReadResult{Status: StatusOutOfRange}
	}
	g := r.seg(seg, false)
	if g == nil {
		return ReadResult{Status: StatusEmpty}
	}
	res := ReadResult{Status: StatusEmpty, Allocated: g.meta.has}
	if rg := r.reg(g, off, false); rg != nil && rg.has {
		res.Status, res.Value = StatusOK, rg.val
	}
	return res
}

// Trim trims seg: its state is dropped, later requests get StatusTrimmed.
// Trimming again changes nothing.
func (r *Replica) Trim(seg uint64, recs []Record) []Record {
	if r.IsTrimmed(seg) {
		return recs
	}
	r.drop(seg)
	return append(recs, Record{Kind: RecTrim, Seg: seg})
}

func (r *Replica) drop(seg uint64) {
	if g := r.segs[seg]; g != nil {
		for i := range g.regs {
			r.live -= int64(len(g.regs[i].val))
		}
		r.live -= int64(len(g.meta.val))
		delete(r.segs, seg)
	}
	r.trimmed[seg] = struct{}{}
}

// Apply replays one durable record (recovery). It refuses records that
// make no sense (an unknown kind, an offset out of range, a second value
// for a register): a log does not forge them, so they mean corruption.
func (r *Replica) Apply(rec Record) error {
	if rec.Kind == RecTrim {
		if !r.IsTrimmed(rec.Seg) {
			r.drop(rec.Seg)
		}
		return nil
	}
	if rec.Kind <= recInvalid || rec.Kind >= recKindCount {
		return fmt.Errorf("chain: record of unknown kind %d", rec.Kind)
	}
	if r.IsTrimmed(rec.Seg) {
		return nil // records of a segment trimmed later in the log
	}
	g := r.seg(rec.Seg, true)
	if rec.Kind == RecSealSeg {
		g.seal = g.seal.Max(rec.Ballot)
		return nil
	}
	if !r.validOff(rec.Off) {
		return fmt.Errorf("chain: record %d for %v: offset out of range", rec.Kind, worm.Addr{Seg: rec.Seg, Off: rec.Off})
	}
	rg := r.reg(g, rec.Off, true)
	switch rec.Kind {
	case RecSeal:
		rg.seal = rg.seal.Max(rec.Ballot)
	case RecWrite:
		if rg.has {
			if !bytes.Equal(rg.val, rec.Value) {
				return fmt.Errorf("chain: two values recorded for %v", worm.Addr{Seg: rec.Seg, Off: rec.Off})
			}
			return nil
		}
		rg.val, rg.has = g.keep(rec.Value), true
		if rec.Off != worm.MetaOffset {
			g.written++
		}
		r.live += int64(len(rec.Value))
	}
	return nil
}

// Snapshot emits records that rebuild the current state (for compaction):
// trims, then per segment its seal, its registers' seals and values.
func (r *Replica) Snapshot(emit func(Record) error) error {
	for seg := range r.trimmed {
		if err := emit(Record{Kind: RecTrim, Seg: seg}); err != nil {
			return err
		}
	}
	for n, g := range r.segs {
		if !g.seal.IsZero() {
			if err := emit(Record{Kind: RecSealSeg, Seg: n, Ballot: g.seal}); err != nil {
				return err
			}
		}
		one := func(off uint32, rg *reg) error {
			if !rg.seal.IsZero() {
				if err := emit(Record{Kind: RecSeal, Seg: n, Off: off, Ballot: rg.seal}); err != nil {
					return err
				}
			}
			if rg.has {
				return emit(Record{Kind: RecWrite, Seg: n, Off: off, Value: rg.val})
			}
			return nil
		}
		if err := one(worm.MetaOffset, &g.meta); err != nil {
			return err
		}
		for off := range g.regs {
			if err := one(uint32(off), &g.regs[off]); err != nil {
				return err
			}
		}
	}
	return nil
}
