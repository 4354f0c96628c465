package storage

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/paxos"
)

var seedFlag = flag.Uint64("seed", 0, "seed for randomized tests (0: from the clock)")

// seed returns the seed of a randomized test and logs how to replay it.
func seed(t testing.TB) uint64 {
	s := *seedFlag
	if s == 0 {
		s = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (replay: go test ./worm/storage -run '^%s$' -seed %d)", s, t.Name(), s)
	return s
}

const testSegSize = 16

func testOpts() Options {
	return Options{SegmentSize: testSegSize, Cluster: "test-cluster", Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), ChunkSize: 64 << 10}
}

func mustOpen(t testing.TB, dir string, opts Options) (*Log, *paxos.Acceptor) {
	t.Helper()
	l, acc, err := Open(dir, opts)
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	return l, acc
}

// workload drives a real acceptor with random requests, so that the
// records it appends are what a wormserver appends.
type workload struct {
	rng  *rand.Rand
	acc  *paxos.Acceptor
	segs uint64         // registers are written in segments [lo, lo+segs)
	lo   uint64         // segments below lo are trimmed
	recs []paxos.Record // deep copies of every record emitted, in order
	tmp  []paxos.Record
}

func newWorkload(seed uint64, segs uint64) *workload {
	return &workload{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), acc: paxos.NewAcceptor(testSegSize), segs: segs}
}

func (w *workload) value() []byte {
	n := 1 + w.rng.IntN(100)
	if w.rng.IntN(3) == 0 {
		n = 64
	}
	v := make([]byte, n)
	for i := range v {
		v[i] = byte(w.rng.Uint32())
	}
	return v
}

// step handles random requests until one produces records, and returns
// them (valid until the next step; w.recs keeps copies).
func (w *workload) step() []paxos.Record {
	for {
		req := paxos.Request{Seg: w.lo + w.rng.Uint64N(w.segs), Ballot: paxos.Ballot{Round: 1 + w.rng.Uint64N(40), Node: 1 + w.rng.Uint64N(3)}}
		req.Off = uint32(w.rng.IntN(testSegSize))
		if w.rng.IntN(10) == 0 {
			req.Off = worm.MetaOffset
		}
		switch x := w.rng.IntN(100); {
		case x < 50:
			req.Kind = paxos.KindAccept
			n := 1
			if req.Off != worm.MetaOffset && w.rng.IntN(4) == 0 {
				n = 1 + w.rng.IntN(int(testSegSize-req.Off))
			}
			for range n {
				req.Values = append(req.Values, w.value())
			}
			if w.rng.IntN(10) == 0 {
				req.Ballot = paxos.Ballot{}
			}
		case x < 70:
			req.Kind = paxos.KindPrepare
		case x < 80:
			req.Kind = paxos.KindPrepareSeg
		case x < 97:
			req.Kind = paxos.KindDecide
			req.Count = 1
			// Decide the ballot actually accepted, when there is one.
			var resp paxos.Response
			w.acc.Handle(&paxos.Request{Kind: paxos.KindRead, Seg: req.Seg, Off: req.Off}, &resp, nil)
			if resp.Reg.HasValue {
				req.Ballot = resp.Reg.Accepted
			}
		default:
			// Trim a prefix, as logs do; later requests use fresh segments.
			req.Kind = paxos.KindTrim
			req.Seg = w.lo
			w.lo++
		}
		var resp paxos.Response
		w.tmp = w.tmp[:0]
		if req.Kind == paxos.KindAccept && !req.Ballot.IsZero() {
			// Capture first: the acceptor accepts only at its promise.
			prep := paxos.Request{Kind: paxos.KindPrepare, Seg: req.Seg, Off: req.Off, Ballot: req.Ballot}
			if len(req.Values) > 1 {
				prep.Kind = paxos.KindPrepareSeg
			}
			w.tmp = w.acc.Handle(&prep, &resp, w.tmp)
		}
		w.tmp = w.acc.Handle(&req, &resp, w.tmp)
		if len(w.tmp) == 0 {
			continue
		}
		for _, r := range w.tmp {
			r.Value = slices.Clone(r.Value)
			w.recs = append(w.recs, r)
		}
		return w.tmp
	}
}

// canon is a canonical text of an acceptor's state.
func canon(acc *paxos.Acceptor) string {
	var lines []string
	acc.Snapshot(func(r paxos.Record) error {
		lines = append(lines, fmt.Sprintf("%v %d/%d %v %x", r.Kind, r.Seg, r.Off, r.Ballot, r.Value))
		return nil
	})
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// modelAfter returns the canonical states after each prefix of recs:
// out[k] is the state after recs[:k].
func modelAfter(recs []paxos.Record) []string {
	acc := paxos.NewAcceptor(testSegSize)
	out := []string{canon(acc)}
	for _, r := range recs {
		if err := acc.Apply(r); err != nil {
			panic(err)
		}
		out = append(out, canon(acc))
	}
	return out
}

// replay returns an acceptor that applied recs.
func replay(recs []paxos.Record) *paxos.Acceptor {
	acc := paxos.NewAcceptor(testSegSize)
	for _, r := range recs {
		if err := acc.Apply(r); err != nil {
			panic(err)
		}
	}
	return acc
}

// sameReads checks that a and b answer a Read of every register of the
// first segs segments identically (the observable state).
func sameReads(t testing.TB, a, b *paxos.Acceptor, segs uint64) {
	t.Helper()
	for seg := range segs {
		for off := uint32(0); off <= testSegSize; off++ {
			o := off
			if off == testSegSize {
				o = worm.MetaOffset
			}
			req := paxos.Request{Kind: paxos.KindRead, Seg: seg, Off: o}
			var ra, rb paxos.Response
			a.Handle(&req, &ra, nil)
			ca := ra.Clone()
			b.Handle(&req, &rb, nil)
			if ca.Status != rb.Status || ca.Reg.HasValue != rb.Reg.HasValue || ca.Reg.Accepted != rb.Reg.Accepted ||
				ca.Reg.Decided != rb.Reg.Decided || !bytes.Equal(ca.Reg.Value, rb.Reg.Value) {
				t.Fatalf("read %d/%d: %+v, recovered %+v", seg, o, *ca, rb)
			}
		}
	}
}

func copyDir(t testing.TB, src, dst string) {
	t.Helper()
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dst, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.Name() == lockName {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// genFiles lists the generation files of dir.
func genFiles(t testing.TB, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "gen-*.log"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}
