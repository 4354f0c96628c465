package storage

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/wormspace/wormspace/worm/paxos"
)

// TestNoSpaceTmpfs fills a real 1 MiB tmpfs: Reserve fails with
// ErrNoSpace before anything changes, the log keeps working for what fits,
// a compaction that cannot fit fails cleanly, and the state recovers.
func TestNoSpaceTmpfs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	mnt := t.TempDir()
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("cannot mount a tmpfs here (%v): covered by TestNoSpaceQuota only", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(mnt, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
		}
	})
	w := newWorkload(seed(t), 4)
	dir := filepath.Join(mnt, "data")
	opts := testOpts()
	opts.ChunkSize = 64 << 10
	l, _ := mustOpen(t, dir, opts)
	full := false
	for range 100000 {
		recs := w.step()
		n := 0
		for _, r := range recs {
			n += 64 + len(r.Value)
		}
		if err := l.Reserve(n); err != nil {
			if !errors.Is(err, ErrNoSpace) {
				t.Fatalf("reserve on a full tmpfs: %v", err)
			}
			w.recs = w.recs[:len(w.recs)-len(recs)] // the engine would refuse the request
			full = true
			break
		}
		if _, err := l.Append(recs); err != nil {
			t.Fatal(err)
		}
		if _, err := l.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	if !full {
		t.Fatal("the tmpfs never filled")
	}
	st := l.Stats()
	t.Logf("full at %d bytes on disk, %d records", st.BytesOnDisk, st.Records)
	// What was reserved before still fits: the preallocated chunk has room.
	var resp paxos.Response
	recs := w.acc.Handle(&paxos.Request{Kind: paxos.KindTrim, Seg: w.lo}, &resp, nil)
	w.lo++
	w.recs = append(w.recs, recs...)
	if err := l.Reserve(64); err == nil {
		if _, err := l.Append(recs); err != nil {
			t.Fatal(err)
		}
	} else {
		w.recs = w.recs[:len(w.recs)-len(recs)]
	}
	if _, err := l.Sync(); err != nil {
		t.Fatalf("sync on a full disk: %v", err)
	}
	// Compaction needs room for its new generation: on a full disk it
	// fails with ErrNoSpace and leaves the old generation in charge.
	model := replay(w.recs) // w.acc also handled the refused request
	if err := l.Compact(model.Snapshot); err != nil {
		if !errors.Is(err, ErrNoSpace) {
			t.Fatalf("compaction on a full disk: %v", err)
		}
		if g := genFiles(t, dir); len(g) != 1 || l.Stats().Generation != 1 {
			t.Fatalf("failed compaction left %v", g)
		}
		t.Log("compaction on the full disk failed cleanly:", err)
	} else if _, err := l.Sync(); err != nil || l.Stats().Generation != 2 {
		t.Fatalf("compaction on a nearly full disk: sync %v, generation %d", err, l.Stats().Generation)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l2, acc2 := mustOpen(t, dir, opts)
	defer l2.Close()
	if canon(acc2) != canon(model) {
		t.Fatal("state after filling the disk differs")
	}
}
