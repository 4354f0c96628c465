package storage

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/wormspace/wormspace/worm/paxos"
)

// FuzzDecodeFrame feeds arbitrary bytes to the frame and payload
// decoders: they never panic, and whatever they accept re-encodes to
// exactly the bytes it was decoded from (so nothing is misread). The
// seeds in testdata/fuzz/FuzzDecodeFrame are real encoded frames and log
// fragments (regenerate with WORM_STORAGE_WRITE_SEEDS=1 go test -run
// TestWriteFuzzSeeds ./worm/storage); go test runs them as regression
// cases.
func FuzzDecodeFrame(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		for off := 0; off < len(data); off++ {
			p, size, st := decodeFrame(data[off:])
			if st != frameOK {
				continue
			}
			if size > len(data)-off || len(p) != size-frameHeader || len(p) == 0 {
				t.Fatalf("frame at %d: size %d, payload %d, input %d", off, size, len(p), len(data)-off)
			}
			frame := data[off : off+size]
			var re []byte
			if rec, ok := decodeRecord(p); ok {
				re = appendRecord(nil, &rec)
			} else if c, ok := decodeCommit(p); ok {
				re = appendCommit(nil, c)
			} else if h, ok := decodeGenHeader(p); ok {
				re = appendGenHeader(nil, h)
			} else {
				continue
			}
			if !bytes.Equal(re, frame) {
				t.Fatalf("frame at %d decodes and re-encodes differently:\n%x\n%x", off, frame, re)
			}
		}
	})
}

func fuzzSeeds() map[string][]byte {
	recs := map[string]paxos.Record{
		"accept64":    {Kind: paxos.RecordAccept, Seg: 7, Off: 3, Ballot: paxos.Ballot{Round: 12, Node: 0xdeadbeef}, Value: bytes.Repeat([]byte("v"), 64)},
		"accept-meta": {Kind: paxos.RecordAccept, Seg: 1, Off: ^uint32(0), Ballot: paxos.Ballot{Round: 1, Node: 2}, Value: []byte("owner")},
		"accept-zero": {Kind: paxos.RecordAccept, Seg: 2, Off: 0},
		"promise":     {Kind: paxos.RecordPromise, Seg: 9, Off: 15, Ballot: paxos.Ballot{Round: 3, Node: 4}},
		"seg-promise": {Kind: paxos.RecordSegPromise, Seg: 9, Ballot: paxos.Ballot{Round: 5, Node: 6}},
		"decide":      {Kind: paxos.RecordDecide, Seg: 7, Off: 3, Ballot: paxos.Ballot{Round: 12, Node: 0xdeadbeef}},
		"trim":        {Kind: paxos.RecordTrim, Seg: 1 << 40},
	}
	out := map[string][]byte{}
	var log []byte
	log = appendGenHeader(log, genHeader{version: FormatVersion, gen: 1, segSize: 16, cluster: "test-cluster"})
	log = appendCommit(log, commit{flags: commitSnapshot, batch: 1, end: uint64(len(log) + commitSize)})
	for _, name := range []string{"accept64", "accept-meta", "accept-zero", "promise", "seg-promise", "decide", "trim"} {
		r := recs[name]
		out[name] = appendRecord(nil, &r)
		log = appendRecord(log, &r)
	}
	log = appendCommit(log, commit{batch: 2, end: uint64(len(log) + commitSize)})
	out["log"] = log
	out["commit"] = appendCommit(nil, commit{batch: 9, end: 1 << 33})
	out["header"] = appendGenHeader(nil, genHeader{version: FormatVersion, gen: 3, base: 1 << 20, segSize: 4096, cluster: "prod"})
	torn := bytes.Clone(out["accept64"])
	out["torn"] = torn[:len(torn)-10]
	flipped := bytes.Clone(out["accept64"])
	flipped[20] ^= 4
	out["flipped"] = flipped
	out["zeros"] = make([]byte, 64)
	return out
}

// TestWriteFuzzSeeds regenerates the checked-in seed corpus; without
// WORM_STORAGE_WRITE_SEEDS it checks that the corpus is there and current.
func TestWriteFuzzSeeds(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzDecodeFrame")
	write := os.Getenv("WORM_STORAGE_WRITE_SEEDS") != ""
	if write {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, data := range fuzzSeeds() {
		want := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", data)
		p := filepath.Join(dir, name)
		if write {
			if err := os.WriteFile(p, []byte(want), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(p)
		if err != nil || string(got) != want {
			t.Errorf("seed %s missing or stale (%v): regenerate with WORM_STORAGE_WRITE_SEEDS=1", p, err)
		}
	}
}

// FuzzRecover opens a data directory whose generation file holds
// arbitrary bytes: Open never panics, refuses only with ErrCorrupt,
// ErrForeign or ErrFormat, and what it accepts it recovers the same way
// again (the cut and commit it wrote are stable). Seeds are real logs.
func FuzzRecover(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		id := Identity{Version: FormatVersion, Cluster: "test-cluster", SegmentSize: 16}
		if err := os.WriteFile(filepath.Join(dir, identityName), id.encode(), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, genName(1)), data, 0o600); err != nil {
			t.Fatal(err)
		}
		opts := testOpts()
		opts.Volatile = true
		l, acc, err := Open(dir, opts)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrForeign) && !errors.Is(err, ErrFormat) {
				t.Fatalf("unexpected refusal: %v", err)
			}
			return
		}
		first, n := canon(acc), l.Stats().Recovered
		l.Close()
		l, acc, err = Open(dir, opts)
		if err != nil {
			t.Fatalf("reopen: %v", err)
		}
		defer l.Close()
		if canon(acc) != first || l.Stats().Recovered != n {
			t.Fatalf("second recovery differs: %d then %d records", n, l.Stats().Recovered)
		}
	})
}
