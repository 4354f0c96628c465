package forcefile

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Records land in place, followed by zeros (written ZeroAhead at a time), Open at an offset cuts what follows, and a volatile file
// writes no zeros.
func TestFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	f, err := Open(path, 0, false)
	if err != nil {
		t.Fatal(err)
	}
	var want []byte
	for i := range 5000 {
		rec := bytes.Repeat([]byte{byte(1 + i%250)}, 1+i%100)
		if err := f.Write(rec); err != nil {
			t.Fatal(err)
		}
		want = append(want, rec...)
		if i%10 == 0 {
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
		}
		if f.End() != int64(len(want)) {
			t.Fatalf("End() = %d after %d bytes", f.End(), len(want))
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b[:len(want)], want) {
		t.Fatal("records read back differ from those written")
	}
	if tail := b[len(want):]; len(tail) == 0 || len(b)%4096 != 0 || !bytes.Equal(tail, make([]byte, len(tail))) {
		t.Fatalf("%d bytes after the records, want zeros to a 4 KiB boundary", len(tail))
	}

	// Reopen before the last 10 bytes: they and the zeros are cut.
	f, err = Open(path, int64(len(want)-10), true)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Write([]byte("volatile")); err != nil {
		t.Fatal(err)
	}
	f.Close()
	b, _ = os.ReadFile(path)
	if want := append(want[:len(want)-10:len(want)-10], "volatile"...); !bytes.Equal(b, want) {
		t.Fatalf("after reopening at %d and a volatile write the file holds %d bytes, want %d (no zeros)", len(want)-18, len(b), len(want))
	}
}

// BenchmarkForce compares, side by side, a force of a small record on a
// File with the plain way: append to the file and fsync it, which makes
// every force commit the file system's journal (the size changed).
func BenchmarkForce(b *testing.B) {
	dir := b.TempDir()
	ff, err := Open(filepath.Join(dir, "forcefile"), 0, false)
	if err != nil {
		b.Fatal(err)
	}
	defer ff.Close()
	plain, err := os.OpenFile(filepath.Join(dir, "plain"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		b.Fatal(err)
	}
	defer plain.Close()
	rec := bytes.Repeat([]byte{7}, 64)
	var took [2]time.Duration
	n := 0
	for b.Loop() {
		start := time.Now()
		if err := ff.Write(rec); err != nil {
			b.Fatal(err)
		}
		if err := ff.Sync(); err != nil {
			b.Fatal(err)
		}
		mid := time.Now()
		if _, err := plain.Write(rec); err != nil {
			b.Fatal(err)
		}
		if err := plain.Sync(); err != nil {
			b.Fatal(err)
		}
		took[0] += mid.Sub(start)
		took[1] += time.Since(mid)
		n++
	}
	ffUS, plainUS := took[0].Seconds()*1e6/float64(n), took[1].Seconds()*1e6/float64(n)
	b.ReportMetric(ffUS, "forcefile-µs/force")
	b.ReportMetric(plainUS, "append+fsync-µs/force")
	b.ReportMetric(plainUS/ffUS, "speedup")
}
