package paxos

import (
	"bytes"

	"github.com/wormspace/wormspace/worm"
)

// Acceptor is one wormserver's Paxos acceptor for every register of the
// space. It is a deterministic state machine: Handle and Apply change it;
// nothing else does. It is not safe for concurrent use; the server
// serialises calls.
//
// Durability contract: Handle appends to recs every state change it made.
// The caller must make those records durable before it sends resp (or any
// later response), because resp may reveal the change.
type Acceptor struct {
	segSize uint32
	segs    map[uint64]*segment
	trimmed map[uint64]struct{}
	// liveBytes approximates the encoded size of the live state, so that
	// the server can decide when a checkpoint reclaims enough.
	liveBytes int64
	// membership is the value of the latest RecordMembership (nil: none).
	membership []byte
	// scratch buffers reused by Handle for the slices of a Response.
	regs      []RegState
	contended []uint32
	results   []RegResult
}

type segment struct {
	promised Ballot // range promise from KindPrepareSeg
	regs     []register
	meta     register // the metadata WOR at worm.MetaOffset
}

type register struct {
	promised Ballot
	accepted Ballot
	value    []byte
	hasValue bool
	decided  bool
}

// NewAcceptor returns an empty acceptor for segments of segSize registers.
func NewAcceptor(segSize uint32) *Acceptor {
	if segSize == 0 {
		panic("paxos: segment size 0")
	}
	return &Acceptor{segSize: segSize, segs: map[uint64]*segment{}, trimmed: map[uint64]struct{}{}}
}

// SegmentSize returns the number of data registers per segment.
func (a *Acceptor) SegmentSize() uint32 { return a.segSize }

// LiveBytes approximates the encoded size of the live state.
func (a *Acceptor) LiveBytes() int64 { return a.liveBytes }

// Segments returns the number of live segments and of trimmed ones.
func (a *Acceptor) Segments() (live, trimmed int) { return len(a.segs), len(a.trimmed) }

// IsTrimmed reports whether seg is trimmed.
func (a *Acceptor) IsTrimmed(seg uint64) bool { _, ok := a.trimmed[seg]; return ok }

func (a *Acceptor) inRange(off uint32) bool { return off < a.segSize || off == worm.MetaOffset }

// reg returns the register (seg, off), creating the segment and register
// when create is set; nil when absent and !create.
func (a *Acceptor) reg(seg uint64, off uint32, create bool) (*segment, *register) {
	s := a.segs[seg]
	if s == nil {
		if !create {
			return nil, nil
		}
		s = &segment{}
		a.segs[seg] = s
	}
	if off == worm.MetaOffset {
		return s, &s.meta
	}
	if int(off) >= len(s.regs) {
		if !create {
			return s, nil
		}
		n := int(off) + 1
		if n < 2*len(s.regs) {
			n = 2 * len(s.regs)
		}
		if n > int(a.segSize) {
			n = int(a.segSize)
		}
		grown := make([]register, n)
		copy(grown, s.regs)
		s.regs = grown
	}
	return s, &s.regs[off]
}

// effective returns the promise that binds register r of segment s.
func effective(s *segment, r *register) Ballot {
	if s == nil {
		return Ballot{}
	}
	if r == nil {
		return s.promised
	}
	return s.promised.Max(r.promised)
}

// Handle applies req, fills resp and appends the durable changes to recs.
// It returns the extended recs. resp's slices alias the acceptor's scratch
// space and state; they are valid until the next call.
func (a *Acceptor) Handle(req *Request, resp *Response, recs []Record) []Record {
	*resp = Response{Kind: req.Kind}
	if req.Kind != KindTrim && req.Kind != KindStatus {
		if _, ok := a.trimmed[req.Seg]; ok {
			resp.Status = StatusTrimmed
			return recs
		}
	}
	switch req.Kind {
	case KindPrepare:
		if !a.inRange(req.Off) {
			resp.Status = StatusOutOfRange
			return recs
		}
		if req.Ballot.IsZero() {
			resp.Status, resp.Text = StatusInvalid, "prepare at ballot 0"
			return recs
		}
		s, r := a.reg(req.Seg, req.Off, false)
		eff := effective(s, r)
		if req.Ballot.Less(eff) {
			resp.Status = StatusNack
			resp.Promised = eff
		} else {
			if eff.Less(req.Ballot) {
				_, r = a.reg(req.Seg, req.Off, true)
				before := regBytes(r)
				r.promised = req.Ballot
				a.liveBytes += regBytes(r) - before
				recs = append(recs, Record{Kind: RecordPromise, Seg: req.Seg, Off: req.Off, Ballot: req.Ballot})
			}
			resp.Promised = req.Ballot
		}
		if r != nil {
			resp.Reg = stateOf(req.Off, r)
		}
		return recs

	case KindPrepareSeg:
		if req.Ballot.IsZero() {
			resp.Status, resp.Text = StatusInvalid, "prepare at ballot 0"
			return recs
		}
		s := a.segs[req.Seg]
		var cur Ballot
		if s != nil {
			cur = s.promised
		}
		if req.Ballot.Less(cur) {
			resp.Status = StatusNack
			resp.Promised = cur
			return recs
		}
		if cur.Less(req.Ballot) {
			if s == nil {
				s = &segment{}
				a.segs[req.Seg] = s
			}
			if s.promised.IsZero() {
				a.liveBytes += recordOverhead
			}
			s.promised = req.Ballot
			recs = append(recs, Record{Kind: RecordSegPromise, Seg: req.Seg, Ballot: req.Ballot})
		}
		resp.Promised = req.Ballot
		a.regs, a.contended = a.regs[:0], a.contended[:0]
		if s != nil {
			for i := range s.regs {
				r := &s.regs[i]
				if r.hasValue {
					a.regs = append(a.regs, stateOf(uint32(i), r))
				}
				if req.Ballot.Less(r.promised) {
					a.contended = append(a.contended, uint32(i))
				}
			}
		}
		resp.Regs, resp.Contended = a.regs, a.contended
		return recs

	case KindAccept:
		n := len(req.Values)
		if n == 0 {
			resp.Status, resp.Text = StatusInvalid, "accept without values"
			return recs
		}
		if req.Off == worm.MetaOffset {
			if n != 1 {
				resp.Status, resp.Text = StatusInvalid, "batch accept on the metadata register"
				return recs
			}
		} else if uint64(req.Off)+uint64(n) > uint64(a.segSize) {
			resp.Status = StatusOutOfRange
			return recs
		}
		a.results = a.results[:0]
		for i, v := range req.Values {
			off := req.Off + uint32(i)
			var res RegResult
			recs, res = a.accept(req.Seg, off, req.Ballot, v, recs)
			a.results = append(a.results, res)
		}
		resp.Results = a.results
		return recs

	case KindDecide:
		if req.Off == worm.MetaOffset {
			if req.Count != 1 {
				return recs
			}
		} else if uint64(req.Off)+uint64(req.Count) > uint64(a.segSize) {
			resp.Status = StatusOutOfRange
			return recs
		}
		zero := req.Ballot.IsZero()
		if zero && uint32(len(req.Values)) != req.Count {
			// Ballot 0 does not identify a value: without the values
			// nothing can be marked (a decide is only a hint).
			resp.Status, resp.Text = StatusInvalid, "decide at ballot 0 without its values"
			return recs
		}
		for i := uint32(0); i < req.Count; i++ {
			off := req.Off + i
			_, r := a.reg(req.Seg, off, false)
			if r != nil && r.hasValue && !r.decided && r.accepted == req.Ballot && (!zero || bytes.Equal(r.value, req.Values[i])) {
				r.decided = true
				recs = append(recs, Record{Kind: RecordDecide, Seg: req.Seg, Off: off, Ballot: req.Ballot})
			}
		}
		return recs

	case KindRead:
		if !a.inRange(req.Off) {
			resp.Status = StatusOutOfRange
			return recs
		}
		if _, r := a.reg(req.Seg, req.Off, false); r != nil {
			resp.Reg = stateOf(req.Off, r)
		} else {
			resp.Reg.Off = req.Off
		}
		return recs

	case KindTrim:
		if _, ok := a.trimmed[req.Seg]; !ok {
			a.trim(req.Seg)
			recs = append(recs, Record{Kind: RecordTrim, Seg: req.Seg})
		}
		return recs

	default:
		resp.Status, resp.Text = StatusInvalid, "request kind "+req.Kind.String()+" is not handled by the acceptor"
		return recs
	}
}

// recordOverhead approximates the encoded size of a record without value.
const recordOverhead = 40

func (a *Acceptor) accept(seg uint64, off uint32, b Ballot, v []byte, recs []Record) ([]Record, RegResult) {
	s, r := a.reg(seg, off, false)
	if r != nil && r.decided {
		if bytes.Equal(r.value, v) {
			return recs, RegResult{Status: StatusOK}
		}
		return recs, RegResult{Status: StatusDecided, Value: r.value, Accepted: r.accepted, HasValue: true}
	}
	eff := effective(s, r)
	// Accept only at exactly the register's effective promise. Paxos lets
	// an acceptor accept any ballot at or above its promise because a
	// correct proposer sends phase 2 at b only after phase 1 at b reached a
	// quorum for this register. WormSpace tokens travel (a sequencer hands
	// them to appenders, a user types one into `worm write -token`), so the
	// acceptor cannot trust that: a token captured for another register, or
	// made up, would otherwise run phase 2 without phase 1 and could change
	// a chosen value. A capture's prepare makes its ballot the promise of
	// every acceptor that answered; one that missed the prepare refuses
	// (a nack carrying its lower promise), which costs only liveness.
	if b != eff || (b.IsZero() && r != nil && r.hasValue && !r.accepted.IsZero()) {
		res := RegResult{Status: StatusNack, Promised: eff}
		if r != nil && r.hasValue {
			res.Accepted, res.HasValue = r.accepted, true
		}
		return recs, res
	}
	if r != nil && r.hasValue && r.accepted == b {
		if bytes.Equal(r.value, v) {
			return recs, RegResult{Status: StatusOK} // duplicate: already durable
		}
		// One ballot, two values: only a broken or malicious proposer
		// does this. Refuse; keep the first.
		return recs, RegResult{Status: StatusNack, Promised: eff, Accepted: r.accepted, HasValue: true}
	}
	_, r = a.reg(seg, off, true)
	before := regBytes(r)
	if r.promised.Less(b) {
		r.promised = b
	}
	r.accepted, r.hasValue = b, true
	r.value = append(r.value[:0:0], v...)
	a.liveBytes += regBytes(r) - before
	recs = append(recs, Record{Kind: RecordAccept, Seg: seg, Off: off, Ballot: b, Value: r.value})
	return recs, RegResult{Status: StatusOK}
}

func (a *Acceptor) trim(seg uint64) {
	if s := a.segs[seg]; s != nil {
		a.liveBytes -= segBytes(s)
		delete(a.segs, seg)
	}
	if _, ok := a.trimmed[seg]; !ok {
		a.trimmed[seg] = struct{}{}
		a.liveBytes += recordOverhead
	}
}

// regBytes is what register r contributes to the live state: the records
// a snapshot emits for it (an accept with its value, a promise above it).
func regBytes(r *register) int64 {
	var n int64
	if r.hasValue {
		n += recordOverhead + int64(len(r.value))
	}
	if r.accepted.Less(r.promised) {
		n += recordOverhead
	}
	return n
}

// segBytes is what segment s contributes to the live state.
func segBytes(s *segment) int64 {
	n := regBytes(&s.meta)
	if !s.promised.IsZero() {
		n += recordOverhead
	}
	for i := range s.regs {
		n += regBytes(&s.regs[i])
	}
	return n
}

func stateOf(off uint32, r *register) RegState {
	return RegState{Off: off, Accepted: r.accepted, HasValue: r.hasValue, Decided: r.decided, Value: r.value}
}

// Apply replays one durable record after a restart. Replaying a record
// twice, or replaying records that a later checkpoint superseded, leaves the
// state as the newest record says: promises only grow, a trim is final.
// Apply copies rec.Value.
func (a *Acceptor) Apply(rec Record) error {
	if !rec.Kind.Valid() {
		return errInvalidRecord(rec)
	}
	if rec.Kind == RecordMembership {
		a.setMembership(rec.Value)
		return nil
	}
	if _, ok := a.trimmed[rec.Seg]; ok {
		return nil
	}
	if rec.Kind != RecordSegPromise && rec.Kind != RecordTrim && !a.inRange(rec.Off) {
		return errInvalidRecord(rec)
	}
	switch rec.Kind {
	case RecordPromise:
		_, r := a.reg(rec.Seg, rec.Off, true)
		before := regBytes(r)
		r.promised = r.promised.Max(rec.Ballot)
		a.liveBytes += regBytes(r) - before
	case RecordSegPromise:
		s := a.segs[rec.Seg]
		if s == nil {
			s = &segment{}
			a.segs[rec.Seg] = s
		}
		if s.promised.IsZero() && !rec.Ballot.IsZero() {
			a.liveBytes += recordOverhead
		}
		s.promised = s.promised.Max(rec.Ballot)
	case RecordAccept:
		_, r := a.reg(rec.Seg, rec.Off, true)
		before := regBytes(r)
		r.promised = r.promised.Max(rec.Ballot)
		if !r.hasValue || !rec.Ballot.Less(r.accepted) {
			if !(r.hasValue && r.accepted == rec.Ballot) {
				r.decided = false
			}
			r.accepted, r.hasValue = rec.Ballot, true
			r.value = append(r.value[:0:0], rec.Value...)
		}
		a.liveBytes += regBytes(r) - before
	case RecordDecide:
		_, r := a.reg(rec.Seg, rec.Off, false)
		if r != nil && r.hasValue && r.accepted == rec.Ballot {
			r.decided = true
		}
	case RecordTrim:
		a.trim(rec.Seg)
	}
	return nil
}

// Snapshot emits records that rebuild the current state through Apply, for
// a storage checkpoint. It stops at the first error emit returns.
func (a *Acceptor) Snapshot(emit func(Record) error) error {
	if a.membership != nil {
		if err := emit(Record{Kind: RecordMembership, Value: a.membership}); err != nil {
			return err
		}
	}
	for seg := range a.trimmed {
		if err := emit(Record{Kind: RecordTrim, Seg: seg}); err != nil {
			return err
		}
	}
	for seg, s := range a.segs {
		if !s.promised.IsZero() {
			if err := emit(Record{Kind: RecordSegPromise, Seg: seg, Ballot: s.promised}); err != nil {
				return err
			}
		}
		emitReg := func(off uint32, r *register) error {
			if r.hasValue {
				if err := emit(Record{Kind: RecordAccept, Seg: seg, Off: off, Ballot: r.accepted, Value: r.value}); err != nil {
					return err
				}
				if r.decided {
					if err := emit(decideRecord(seg, off, r)); err != nil {
						return err
					}
				}
			}
			if r.accepted.Less(r.promised) {
				return emit(Record{Kind: RecordPromise, Seg: seg, Off: off, Ballot: r.promised})
			}
			return nil
		}
		for i := range s.regs {
			if err := emitReg(uint32(i), &s.regs[i]); err != nil {
				return err
			}
		}
		if err := emitReg(worm.MetaOffset, &s.meta); err != nil {
			return err
		}
	}
	return nil
}

// Membership returns the value of the latest RecordMembership (nil when
// there is none). It aliases the acceptor's state.
func (a *Acceptor) Membership() []byte { return a.membership }

// SetMembership records v (not nil) as the server's membership and
// appends the RecordMembership that makes it durable to recs.
func (a *Acceptor) SetMembership(v []byte, recs []Record) []Record {
	a.setMembership(v)
	return append(recs, Record{Kind: RecordMembership, Value: a.membership})
}

func (a *Acceptor) setMembership(v []byte) {
	if a.membership != nil {
		a.liveBytes -= recordOverhead + int64(len(a.membership))
	}
	a.membership = append([]byte{}, v...)
	a.liveBytes += recordOverhead + int64(len(a.membership))
}

// InvalidRecordError reports a record that cannot be applied.
type InvalidRecordError struct{ Record Record }

func (e *InvalidRecordError) Error() string {
	return "paxos: invalid record " + e.Record.Kind.String() + " for " + worm.Addr{Seg: e.Record.Seg, Off: e.Record.Off}.String()
}

func errInvalidRecord(rec Record) error { return &InvalidRecordError{Record: rec} }
