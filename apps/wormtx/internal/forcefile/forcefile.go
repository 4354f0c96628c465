// Package forcefile is the append-only file under the two-phase-commit
// baseline's logs (the coordinator's decisions, the participants' votes),
// written so that forcing it costs what forcing a wormd's log costs: one
// device flush.
//
// Appending to a file and calling fsync (or fdatasync) changes the file's
// size, and on ext4 and XFS that makes the sync commit the file system's
// journal as well: a second flush. On this project's test machine (ext4
// on a virtio disk) a force of a 64-byte record took 147-151 µs that way
// and 100-101 µs on a File (BenchmarkForce, side by side). A File writes its records in place over
// zeros it wrote ahead of them (ZeroAhead bytes at a time), so that the
// size changes once per stretch of zeros, and forces with fdatasync. This
// is what worm/storage does for the wormds' logs (Options.ZeroAhead), so
// that the two protocols' forces are compared on equal terms.
//
// The records' format is the caller's: Open takes the offset after the
// last record, which the caller finds by reading the file (its records
// are followed by zeros, so a format whose records never start with a
// zero byte, or never hold an all-zero field, can tell where they end).
//
// It imports only the standard library and golang.org/x/sys/unix.
package forcefile

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// ZeroAhead is how many bytes of zeros a File keeps written past its
// records once they reach the zeros.
const ZeroAhead = 256 << 10

var zeros [64 << 10]byte

// File is an append-only file forced with fdatasync. Its methods are not
// safe for concurrent use; the logs above serialise them.
type File struct {
	f        *os.File
	end      int64 // offset of the next record
	zeroed   int64 // the file's size: zeros written up to here
	volatile bool
}

// Open opens (creating) the file at path for records appended from end,
// the offset after its last record, and cuts whatever follows end (a
// torn record, zeros). With volatile set, Sync does nothing.
func Open(path string, end int64, volatile bool) (*File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := f.Truncate(end); err != nil {
		f.Close()
		return nil, err
	}
	return &File{f: f, end: end, zeroed: end, volatile: volatile}, nil
}

// Write appends p at the end of the records, extending the zeros ahead of
// them when p reaches past them. It is durable once Sync returns.
func (f *File) Write(p []byte) error {
	if _, err := f.f.WriteAt(p, f.end); err != nil {
		return err
	}
	f.end += int64(len(p))
	if f.volatile || f.end <= f.zeroed {
		return nil
	}
	target := (f.end+4095)/4096*4096 + ZeroAhead
	for off := f.end; off < target; {
		n, err := f.f.WriteAt(zeros[:min(int64(len(zeros)), target-off)], off)
		if err != nil {
			return fmt.Errorf("forcefile: writing zeros ahead: %w", err)
		}
		off += int64(n)
	}
	f.zeroed = target
	return nil
}

// Sync makes every Write before it durable (fdatasync(2)).
func (f *File) Sync() error {
	if f.volatile {
		return nil
	}
	return unix.Fdatasync(int(f.f.Fd()))
}

// End returns the offset after the last record written.
func (f *File) End() int64 { return f.end }

// Close closes the file.
func (f *File) Close() error { return f.f.Close() }
