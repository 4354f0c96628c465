package paxos

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"testing"

	"github.com/wormspace/wormspace/worm"
)

// randomState fills a with random durable records over a few segments:
// promises, range promises, accepts (one value per register and ballot,
// as proposers guarantee), decides and the odd trim.
func randomState(r *rand.Rand, a *Acceptor) {
	const segSize = 8
	n := 5 + r.IntN(60)
	for i := 0; i < n; i++ {
		seg := uint64(1 + r.IntN(4))
		off := uint32(r.IntN(segSize))
		if r.IntN(8) == 0 {
			off = worm.MetaOffset
		}
		b := Ballot{Round: uint64(r.IntN(6)), Node: uint64(1 + r.IntN(2))}
		if b.Round == 0 {
			b.Node = 0
		}
		var rec Record
		switch k := r.IntN(20); {
		case k < 5:
			rec = Record{Kind: RecordPromise, Seg: seg, Off: off, Ballot: b}
		case k < 7:
			rec = Record{Kind: RecordSegPromise, Seg: seg, Ballot: b}
		case k < 15:
			rec = Record{Kind: RecordAccept, Seg: seg, Off: off, Ballot: b, Value: valueAt(seg, off, b)}
		case k < 19:
			// A decide of whatever it holds (decides name the ballot a
			// quorum accepted).
			if _, reg := a.reg(seg, off, false); reg != nil && reg.hasValue {
				rec = Record{Kind: RecordDecide, Seg: seg, Off: off, Ballot: reg.accepted}
			} else {
				continue
			}
		default:
			if r.IntN(3) != 0 {
				continue
			}
			rec = Record{Kind: RecordTrim, Seg: seg}
		}
		if err := a.Apply(rec); err != nil {
			panic(err)
		}
	}
}

// valueAt is the one value a register carries at ballot b in random
// states (a ballot has one value).
func valueAt(seg uint64, off uint32, b Ballot) []byte {
	return []byte(fmt.Sprintf("v%d/%d@%v", seg, off, b))
}

// exportAll returns every record of one export in chunks of at most
// maxBytes, as strings, in export order; and the number of chunks.
func exportAll(t *testing.T, a *Acceptor, maxBytes int) ([]string, int) {
	t.Helper()
	x := a.NewExporter()
	var out []string
	var cur ExportCursor
	for chunks := 1; ; chunks++ {
		if chunks > 100000 {
			t.Fatal("export does not end")
		}
		n := 0
		next, done := x.Export(cur, maxBytes, func(r Record) {
			out = append(out, recString(r))
			n++
		})
		if n == 0 && !done {
			t.Fatalf("empty chunk at %v", cur)
		}
		if done {
			if !next.IsZero() {
				t.Fatalf("done with cursor %v", next)
			}
			return out, chunks
		}
		if !cur.Less(next) {
			t.Fatalf("cursor went from %v to %v", cur, next)
		}
		cur = next
	}
}

// Less orders cursors (tests only).
func (c ExportCursor) Less(d ExportCursor) bool {
	return c.Seg < d.Seg || c.Seg == d.Seg && c.Pos < d.Pos
}

func recString(r Record) string {
	return r.Kind.String() + " " + worm.Addr{Seg: r.Seg, Off: r.Off}.String() + " " + r.Ballot.String() + " " + string(r.Value)
}

// An export, in one chunk or in many, holds exactly the records of a
// snapshot; every chunk boundary falls between registers, and the
// smallest budget gives one register (or segment record) per chunk.
func TestExportMatchesSnapshot(t *testing.T) {
	for seed := uint64(0); seed < 200; seed++ {
		r := rand.New(rand.NewPCG(seed, 1))
		a := NewAcceptor(8)
		randomState(r, a)
		whole, chunks := exportAll(t, a, 1<<30)
		if chunks != 1 {
			t.Fatalf("seed %d: %d chunks with an unlimited budget", seed, chunks)
		}
		got := append([]string(nil), whole...)
		sort.Strings(got)
		want := strings.Split(strings.TrimSuffix(snapshot(a), "\n"), "\n")
		if len(whole) == 0 {
			want = nil
		}
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Fatalf("seed %d: export\n%s\nsnapshot\n%s", seed, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		for _, budget := range []int{1, 50, 200, 1000} {
			chunked, _ := exportAll(t, a, budget)
			if strings.Join(chunked, "\n") != strings.Join(whole, "\n") {
				t.Fatalf("seed %d, budget %d: chunked export differs:\n%s\nwant\n%s", seed, budget, strings.Join(chunked, "\n"), strings.Join(whole, "\n"))
			}
		}
	}
}

func TestExportChunksSplitBetweenRegisters(t *testing.T) {
	a := NewAcceptor(8)
	var resp Response
	var recs []Record
	b := Ballot{Round: 3, Node: 1}
	recs = a.Handle(&Request{Kind: KindPrepareSeg, Seg: 5, Ballot: b}, &resp, recs)
	recs = a.Handle(&Request{Kind: KindAccept, Seg: 5, Off: 0, Ballot: b, Values: [][]byte{[]byte("a"), []byte("b"), []byte("c")}}, &resp, recs)
	a.Handle(&Request{Kind: KindDecide, Seg: 5, Off: 0, Ballot: b, Count: 3}, &resp, recs)
	x := a.NewExporter()
	var chunks [][]string
	var cur ExportCursor
	for {
		var c []string
		next, done := x.Export(cur, 1, func(r Record) { c = append(c, recString(r)) })
		chunks = append(chunks, c)
		if done {
			break
		}
		cur = next
	}
	// The range promise, then each register with its decide.
	if len(chunks) != 4 || len(chunks[0]) != 1 || len(chunks[1]) != 2 || len(chunks[3]) != 2 {
		t.Fatalf("chunks %q", chunks)
	}
	// A chunk that resumes after the acceptor grew carries the newer
	// state of the registers it has not passed yet.
	x = a.NewExporter()
	var first []string
	next, done := x.Export(ExportCursor{}, 60, func(r Record) { first = append(first, recString(r)) })
	if done || next != (ExportCursor{Seg: 5, Pos: 2}) {
		t.Fatalf("first chunk %q ends at %v (done %v)", first, next, done)
	}
	b2 := Ballot{Round: 4, Node: 2}
	a.Handle(&Request{Kind: KindPrepare, Seg: 5, Off: 2, Ballot: b2}, &resp, nil)
	var rest []string
	x.Export(next, 1<<20, func(r Record) { rest = append(rest, recString(r)) })
	if !strings.Contains(strings.Join(rest, "\n"), "promise 5/2 "+b2.String()) {
		t.Fatalf("resumed chunk misses the newer promise: %q", rest)
	}
}

// model is the expected join of acceptor states, computed independently
// of Install from the acceptors' snapshots.
type model struct {
	trimmed map[uint64]bool
	segProm map[uint64]Ballot
	regs    map[worm.Addr]*modelReg
}

type modelReg struct {
	promise  Ballot
	accepted Ballot
	value    []byte
	has      bool
	decided  bool
}

func newModel() *model {
	return &model{trimmed: map[uint64]bool{}, segProm: map[uint64]Ballot{}, regs: map[worm.Addr]*modelReg{}}
}

// join adds acceptor a's state to the model.
func (m *model) join(a *Acceptor) {
	type one struct {
		promise, accepted Ballot
		value             []byte
		has, decided      bool
	}
	mine := map[worm.Addr]*one{}
	get := func(r Record) *one {
		k := worm.Addr{Seg: r.Seg, Off: r.Off}
		if mine[k] == nil {
			mine[k] = &one{}
		}
		return mine[k]
	}
	_ = a.Snapshot(func(r Record) error {
		switch r.Kind {
		case RecordTrim:
			m.trimmed[r.Seg] = true
		case RecordSegPromise:
			m.segProm[r.Seg] = m.segProm[r.Seg].Max(r.Ballot)
		case RecordAccept:
			o := get(r)
			o.accepted, o.value, o.has = r.Ballot, r.Value, true
			o.promise = o.promise.Max(r.Ballot)
		case RecordDecide:
			get(r).decided = true
		case RecordPromise:
			o := get(r)
			o.promise = o.promise.Max(r.Ballot)
		}
		return nil
	})
	for k, o := range mine {
		g := m.regs[k]
		if g == nil {
			g = &modelReg{}
			m.regs[k] = g
		}
		g.promise = g.promise.Max(o.promise)
		switch {
		case !o.has:
		case !g.has || g.accepted.Less(o.accepted):
			g.accepted, g.value, g.has, g.decided = o.accepted, o.value, true, o.decided
		case g.accepted == o.accepted:
			g.decided = g.decided || o.decided
		}
	}
}

// render prints the model as snapshot() prints an acceptor.
func (m *model) render() string {
	var lines []string
	add := func(r Record) { lines = append(lines, recString(r)) }
	for seg := range m.trimmed {
		add(Record{Kind: RecordTrim, Seg: seg})
	}
	for seg, b := range m.segProm {
		if !m.trimmed[seg] && !b.IsZero() {
			add(Record{Kind: RecordSegPromise, Seg: seg, Ballot: b})
		}
	}
	for k, g := range m.regs {
		if m.trimmed[k.Seg] {
			continue
		}
		if g.has {
			add(Record{Kind: RecordAccept, Seg: k.Seg, Off: k.Off, Ballot: g.accepted, Value: g.value})
			if g.decided {
				dec := Record{Kind: RecordDecide, Seg: k.Seg, Off: k.Off, Ballot: g.accepted}
				if g.accepted.IsZero() {
					dec.Value = g.value // as Snapshot names it
				}
				add(dec)
			}
		}
		if g.accepted.Less(g.promise) {
			add(Record{Kind: RecordPromise, Seg: k.Seg, Off: k.Off, Ballot: g.promise})
		}
	}
	sort.Strings(lines)
	var b bytes.Buffer
	for _, l := range lines {
		b.WriteString(l + "\n")
	}
	return b.String()
}

// install streams src's export into dst in chunks of budget bytes and
// returns the durable records dst emitted.
func install(t *testing.T, dst, src *Acceptor, budget int) []Record {
	t.Helper()
	var out []Record
	x := src.NewExporter()
	var cur ExportCursor
	for {
		var chunk []Record
		next, done := x.Export(cur, budget, func(r Record) {
			r.Value = bytes.Clone(r.Value)
			chunk = append(chunk, r)
		})
		for _, r := range chunk {
			var err error
			out, err = dst.Install(r, out)
			if err != nil {
				t.Fatalf("install %s: %v", recString(r), err)
			}
		}
		if done {
			return out
		}
		cur = next
	}
}

// Installing the exports of several acceptors leaves their join,
// whatever the order, however often, and in whatever chunks; the durable
// records Install emits rebuild that state through Apply; and the live
// size matches an acceptor rebuilt from the result.
func TestInstallIsJoin(t *testing.T) {
	for seed := uint64(0); seed < 300; seed++ {
		r := rand.New(rand.NewPCG(seed, 2))
		srcs := make([]*Acceptor, 3)
		m := newModel()
		for i := range srcs {
			srcs[i] = NewAcceptor(8)
			randomState(r, srcs[i])
			m.join(srcs[i])
		}
		want := m.render()
		for _, order := range [][]int{{0, 1, 2}, {2, 1, 0}, {1, 0, 2, 1, 0}} {
			dst := NewAcceptor(8)
			var durable []Record
			for _, i := range order {
				durable = append(durable, install(t, dst, srcs[i], 1+r.IntN(300))...)
			}
			if got := snapshot(dst); got != want {
				t.Fatalf("seed %d, order %v: installed\n%s\nwant the join\n%s", seed, order, got, want)
			}
			re := NewAcceptor(8)
			for _, rec := range durable {
				if err := re.Apply(rec); err != nil {
					t.Fatal(err)
				}
			}
			if got := snapshot(re); got != want {
				t.Fatalf("seed %d: replayed install records\n%s\nwant\n%s", seed, got, want)
			}
			rebuilt := NewAcceptor(8)
			_ = dst.Snapshot(func(r Record) error { return rebuilt.Apply(r) })
			if dst.LiveBytes() != rebuilt.LiveBytes() {
				t.Fatalf("seed %d: live bytes %d after install, %d rebuilt", seed, dst.LiveBytes(), rebuilt.LiveBytes())
			}
			// Installing what is already there changes nothing.
			if again := install(t, dst, srcs[order[0]], 1<<20); len(again) != 0 {
				t.Fatalf("seed %d: a second install emitted %d records", seed, len(again))
			}
		}
	}
}

func TestInstallConflictAndInvalid(t *testing.T) {
	a := NewAcceptor(8)
	b := Ballot{}
	if _, err := a.Install(Record{Kind: RecordAccept, Seg: 1, Off: 2, Ballot: b, Value: []byte("yes")}, nil); err != nil {
		t.Fatal(err)
	}
	recs, err := a.Install(Record{Kind: RecordAccept, Seg: 1, Off: 2, Ballot: b, Value: []byte("no")}, nil)
	var ce *ConflictError
	if !errors.As(err, &ce) || ce.Seg != 1 || ce.Off != 2 || len(recs) != 0 {
		t.Fatalf("second value at ballot 0: %v, %d records", err, len(recs))
	}
	var resp Response
	a.Handle(&Request{Kind: KindRead, Seg: 1, Off: 2}, &resp, nil)
	if string(resp.Reg.Value) != "yes" {
		t.Fatalf("after a conflict the register holds %q", resp.Reg.Value)
	}
	var ie *InvalidRecordError
	if _, err := a.Install(Record{Kind: RecordAccept, Seg: 1, Off: 8}, nil); !errors.As(err, &ie) {
		t.Fatalf("out-of-range record: %v", err)
	}
	if _, err := a.Install(Record{Kind: RecordKind(99)}, nil); !errors.As(err, &ie) {
		t.Fatalf("unknown record kind: %v", err)
	}
}

// The replacement argument, on the real operations: clients run
// random captures, writes and reads on three acceptors, reaching random
// subsets; the old configuration is sealed (its acceptors answer nothing
// more); a read quorum of it is installed into a new acceptor that takes
// the place of one old member, possibly after the remaining old members
// already served the new configuration for a while (the new member is
// installed late, from their newer state). Then every value chosen in
// the old configuration (accepted by a majority at one ballot, whether or
// not anyone was told) and every acknowledged write or read is what every
// quorum of the new configuration reads, and all of them agree.
func TestReplacementKeepsChosenValues(t *testing.T) {
	for seed := uint64(0); seed < 300; seed++ {
		replacementRound(t, seed)
	}
}

func replacementRound(t *testing.T, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 3))
	c := newCluster(t, 3)
	c.unsent = r.IntN(2) == 0
	ps := []*Proposer{NewProposer(1, "A", 3, 8), NewProposer(2, "B", 3, 8)}
	alloc(t, c, ps[0])
	regs := []worm.Addr{{Seg: 1, Off: 0}, {Seg: 1, Off: 1}, {Seg: 1, Off: 2}}
	known := map[worm.Addr][]byte{} // acknowledged writes and reads
	learn := func(where string, a worm.Addr, v []byte) {
		if old, ok := known[a]; ok && !bytes.Equal(old, v) {
			t.Fatalf("seed %d: %s: %v is %q, earlier %q", seed, where, a, v, old)
		}
		known[a] = bytes.Clone(v)
	}
	majorities := [][]int{{0, 1}, {0, 2}, {1, 2}, {0, 1, 2}}
	reachOf := func(cl *cluster, avail []int) []int {
		// Usually a quorum of the available acceptors, sometimes fewer.
		var out []int
		for _, i := range avail {
			if r.IntN(4) != 0 {
				out = append(out, i)
			}
		}
		return out
	}
	work := func(cl *cluster, avail []int, rounds int, where string) {
		for i := 0; i < rounds; i++ {
			p := ps[r.IntN(2)]
			a := regs[r.IntN(len(regs))]
			switch r.IntN(3) {
			case 0:
				res := cl.run(p.Read(a), reachOf(cl, avail)...)
				if res.Err == nil {
					learn(where+" read", a, res.Value)
				}
			default:
				res := cl.run(p.Capture(a), reachOf(cl, avail)...)
				if res.Err != nil {
					if v, ok := worm.WrittenValue(res.Err); ok {
						learn(where+" capture", a, v)
					}
					continue
				}
				v := []byte(fmt.Sprintf("%s-%d-%d", p.ID(), seed, i))
				wr := cl.run(p.Write(a.Seg, a.Off, res.Token, [][]byte{v}), reachOf(cl, avail)...)
				if wr.Err == nil {
					learn(where+" write", a, v)
				} else if w, ok := worm.WrittenValue(wr.Err); ok {
					learn(where+" write", a, w)
				}
			}
		}
	}
	work(c, []int{0, 1, 2}, 10+r.IntN(20), "old")

	// Values chosen in the old configuration: a majority accepted them
	// at one ballot.
	chosen := map[worm.Addr][]byte{}
	for _, a := range regs {
		count := map[string]int{}
		for _, acc := range c.accs {
			var resp Response
			acc.Handle(&Request{Kind: KindRead, Seg: a.Seg, Off: a.Off}, &resp, nil)
			if resp.Reg.HasValue {
				k := resp.Reg.Accepted.String() + "=" + string(resp.Reg.Value)
				count[k]++
				if count[k] >= 2 {
					chosen[a] = bytes.Clone(resp.Reg.Value)
				}
			}
		}
	}

	// Seal: the old acceptors take no more requests of the old
	// configuration. Replace member f by a new acceptor, installed from a
	// read quorum (which may include f, sealed but alive).
	f := r.IntN(3)
	quorum := majorities[r.IntN(3)]
	newAcc := NewAcceptor(8)
	nc := &cluster{t: t, unsent: c.unsent, accs: append([]*Acceptor(nil), c.accs...), recs: make([][]Record, 3)}
	nc.accs[f] = newAcc
	var oldMembers []int
	for i := 0; i < 3; i++ {
		if i != f {
			oldMembers = append(oldMembers, i)
		}
	}
	late := r.IntN(2) == 0
	if late {
		// The remaining old members serve the new configuration before
		// the new member is installed (it refuses everything until then).
		work(nc, oldMembers, 5+r.IntN(10), "new, before install")
	}
	for _, i := range quorum {
		install(t, newAcc, c.accs[i], 1+r.IntN(200))
	}
	for _, a := range regs {
		var got []byte
		for _, reach := range majorities {
			res := nc.run(ps[r.IntN(2)].Read(a), reach...)
			if res.Err != nil && !errors.Is(res.Err, worm.ErrEmpty) {
				t.Fatalf("seed %d: read %v via %v in the new configuration: %v", seed, a, reach, res.Err)
			}
			if v, ok := chosen[a]; ok && !bytes.Equal(res.Value, v) {
				t.Fatalf("seed %d (replaced %d, read quorum %v, late %v): %v was chosen as %q in the old configuration; the new one reads %q via %v",
					seed, f, quorum, late, a, v, res.Value, reach)
			}
			if v, ok := known[a]; ok && !bytes.Equal(res.Value, v) {
				t.Fatalf("seed %d (replaced %d, read quorum %v, late %v): %v was acknowledged as %q; the new configuration reads %q via %v",
					seed, f, quorum, late, a, v, res.Value, reach)
			}
			if got != nil && !bytes.Equal(res.Value, got) {
				t.Fatalf("seed %d: quorums of the new configuration disagree on %v: %q and %q", seed, a, got, res.Value)
			}
			if res.Err == nil {
				got = res.Value
			}
		}
	}
	// And the new configuration keeps working with the new member.
	work(nc, []int{0, 1, 2}, 5, "new")
}

// A membership record is the server's own: it replays (the latest wins,
// whatever is trimmed), survives snapshots, counts in the live size, and
// is neither exported nor installed.
func TestMembershipRecord(t *testing.T) {
	a := NewAcceptor(8)
	var resp Response
	recs := a.Handle(&Request{Kind: KindTrim, Seg: 0}, &resp, nil)
	recs = a.SetMembership([]byte("sealed 0"), recs)
	recs = a.SetMembership([]byte("active 1"), recs)
	if a.LiveBytes() != 2*recordOverhead+int64(len("active 1")) {
		t.Fatalf("live bytes %d", a.LiveBytes())
	}
	re := NewAcceptor(8)
	for _, r := range recs {
		if err := re.Apply(r); err != nil {
			t.Fatal(err)
		}
	}
	if string(re.Membership()) != "active 1" || re.LiveBytes() != a.LiveBytes() {
		t.Fatalf("replayed membership %q (live %d)", re.Membership(), re.LiveBytes())
	}
	snap := NewAcceptor(8)
	_ = a.Snapshot(func(r Record) error { return snap.Apply(r) })
	if string(snap.Membership()) != "active 1" {
		t.Fatalf("membership after a snapshot: %q", snap.Membership())
	}
	out, _ := exportAll(t, a, 1<<20)
	if strings.Contains(strings.Join(out, "\n"), "membership") {
		t.Fatalf("exported the membership: %q", out)
	}
	var ie *InvalidRecordError
	if _, err := NewAcceptor(8).Install(Record{Kind: RecordMembership, Value: []byte("x")}, nil); !errors.As(err, &ie) {
		t.Fatalf("install of a membership record: %v", err)
	}
	if NewAcceptor(8).Membership() != nil {
		t.Fatal("a new acceptor has a membership")
	}
}
