package chain

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/wormspace/wormspace/worm"
)

func openT(t *testing.T, dir string, o DiskOptions) (*Disk, *Replica) {
	t.Helper()
	if o.Cluster == "" {
		o.Cluster = "c"
	}
	o.Logger = quiet
	d, r, err := OpenDisk(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	return d, r
}

// writeBatches writes n batches of one register write each (register i of
// segment 1 holds "v<i>") and returns the log's size after each batch.
func writeBatches(t *testing.T, d *Disk, r *Replica, n int) []int64 {
	t.Helper()
	var sizes []int64
	for i := 0; i < n; i++ {
		_, recs := r.Write(1, uint32(i), worm.Token{}, []byte(fmt.Sprint("v", i)), WriteIn{Status: StatusOK}, false, nil)
		end := d.Append(recs)
		got, err := d.Sync()
		if err != nil || got != end {
			t.Fatalf("sync: %d, %v (want %d)", got, err, end)
		}
		sizes = append(sizes, d.Stats().Bytes)
	}
	return sizes
}

func TestDiskRecovers(t *testing.T) {
	dir := t.TempDir()
	d, r := openT(t, dir, DiskOptions{SegmentSize: 64})
	writeBatches(t, d, r, 5)
	_, recs := r.Seal(2, 3, tok(9), nil)
	d.Append(recs)
	d.Close() // syncs the seal
	d, r = openT(t, dir, DiskOptions{})
	defer d.Close()
	if r.SegmentSize() != 64 {
		t.Fatalf("segment size %d after reopen", r.SegmentSize())
	}
	for i := 0; i < 5; i++ {
		if rr := r.Read(1, uint32(i)); rr.Status != StatusOK || string(rr.Value) != fmt.Sprint("v", i) {
			t.Fatalf("register %d after reopen: %+v", i, rr)
		}
	}
	if res, _ := r.Seal(2, 3, tok(8), nil); res.Status != StatusNack {
		t.Fatalf("seal lost: %+v", res)
	}
	// Appending after recovery continues the batch sequence.
	writeBatches(t, d, r, 1)
}

// A crash can tear only the last batch: every cut inside it recovers the
// batches before it (and nothing of it), and the log keeps working.
func TestDiskTornTail(t *testing.T) {
	dir := t.TempDir()
	d, r := openT(t, dir, DiskOptions{SegmentSize: 64})
	sizes := writeBatches(t, d, r, 4)
	d.Close()
	path := filepath.Join(dir, logFile)
	full, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for cut := sizes[2]; cut < sizes[3]; cut++ {
		if err := os.WriteFile(path, full[:cut], 0o644); err != nil {
			t.Fatal(err)
		}
		d, r := openT(t, dir, DiskOptions{})
		for i := 0; i < 4; i++ {
			rr := r.Read(1, uint32(i))
			if (i < 3) != (rr.Status == StatusOK) {
				t.Fatalf("cut at %d: register %d: %+v", cut, i, rr)
			}
		}
		// The log goes on after the cut.
		_, recs := r.Write(1, 20, worm.Token{}, []byte("after"), WriteIn{Status: StatusOK}, false, nil)
		d.Append(recs)
		if _, err := d.Sync(); err != nil {
			t.Fatalf("cut at %d: sync after recovery: %v", cut, err)
		}
		d.Close()
		d2, r2 := openT(t, dir, DiskOptions{})
		if string(r2.Read(1, 20).Value) != "after" || r2.Read(1, 2).Status != StatusOK {
			t.Fatalf("cut at %d: a write after the cut was not recovered", cut)
		}
		d2.Close()
	}
}

// Damage before the last batch cannot come from a crash: refused, naming
// the file and offset.
func TestDiskCorruption(t *testing.T) {
	dir := t.TempDir()
	d, r := openT(t, dir, DiskOptions{})
	sizes := writeBatches(t, d, r, 4)
	d.Close()
	path := filepath.Join(dir, logFile)
	b, _ := os.ReadFile(path)
	b[sizes[0]+10] ^= 0x40 // inside batch 2
	os.WriteFile(path, b, 0o644)
	_, _, err := OpenDisk(dir, DiskOptions{Cluster: "c", Logger: quiet})
	var ce *CorruptError
	if !errors.Is(err, ErrCorrupt) || !errors.As(err, &ce) || ce.File != path || ce.Offset != sizes[0] {
		t.Fatalf("flipped bit in batch 2: %v", err)
	}
}

func TestDiskRefusals(t *testing.T) {
	dir := t.TempDir()
	d, _ := openT(t, dir, DiskOptions{SegmentSize: 32})
	if _, _, err := OpenDisk(dir, DiskOptions{Cluster: "c", Logger: quiet}); !errors.Is(err, ErrLocked) {
		t.Fatalf("second open: %v, want ErrLocked", err)
	}
	d.Close()
	if _, _, err := OpenDisk(dir, DiskOptions{Cluster: "other", Logger: quiet}); !errors.Is(err, ErrForeign) {
		t.Fatalf("other cluster: %v, want ErrForeign", err)
	}
	if _, _, err := OpenDisk(dir, DiskOptions{Cluster: "c", SegmentSize: 64, Logger: quiet}); !errors.Is(err, ErrForeign) {
		t.Fatalf("other segment size: %v, want ErrForeign", err)
	}
	os.WriteFile(filepath.Join(dir, "stray"), nil, 0o644)
	if _, _, err := OpenDisk(dir, DiskOptions{Cluster: "c", Logger: quiet}); !errors.Is(err, ErrForeign) {
		t.Fatalf("stray file: %v, want ErrForeign", err)
	}
	os.Remove(filepath.Join(dir, "stray"))
	id := filepath.Join(dir, identityFile)
	b, _ := os.ReadFile(id)
	b[len(b)/2] ^= 1
	os.WriteFile(id, b, 0o644)
	if _, _, err := OpenDisk(dir, DiskOptions{Cluster: "c", Logger: quiet}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("damaged identity: %v, want ErrCorrupt", err)
	}
}

// A log much larger than the live state (trimmed segments) is rewritten
// from a snapshot at open, keeping every live register and trim.
func TestDiskCompactsAtOpen(t *testing.T) {
	if testing.Short() {
		t.Skip("writes over 64 MiB")
	}
	dir := t.TempDir()
	d, r := openT(t, dir, DiskOptions{SegmentSize: 1024, Volatile: true})
	v := make([]byte, 60<<10)
	// 20 segments of 64 values of 60 KiB: a log of 75 MiB, all trimmed.
	for seg := uint64(10); seg < 30; seg++ {
		for off := uint32(0); off < 1024; off += 16 {
			_, recs := r.Write(seg, off, worm.Token{}, v, WriteIn{Status: StatusOK}, false, nil)
			d.Append(recs)
		}
		if _, err := d.Sync(); err != nil {
			t.Fatal(err)
		}
		d.Append(r.Trim(seg, nil))
	}
	_, recs := r.Write(99, 5, worm.Token{}, []byte("live"), WriteIn{Status: StatusOK}, false, nil)
	d.Append(recs)
	before := d.Stats().Bytes
	d.Close()
	d, r = openT(t, dir, DiskOptions{Volatile: true})
	defer d.Close()
	after := d.Stats().Bytes
	if after >= before/10 {
		t.Fatalf("log of %d bytes not compacted (now %d)", before, after)
	}
	if rr := r.Read(99, 5); string(rr.Value) != "live" || r.Read(10, 0).Status != StatusTrimmed {
		t.Fatalf("state after compaction: %+v, %v", rr, r.Read(10, 0).Status)
	}
}
