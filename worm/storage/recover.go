package storage

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/wormspace/wormspace/worm/paxos"
)

// scanner reads a generation file through a sliding window.
type scanner struct {
	f    File
	size int64
	buf  []byte
	off  int64 // file offset of buf[0]
}

const scanWindow = 1 << 20

// at returns up to n bytes at off (fewer at the end of the file). The
// slice is valid until the next call.
func (s *scanner) at(off int64, n int) ([]byte, error) {
	if off >= s.size {
		return nil, nil
	}
	if off+int64(n) > s.size {
		n = int(s.size - off)
	}
	if off >= s.off && off+int64(n) <= s.off+int64(len(s.buf)) {
		return s.buf[off-s.off : off-s.off+int64(n)], nil
	}
	want := max(n, scanWindow)
	if off+int64(want) > s.size {
		want = int(s.size - off)
	}
	if cap(s.buf) < want {
		s.buf = make([]byte, want)
	}
	s.buf = s.buf[:want]
	if _, err := s.f.ReadAt(s.buf, off); err != nil && err != io.EOF {
		s.buf = s.buf[:0]
		return nil, err
	}
	s.off = off
	return s.buf[:n], nil
}

var zeros [64 << 10]byte

// allZero reports whether [from, size) holds only zero bytes.
func (s *scanner) allZero(from int64) (bool, error) {
	for off := from; off < s.size; {
		w, err := s.at(off, len(zeros))
		if err != nil {
			return false, err
		}
		if !bytes.Equal(w, zeros[:len(w)]) {
			return false, nil
		}
		off += int64(len(w))
	}
	return true, nil
}

// findCommit looks for a valid commit frame of batch >= minBatch starting
// at any byte offset in [from, size). It returns its offset or -1.
func (s *scanner) findCommit(from int64, minBatch uint64) (int64, error) {
	var pat [5]byte
	binary.LittleEndian.PutUint32(pat[:], commitPayload)
	pat[4] = kindCommit
	for pos := from; pos+commitSize <= s.size; {
		w, err := s.at(pos, scanWindow)
		if err != nil {
			return -1, err
		}
		if len(w) < commitSize {
			break
		}
		for i := 0; i+commitSize <= len(w); {
			j := bytes.Index(w[i+4:], pat[:])
			if j < 0 {
				break
			}
			start := i + j
			if start+commitSize > len(w) {
				break
			}
			if p, _, st := decodeFrame(w[start : start+commitSize]); st == frameOK {
				if c, ok := decodeCommit(p); ok && c.batch >= minBatch {
					return pos + int64(start), nil
				}
			}
			i = start + 1
		}
		pos += int64(len(w) - commitSize + 1)
	}
	return -1, nil
}

// recovered is the result of replaying one generation file.
type recovered struct {
	acc      *paxos.Acceptor
	hdr      genHeader
	size     int64  // file size
	tail     int64  // file offset after the last valid frame
	batch    uint64 // batch number of the last valid commit
	complete bool   // the snapshot commit (batch 1) is valid
	pending  bool   // valid records follow the last commit
	garbage  bool   // non-zero bytes follow tail: a torn write to cut
	torn     string // why the scan stopped at tail, when it was not clean
	records  int
}

// recoverGen replays generation num of dir into a fresh acceptor. It
// returns a *CorruptError when the file holds damage a crash cannot
// explain; see the package documentation for the argument.
func recoverGen(fsys FS, dir string, num uint64, opts *Options) (*recovered, error) {
	name := genName(num)
	f, err := fsys.OpenFile(filepath.Join(dir, name), os.O_RDONLY)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	size, err := f.Size()
	if err != nil {
		return nil, err
	}
	s := &scanner{f: f, size: size}
	r := &recovered{acc: paxos.NewAcceptor(opts.SegmentSize), size: s.size}
	var off int64
	for {
		h, err := s.at(off, frameHeader)
		if err != nil {
			return nil, fmt.Errorf("storage: read %s: %w", name, err)
		}
		if len(h) == 0 {
			break
		}
		if len(h) < frameHeader {
			r.torn = "frame header runs past the end of the file"
			break
		}
		n := binary.LittleEndian.Uint32(h[4:])
		if n == 0 || n > maxPayload {
			r.torn = fmt.Sprintf("bad frame length %d", n)
			break
		}
		b, err := s.at(off, frameHeader+int(n))
		if err != nil {
			return nil, fmt.Errorf("storage: read %s: %w", name, err)
		}
		p, size, fst := decodeFrame(b)
		if fst == frameShort {
			r.torn = "frame runs past the end of the file"
			break
		}
		if fst == frameBad {
			r.torn = "checksum mismatch"
			break
		}
		// From here the frame is intact: any inconsistency is damage
		// (or a bug), never a crash.
		if off == 0 {
			hdr, ok := decodeGenHeader(p)
			if !ok {
				return nil, corrupt(name, off, "first frame is not a generation header")
			}
			if hdr.version != FormatVersion {
				return nil, fmt.Errorf("%w: %s has version %d, this build reads %d", ErrFormat, name, hdr.version, FormatVersion)
			}
			if hdr.gen != num || hdr.cluster != opts.Cluster || hdr.segSize != opts.SegmentSize {
				return nil, fmt.Errorf("%w: %s is generation %d of cluster %q (segment size %d), want generation %d of cluster %q (segment size %d)",
					ErrForeign, name, hdr.gen, hdr.cluster, hdr.segSize, num, opts.Cluster, opts.SegmentSize)
			}
			r.hdr = hdr
			off += int64(size)
			continue
		}
		switch k := p[0]; {
		case k == kindCommit:
			c, ok := decodeCommit(p)
			if !ok {
				return nil, corrupt(name, off, "malformed commit frame")
			}
			if c.batch != r.batch+1 {
				return nil, corrupt(name, off, "commit of batch %d follows batch %d", c.batch, r.batch)
			}
			if want := r.hdr.base + uint64(off) + uint64(size); c.end != want {
				return nil, corrupt(name, off, "commit of batch %d records position %d, its place is %d", c.batch, c.end, want)
			}
			if (c.batch == 1) != (c.flags&commitSnapshot != 0) {
				return nil, corrupt(name, off, "commit of batch %d has flags %#x", c.batch, c.flags)
			}
			r.batch = c.batch
			r.complete = true
			r.pending = false
		case paxos.RecordKind(k).Valid():
			rec, ok := decodeRecord(p)
			if !ok {
				return nil, corrupt(name, off, "malformed %v record", paxos.RecordKind(k))
			}
			if err := r.acc.Apply(rec); err != nil {
				return nil, corrupt(name, off, "%v", err)
			}
			r.records++
			r.pending = true
		default:
			return nil, corrupt(name, off, "unknown frame kind %#x", k)
		}
		off += int64(size)
	}
	r.tail = off
	if r.torn == "" {
		return r, nil
	}
	zero, err := s.allZero(off)
	if err != nil {
		return nil, fmt.Errorf("storage: read %s: %w", name, err)
	}
	if zero {
		// The preallocated, never written tail: the clean end.
		r.torn = ""
		return r, nil
	}
	// Bytes follow the last intact frame. Syncs are serialised: batch
	// b+1 is written only after batch b's fsync returned. A torn write
	// can therefore only damage the batch after the last intact commit
	// (r.batch+1); an intact commit of any later batch proves that batch
	// r.batch+1 was synced, so the damage is corruption.
	at, err := s.findCommit(off+1, r.batch+2)
	if err != nil {
		return nil, fmt.Errorf("storage: read %s: %w", name, err)
	}
	if at >= 0 {
		return nil, corrupt(name, off, "%s, and a later batch committed at offset %d proves this data was synced", r.torn, at)
	}
	r.garbage = true
	return r, nil
}
