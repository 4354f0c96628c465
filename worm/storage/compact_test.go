package storage

import (
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/wormspace/wormspace/worm/paxos"
)

func fileSizes(t *testing.T, dir string) (n int64) {
	t.Helper()
	for _, g := range genFiles(t, dir) {
		st, err := os.Stat(g)
		if err != nil {
			t.Fatal(err)
		}
		n += st.Size()
	}
	return n
}

// TestCompaction writes many segments, trims most of them, compacts, and
// checks that the disk usage dropped, positions stayed monotonic and the
// state recovers identical.
func TestCompaction(t *testing.T) {
	w := newWorkload(seed(t), 3)
	dir := t.TempDir()
	opts := testOpts()
	opts.ChunkSize = 16 << 10
	opts.CompactSlack = 16 << 10
	l, _ := mustOpen(t, dir, opts)
	if l.ShouldCompact(0) {
		t.Fatal("ShouldCompact on an empty log")
	}
	var last uint64
	app := func(n int) {
		for range n {
			end, err := l.Append(w.step())
			if err != nil {
				t.Fatal(err)
			}
			if end <= last {
				t.Fatalf("position %d after %d", end, last)
			}
			last = end
		}
	}
	for range 40 {
		app(100)
		if _, err := l.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	if w.lo < 50 {
		t.Fatalf("only %d segments trimmed", w.lo)
	}
	if !l.ShouldCompact(w.acc.LiveBytes()) {
		t.Fatalf("ShouldCompact(%d) false with %d bytes of log", w.acc.LiveBytes(), l.Stats().LogBytes)
	}
	before := l.Stats()
	app(5) // appended, not synced: the snapshot supersedes them
	if err := l.Compact(w.acc.Snapshot); err != nil {
		t.Fatal(err)
	}
	if err := l.Compact(w.acc.Snapshot); !errors.Is(err, ErrCompactPending) {
		t.Fatalf("second compaction before a sync: %v", err)
	}
	if l.ShouldCompact(0) {
		t.Fatal("ShouldCompact during a pending compaction")
	}
	if n := len(genFiles(t, dir)); n != 2 {
		t.Fatalf("%d generation files before the sync, want 2", n)
	}
	app(5)
	d, err := l.Sync()
	if err != nil || d < last {
		t.Fatalf("sync after compaction: %d, %v (appended %d)", d, err, last)
	}
	after := l.Stats()
	files := genFiles(t, dir)
	if len(files) != 1 || filepath.Base(files[0]) != genName(2) || after.Generation != 2 {
		t.Fatalf("generation files %v, generation %d", files, after.Generation)
	}
	if after.BytesOnDisk*3 > before.BytesOnDisk || fileSizes(t, dir) != after.BytesOnDisk {
		t.Fatalf("bytes on disk %d before, %d after (files: %d)", before.BytesOnDisk, after.BytesOnDisk, fileSizes(t, dir))
	}
	t.Logf("compaction: %d -> %d bytes on disk, %d -> %d log bytes, live %d", before.BytesOnDisk, after.BytesOnDisk, before.LogBytes, after.LogBytes, w.acc.LiveBytes())
	app(50)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l2, acc2 := mustOpen(t, dir, opts)
	defer l2.Close()
	if canon(acc2) != canon(w.acc) {
		t.Fatal("state after compaction and reopen differs")
	}
	sameReads(t, w.acc, acc2, w.lo+w.segs)
	if end, err := l2.Append(w.recs[len(w.recs)-1:]); err != nil || end <= last {
		t.Fatalf("position after reopen: %d, %v (before: %d)", end, err, last)
	}

	// A failing snapshot changes nothing.
	boom := errors.New("boom")
	err = l2.Compact(func(emit func(r paxos.Record) error) error { return boom })
	if !errors.Is(err, boom) || len(genFiles(t, dir)) != 1 || l2.Stats().Generation != 2 {
		t.Fatalf("failed compaction: %v, files %v", err, genFiles(t, dir))
	}
	if _, err := l2.Sync(); err != nil {
		t.Fatal(err)
	}
}

// TestCompactionCrashPoints crashes at every stage of a compaction and
// checks that recovery yields a valid state: the old generation's synced
// state until the new generation's snapshot is complete, the new state
// after.
func TestCompactionCrashPoints(t *testing.T) {
	sd := seed(t)
	rng := rand.New(rand.NewPCG(sd, 23))
	w := newWorkload(sd, 3)
	base := t.TempDir()
	dir := filepath.Join(base, "live")
	opts := testOpts()
	opts.Volatile = true
	l, _ := mustOpen(t, dir, opts)
	for range 1500 {
		if _, err := l.Append(w.step()); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	stateA := canon(w.acc) // synced
	for range 20 {
		if _, err := l.Append(w.step()); err != nil {
			t.Fatal(err)
		}
	}
	stateB := canon(w.acc) // appended, not synced
	if stateA == stateB {
		t.Fatal("workload did not change the state")
	}
	if err := l.Compact(w.acc.Snapshot); err != nil {
		t.Fatal(err)
	}
	snapEnd := l.Stats().LogBytes
	crashed := filepath.Join(base, "after-compact")
	copyDir(t, dir, crashed)

	reopen := func(d, what string) (string, []string) {
		t.Helper()
		l, acc, err := Open(d, opts)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		defer l.Close()
		var names []string
		for _, g := range genFiles(t, d) {
			names = append(names, filepath.Base(g))
		}
		return canon(acc), names
	}

	// Crash right after Compact: generation 2 is complete on a process
	// crash; cut anywhere (power failure), it is discarded.
	if got, gens := reopen(crashed, "after compact"); got != stateB || !slices.Equal(gens, []string{genName(2)}) {
		t.Fatalf("after compact: state B %v, generations %v", got == stateB, gens)
	}
	copyDir(t, dir, filepath.Join(base, "tmp")) // both generations, before the sync
	g2, err := os.ReadFile(filepath.Join(base, "tmp", genName(2)))
	if err != nil {
		t.Fatal(err)
	}
	cuts := []int64{0, 1, 8, snapEnd - 1, snapEnd}
	for range 60 {
		cuts = append(cuts, rng.Int64N(snapEnd))
	}
	for i, cut := range cuts {
		d := filepath.Join(base, "cut", string(rune('a'+i%26))+"-"+string(rune('a'+i/26)))
		copyDir(t, filepath.Join(base, "tmp"), d)
		content := slices.Clone(g2[:cut])
		eff := cut // the cut, moved past zeros that a zero tail restores
		if i%2 == 1 {
			content = append(content, make([]byte, len(g2)-int(cut))...)
			for eff < int64(len(g2)) && g2[eff] == 0 {
				eff++
			}
		}
		os.WriteFile(filepath.Join(d, genName(2)), content, 0o600)
		got, gens := reopen(d, "cut new generation")
		want, wantGen := stateA, genName(1)
		if eff >= snapEnd {
			want, wantGen = stateB, genName(2)
		}
		if got != want || !slices.Equal(gens, []string{wantGen}) {
			t.Fatalf("new generation cut at %d of %d: right state %v, generations %v, want %s", cut, snapEnd, got == want, gens, wantGen)
		}
	}

	// Sync: the old generation goes. A crash before its removal leaves
	// both; recovery keeps the new one.
	for range 10 {
		if _, err := l.Append(w.step()); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	stateC := canon(w.acc)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	d := filepath.Join(base, "before-removal")
	copyDir(t, dir, d)
	g1, _ := os.ReadFile(filepath.Join(base, "tmp", genName(1)))
	os.WriteFile(filepath.Join(d, genName(1)), g1, 0o600)
	if got, gens := reopen(d, "before removal"); got != stateC || !slices.Equal(gens, []string{genName(2)}) {
		t.Fatalf("before removal: state C %v, generations %v", got == stateC, gens)
	}

	// A damaged snapshot followed by a later commit is corruption even
	// though the old generation is still there.
	d = filepath.Join(base, "damaged-snapshot")
	copyDir(t, dir, d)
	os.WriteFile(filepath.Join(d, genName(1)), g1, 0o600)
	g2, _ = os.ReadFile(filepath.Join(d, genName(2)))
	g2[snapEnd/2] ^= 0x10
	os.WriteFile(filepath.Join(d, genName(2)), g2, 0o600)
	if _, _, err := Open(d, opts); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("damaged durable snapshot: %v", err)
	}
	if got, _ := reopen(dir, "final"); got != stateC {
		t.Fatal("final state differs")
	}
}
