package storage

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wormspace/wormspace/worm/paxos"
)

// serverLog is worm/server's Log interface, repeated so that this
// package's tests check the contract without importing worm/server.
type serverLog interface {
	Reserve(n int) error
	Append(recs []paxos.Record) (end uint64, err error)
	Sync() (durable uint64, err error)
}

var _ serverLog = (*Log)(nil)

func TestFreshDirectoryAndReopen(t *testing.T) {
	w := newWorkload(seed(t), 6)
	dir := filepath.Join(t.TempDir(), "data")
	l, acc := mustOpen(t, dir, testOpts())
	if live, _ := acc.Segments(); live != 0 {
		t.Fatalf("fresh acceptor has %d segments", live)
	}
	var last uint64
	for i := range 300 {
		recs := w.step()
		if err := l.Reserve(64 * (len(recs) + 1)); err != nil {
			t.Fatal(err)
		}
		end, err := l.Append(recs)
		if err != nil {
			t.Fatal(err)
		}
		if end <= last {
			t.Fatalf("append %d: position %d after %d", i, end, last)
		}
		last = end
		if i%7 == 0 {
			d, err := l.Sync()
			if err != nil {
				t.Fatal(err)
			}
			if d < end {
				t.Fatalf("sync returned %d, below the appended %d", d, end)
			}
		}
	}
	st := l.Stats()
	if st.Records != uint64(len(w.recs)) || st.Generation != 1 || st.Syncs == 0 || st.BytesOnDisk < st.LogBytes {
		t.Fatalf("stats %+v after %d records", st, len(w.recs))
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Append(w.recs[:1]); !errors.Is(err, ErrClosed) {
		t.Fatalf("append after close: %v", err)
	}
	l2, acc2 := mustOpen(t, dir, testOpts())
	defer l2.Close()
	if got, want := canon(acc2), canon(w.acc); got != want {
		t.Fatalf("recovered state differs:\n%s\nwant\n%s", got, want)
	}
	sameReads(t, w.acc, acc2, w.lo+w.segs)
	if st2 := l2.Stats(); st2.Recovered != len(w.recs) || st2.End < last {
		t.Fatalf("reopened stats %+v: want %d recovered, position >= %d", st2, len(w.recs), last)
	}
	end, err := l2.Append(w.recs[:1])
	if err != nil || end <= last {
		t.Fatalf("append after reopen: %d, %v (before: %d)", end, err, last)
	}
}

// TestConcurrentAppendSync runs appenders (serialised by a mutex, as the
// engine does) against two concurrent syncers: every Sync covers what was
// appended before it began, and everything survives a reopen.
func TestConcurrentAppendSync(t *testing.T) {
	w := newWorkload(seed(t), 4)
	dir := t.TempDir()
	opts := testOpts()
	opts.Volatile = true
	l, _ := mustOpen(t, dir, opts)
	var mu sync.Mutex
	var appended atomic.Uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 10)
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var prev uint64
			for {
				select {
				case <-stop:
					return
				default:
				}
				before := appended.Load()
				d, err := l.Sync()
				if err != nil {
					errs <- err
					return
				}
				if d < before || d < prev {
					errs <- errors.New("sync went backwards or missed an append")
					return
				}
				prev = d
			}
		}()
	}
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 400 {
				mu.Lock()
				recs := w.step()
				if err := l.Reserve(64 * (len(recs) + 1)); err != nil {
					mu.Unlock()
					errs <- err
					return
				}
				end, err := l.Append(recs)
				if err != nil {
					mu.Unlock()
					errs <- err
					return
				}
				appended.Store(end)
				mu.Unlock()
				_ = l.Stats()
			}
		}()
	}
	// Wait for the appenders, then stop the syncers.
	done := make(chan struct{})
	go func() {
		for {
			mu.Lock()
			n := len(w.recs)
			mu.Unlock()
			if n >= 1200 {
				break
			}
			select {
			case err := <-errs:
				errs <- err
				close(done)
				return
			default:
			}
		}
		close(done)
	}()
	<-done
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if d, err := l.Sync(); err != nil || d != appended.Load()+commitSize {
		t.Fatalf("final sync: %d, %v; appended up to %d", d, err, appended.Load())
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l2, acc2 := mustOpen(t, dir, opts)
	defer l2.Close()
	if canon(acc2) != canon(w.acc) {
		t.Fatal("state after concurrent appends and syncs differs from the acceptor's")
	}
}

func TestRefusals(t *testing.T) {
	base := t.TempDir()
	mk := func(name string) string {
		dir := filepath.Join(base, name)
		l, acc := mustOpen(t, dir, testOpts())
		var resp paxos.Response
		recs := acc.Handle(&paxos.Request{Kind: paxos.KindPrepare, Seg: 1, Off: 2, Ballot: paxos.Ballot{Round: 3, Node: 4}}, &resp, nil)
		recs = acc.Handle(&paxos.Request{Kind: paxos.KindAccept, Seg: 1, Off: 2, Ballot: paxos.Ballot{Round: 3, Node: 4}, Values: [][]byte{[]byte("hello")}}, &resp, recs)
		if len(recs) != 2 {
			t.Fatalf("acceptor emitted %d records for prepare+accept", len(recs))
		}
		if _, err := l.Append(recs); err != nil {
			t.Fatal(err)
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	check := func(name string, err, want error, msg string) {
		t.Helper()
		if !errors.Is(err, want) {
			t.Fatalf("%s: got %v, want %v", name, err, want)
		}
		if !strings.Contains(err.Error(), msg) {
			t.Fatalf("%s: message %q does not mention %q", name, err, msg)
		}
	}

	dir := mk("cluster")
	o := testOpts()
	o.Cluster = "other"
	_, _, err := Open(dir, o)
	check("other cluster", err, ErrForeign, `cluster "test-cluster"`)
	o = testOpts()
	o.SegmentSize = 32
	_, _, err = Open(dir, o)
	check("other segment size", err, ErrForeign, "segment size 16")

	l, _ := mustOpen(t, dir, testOpts())
	_, _, err = Open(dir, testOpts())
	check("locked", err, ErrLocked, "locked")
	l.Close()
	l, _ = mustOpen(t, dir, testOpts()) // the lock is released by Close
	l.Close()

	dir = mk("unknown")
	os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("x"), 0o600)
	_, _, err = Open(dir, testOpts())
	check("unknown file", err, ErrForeign, "notes.txt")

	dir = mk("identity-flip")
	p := filepath.Join(dir, identityName)
	b, _ := os.ReadFile(p)
	b[len(identityMagic)+12] ^= 1
	os.WriteFile(p, b, 0o600)
	_, _, err = Open(dir, testOpts())
	check("identity flip", err, ErrCorrupt, "IDENTITY")
	var ce *CorruptError
	if !errors.As(err, &ce) || ce.File != identityName {
		t.Fatalf("identity flip: %#v", err)
	}

	dir = mk("identity-version")
	id := Identity{Version: 2, Cluster: "test-cluster", SegmentSize: testSegSize}
	os.WriteFile(filepath.Join(dir, identityName), id.encode(), 0o600)
	_, _, err = Open(dir, testOpts())
	check("version", err, ErrFormat, "version 2")

	dir = mk("identity-foreign")
	os.WriteFile(filepath.Join(dir, identityName), []byte("hello\n"), 0o600)
	_, _, err = Open(dir, testOpts())
	check("foreign identity", err, ErrForeign, "not a wormspace")

	dir = mk("identity-missing")
	os.Remove(filepath.Join(dir, identityName))
	_, _, err = Open(dir, testOpts())
	check("identity missing", err, ErrCorrupt, "generation files are present")

	dir = mk("log-missing")
	for _, g := range genFiles(t, dir) {
		os.Remove(g)
	}
	_, _, err = Open(dir, testOpts())
	check("log missing", err, ErrCorrupt, "no generation file")

	dir = mk("temp-debris")
	os.WriteFile(filepath.Join(dir, identityTemp), []byte("half"), 0o600)
	l, acc := mustOpen(t, dir, testOpts())
	if _, err := os.Stat(filepath.Join(dir, identityTemp)); !os.IsNotExist(err) {
		t.Fatalf("identity temp file not removed: %v", err)
	}
	if acc.LiveBytes() == 0 {
		t.Fatal("state lost")
	}
	l.Close()

	_, _, err = Open(filepath.Join(base, "x"), Options{SegmentSize: 0, Cluster: "c"})
	check("bad options", err, ErrInvalid, "segment size")
}

// TestInterruptedInit: a crash between writing generation 1 and the
// identity leaves a directory Open finishes initialising.
func TestInterruptedInit(t *testing.T) {
	dir := t.TempDir()
	l, _ := mustOpen(t, dir, testOpts())
	l.Close()
	os.Remove(filepath.Join(dir, identityName))
	l, acc := mustOpen(t, dir, testOpts())
	defer l.Close()
	if live, _ := acc.Segments(); live != 0 {
		t.Fatal("state from nowhere")
	}
	if _, err := os.Stat(filepath.Join(dir, identityName)); err != nil {
		t.Fatal(err)
	}
}

func TestNoSpaceQuota(t *testing.T) {
	w := newWorkload(seed(t), 4)
	dir := t.TempDir()
	opts := testOpts()
	opts.ChunkSize = 4096
	opts.MaxBytes = 3 * 4096
	l, _ := mustOpen(t, dir, opts)
	var failed bool
	var applied int
	for range 2000 {
		recs := w.step()
		n := 0
		for _, r := range recs {
			n += 64 + len(r.Value)
		}
		if err := l.Reserve(n); err != nil {
			if !errors.Is(err, ErrNoSpace) {
				t.Fatalf("reserve: %v", err)
			}
			failed = true
			// The acceptor would not have handled the request: drop it
			// from the model, as the engine answers it with an error.
			w.recs = w.recs[:len(w.recs)-len(recs)]
			before := l.Stats()
			if err := l.Reserve(n); !errors.Is(err, ErrNoSpace) {
				t.Fatalf("second reserve: %v", err)
			}
			if after := l.Stats(); after != before {
				t.Fatalf("failed reserve changed the log: %+v -> %+v", before, after)
			}
			break
		}
		if _, err := l.Append(recs); err != nil {
			t.Fatal(err)
		}
		applied += len(recs)
		if _, err := l.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	if !failed {
		t.Fatal("the quota never filled")
	}
	if st := l.Stats(); st.BytesOnDisk > opts.MaxBytes {
		t.Fatalf("%d bytes on disk, quota %d", st.BytesOnDisk, opts.MaxBytes)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l2, acc2 := mustOpen(t, dir, opts)
	defer l2.Close()
	if got := canon(acc2); got != canon(replay(w.recs)) || got == "" {
		t.Fatal("state after a full quota differs")
	}
}

// TestAppendDuringSync holds a Sync between taking its batch and its
// write+fsync: Appends meanwhile return at once, are not covered by that
// Sync, and are covered by the next.
func TestAppendDuringSync(t *testing.T) {
	w := newWorkload(seed(t), 4)
	l, _ := mustOpen(t, t.TempDir(), testOpts())
	defer l.Close()
	end1, err := l.Append(w.step())
	if err != nil {
		t.Fatal(err)
	}
	entered, release := make(chan struct{}), make(chan struct{})
	l.hookSyncIO = func() {
		entered <- struct{}{}
		<-release
	}
	type res struct {
		d   uint64
		err error
	}
	first := make(chan res, 1)
	go func() { d, err := l.Sync(); first <- res{d, err} }()
	<-entered
	appended := make(chan uint64, 1)
	go func() {
		end, err := l.Append(w.step())
		if err != nil {
			t.Error(err)
		}
		appended <- end
	}()
	var end2 uint64
	select {
	case end2 = <-appended:
	case <-time.After(10 * time.Second):
		t.Fatal("Append waited for a running Sync")
	}
	l.hookSyncIO = nil // read by the second Sync only after the first released syncMu
	close(release)
	r := <-first
	if r.err != nil || r.d < end1 || r.d >= end2 {
		t.Fatalf("first sync returned %d, %v: want >= %d and < %d (the later append)", r.d, r.err, end1, end2)
	}
	d, err := l.Sync()
	if err != nil || d < end2 {
		t.Fatalf("second sync returned %d, %v: want >= %d", d, err, end2)
	}
}

// TestSyncFailure: once a Sync fails, the log refuses everything, and a
// reopen recovers what the last successful Sync covered.
func TestSyncFailure(t *testing.T) {
	w := newWorkload(seed(t), 4)
	dir := t.TempDir()
	l, _ := mustOpen(t, dir, testOpts())
	for range 20 {
		if _, err := l.Append(w.step()); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	synced := len(w.recs)
	if _, err := l.Append(w.step()); err != nil {
		t.Fatal(err)
	}
	l.cur.f.Close() // the disk goes away
	if _, err := l.Sync(); !errors.Is(err, ErrFailed) {
		t.Fatalf("sync on a closed file: %v", err)
	}
	if _, err := l.Append(w.step()); !errors.Is(err, ErrFailed) {
		t.Fatalf("append after a failed sync: %v", err)
	}
	if err := l.Reserve(10); !errors.Is(err, ErrFailed) {
		t.Fatalf("reserve after a failed sync: %v", err)
	}
	if _, err := l.Sync(); !errors.Is(err, ErrFailed) {
		t.Fatalf("second sync after a failed sync: %v", err)
	}
	l.Close()
	l2, acc2 := mustOpen(t, dir, testOpts())
	defer l2.Close()
	if canon(acc2) != canon(replay(w.recs[:synced])) {
		t.Fatal("state after a failed sync is not the synced state")
	}
}
