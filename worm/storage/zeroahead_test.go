package storage

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// zeroWatchFS is the operating system's file system with every write to a
// generation file recorded: whether it was all zeros, and where.
type zeroWatchFS struct {
	OSFS
	mu        sync.Mutex
	writes    []watchedWrite
	failZeros bool // writes of zeros fail with ENOSPC
}

type watchedWrite struct {
	off, end int64
	zeros    bool
}

type zeroWatchFile struct {
	File
	fs *zeroWatchFS
}

func (w *zeroWatchFS) OpenFile(name string, flag int) (File, error) {
	f, err := w.OSFS.OpenFile(name, flag)
	if err != nil || filepath.Ext(name) != ".log" {
		return f, err
	}
	return &zeroWatchFile{File: f, fs: w}, nil
}

func (f *zeroWatchFile) WriteAt(p []byte, off int64) (int, error) {
	zeros := true
	for _, b := range p {
		if b != 0 {
			zeros = false
			break
		}
	}
	f.fs.mu.Lock()
	fail := zeros && f.fs.failZeros
	if !fail {
		f.fs.writes = append(f.fs.writes, watchedWrite{off: off, end: off + int64(len(p)), zeros: zeros})
	}
	f.fs.mu.Unlock()
	if fail {
		return 0, &os.PathError{Op: "write", Path: "zeros", Err: unix.ENOSPC}
	}
	return f.File.WriteAt(p, off)
}

// TestZeroAhead checks Options.ZeroAhead against the file system: a
// durable log writes zeros ahead of its data and never over it, keeps the
// zeros ZeroAhead past its data (within the preallocated space) whenever
// its data reaches them,
// and reopens with every record; with ZeroAhead negative, or a volatile
// log, it writes no zeros. Where the file system reports extents
// (FIEMAP: ext4, XFS, btrfs), it also checks the point of it all: no
// unwritten extent is left under the zeros.
func TestZeroAhead(t *testing.T) {
	const ahead = 64 << 10
	for _, tc := range []struct {
		name      string
		ahead     int64
		volatile  bool
		wantZeros bool
	}{
		{"durable", ahead, false, true},
		{"disabled", -1, false, false},
		{"volatile", ahead, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorkload(seed(t), 8)
			fsys := &zeroWatchFS{}
			opts := testOpts()
			opts.ChunkSize, opts.ZeroAhead, opts.Volatile, opts.FS = 256<<10, tc.ahead, tc.volatile, fsys
			dir := filepath.Join(t.TempDir(), "data")
			l, _ := mustOpen(t, dir, opts)
			var dataEnd, zeroEnd int64
			// Enough records to cross several zero-ahead steps and
			// chunks, synced in batches of varying size.
			for i := 0; l.Stats().LogBytes < 700<<10; i++ {
				recs := w.step()
				if err := l.Reserve(64 * (len(recs) + 1)); err != nil {
					t.Fatal(err)
				}
				if _, err := l.Append(recs); err != nil {
					t.Fatal(err)
				}
				if i%(1+i%5) != 0 {
					continue
				}
				if _, err := l.Sync(); err != nil {
					t.Fatal(err)
				}
				before := zeroEnd
				fsys.mu.Lock()
				for _, wr := range fsys.writes {
					switch {
					case !wr.zeros:
						dataEnd = max(dataEnd, wr.end)
					case wr.off < dataEnd:
						t.Fatalf("zeros written over data: [%d, %d) with data up to %d", wr.off, wr.end, dataEnd)
					default:
						zeroEnd = max(zeroEnd, wr.end)
					}
				}
				fsys.writes = fsys.writes[:0]
				fsys.mu.Unlock()
				if tc.wantZeros && dataEnd > before {
					// The sync's data went past the zeros: it must have
					// written a new stretch of them.
					alloc := l.Stats().BytesOnDisk
					if want := min(alloc, dataEnd+tc.ahead); zeroEnd < want {
						t.Fatalf("a sync wrote data up to %d past the zeros' end %d (allocated %d): zeros now reach %d, want %d", dataEnd, before, alloc, zeroEnd, want)
					}
				}
			}
			if tc.wantZeros != (zeroEnd > 0) {
				t.Fatalf("zeros written up to %d; want zeros: %v", zeroEnd, tc.wantZeros)
			}
			if tc.wantZeros {
				checkNoUnwritten(t, filepath.Join(dir, genName(1)), zeroEnd)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			l2, acc2 := mustOpen(t, dir, opts)
			defer l2.Close()
			if got, want := canon(acc2), canon(w.acc); got != want {
				t.Fatalf("recovered state differs:\n%s\nwant\n%s", got, want)
			}
			if st := l2.Stats(); st.Recovered != len(w.recs) {
				t.Fatalf("recovered %d records, appended %d", st.Recovered, len(w.recs))
			}
		})
	}
}

// checkNoUnwritten fails the test if the file at path has an unwritten
// extent (fallocated, never written) below end, as FIEMAP reports it. It
// logs and returns where the file system does not support FIEMAP.
func checkNoUnwritten(t *testing.T, path string, end int64) {
	t.Helper()
	const (
		fsIocFiemap       = 0xc020660b // _IOWR('f', 11, struct fiemap)
		fiemapFlagSync    = 0x1
		fiemapExtentLast  = 0x1
		fiemapUnwritten   = 0x800
		headerSize        = 32
		extentSize        = 56
		extentsPerRequest = 256
	)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ne := binary.NativeEndian
	buf := make([]byte, headerSize+extentSize*extentsPerRequest)
	for start := int64(0); start < end; {
		clear(buf)
		ne.PutUint64(buf[0:], uint64(start))
		ne.PutUint64(buf[8:], uint64(end-start))
		ne.PutUint32(buf[16:], fiemapFlagSync)
		ne.PutUint32(buf[24:], extentsPerRequest)
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fsIocFiemap, uintptr(unsafe.Pointer(&buf[0])))
		if errors.Is(errno, unix.EOPNOTSUPP) || errors.Is(errno, unix.ENOTTY) {
			t.Logf("%s: no FIEMAP on this file system (%v); extents not checked", path, errno)
			return
		}
		if errno != 0 {
			t.Fatalf("FIEMAP %s: %v", path, errno)
		}
		n := int(ne.Uint32(buf[20:]))
		if n == 0 {
			return
		}
		for i := range n {
			e := buf[headerSize+i*extentSize:]
			logical, length, flags := int64(ne.Uint64(e[0:])), int64(ne.Uint64(e[16:])), ne.Uint32(e[40:])
			if flags&fiemapUnwritten != 0 && logical < end {
				t.Fatalf("%s: unwritten extent [%d, %d) below %d, the end of the zeros", path, logical, logical+length, end)
			}
			start = logical + length
			if flags&fiemapExtentLast != 0 {
				return
			}
		}
	}
}

// Zeros that cannot be written do not fail a sync: the zeros are an
// optimisation, and the data's write and fsync succeeded. The log syncs
// and reopens with every record, and writes zeros again once it can.
func TestZeroAheadFailureIsNotFatal(t *testing.T) {
	w := newWorkload(seed(t), 4)
	fsys := &zeroWatchFS{failZeros: true}
	opts := testOpts()
	opts.ZeroAhead, opts.FS = 16<<10, fsys
	dir := filepath.Join(t.TempDir(), "data")
	l, _ := mustOpen(t, dir, opts)
	sync := func(n int) {
		for range n {
			recs := w.step()
			if err := l.Reserve(64 * (len(recs) + 1)); err != nil {
				t.Fatal(err)
			}
			if _, err := l.Append(recs); err != nil {
				t.Fatal(err)
			}
			if _, err := l.Sync(); err != nil {
				t.Fatalf("sync with zeros failing: %v", err)
			}
		}
	}
	sync(200)
	fsys.mu.Lock()
	for _, wr := range fsys.writes {
		if wr.zeros {
			t.Fatalf("zeros written at [%d, %d) while they fail", wr.off, wr.end)
		}
	}
	fsys.failZeros = false
	fsys.mu.Unlock()
	sync(200)
	fsys.mu.Lock()
	var zeros int
	for _, wr := range fsys.writes {
		if wr.zeros {
			zeros++
		}
	}
	fsys.mu.Unlock()
	if zeros == 0 {
		t.Fatal("no zeros written once writing them works again")
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l2, acc2 := mustOpen(t, dir, opts)
	defer l2.Close()
	if got, want := canon(acc2), canon(w.acc); got != want {
		t.Fatalf("recovered state differs:\n%s\nwant\n%s", got, want)
	}
}
