package forcefile

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

const testMagic = "forcefile test v1\n"

func payload(i int) []byte { return bytes.Repeat([]byte{byte(1 + i%250)}, 1+i%100) }

// checkRecords fails the test unless recs are payload(0..n-1).
func checkRecords(t *testing.T, recs [][]byte, n int) {
	t.Helper()
	if len(recs) != n {
		t.Fatalf("%d records, want %d", len(recs), n)
	}
	for i, r := range recs {
		if !bytes.Equal(r, payload(i)) {
			t.Fatalf("record %d is %x, want %x", i, r, payload(i))
		}
	}
}

// Records come back in order after a reopen, followed on disk by zeros
// (written ZeroAhead at a time); a torn last record is cut and its place
// taken by the next; a file of another format is refused; a volatile file
// writes no zeros.
func TestFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	f, recs, err := Open(path, testMagic, false)
	if err != nil || len(recs) != 0 {
		t.Fatalf("Open of a new file: %d records, %v", len(recs), err)
	}
	var frames []byte
	for i := range 3000 {
		frames = AppendRecord(frames, payload(i))
		if i%10 == 9 {
			if err := f.Write(frames); err != nil {
				t.Fatal(err)
			}
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
			frames = frames[:0]
		}
	}
	if recs, err := f.Records(); err != nil {
		t.Fatal(err)
	} else {
		checkRecords(t, recs, 3000)
	}
	end := f.end
	f.Close()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, []byte(testMagic)) {
		t.Fatalf("file starts %q", b[:min(len(b), 20)])
	}
	if tail := b[end:]; len(tail) == 0 || len(b)%4096 != 0 || !bytes.Equal(tail, make([]byte, len(tail))) {
		t.Fatalf("%d bytes after the records, want zeros to a 4 KiB boundary", len(tail))
	}

	// A torn record: its length and part of its payload, then zeros.
	torn := AppendRecord(nil, payload(3000))
	w, _ := os.OpenFile(path, os.O_WRONLY, 0)
	w.WriteAt(torn[:len(torn)-3], end)
	w.Close()
	f, recs, err = Open(path, testMagic, false)
	if err != nil {
		t.Fatal(err)
	}
	checkRecords(t, recs, 3000)
	if err := f.Write(AppendRecord(nil, payload(3000))); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()

	// Reopened volatile: the records are there, and a write adds no zeros.
	f, recs, err = Open(path, testMagic, true)
	if err != nil {
		t.Fatal(err)
	}
	checkRecords(t, recs, 3001)
	if err := f.Write(AppendRecord(nil, payload(3001))); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if fi, err := os.Stat(path); err != nil || fi.Size() != f.end {
		t.Fatalf("volatile file is %d bytes (%v), its records end at %d", fi.Size(), err, f.end)
	}
	if _, recs, err = Open(path, testMagic, true); err != nil {
		t.Fatal(err)
	}
	checkRecords(t, recs, 3002)

	if _, _, err := Open(path, "another format v1\n", false); !errors.Is(err, ErrFormat) {
		t.Fatalf("Open with another magic: %v, want ErrFormat", err)
	}
}

// Every truncation of a record, and every single-bit flip in it, ends the
// records before it.
func TestTornAndDamagedRecords(t *testing.T) {
	good := AppendRecord(nil, []byte("first"))
	last := AppendRecord(nil, []byte("the last record"))
	for cut := range len(last) {
		b := append(append([]byte(testMagic), good...), last[:cut]...)
		b = append(b, make([]byte, 64)...)
		if recs, end := scan(b, len(testMagic)); len(recs) != 1 || end != len(testMagic)+len(good) {
			t.Fatalf("cut at %d: %d records ending at %d", cut, len(recs), end)
		}
	}
	for bit := range len(last) * 8 {
		damaged := bytes.Clone(last)
		damaged[bit/8] ^= 1 << (bit % 8)
		b := append(append([]byte(testMagic), good...), damaged...)
		if recs, _ := scan(b, len(testMagic)); len(recs) != 1 {
			t.Fatalf("bit %d flipped: %d records, want 1", bit, len(recs))
		}
	}
}

// BenchmarkForce compares, side by side, a force of a small record on a
// File with the plain way: append to the file and fsync it, which makes
// every force write the file's metadata too (the size changed).
func BenchmarkForce(b *testing.B) {
	dir := b.TempDir()
	ff, _, err := Open(filepath.Join(dir, "forcefile"), testMagic, false)
	if err != nil {
		b.Fatal(err)
	}
	defer ff.Close()
	plain, err := os.OpenFile(filepath.Join(dir, "plain"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		b.Fatal(err)
	}
	defer plain.Close()
	rec := AppendRecord(nil, bytes.Repeat([]byte{7}, 56))
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

func ExampleAppendRecord() {
	frames := AppendRecord(nil, []byte("commit tx 7"))
	frames = AppendRecord(frames, []byte("abort tx 8"))
	recs, _ := scan(frames, 0)
	fmt.Printf("%d bytes, %q\n", len(frames), recs)
	// Output: 37 bytes, ["commit tx 7" "abort tx 8"]
}
