// Package forcefile is the append-only record file under the
// two-phase-commit baseline's logs (the coordinator's decisions, the
// participants' votes) and WormTX's participant segment logs, written so
// that forcing it costs what forcing a wormd's log costs: one device
// flush.
//
// Appending to a file and calling fsync (or fdatasync) changes the file's
// size, and the sync must then write the file's metadata as well (a
// journal commit on ext4 and XFS, the inode's blocks on an ext4 without a
// journal): a second write and flush. On this project's test machine (ext4
// on a virtio disk) a force of a 64-byte record took 147-151 µs that way
// and 100-101 µs on a File (BenchmarkForce, side by side). A File writes
// its records in place over zeros it wrote ahead of them (ZeroAhead bytes
// at a time), so that the size changes once per stretch of zeros, and
// forces with fdatasync. This is what worm/storage does for the wormds'
// logs (Options.ZeroAhead), so that the protocols' forces are compared on
// equal terms.
//
// On disk a File is a magic string naming its format, then records, each
//
//	n u32 | payload [n]byte | crc32c u32    (little endian; CRC32C over n and payload)
//
// then zeros. A record whose checksum fails ends the file: the zeros
// ahead (n = 0), or a record torn by a crash before its sync returned,
// which Open cuts off. (Without the checksum a torn record followed by
// zeros could read as a whole one.)
//
// It imports only the standard library and golang.org/x/sys/unix.
package forcefile

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// ZeroAhead is how many bytes of zeros a File keeps written past its
// records once they reach the zeros.
const ZeroAhead = 256 << 10

// MaxRecord is the largest payload a record may carry.
const MaxRecord = 1 << 20

// ErrFormat is returned by Open for a file that does not start with the
// magic string asked for.
var ErrFormat = errors.New("forcefile: not a file of this format")

var (
	zeros  [64 << 10]byte
	crcTab = crc32.MakeTable(crc32.Castagnoli)
)

// File is an append-only record file forced with fdatasync. Its methods
// are not safe for concurrent use; the logs above serialise them.
type File struct {
	f        *os.File
	path     string
	magic    string
	end      int64 // offset of the next record
	zeroed   int64 // the file's size: zeros written up to here
	volatile bool
}

// Open opens (creating) the file at path, whose content starts with magic,
// and returns it with the payloads of its records, in order. A torn last
// record is cut off. With volatile set, Sync does nothing. A non-empty
// file that does not start with magic is refused with ErrFormat.
func Open(path, magic string, volatile bool) (*File, [][]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, nil, err
	}
	fresh := len(bytes.TrimRight(b, "\x00")) == 0
	if !fresh && !bytes.HasPrefix(b, []byte(magic)) {
		return nil, nil, fmt.Errorf("%w: %s does not start with %q", ErrFormat, path, magic)
	}
	var recs [][]byte
	end := len(magic)
	if !fresh {
		recs, end = scan(b, len(magic))
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, nil, err
	}
	ff := &File{f: f, path: path, magic: magic, end: int64(end), zeroed: int64(end), volatile: volatile}
	err = f.Truncate(int64(end))
	if err == nil && fresh {
		// A new file: its magic and its name are made durable now, so
		// that a crash never leaves a log that Open refuses.
		_, err = f.WriteAt([]byte(magic), 0)
		if err == nil && !volatile {
			err = ff.Sync()
		}
		if err == nil && !volatile {
			err = syncDir(filepath.Dir(path))
		}
	}
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return ff, recs, nil
}

// scan returns the payloads of the records in b from off and the offset
// after the last whole one.
func scan(b []byte, off int) ([][]byte, int) {
	var recs [][]byte
	for off+8 <= len(b) {
		n := int(binary.LittleEndian.Uint32(b[off:]))
		if n == 0 || n > MaxRecord || off+4+n+4 > len(b) {
			break
		}
		body := b[off : off+4+n]
		if crc32.Checksum(body, crcTab) != binary.LittleEndian.Uint32(b[off+4+n:]) {
			break
		}
		recs = append(recs, body[4:])
		off += 4 + n + 4
	}
	return recs, off
}

// AppendRecord appends to frames the record carrying payload (which must
// not be empty nor longer than MaxRecord), ready for Write.
func AppendRecord(frames, payload []byte) []byte {
	if len(payload) == 0 || len(payload) > MaxRecord {
		panic(fmt.Sprintf("forcefile: record of %d bytes", len(payload)))
	}
	start := len(frames)
	frames = binary.LittleEndian.AppendUint32(frames, uint32(len(payload)))
	frames = append(frames, payload...)
	return binary.LittleEndian.AppendUint32(frames, crc32.Checksum(frames[start:], crcTab))
}

// Write appends frames (records made by AppendRecord) after the last
// record, extending the zeros ahead of the records when they reach past
// them. They are durable once Sync returns.
func (f *File) Write(frames []byte) error {
	if _, err := f.f.WriteAt(frames, f.end); err != nil {
		return err
	}
	f.end += int64(len(frames))
	if f.volatile || f.end <= f.zeroed {
		return nil
	}
	target := (f.end+4095)/4096*4096 + ZeroAhead
	for off := f.end; off < target; {
		n, err := f.f.WriteAt(zeros[:min(int64(len(zeros)), target-off)], off)
		if err != nil {
			// The zeros only make later syncs cheaper (a full disk, say):
			// the records are written, and the next Write tries again.
			return nil
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

// Records reads the file again and returns the payloads of its records.
func (f *File) Records() ([][]byte, error) {
	b, err := os.ReadFile(f.path)
	if err != nil {
		return nil, err
	}
	recs, _ := scan(b[:min(int64(len(b)), f.end)], len(f.magic))
	return recs, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Close closes the file.
func (f *File) Close() error { return f.f.Close() }
