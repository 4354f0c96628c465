package wormpaxos

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"slices"
)

func randN(n int64) int64 { return rand.Int64N(n) }

// Register values of the log: magic 'W', version 1, a kind byte, then for
// a batch: uvarint count and per command uvarint-prefixed client, uvarint
// seq, uvarint-prefixed op.
const (
	magic       = 'W'
	version     = 1
	kindNoop    = 0
	kindBatch   = 1
	kindSnapHdr = 2
)

// noop is the filler value of holes.
var noop = []byte{magic, version, kindNoop}

// isNoop reports whether v is a log no-op.
func isNoop(v []byte) bool {
	return len(v) >= 3 && v[0] == magic && v[1] == version && v[2] == kindNoop
}

func appendBytes(b, v []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

func encodeBatch(cmds []Command) []byte {
	n := 8
	for _, c := range cmds {
		n += len(c.Client) + len(c.Op) + 30
	}
	b := make([]byte, 0, n)
	b = append(b, magic, version, kindBatch)
	b = binary.AppendUvarint(b, uint64(len(cmds)))
	for _, c := range cmds {
		b = appendBytes(b, []byte(c.Client))
		b = binary.AppendUvarint(b, c.Seq)
		b = appendBytes(b, c.Op)
	}
	return b
}

// cmdSize is an upper bound of cmd's encoded size.
func cmdSize(c Command) int { return len(c.Client) + len(c.Op) + 3*binary.MaxVarintLen64 }

// encodeRequests encodes the commands of qs as one batch, in one
// allocation.
func encodeRequests(qs []*request) []byte {
	n := 3 + binary.MaxVarintLen64
	for _, q := range qs {
		n += cmdSize(q.cmd)
	}
	b := make([]byte, 0, n)
	b = append(b, magic, version, kindBatch)
	b = binary.AppendUvarint(b, uint64(len(qs)))
	for _, q := range qs {
		b = binary.AppendUvarint(b, uint64(len(q.cmd.Client)))
		b = append(b, q.cmd.Client...)
		b = binary.AppendUvarint(b, q.cmd.Seq)
		b = appendBytes(b, q.cmd.Op)
	}
	return b
}

// cmdRef is a decoded command whose client and op alias the register
// value they were decoded from.
type cmdRef struct {
	client []byte
	seq    uint64
	op     []byte
}

// decodeRefs decodes a log register into buf (reused): no commands for a
// no-op. It allocates only when buf must grow.
func decodeRefs(v []byte, buf []cmdRef) ([]cmdRef, error) {
	if len(v) < 3 || v[0] != magic || v[1] != version {
		return buf, fmt.Errorf("%w: bad header", ErrCorrupt)
	}
	switch v[2] {
	case kindNoop:
		return buf, nil
	case kindBatch:
	default:
		return buf, fmt.Errorf("%w: kind %d", ErrCorrupt, v[2])
	}
	r := reader{b: v[3:]}
	n := r.uvarint()
	if n > uint64(len(v)) {
		return buf, fmt.Errorf("%w: count %d", ErrCorrupt, n)
	}
	buf = slices.Grow(buf, int(n))
	for range n {
		c := cmdRef{client: r.bytes()}
		c.seq = r.uvarint()
		c.op = r.bytes()
		buf = append(buf, c)
	}
	if r.err == nil && len(r.b) != 0 {
		r.err = fmt.Errorf("%w: %d trailing bytes", ErrCorrupt, len(r.b))
	}
	if r.err != nil {
		return buf[:0], r.err
	}
	return buf, nil
}

type reader struct {
	b   []byte
	err error
}

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = fmt.Errorf("%w: bad varint", ErrCorrupt)
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) bytes() []byte {
	n := r.uvarint()
	if r.err != nil {
		return nil
	}
	if n > uint64(len(r.b)) {
		r.err = fmt.Errorf("%w: truncated", ErrCorrupt)
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

// decodeEntry decodes a log register: nil commands for a no-op.
func decodeEntry(v []byte) ([]Command, error) {
	refs, err := decodeRefs(v, nil)
	if err != nil {
		return nil, err
	}
	if v[2] == kindNoop {
		return nil, nil
	}
	cmds := make([]Command, len(refs))
	for i, c := range refs {
		cmds[i] = Command{Client: string(c.client), Seq: c.seq, Op: c.op}
	}
	return cmds, nil
}

// session is the deduplication record of one client.
type session struct {
	Seq    uint64
	Result []byte
}

// snapshot is the replica state at a log position.
type snapshot struct {
	Index    uint64 // first log position not covered
	Sessions map[string]session
	State    []byte
}

func encodeSnapshot(s snapshot) []byte {
	b := []byte{magic, version}
	b = binary.AppendUvarint(b, s.Index)
	keys := make([]string, 0, len(s.Sessions))
	for k := range s.Sessions {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b = binary.AppendUvarint(b, uint64(len(keys)))
	for _, k := range keys {
		b = appendBytes(b, []byte(k))
		b = binary.AppendUvarint(b, s.Sessions[k].Seq)
		b = appendBytes(b, s.Sessions[k].Result)
	}
	return appendBytes(b, s.State)
}

func decodeSnapshot(b []byte) (snapshot, error) {
	if len(b) < 2 || b[0] != magic || b[1] != version {
		return snapshot{}, fmt.Errorf("%w: snapshot header", ErrCorrupt)
	}
	r := &reader{b: b[2:]}
	s := snapshot{Index: r.uvarint(), Sessions: map[string]session{}}
	n := r.uvarint()
	if n > uint64(len(b)) {
		return snapshot{}, fmt.Errorf("%w: snapshot sessions", ErrCorrupt)
	}
	for range n {
		k := string(r.bytes())
		seq := r.uvarint()
		s.Sessions[k] = session{Seq: seq, Result: slices.Clone(r.bytes())}
	}
	s.State = slices.Clone(r.bytes())
	return s, r.err
}

// snapHeader is register 0 of a snapshot segment, written last.
type snapHeader struct {
	Index  uint64
	Chunks uint64
	Size   uint64
	CRC    uint32
}

func encodeSnapHeader(h snapHeader) []byte {
	b := []byte{magic, version, kindSnapHdr}
	b = binary.AppendUvarint(b, h.Index)
	b = binary.AppendUvarint(b, h.Chunks)
	b = binary.AppendUvarint(b, h.Size)
	return binary.AppendUvarint(b, uint64(h.CRC))
}

func decodeSnapHeader(b []byte) (snapHeader, error) {
	if len(b) < 3 || b[0] != magic || b[1] != version || b[2] != kindSnapHdr {
		return snapHeader{}, fmt.Errorf("%w: snapshot segment header", ErrCorrupt)
	}
	r := &reader{b: b[3:]}
	h := snapHeader{Index: r.uvarint(), Chunks: r.uvarint(), Size: r.uvarint(), CRC: uint32(r.uvarint())}
	return h, r.err
}

func checksum(b []byte) uint32 { return crc32.ChecksumIEEE(b) }
