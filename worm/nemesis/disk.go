package nemesis

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// tmpfsSize is the size of the tmpfs that holds wormd 1's data directory:
// wormd preallocates its log in 4 MiB chunks, so it needs one chunk to
// start and room to grow during a long run (the big values of the disk
// faults land on it too; bigBudget caps them) before the filler takes the
// rest.
const tmpfsSize = 128 << 20

// bigBudget caps the bytes of large values the randomized disk faults
// write, so that wormd 1's own data never fills its tmpfs.
const bigBudget = 48 << 20

// smallDisk is a tmpfs mounted on one wormd's data directory, and a filler
// file that takes its free space.
type smallDisk struct {
	dir    string // the mount point (the wormd's data directory)
	filler string // outside the wormd's directory would not share the fs
}

// mountSmallDisk mounts a tmpfs of tmpfsSize bytes on mnt (created) and
// makes dataDir a symlink to a directory inside it.
func mountSmallDisk(mnt, dataDir string) (*smallDisk, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("needs root to mount a tmpfs")
	}
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return nil, err
	}
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0755", tmpfsSize)); err != nil {
		return nil, fmt.Errorf("mount tmpfs on %s: %w", mnt, err)
	}
	d := &smallDisk{dir: mnt, filler: filepath.Join(mnt, "filler")}
	// The wormd's data directory is a symlink into the tmpfs, so that the
	// filler (beside it, not inside it: wormd refuses foreign files in its
	// directory) shares the file system.
	inner := filepath.Join(mnt, "data")
	if err := os.MkdirAll(inner, 0o755); err != nil {
		d.unmount()
		return nil, err
	}
	if err := os.Symlink(inner, dataDir); err != nil {
		d.unmount()
		return nil, err
	}
	return d, nil
}

// fill writes the filler until the file system is full; it returns the
// bytes written.
func (d *smallDisk) fill() (int64, error) {
	f, err := os.OpenFile(d.filler, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	var n int64
	for {
		k, err := f.Write(buf)
		n += int64(k)
		if err != nil {
			if errors.Is(err, unix.ENOSPC) {
				return n, nil
			}
			return n, err
		}
	}
}

// free removes the filler.
func (d *smallDisk) free() error {
	err := os.Remove(d.filler)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// avail returns the free bytes of the file system.
func (d *smallDisk) avail() int64 {
	var st unix.Statfs_t
	if unix.Statfs(d.dir, &st) != nil {
		return -1
	}
	return int64(st.Bavail) * int64(st.Bsize)
}

func (d *smallDisk) unmount() error {
	return unix.Unmount(d.dir, unix.MNT_DETACH)
}
