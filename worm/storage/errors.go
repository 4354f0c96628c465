package storage

import (
	"errors"
	"fmt"
)

var (
	// ErrNoSpace: the bytes cannot be stored (the file system is full, or
	// Options.MaxBytes would be exceeded). Nothing changed.
	ErrNoSpace = errors.New("storage: no space")
	// ErrLocked: another process (or another Log in this process) holds
	// the directory.
	ErrLocked = errors.New("storage: data directory is in use")
	// ErrForeign: the directory is not a wormspace data directory for
	// these options: another cluster, another segment size, or files this
	// package did not write.
	ErrForeign = errors.New("storage: foreign data directory")
	// ErrFormat: the directory was written by an unsupported format
	// version.
	ErrFormat = errors.New("storage: unsupported format version")
	// ErrCorrupt: stored data failed its checksum or structure checks in
	// a place a crash cannot explain. Errors carry a *CorruptError.
	ErrCorrupt = errors.New("storage: corrupt data")
	// ErrFailed: an earlier write or sync failed; the log is unusable and
	// must be reopened (which recovers the durable prefix).
	ErrFailed = errors.New("storage: log failed")
	// ErrClosed: the log was closed.
	ErrClosed = errors.New("storage: log closed")
	// ErrCompactPending: a compaction's new generation is not durable yet;
	// Sync first.
	ErrCompactPending = errors.New("storage: previous compaction not yet synced")
	// ErrInvalid: bad options or a record that cannot be encoded.
	ErrInvalid = errors.New("storage: invalid argument")
)

// CorruptError locates corrupt data: File (base name inside the data
// directory) and the byte Offset of the first bad frame. errors.Is(err,
// ErrCorrupt).
type CorruptError struct {
	File   string
	Offset int64
	Reason string
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("storage: %s: corrupt at offset %d: %s", e.File, e.Offset, e.Reason)
}

// Is makes errors.Is(err, ErrCorrupt) true.
func (e *CorruptError) Is(target error) bool { return target == ErrCorrupt }

func corrupt(file string, off int64, format string, args ...any) error {
	return &CorruptError{File: file, Offset: off, Reason: fmt.Sprintf(format, args...)}
}
