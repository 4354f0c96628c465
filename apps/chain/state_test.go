package chain

import (
	"bytes"
	"testing"

	"github.com/wormspace/wormspace/worm"
)

func tok(r uint64) worm.Token { return worm.Token{Round: r, Node: 1} }

// The replica rules, step by step: seals rise, a write needs exactly the
// effective seal and an empty register, values never change.
func TestReplicaRules(t *testing.T) {
	r := NewReplica(8)
	var recs []Record

	// Unsafe write to a never-sealed register.
	out, recs := r.Write(1, 0, worm.Token{}, []byte("u"), WriteIn{Status: StatusOK}, false, recs)
	if out.Status != StatusOK || !out.Stored || !out.Fresh || len(recs) != 1 || recs[0].Kind != RecWrite {
		t.Fatalf("unsafe write: %+v %v", out, recs)
	}
	// Identical rewrite: OK, nothing new recorded, not fresh.
	recs = recs[:0]
	if out, recs = r.Write(1, 0, tok(9), []byte("u"), WriteIn{Status: StatusOK}, false, recs); out.Status != StatusOK || out.Fresh || len(recs) != 0 {
		t.Fatalf("identical rewrite: %+v %v", out, recs)
	}
	// Another value: written, carrying the held one.
	if out, _ = r.Write(1, 0, worm.Token{}, []byte("v"), WriteIn{Status: StatusOK}, false, nil); out.Status != StatusWritten || string(out.Value) != "u" {
		t.Fatalf("second value: %+v", out)
	}

	// Seal, then a write with exactly that token succeeds; lower, higher
	// and zero tokens are preempted.
	res, recs := r.Seal(1, 1, tok(5), nil)
	if res.Status != StatusOK || res.Promised != tok(5) || len(recs) != 1 || recs[0].Kind != RecSeal {
		t.Fatalf("seal: %+v %v", res, recs)
	}
	for _, b := range []worm.Token{tok(4), tok(6), {}} {
		if out, _ := r.Write(1, 1, b, []byte("x"), WriteIn{Status: StatusOK}, false, nil); out.Status != StatusPreempted {
			t.Fatalf("write with %v under seal %v: %+v", b, tok(5), out)
		}
	}
	// A lower seal is refused and reports the current one.
	if res, recs := r.Seal(1, 1, tok(3), nil); res.Status != StatusNack || res.Promised != tok(5) || len(recs) != 0 {
		t.Fatalf("lower seal: %+v %v", res, recs)
	}
	// Refused downstream after an upstream replica stored it: unknown.
	if out, _ := r.Write(1, 1, tok(4), []byte("x"), WriteIn{Status: StatusOK, Stored: true}, false, nil); out.Status != StatusUnknown || !out.Stored {
		t.Fatalf("refused after upstream stored: %+v", out)
	}
	if out, _ := r.Write(1, 1, tok(5), []byte("x"), WriteIn{Status: StatusOK}, false, nil); out.Status != StatusOK {
		t.Fatalf("write with the seal: %+v", out)
	}
	// A seal of a written register succeeds and reports the value.
	if res, _ := r.Seal(1, 1, tok(7), nil); res.Status != StatusOK || !res.Has || string(res.Value) != "x" {
		t.Fatalf("seal of a written register: %+v", res)
	}

	// Segment seals: cover registers whose own seal is lower; a higher
	// own seal is contended and keeps its register.
	if res, _ := r.Seal(2, 3, tok(20), nil); res.Status != StatusOK {
		t.Fatal(res)
	}
	ss, recs := r.SealSeg(2, tok(10), nil, nil, nil)
	if ss.Status != StatusOK || len(ss.Contended) != 1 || ss.Contended[0] != 3 || len(recs) != 1 || recs[0].Kind != RecSealSeg {
		t.Fatalf("segment seal: %+v %v", ss, recs)
	}
	if out, _ := r.Write(2, 3, tok(10), []byte("s"), WriteIn{Status: StatusOK}, false, nil); out.Status != StatusPreempted {
		t.Fatalf("segment token on a contended register: %+v", out)
	}
	if out, _ := r.Write(2, 4, tok(10), []byte("s"), WriteIn{Status: StatusOK}, false, nil); out.Status != StatusOK {
		t.Fatalf("segment token: %+v", out)
	}
	if out, _ := r.Write(2, 5, worm.Token{}, []byte("s"), WriteIn{Status: StatusOK}, false, nil); out.Status != StatusPreempted {
		t.Fatalf("unsafe write under a segment seal: %+v", out)
	}
	// The metadata register is not covered by segment seals.
	if out, _ := r.Write(2, worm.MetaOffset, worm.Token{}, []byte("m"), WriteIn{Status: StatusOK}, false, nil); out.Status != StatusOK {
		t.Fatalf("metadata write after a segment seal: %+v", out)
	}
	ss, _ = r.SealSeg(2, tok(11), nil, nil, nil)
	if len(ss.Written) != 1 || ss.Written[0].Off != 4 || string(ss.Written[0].Value) != "s" {
		t.Fatalf("segment seal's written list: %+v", ss.Written)
	}
	if ss, _ := r.SealSeg(2, tok(9), nil, nil, nil); ss.Status != StatusNack || ss.Promised != tok(11) {
		t.Fatalf("lower segment seal: %+v", ss)
	}
	if rr := r.Read(2, 4); rr.Status != StatusOK || !rr.Allocated || string(rr.Value) != "s" {
		t.Fatalf("read: %+v", rr)
	}
	if rr := r.Read(3, 0); rr.Status != StatusEmpty || rr.Allocated {
		t.Fatalf("read of an untouched segment: %+v", rr)
	}

	// Probes: upstream of the tail they pass; at the tail they confirm or
	// report the value stranded.
	if out, _ := r.Write(1, 1, tok(1), nil, WriteIn{Status: StatusWritten}, false, nil); out.Status != StatusWritten || out.Value != nil {
		t.Fatalf("probe upstream of the tail: %+v", out)
	}
	if out, _ := r.Write(1, 1, tok(1), nil, WriteIn{Status: StatusWritten}, true, nil); out.Status != StatusWritten || string(out.Value) != "x" {
		t.Fatalf("probe at the tail of a committed register: %+v", out)
	}
	if out, _ := r.Write(1, 6, tok(1), nil, WriteIn{Status: StatusWritten}, true, nil); out.Status != StatusStranded {
		t.Fatalf("probe at the tail of an empty register: %+v", out)
	}
	// Final statuses pass through untouched.
	if out, _ := r.Write(1, 6, tok(1), []byte("z"), WriteIn{Status: StatusPreempted}, true, nil); out.Status != StatusPreempted {
		t.Fatalf("final status: %+v", out)
	}
	if rr := r.Read(1, 6); rr.Status != StatusEmpty {
		t.Fatalf("a passing final status stored something: %+v", rr)
	}

	// Range and trim.
	if st := r.WriteCheck(1, 7, 2); st != StatusOutOfRange {
		t.Fatalf("batch past the end: %v", st)
	}
	if res, _ := r.Seal(1, 8, tok(99), nil); res.Status != StatusOutOfRange {
		t.Fatalf("seal out of range: %+v", res)
	}
	recs = r.Trim(1, nil)
	if len(recs) != 1 || r.WriteCheck(1, 0, 1) != StatusTrimmed || r.Read(1, 0).Status != StatusTrimmed {
		t.Fatalf("trim: %v", recs)
	}
	if res, _ := r.Seal(1, 0, tok(100), nil); res.Status != StatusTrimmed {
		t.Fatalf("seal of a trimmed segment: %+v", res)
	}
	if recs := r.Trim(1, nil); len(recs) != 0 {
		t.Fatalf("second trim recorded %v", recs)
	}
}

// Replaying the records a replica emitted (or its snapshot) rebuilds the
// same state; a record that contradicts the state is refused.
func TestReplicaReplay(t *testing.T) {
	r := NewReplica(16)
	var log []Record
	keep := func(recs []Record) {
		for _, rec := range recs {
			rec.Value = append([]byte(nil), rec.Value...)
			log = append(log, rec)
		}
	}
	_, recs := r.SealSeg(4, tok(3), nil, nil, nil)
	keep(recs)
	for off := uint32(0); off < 10; off++ {
		_, recs := r.Write(4, off, tok(3), []byte{byte(off)}, WriteIn{Status: StatusOK}, false, nil)
		keep(recs)
	}
	_, recs = r.Seal(4, 12, tok(8), nil)
	keep(recs)
	_, recs = r.Write(4, worm.MetaOffset, worm.Token{}, []byte("meta"), WriteIn{Status: StatusOK}, false, nil)
	keep(recs)
	_, recs = r.Write(5, 0, worm.Token{}, []byte("gone"), WriteIn{Status: StatusOK}, false, nil)
	keep(recs)
	keep(r.Trim(5, nil))

	same := func(name string, q *Replica) {
		t.Helper()
		for off := uint32(0); off < 16; off++ {
			a, b := r.Read(4, off), q.Read(4, off)
			if a.Status != b.Status || !bytes.Equal(a.Value, b.Value) || a.Allocated != b.Allocated {
				t.Fatalf("%s: register %d: %+v vs %+v", name, off, b, a)
			}
		}
		if q.Read(5, 0).Status != StatusTrimmed {
			t.Fatalf("%s: segment 5 not trimmed", name)
		}
		if res, _ := q.Seal(4, 12, tok(7), nil); res.Status != StatusNack || res.Promised != tok(8) {
			t.Fatalf("%s: register seal not rebuilt: %+v", name, res)
		}
		if res, _ := q.SealSeg(4, tok(2), nil, nil, nil); res.Status != StatusNack || res.Promised != tok(3) {
			t.Fatalf("%s: segment seal not rebuilt: %+v", name, res)
		}
		if q.LiveBytes() != r.LiveBytes() {
			t.Fatalf("%s: live bytes %d, want %d", name, q.LiveBytes(), r.LiveBytes())
		}
	}
	q := NewReplica(16)
	for _, rec := range log {
		if err := q.Apply(rec); err != nil {
			t.Fatal(err)
		}
	}
	for _, rec := range log { // twice: harmless
		if err := q.Apply(rec); err != nil {
			t.Fatal(err)
		}
	}
	same("replay", q)
	s := NewReplica(16)
	if err := r.Snapshot(s.Apply); err != nil {
		t.Fatal(err)
	}
	same("snapshot", s)
	if err := q.Apply(Record{Kind: RecWrite, Seg: 4, Off: 1, Value: []byte("other")}); err == nil {
		t.Fatal("a second value for a register was accepted")
	}
	if err := q.Apply(Record{Kind: RecWrite, Seg: 4, Off: 16}); err == nil {
		t.Fatal("an out-of-range record was accepted")
	}
	if err := q.Apply(Record{Kind: 77}); err == nil {
		t.Fatal("a record of unknown kind was accepted")
	}
}

// A write allocates nothing in steady state (values go into the
// segment's arena).
func TestReplicaWriteAllocs(t *testing.T) {
	r := NewReplica(1 << 16)
	r.Seal(1, 0, tok(1), nil)
	r.SealSeg(1, tok(1), nil, nil, nil)
	v := make([]byte, 64)
	recs := make([]Record, 0, 4)
	off := uint32(0)
	allocs := testing.AllocsPerRun(1000, func() {
		_, recs = r.Write(1, off, tok(1), v, WriteIn{Status: StatusOK}, false, recs[:0])
		off++
	})
	if allocs > 0.05 {
		t.Fatalf("%.2f allocations per write", allocs)
	}
}
