package storage

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// FS is the file system a Log keeps its data directory in: only the
// operations the log needs. OSFS, the default, is the operating system's;
// worm/storage/simfs is a deterministic simulated disk that loses unsynced
// state at a crash the way a real one may, for the simulator (worm/sim).
//
// Paths are the directory given to Open joined with a base name
// (filepath.Join). Errors are *fs.PathError-like values wrapping the
// cause: fs.ErrNotExist and fs.ErrExist for names, and errno values
// (syscall.Errno) for the device; in particular a full device is reported
// as ENOSPC or EDQUOT, which the log turns into ErrNoSpace.
//
// Durability contract, which the log's crash safety rests on and which
// simfs enforces:
//
//   - File.WriteAt, File.Truncate and File.Allocate are visible to reads
//     at once, but survive a power failure only once a later File.Sync of
//     the same file returned nil. Until then a power failure may keep any
//     part of them: none, all, a prefix, a torn last write, or some pages
//     and not others.
//   - Creating, renaming and removing a name (OpenFile with O_CREATE,
//     Rename, Remove, MkdirAll) survive a power failure only once SyncDir
//     of the directory holding the name returned nil. Rename is atomic.
//   - A process crash (kill -9) loses nothing a call returned: only power
//     failures lose unsynced state.
//   - A failed call may have done part of its work (as after a crash);
//     a failed Sync promises nothing about the data it was to flush.
//
// An FS is used by one Log at a time from the goroutines the Log's own
// contract allows (Sync concurrently with Append); implementations must be
// safe for that.
type FS interface {
	// MkdirAll creates dir and its missing parents.
	MkdirAll(dir string) error
	// Lock takes an exclusive, non-blocking lock on the file name
	// (creating it), held until the returned Closer is closed or the
	// process ends. It fails with an error wrapping ErrLocked when another
	// holder has it.
	Lock(name string) (io.Closer, error)
	// ReadDir lists dir, sorted by name.
	ReadDir(dir string) ([]fs.DirEntry, error)
	// OpenFile opens name with os.O_RDONLY, O_WRONLY or O_RDWR, optionally
	// combined with O_CREATE, O_EXCL and O_TRUNC (created files have
	// permission 0600).
	OpenFile(name string, flag int) (File, error)
	// Rename replaces newpath by oldpath atomically; both are in the
	// same directory.
	Rename(oldpath, newpath string) error
	// Remove removes a file or an empty directory.
	Remove(name string) error
	// SyncDir makes the names in dir durable (fsync of the directory).
	SyncDir(dir string) error
}

// File is an open file of an FS.
type File interface {
	io.ReaderAt // reads past the end return io.EOF, like *os.File
	io.WriterAt // extends the file when writing past its end
	// Size returns the file's size.
	Size() (int64, error)
	// Truncate sets the file's size (ftruncate(2)).
	Truncate(size int64) error
	// Allocate makes [off, off+n) part of the file, extending its size,
	// so that later writes there cannot fail for lack of space
	// (fallocate(2)); what was not written reads as zeros. On failure the
	// file keeps its size.
	Allocate(off, n int64) error
	// Sync makes the file's contents and size durable (fdatasync(2)). It
	// does not make the file's name durable (see FS.SyncDir).
	Sync() error
	Close() error
}

// OSFS is the operating system's file system (the default FS): real
// files, fdatasync(2), fallocate(2) and flock(2).
type OSFS struct{}

var _ FS = OSFS{}

func (OSFS) MkdirAll(dir string) error { return os.MkdirAll(dir, 0o700) }

func (OSFS) Lock(name string) (io.Closer, error) {
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: flock %s: %v", ErrLocked, name, err)
		}
		return nil, &fs.PathError{Op: "flock", Path: name, Err: err}
	}
	return f, nil
}

func (OSFS) ReadDir(dir string) ([]fs.DirEntry, error) { return os.ReadDir(dir) }

func (OSFS) OpenFile(name string, flag int) (File, error) {
	f, err := os.OpenFile(name, flag, 0o600)
	if err != nil {
		return nil, err
	}
	of := &osFile{File: f}
	of.raw.init(f)
	return of, nil
}

func (OSFS) Rename(oldpath, newpath string) error { return os.Rename(oldpath, newpath) }

func (OSFS) Remove(name string) error { return os.Remove(name) }

func (OSFS) SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// osFile is a File over *os.File. The system calls os does not wrap run
// through the file's RawConn (Control), which holds a reference to the
// descriptor for the call: a call racing Close fails instead of reaching a
// file that reused the descriptor number.
type osFile struct {
	*os.File
	raw rawWriteState // WriteAt's (rawwrite_linux.go)
}

func (f *osFile) Size() (int64, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

// control runs call on the descriptor (see osFile).
func (f *osFile) control(op string, call func(fd int) error) error {
	rc := f.raw.rc // made at open
	if rc == nil {
		var err error
		if rc, err = f.SyscallConn(); err != nil {
			return err
		}
	}
	var callErr error
	if err := rc.Control(func(fd uintptr) { callErr = call(int(fd)) }); err != nil {
		return &fs.PathError{Op: op, Path: f.Name(), Err: err}
	}
	if callErr != nil {
		return &fs.PathError{Op: op, Path: f.Name(), Err: callErr}
	}
	return nil
}

func (f *osFile) Truncate(size int64) error {
	return f.control("ftruncate", func(fd int) error { return unix.Ftruncate(fd, size) })
}

func (f *osFile) Sync() error {
	return f.control("fdatasync", unix.Fdatasync)
}

func (f *osFile) Allocate(off, n int64) error {
	err := f.control("fallocate", func(fd int) error { return unix.Fallocate(fd, 0, off, n) })
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) {
		// No fallocate here: write the zeros ourselves.
		err = nil
		for p := off; p < off+n && err == nil; {
			k := min(int64(len(zeros)), off+n-p)
			var w int
			w, err = f.File.WriteAt(zeros[:k], p)
			p += int64(w)
		}
	}
	if err != nil {
		_ = f.Truncate(off)
		if pe := (*fs.PathError)(nil); errors.As(err, &pe) {
			err = pe.Err
		}
		return &fs.PathError{Op: "fallocate", Path: f.Name(), Err: err}
	}
	return nil
}

// readFile reads the whole file name of fsys.
func readFile(fsys FS, name string) ([]byte, error) {
	f, err := fsys.OpenFile(name, os.O_RDONLY)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	n, err := f.Size()
	if err != nil {
		return nil, err
	}
	b := make([]byte, n)
	if _, err := f.ReadAt(b, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return b, nil
}
