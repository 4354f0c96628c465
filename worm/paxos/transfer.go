package paxos

import (
	"bytes"
	"slices"
	"strconv"

	"github.com/wormspace/wormspace/worm"
)

// State transfer is the pure half of replacing a wormserver (the
// membership change of worm/server and worm/client): the state of a read
// quorum of sealed members is exported as Records, in chunks, and
// installed into the new member, which merges each record into what it
// holds.
//
// Install is a join in the lattice of acceptor states, register by
// register: the promise is the highest of the two, the accepted value is
// the one of the higher ballot, a trim wins over everything. Installing
// the exports of several acceptors, in any order, any number of times,
// leaves the new member with their join: a promise at least as high as
// each of theirs and, for every register, the highest-ballot value any of
// them accepted. That is what the safety of a replacement needs (worm/client
// documents the argument): a value chosen in the old configuration was
// accepted by a quorum that intersects the read quorum, and every value
// at a higher ballot is the same value, so the highest-ballot value the
// read quorum holds is the chosen one; a promise made by a phase-1 quorum
// of the old configuration reaches the new member through the same
// intersection.
//
// Everything the new member takes is something an acceptor of the old
// configuration accepted or promised, so installing is like delivering
// old messages late; a new member that has not finished installing must
// not answer anything (worm/server keeps it joining until then).

// ExportCursor is a position in an acceptor's exported state: segment
// Seg, and within it Pos: 0 is the segment's own record (its trim or its
// range promise), 1+off the data register off, and SegmentSize+1 the
// metadata register. The zero cursor is the start.
type ExportCursor struct {
	Seg uint64
	Pos uint64
}

// IsZero reports whether c is the start.
func (c ExportCursor) IsZero() bool { return c == ExportCursor{} }

func (c ExportCursor) String() string {
	return strconv.FormatUint(c.Seg, 10) + "." + strconv.FormatUint(c.Pos, 10)
}

// Exporter streams an acceptor's state as Records in ascending (segment,
// position) order, one chunk at a time, so that a large state never has
// to be held in one message. It remembers the segments the acceptor held
// when it was made; the acceptor may change between chunks.
type Exporter struct {
	a    *Acceptor
	segs []uint64 // live and trimmed segments, ascending
}

// NewExporter returns an Exporter of a's state. It sorts the acceptor's
// segment numbers (O(S log S) for S segments); reuse it for every chunk
// of one transfer.
func (a *Acceptor) NewExporter() *Exporter {
	segs := make([]uint64, 0, len(a.segs)+len(a.trimmed))
	for s := range a.segs {
		segs = append(segs, s)
	}
	for s := range a.trimmed {
		segs = append(segs, s)
	}
	slices.Sort(segs)
	return &Exporter{a: a, segs: segs}
}

// Export emits the records that rebuild the acceptor's state from
// position from on (the ones Snapshot emits, in order), and stops before
// the first register that would take the chunk past maxBytes, except that
// a chunk always holds at least one register's records (a register's
// records are never split). A record counts as its value's length plus a
// fixed overhead of about 40 bytes. It returns where the next chunk
// starts, and done once the end was reached (next is then zero).
//
// What is exported of each register is its state at the time of the
// call: a chunk exported after the acceptor changed carries the newer
// state, which is at least as high in the lattice Install joins in.
// Segments created after NewExporter are not exported.
//
// The records alias the acceptor's state: emit must encode or copy them
// before the acceptor handles its next request.
func (x *Exporter) Export(from ExportCursor, maxBytes int, emit func(Record)) (next ExportCursor, done bool) {
	a := x.a
	used := 0
	full := func() bool { return used > 0 && used >= maxBytes }
	i, _ := slices.BinarySearch(x.segs, from.Seg)
	for ; i < len(x.segs); i++ {
		seg := x.segs[i]
		pos := uint64(0)
		if seg == from.Seg {
			pos = from.Pos
		}
		if full() {
			return ExportCursor{Seg: seg, Pos: pos}, false
		}
		if _, ok := a.trimmed[seg]; ok {
			emit(Record{Kind: RecordTrim, Seg: seg})
			used += recordOverhead
			continue
		}
		s := a.segs[seg]
		if s == nil {
			continue
		}
		if pos == 0 {
			if !s.promised.IsZero() {
				emit(Record{Kind: RecordSegPromise, Seg: seg, Ballot: s.promised})
				used += recordOverhead
			}
			pos = 1
		}
		for ; pos <= uint64(len(s.regs)); pos++ {
			r := &s.regs[pos-1]
			if !r.hasValue && r.promised.IsZero() {
				continue
			}
			if full() {
				return ExportCursor{Seg: seg, Pos: pos}, false
			}
			used += emitRegister(seg, uint32(pos-1), r, emit)
		}
		metaPos := uint64(a.segSize) + 1
		if pos <= metaPos {
			r := &s.meta
			if r.hasValue || !r.promised.IsZero() {
				if full() {
					return ExportCursor{Seg: seg, Pos: metaPos}, false
				}
				used += emitRegister(seg, worm.MetaOffset, r, emit)
			}
		}
	}
	return ExportCursor{}, true
}

// emitRegister emits the records of one register (as Snapshot does) and
// returns their approximate encoded size.
func emitRegister(seg uint64, off uint32, r *register, emit func(Record)) int {
	n := 0
	if r.hasValue {
		emit(Record{Kind: RecordAccept, Seg: seg, Off: off, Ballot: r.accepted, Value: r.value})
		n += recordOverhead + len(r.value)
		if r.decided {
			emit(decideRecord(seg, off, r))
			n += recordOverhead
		}
	}
	if r.accepted.Less(r.promised) {
		emit(Record{Kind: RecordPromise, Seg: seg, Off: off, Ballot: r.promised})
		n += recordOverhead
	}
	return n
}

// decideRecord is the RecordDecide of decided register r, as Snapshot and
// Export emit it: at ballot 0 it names the value, which does not follow
// from the ballot there (see zero.go).
func decideRecord(seg uint64, off uint32, r *register) Record {
	rec := Record{Kind: RecordDecide, Seg: seg, Off: off, Ballot: r.accepted}
	if r.accepted.IsZero() {
		rec.Value = r.value
	}
	return rec
}

// ConflictError reports an installed record that carries another value
// at a ballot whose value the acceptor already holds. One ballot carries
// one value, so only a broken proposer, or two writers of one register at
// ballot 0 (WriteUnsafe's contract allows one), produce it. The acceptor
// keeps the value it had.
type ConflictError struct {
	Seg    uint64
	Off    uint32
	Ballot Ballot
}

func (e *ConflictError) Error() string {
	return "paxos: install: " + worm.Addr{Seg: e.Seg, Off: e.Off}.String() + " holds another value at ballot " + e.Ballot.String()
}

// Install merges one exported record into the acceptor's state (the join
// described at the top of this file) and appends to recs the durable
// records of what changed, which the caller makes durable like those of
// Handle (replaying them with Apply rebuilds the merged state). Installing
// a record twice, or a record the state already covers, changes nothing.
//
// A decide record marks the register decided only when the acceptor holds
// the value at exactly that ballot (at ballot 0: the record's value; a register whose higher-ballot value
// came from another source loses only the hint, never the value).
//
// Errors: *InvalidRecordError for a record that cannot be applied (a
// RecordMembership among them: a membership is not transferred), and
// *ConflictError (the state is unchanged for that record). Install copies
// rec.Value.
func (a *Acceptor) Install(rec Record, recs []Record) ([]Record, error) {
	if !rec.Kind.Valid() || rec.Kind == RecordMembership {
		return recs, errInvalidRecord(rec)
	}
	if rec.Kind != RecordSegPromise && rec.Kind != RecordTrim && !a.inRange(rec.Off) {
		return recs, errInvalidRecord(rec)
	}
	if _, ok := a.trimmed[rec.Seg]; ok {
		return recs, nil
	}
	switch rec.Kind {
	case RecordTrim:
		a.trim(rec.Seg)
		recs = append(recs, Record{Kind: RecordTrim, Seg: rec.Seg})

	case RecordSegPromise:
		s := a.segs[rec.Seg]
		var cur Ballot
		if s != nil {
			cur = s.promised
		}
		if cur.Less(rec.Ballot) {
			if s == nil {
				s = &segment{}
				a.segs[rec.Seg] = s
			}
			if s.promised.IsZero() {
				a.liveBytes += recordOverhead
			}
			s.promised = rec.Ballot
			recs = append(recs, Record{Kind: RecordSegPromise, Seg: rec.Seg, Ballot: rec.Ballot})
		}

	case RecordPromise:
		if rec.Ballot.IsZero() {
			break
		}
		if _, r := a.reg(rec.Seg, rec.Off, false); r == nil || r.promised.Less(rec.Ballot) {
			_, r = a.reg(rec.Seg, rec.Off, true)
			before := regBytes(r)
			r.promised = rec.Ballot
			a.liveBytes += regBytes(r) - before
			recs = append(recs, Record{Kind: RecordPromise, Seg: rec.Seg, Off: rec.Off, Ballot: rec.Ballot})
		}

	case RecordAccept:
		_, r := a.reg(rec.Seg, rec.Off, false)
		switch {
		case r == nil || !r.hasValue || r.accepted.Less(rec.Ballot):
			_, r = a.reg(rec.Seg, rec.Off, true)
			before := regBytes(r)
			r.promised = r.promised.Max(rec.Ballot)
			r.accepted, r.hasValue, r.decided = rec.Ballot, true, false
			r.value = append(r.value[:0:0], rec.Value...)
			a.liveBytes += regBytes(r) - before
			recs = append(recs, Record{Kind: RecordAccept, Seg: rec.Seg, Off: rec.Off, Ballot: rec.Ballot, Value: r.value})
		case r.accepted == rec.Ballot && !bytes.Equal(r.value, rec.Value):
			return recs, &ConflictError{Seg: rec.Seg, Off: rec.Off, Ballot: rec.Ballot}
		}
		// A value at a lower ballot than ours adds nothing: our promise
		// is at least our accepted ballot.

	case RecordDecide:
		// At ballot 0 the record names the decided value: the acceptor
		// may hold another writer's (see zero.go).
		if _, r := a.reg(rec.Seg, rec.Off, false); r != nil && r.hasValue && r.accepted == rec.Ballot && !r.decided &&
			(!rec.Ballot.IsZero() || bytes.Equal(r.value, rec.Value)) {
			r.decided = true
			recs = append(recs, Record{Kind: RecordDecide, Seg: rec.Seg, Off: rec.Off, Ballot: rec.Ballot})
		}
	}
	return recs, nil
}
