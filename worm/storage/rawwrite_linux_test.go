package storage

import (
	"bytes"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// openRawTest opens a fresh file through OSFS.
func openRawTest(t *testing.T, flag int) (*osFile, string) {
	t.Helper()
	name := filepath.Join(t.TempDir(), "f")
	f, err := OSFS{}.OpenFile(name, flag|os.O_CREATE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f.(*osFile), name
}

// TestRawWriteAt checks that raw and ordinary writes leave the same bytes:
// appends, overwrites, a hole, and writes above rawWriteMax.
func TestRawWriteAt(t *testing.T) {
	for _, raw := range []bool{true, false} {
		t.Run(map[bool]string{true: "raw", false: "ordinary"}[raw], func(t *testing.T) {
			rawWrites.Store(raw)
			defer rawWrites.Store(true)
			f, name := openRawTest(t, os.O_RDWR)
			var want []byte
			put := func(off int, b []byte) {
				t.Helper()
				n, err := f.WriteAt(b, int64(off))
				if err != nil || n != len(b) {
					t.Fatalf("WriteAt(%d bytes, %d) = %d, %v", len(b), off, n, err)
				}
				if end := off + len(b); end > len(want) {
					want = append(want, make([]byte, end-len(want))...)
				}
				copy(want[off:], b)
			}
			put(0, []byte("header"))
			put(6, bytes.Repeat([]byte{'r'}, 164))
			put(3, []byte("XY"))                                // overwrite inside
			put(8192, []byte("after a hole"))                   // sparse
			put(9000, bytes.Repeat([]byte{'b'}, rawWriteMax+1)) // the ordinary path
			put(9000+rawWriteMax+1, bytes.Repeat([]byte{'m'}, rawWriteMax))
			if _, err := f.WriteAt(nil, 5); err != nil {
				t.Fatalf("empty write: %v", err)
			}
			got, err := os.ReadFile(name)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("file differs from what was written (%d vs %d bytes)", len(got), len(want))
			}
		})
	}
}

// TestRawWriteAtError: a failed raw write reports a *fs.PathError with the
// errno, as os.File does (the log maps ENOSPC through it).
func TestRawWriteAtError(t *testing.T) {
	f, name := openRawTest(t, os.O_RDONLY)
	_, err := f.WriteAt([]byte("x"), 0)
	var pe *fs.PathError
	if !errors.As(err, &pe) || pe.Op != "write" || pe.Path != name || !errors.Is(err, syscall.EBADF) {
		t.Fatalf("write to a read-only file: %v, want a write PathError wrapping EBADF", err)
	}
}

// TestRawWriteDemotion: a raw write slower than rawWriteSlow sends the
// file's writes through the ordinary path for rawWriteBackoff, and they
// still land.
func TestRawWriteDemotion(t *testing.T) {
	defer func(s, b time.Duration) { rawWriteSlow, rawWriteBackoff = s, b }(rawWriteSlow, rawWriteBackoff)
	rawWriteSlow, rawWriteBackoff = -1, time.Hour // every write is slow
	var logged bytes.Buffer
	defer slog.SetDefault(slog.Default())
	slog.SetDefault(slog.New(slog.NewTextHandler(&logged, nil)))
	f, name := openRawTest(t, os.O_RDWR)
	if _, err := f.WriteAt([]byte("one"), 0); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logged.String(), "level=WARN") || !strings.Contains(logged.String(), name) {
		t.Fatalf("a demotion logged %q, want a warning naming the file", logged.String())
	}
	if d := f.raw.demotions.Load(); d != 1 {
		t.Fatalf("demotions after a slow raw write = %d, want 1", d)
	}
	if until := f.raw.ordinaryUntil.Load(); time.Duration(until) < time.Since(rawEpoch)+time.Hour-time.Minute {
		t.Fatalf("demoted until %v, want about an hour from now (%v)", time.Duration(until), time.Since(rawEpoch))
	}
	if _, err := f.WriteAt([]byte("two"), 3); err != nil {
		t.Fatal(err)
	}
	if d := f.raw.demotions.Load(); d != 1 {
		t.Fatalf("demotions = %d after an ordinary write, want still 1", d)
	}
	if got, _ := os.ReadFile(name); string(got) != "onetwo" {
		t.Fatalf("file = %q, want onetwo", got)
	}
}

// TestRawWriteAtAllocs: the raw path allocates nothing.
func TestRawWriteAtAllocs(t *testing.T) {
	f, _ := openRawTest(t, os.O_RDWR)
	b := make([]byte, 164)
	off := int64(0)
	if n := testing.AllocsPerRun(100, func() {
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
		off += int64(len(b))
	}); n != 0 {
		t.Fatalf("%v allocations per raw WriteAt, want 0", n)
	}
}

// TestRawWriteAtClosed: a write to a closed file fails with os.ErrClosed,
// as os.File's does, and does not reach the file that reused its
// descriptor number.
func TestRawWriteAtClosed(t *testing.T) {
	f, _ := openRawTest(t, os.O_RDWR)
	fd := f.Fd()
	f.Close()
	g, gname := openRawTest(t, os.O_RDWR)
	if g.Fd() != fd {
		t.Logf("descriptor %d not reused (got %d); the check still applies", fd, g.Fd())
	}
	for name, call := range map[string]func() error{
		"Sync":     f.Sync,
		"Truncate": func() error { return f.Truncate(0) },
		"Allocate": func() error { return f.Allocate(0, 4096) },
	} {
		if err := call(); err == nil {
			t.Errorf("%s on a closed file succeeded", name)
		}
	}
	if _, err := f.WriteAt([]byte("stray"), 0); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("write to a closed file: %v, want os.ErrClosed", err)
	}
	if got, _ := os.ReadFile(gname); len(got) != 0 {
		t.Fatalf("the write reached the file that reused the descriptor: %q", got)
	}
}
