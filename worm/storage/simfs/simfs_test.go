package simfs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
	"testing"

	"github.com/wormspace/wormspace/worm/storage"
)

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func create(t *testing.T, d *Disk, name string) storage.File {
	t.Helper()
	f, err := d.OpenFile(name, os.O_RDWR|os.O_CREATE)
	must(t, err)
	return f
}

func write(t *testing.T, f storage.File, off int64, s string) {
	t.Helper()
	if _, err := f.WriteAt([]byte(s), off); err != nil {
		t.Fatal(err)
	}
}

func read(t *testing.T, d *Disk, name string) (string, bool) {
	t.Helper()
	b, err := d.ReadFile(name)
	if errors.Is(err, fs.ErrNotExist) {
		return "", false
	}
	must(t, err)
	return string(b), true
}

// TestSyncedSurvives: what File.Sync and SyncDir covered survives every
// power failure; a handle of the crashed process is dead.
func TestSyncedSurvives(t *testing.T) {
	for seed := range uint64(200) {
		d := New(Options{Seed: seed, PageSize: 16, SectorSize: 4})
		must(t, d.MkdirAll("/data"))
		must(t, d.SyncDir("/"))
		f := create(t, d, "/data/a")
		write(t, f, 0, "durable contents, several pages long")
		must(t, f.Sync())
		must(t, d.SyncDir("/data"))
		write(t, f, 8, "XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX")
		d.PowerLoss()
		if _, err := f.WriteAt([]byte("x"), 0); !errors.Is(err, ErrCrashed) {
			t.Fatalf("write through a handle of the crashed process: %v", err)
		}
		if _, err := d.ReadDir("/data"); !errors.Is(err, ErrCrashed) {
			t.Fatalf("readdir on a crashed disk: %v", err)
		}
		d.Restart()
		got, ok := read(t, d, "/data/a")
		if !ok {
			t.Fatalf("seed %d: synced file lost", seed)
		}
		want := "durable contents, several pages long"
		// Every byte is the synced one or the unsynced write's (or, past
		// the synced size, zero: an extension whose data was lost).
		if len(got) < len(want) || len(got) > 8+47 {
			t.Fatalf("seed %d: size %d", seed, len(got))
		}
		for i := range len(got) {
			if (i >= len(want) || got[i] != want[i]) && got[i] != 'X' && (i < len(want) || got[i] != 0) {
				t.Fatalf("seed %d: byte %d is %q: %q", seed, i, got[i], got)
			}
		}
		if _, err := f.ReadAt(make([]byte, 1), 0); !errors.Is(err, ErrCrashed) {
			t.Fatalf("old handle after restart: %v", err)
		}
	}
}

// TestUnsyncedChoices: over seeds, a power failure keeps each kind of
// unsynced state (none, all, prefix, torn, pages), and only states that
// the history of writes explains.
func TestUnsyncedChoices(t *testing.T) {
	writes := []struct {
		off int64
		s   string
	}{{0, "aaaaaaaaaaaa"}, {12, "bbbbbbbbbbbbbbbbbbbb"}, {4, "cccccccc"}, {32, "dddd"}}
	seen := map[string]bool{}
	var total Stats
	for seed := range uint64(400) {
		d := New(Options{Seed: seed, PageSize: 8, SectorSize: 2})
		f := create(t, d, "/f")
		must(t, d.SyncDir("/"))
		must(t, f.Sync())
		var states []string // the contents after each prefix of writes
		cur := []byte{}
		states = append(states, "")
		for _, w := range writes {
			write(t, f, w.off, w.s)
			end := w.off + int64(len(w.s))
			if end > int64(len(cur)) {
				cur = append(cur, make([]byte, end-int64(len(cur)))...)
			}
			copy(cur[w.off:], w.s)
			states = append(states, string(cur))
		}
		d.PowerLoss()
		d.Restart()
		got, ok := read(t, d, "/f")
		if !ok {
			t.Fatal("synced name lost")
		}
		seen[got] = true
		// Each byte is zero or a byte some write put there.
		for i := range len(got) {
			c := got[i]
			if c != 0 && c != 'a' && c != 'b' && c != 'c' && c != 'd' {
				t.Fatalf("seed %d: forged byte %q in %q", seed, c, got)
			}
		}
		st := d.Stats()
		for m := range numModes {
			total.Kept[m] += st.Kept[m]
		}
		if st.Kept[KeptNone]+st.Kept[KeptAll]+st.Kept[KeptPrefix] > 0 {
			// Whole writes in order: exactly the state after a prefix.
			found := false
			for _, s := range states {
				found = found || s == got
			}
			if !found {
				t.Fatalf("seed %d: %q is the state after no prefix of the writes (%v)", seed, got, st.Kept)
			}
		}
	}
	for m := range numModes {
		if total.Kept[m] == 0 {
			t.Errorf("mode %s never chosen: %v", modeNames[m], total.Kept)
		}
	}
	if len(seen) < 20 {
		t.Errorf("only %d distinct crash states over 400 seeds", len(seen))
	}
	t.Logf("%d distinct states; modes %v", len(seen), total.Kept)
}

// TestDirectoryDurability: names are durable only after SyncDir; a rename
// is atomic; a removed name may come back until SyncDir.
func TestDirectoryDurability(t *testing.T) {
	outcomes := map[string]int{}
	for seed := range uint64(300) {
		d := New(Options{Seed: seed})
		must(t, d.MkdirAll("/d"))
		must(t, d.SyncDir("/"))
		old := create(t, d, "/d/target")
		write(t, old, 0, "old")
		must(t, old.Sync())
		must(t, d.SyncDir("/d"))
		tmp := create(t, d, "/d/tmp")
		write(t, tmp, 0, "new")
		must(t, tmp.Sync())
		must(t, d.Rename("/d/tmp", "/d/target"))
		gone := create(t, d, "/d/unsynced")
		must(t, gone.Sync())
		must(t, d.Remove("/d/unsynced"))
		d.PowerLoss()
		d.Restart()
		got, ok := read(t, d, "/d/target")
		if !ok || (got != "old" && got != "new") {
			t.Fatalf("seed %d: target %q %v after an interrupted atomic rename", seed, got, ok)
		}
		_, tmpThere := read(t, d, "/d/tmp")
		if got == "new" && tmpThere {
			t.Fatalf("seed %d: rename both done and not done", seed)
		}
		_, un := read(t, d, "/d/unsynced")
		outcomes[fmt.Sprintf("target=%s tmp=%v unsynced=%v", got, tmpThere, un)]++
	}
	for _, want := range []string{"target=old tmp=false unsynced=false", "target=old tmp=true unsynced=false", "target=new tmp=false unsynced=true", "target=new tmp=false unsynced=false"} {
		if outcomes[want] == 0 {
			t.Errorf("outcome %q never seen: %v", want, outcomes)
		}
	}
	// Synced names survive.
	d := New(Options{Seed: 1})
	must(t, d.MkdirAll("/a/b"))
	must(t, d.SyncDir("/"))
	must(t, d.SyncDir("/a"))
	f := create(t, d, "/a/b/f")
	must(t, f.Sync())
	must(t, d.SyncDir("/a/b"))
	d.PowerLoss()
	d.Restart()
	if _, ok := read(t, d, "/a/b/f"); !ok {
		t.Fatal("synced name lost")
	}
}

// TestUnsyncedDirectoryTree: a directory whose own name was never synced
// may vanish with everything in it.
func TestUnsyncedDirectoryTree(t *testing.T) {
	lost := 0
	for seed := range uint64(50) {
		d := New(Options{Seed: seed})
		must(t, d.MkdirAll("/data"))
		f := create(t, d, "/data/f")
		must(t, f.Sync())
		must(t, d.SyncDir("/data"))
		d.PowerLoss()
		d.Restart()
		if _, err := d.ReadDir("/data"); errors.Is(err, fs.ErrNotExist) {
			lost++
		} else {
			must(t, err)
		}
	}
	if lost == 0 {
		t.Fatal("an unsynced directory never vanished")
	}
}

// TestKill: a process crash loses nothing, kills handles and releases
// locks.
func TestKill(t *testing.T) {
	d := New(Options{Seed: 3})
	l, err := d.Lock("/LOCK")
	must(t, err)
	if _, err := d.Lock("/LOCK"); !errors.Is(err, storage.ErrLocked) {
		t.Fatalf("second lock: %v", err)
	}
	f := create(t, d, "/f")
	write(t, f, 0, "unsynced")
	d.Kill()
	d.Restart()
	if got, ok := read(t, d, "/f"); !ok || got != "unsynced" {
		t.Fatalf("after a process crash: %q %v", got, ok)
	}
	if _, err := f.Size(); !errors.Is(err, ErrCrashed) {
		t.Fatalf("handle of the dead process: %v", err)
	}
	l2, err := d.Lock("/LOCK")
	if err != nil {
		t.Fatalf("lock after the holder died: %v", err)
	}
	must(t, l.Close()) // the dead process's handle: no effect
	if _, err := d.Lock("/LOCK"); !errors.Is(err, storage.ErrLocked) {
		t.Fatalf("closing a dead handle released the live lock: %v", err)
	}
	must(t, l2.Close())
	l3, err := d.Lock("/LOCK")
	must(t, err)
	must(t, l3.Close())
	// The unsynced state is still unsynced: a power failure may lose it.
	lostOnce := false
	for seed := range uint64(40) {
		d := New(Options{Seed: seed})
		f := create(t, d, "/f")
		must(t, d.SyncDir("/"))
		write(t, f, 0, "unsynced")
		d.Kill()
		d.PowerLoss()
		d.Restart()
		if got, _ := read(t, d, "/f"); got != "unsynced" {
			lostOnce = true
		}
	}
	if !lostOnce {
		t.Fatal("a process crash made unsynced data durable")
	}
}

// TestArmCrash: the crash strikes during the n-th next changing
// operation, which fails; later operations fail until Restart.
func TestArmCrash(t *testing.T) {
	for _, power := range []bool{false, true} {
		d := New(Options{Seed: 9})
		f := create(t, d, "/f")
		d.ArmCrash(3, power)
		write(t, f, 0, "one")
		write(t, f, 3, "two")
		if _, err := f.WriteAt([]byte("three"), 6); !errors.Is(err, ErrCrashed) {
			t.Fatalf("third write: %v", err)
		}
		if !d.Down() || d.Armed() {
			t.Fatal("disk not down after the armed crash")
		}
		if _, err := d.OpenFile("/f", os.O_RDONLY); !errors.Is(err, ErrCrashed) {
			t.Fatalf("open on a crashed disk: %v", err)
		}
		d.Restart()
		got, _ := read(t, d, "/f")
		if !power && got != "onetwo" && got != "onetwothree" {
			t.Fatalf("process crash during the third write: %q", got)
		}
		st := d.Stats()
		if power && st.PowerLosses != 1 || !power && st.Kills != 1 {
			t.Fatalf("stats %+v", st)
		}
	}
}

// TestFaults: injected EIO and a full disk fail cleanly, changing
// nothing; a failed Sync leaves the data unsynced.
func TestFaults(t *testing.T) {
	d := New(Options{Seed: 5, Capacity: 100})
	f := create(t, d, "/f")
	must(t, f.Allocate(0, 60))
	if err := f.Allocate(60, 50); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("allocate beyond capacity: %v", err)
	}
	if n, _ := f.Size(); n != 60 {
		t.Fatalf("size %d after a failed allocate", n)
	}
	if _, err := f.WriteAt(make([]byte, 41), 60); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("write beyond capacity: %v", err)
	}
	write(t, f, 0, "fits")
	d.SetFaults(Faults{WriteErr: 1})
	if _, err := f.WriteAt([]byte("FAIL"), 0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("injected write error: %v", err)
	}
	if b, _ := d.ReadFile("/f"); !bytes.HasPrefix(b, []byte("fits")) {
		t.Fatalf("a failed write changed the file: %q", b[:4])
	}
	d.SetFaults(Faults{SyncErr: 1})
	if err := f.Sync(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("injected sync error: %v", err)
	}
	if err := d.SyncDir("/"); !errors.Is(err, syscall.EIO) {
		t.Fatalf("injected dir sync error: %v", err)
	}
	d.SetFaults(Faults{})
	must(t, f.Sync())
	must(t, d.SyncDir("/"))
	d.PowerLoss()
	d.Restart()
	if b, _ := d.ReadFile("/f"); !bytes.HasPrefix(b, []byte("fits")) || len(b) != 60 {
		t.Fatalf("after a retried sync and a power failure: %q", b)
	}
	if st := d.Stats(); st.Injected != 3 || st.NoSpace != 2 {
		t.Fatalf("stats %+v", st)
	}
}

// TestLyingSync: the controls' disks acknowledge syncs they did not do.
func TestLyingSync(t *testing.T) {
	lost := 0
	for seed := range uint64(30) {
		d := New(Options{Seed: seed})
		d.SetFaults(Faults{IgnoreSync: true, IgnoreSyncDir: true})
		f := create(t, d, "/f")
		write(t, f, 0, "acknowledged")
		must(t, f.Sync())
		must(t, d.SyncDir("/"))
		d.PowerLoss()
		d.Restart()
		if got, _ := read(t, d, "/f"); got != "acknowledged" {
			lost++
		}
	}
	if lost == 0 {
		t.Fatal("a lying disk never lost acknowledged data")
	}
}

// TestDeterministic: the same seed and calls give the same disk.
func TestDeterministic(t *testing.T) {
	run := func() string {
		d := New(Options{Seed: 77, PageSize: 8})
		var out bytes.Buffer
		for i := range 20 {
			f := create(t, d, fmt.Sprintf("/f%d", i%3))
			for j := range 5 {
				write(t, f, int64(j*5), fmt.Sprintf("%d-%d;", i, j))
			}
			if i%4 == 0 {
				must(t, f.Sync())
			}
			if i%5 == 0 {
				d.PowerLoss()
				d.Restart()
			}
		}
		ents, _ := d.ReadDir("/")
		for _, e := range ents {
			b, _ := d.ReadFile("/" + e.Name())
			fmt.Fprintf(&out, "%s=%q\n", e.Name(), b)
		}
		return out.String()
	}
	if a, b := run(), run(); a != b {
		t.Fatalf("two runs of one seed differ:\n%s\n%s", a, b)
	}
}

// TestReadAt: reads past the end report io.EOF like *os.File.
func TestReadAt(t *testing.T) {
	d := New(Options{})
	f := create(t, d, "/f")
	write(t, f, 0, "abc")
	b := make([]byte, 5)
	n, err := f.ReadAt(b, 1)
	if n != 2 || err != io.EOF || string(b[:n]) != "bc" {
		t.Fatalf("ReadAt: %d %v %q", n, err, b[:n])
	}
	if _, err := d.OpenFile("/f", os.O_RDWR|os.O_CREATE|os.O_EXCL); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("O_EXCL on an existing file: %v", err)
	}
	r, err := d.OpenFile("/f", os.O_RDONLY)
	must(t, err)
	if _, err := r.WriteAt([]byte("x"), 0); !errors.Is(err, syscall.EBADF) {
		t.Fatalf("write through a read-only handle: %v", err)
	}
}
