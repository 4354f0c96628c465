package chain

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/wire"
)

// The chain protocol rides on worm/wire: its handshake (version, cluster
// key, limits) and its frame layout (u32 length | u8 type | u64 id |
// payload), read with wire.Reader. Only the payloads are this package's.
// Both hellos set helloChain, so that neither a wormd client nor a chain
// client gets far with the other kind of server; the link from one
// replica to its successor sets helloLink as well.
const (
	helloChain uint32 = 1 << 8
	helloLink  uint32 = 1 << 9
)

// Operations (the first byte of every payload).
const (
	opInvalid uint8 = iota
	// opHello: the first request on a client connection: registers the
	// client's session (Session) for write replies; the response's Text
	// describes the chain as this replica knows it.
	opHello
	// opSeal: seal register (Seg, Off) at Token.
	opSeal
	// opSealSeg: seal segment Seg at Token.
	opSealSeg
	// opWrite: write Regs to consecutive registers from (Seg, Off) with
	// Token; travels head to tail; the replica that settles it answers on
	// the client's session.
	opWrite
	// opRead: report register (Seg, Off).
	opRead
	// opTrim: trim segment Seg.
	opTrim
	// opListen / opUnlisten: subscribe this connection to notifications of
	// writes in Seg.
	opListen
	opUnlisten
	// opStatus: the replica's status document (JSON in Text).
	opStatus
	// opNotify: push only: registers [Off, Off+Count) of Seg were written
	// at this replica (Count 0: notifications were dropped).
	opNotify
	opCount
)

var opNames = [...]string{"invalid", "hello", "seal", "seal-seg", "write", "read", "trim", "listen", "unlisten", "status", "notify"}

func opName(op uint8) string {
	if op < opCount {
		return opNames[op]
	}
	return fmt.Sprintf("op(%d)", op)
}

// maxChain bounds the chain length: broadcast request ids carry the
// replica index in their low bits.
const (
	maxChain  = 16
	slotBits  = 4
	slotMask  = 1<<slotBits - 1
	reqFixed  = 1 + 8 + 4 + 16 + 8 + 4 // op, seg, off, token, session, n
	regFixed  = 1 + 1 + 4              // status, stored, value length
	respFixed = 1 + 1 + 16 + 1 + 4 + 4 + 4 + 4
	entFixed  = 4 + 1 + 4
	pushSize  = 1 + 8 + 4 + 4
)

// ErrMalformed reports a payload this package cannot decode; it matches
// wire.ErrMalformed too.
var ErrMalformed = fmt.Errorf("chain: %w", wire.ErrMalformed)

// regIn is one register of a write request.
type regIn struct {
	in    WriteIn
	value []byte // aliases the payload when decoded
}

// request is a decoded request payload. Values alias the frame.
type request struct {
	op      uint8
	seg     uint64
	off     uint32
	tok     worm.Ballot
	session uint64
	regs    []regIn
}

// entry is one register of a response: a write verdict, or a written
// register of a segment seal.
type entry struct {
	off    uint32
	status Status
	value  []byte
}

// response is a decoded response payload.
type response struct {
	op        uint8
	status    Status
	promised  worm.Ballot
	has       bool // value holds (seal, read)
	allocated bool // read: the metadata register holds a value here
	value     []byte
	entries   []entry
	contended []uint32
	text      string
}

const (
	flagHas       = 1
	flagAllocated = 2
)

var le = binary.LittleEndian

func appendHeader(dst []byte, t wire.FrameType, id uint64) []byte {
	dst = le.AppendUint32(dst, 0) // patched by finishFrame
	dst = append(dst, byte(t))
	return le.AppendUint64(dst, id)
}

func finishFrame(dst []byte, start int) []byte {
	n := len(dst) - start - 4
	if n > math.MaxUint32 {
		panic("chain: frame longer than 4 GiB")
	}
	le.PutUint32(dst[start:], uint32(n))
	return dst
}

func appendBallot(dst []byte, b worm.Ballot) []byte {
	dst = le.AppendUint64(dst, b.Round)
	return le.AppendUint64(dst, b.Node)
}

func appendBytes(dst, v []byte) []byte {
	dst = le.AppendUint32(dst, uint32(len(v)))
	return append(dst, v...)
}

// appendRequest appends a request frame with id.
func appendRequest(dst []byte, id uint64, r *request) []byte {
	start := len(dst)
	dst = appendHeader(dst, wire.FrameRequest, id)
	dst = append(dst, r.op)
	dst = le.AppendUint64(dst, r.seg)
	dst = le.AppendUint32(dst, r.off)
	dst = appendBallot(dst, r.tok)
	dst = le.AppendUint64(dst, r.session)
	dst = le.AppendUint32(dst, uint32(len(r.regs)))
	for i := range r.regs {
		g := &r.regs[i]
		stored := byte(0)
		if g.in.Stored {
			stored = 1
		}
		dst = append(dst, byte(g.in.Status), stored)
		if g.in.Status == StatusOK {
			dst = appendBytes(dst, g.value)
		} else {
			dst = le.AppendUint32(dst, 0) // only registers still to apply carry their value
		}
	}
	return finishFrame(dst, start)
}

// appendResponse appends a response frame (or, with t FramePush, a push).
func appendResponse(dst []byte, t wire.FrameType, id uint64, r *response) []byte {
	start := len(dst)
	dst = appendHeader(dst, t, id)
	dst = append(dst, r.op, byte(r.status))
	dst = appendBallot(dst, r.promised)
	var fl byte
	if r.has {
		fl |= flagHas
	}
	if r.allocated {
		fl |= flagAllocated
	}
	dst = append(dst, fl)
	dst = appendBytes(dst, r.value)
	dst = le.AppendUint32(dst, uint32(len(r.entries)))
	for i := range r.entries {
		e := &r.entries[i]
		dst = le.AppendUint32(dst, e.off)
		dst = append(dst, byte(e.status))
		dst = appendBytes(dst, e.value)
	}
	dst = le.AppendUint32(dst, uint32(len(r.contended)))
	for _, off := range r.contended {
		dst = le.AppendUint32(dst, off)
	}
	dst = appendBytes(dst, []byte(r.text))
	return finishFrame(dst, start)
}

// appendNotify appends a push frame announcing writes to [off, off+count)
// of seg.
func appendNotify(dst []byte, seg uint64, off, count uint32) []byte {
	start := len(dst)
	dst = appendHeader(dst, wire.FramePush, 0)
	dst = append(dst, opNotify)
	dst = le.AppendUint64(dst, seg)
	dst = le.AppendUint32(dst, off)
	dst = le.AppendUint32(dst, count)
	return finishFrame(dst, start)
}

// decoder reads little-endian fields; a short read sets bad.
type decoder struct {
	b   []byte
	bad bool
}

func (d *decoder) u8() uint8 {
	if len(d.b) < 1 {
		d.bad, d.b = true, nil
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *decoder) u32() uint32 {
	if len(d.b) < 4 {
		d.bad, d.b = true, nil
		return 0
	}
	v := le.Uint32(d.b)
	d.b = d.b[4:]
	return v
}

func (d *decoder) u64() uint64 {
	if len(d.b) < 8 {
		d.bad, d.b = true, nil
		return 0
	}
	v := le.Uint64(d.b)
	d.b = d.b[8:]
	return v
}

func (d *decoder) ballot() worm.Ballot { return worm.Ballot{Round: d.u64(), Node: d.u64()} }

// bytes returns the next length-prefixed bytes (aliasing the payload),
// refusing lengths over max.
func (d *decoder) bytes(max int) []byte {
	n := d.u32()
	if d.bad || uint64(n) > uint64(len(d.b)) || int64(n) > int64(max) {
		d.bad, d.b = true, nil
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

// count reads a count of items of at least min bytes each, refusing one
// the remaining bytes cannot hold (before anything is allocated for it).
func (d *decoder) count(min int) int {
	n := d.u32()
	if d.bad || uint64(n)*uint64(min) > uint64(len(d.b)) {
		d.bad, d.b = true, nil
		return 0
	}
	return int(n)
}

var errTruncated = errors.New("truncated or inconsistent payload")

func malformed(what string, err error) error {
	return fmt.Errorf("%w: %s: %v", ErrMalformed, what, err)
}

// decodeRequest decodes a request payload into r, reusing r.regs; values
// alias payload.
func decodeRequest(payload []byte, maxValue int, r *request) error {
	d := decoder{b: payload}
	r.op = d.u8()
	r.seg = d.u64()
	r.off = d.u32()
	r.tok = d.ballot()
	r.session = d.u64()
	n := d.count(regFixed)
	r.regs = r.regs[:0]
	for i := 0; i < n && !d.bad; i++ {
		st := Status(d.u8())
		stored := d.u8()
		v := d.bytes(maxValue)
		if st >= statusCount || stored > 1 {
			return malformed("request", fmt.Errorf("register %d: status %d, stored %d", i, st, stored))
		}
		r.regs = append(r.regs, regIn{in: WriteIn{Status: st, Stored: stored == 1}, value: v})
	}
	switch {
	case d.bad:
		return malformed("request", errTruncated)
	case len(d.b) != 0:
		return malformed("request", fmt.Errorf("%d trailing bytes", len(d.b)))
	case r.op == opInvalid || r.op >= opCount || r.op == opNotify:
		return malformed("request", fmt.Errorf("operation %d", r.op))
	}
	return nil
}

// decodeResponse decodes a response payload into r, reusing its slices;
// values alias payload.
func decodeResponse(payload []byte, maxValue int, r *response) error {
	d := decoder{b: payload}
	r.op = d.u8()
	r.status = Status(d.u8())
	r.promised = d.ballot()
	fl := d.u8()
	r.has, r.allocated = fl&flagHas != 0, fl&flagAllocated != 0
	r.value = d.bytes(maxValue)
	n := d.count(entFixed)
	r.entries = r.entries[:0]
	for i := 0; i < n && !d.bad; i++ {
		e := entry{off: d.u32(), status: Status(d.u8())}
		e.value = d.bytes(maxValue)
		if e.status >= statusCount {
			return malformed("response", fmt.Errorf("entry %d: status %d", i, e.status))
		}
		r.entries = append(r.entries, e)
	}
	m := d.count(4)
	r.contended = r.contended[:0]
	for i := 0; i < m && !d.bad; i++ {
		r.contended = append(r.contended, d.u32())
	}
	r.text = string(d.bytes(1 << 20))
	switch {
	case d.bad:
		return malformed("response", errTruncated)
	case len(d.b) != 0:
		return malformed("response", fmt.Errorf("%d trailing bytes", len(d.b)))
	case r.status >= statusCount || fl&^(flagHas|flagAllocated) != 0:
		return malformed("response", fmt.Errorf("status %d, flags %#x", r.status, fl))
	case r.op == opInvalid || r.op >= opCount:
		return malformed("response", fmt.Errorf("operation %d", r.op))
	}
	return nil
}

// decodeNotify decodes a push payload.
func decodeNotify(payload []byte) (seg uint64, off, count uint32, err error) {
	if len(payload) != pushSize || payload[0] != opNotify {
		return 0, 0, 0, malformed("push", fmt.Errorf("%d bytes, operation %d", len(payload), firstByte(payload)))
	}
	d := decoder{b: payload[1:]}
	return d.u64(), d.u32(), d.u32(), nil
}

func firstByte(b []byte) int {
	if len(b) == 0 {
		return -1
	}
	return int(b[0])
}

// encodeInfo encodes what Alloc writes to a segment's metadata register:
// uvarint owner length, owner, meta.
func encodeInfo(owner string, meta []byte) []byte {
	b := make([]byte, 0, binary.MaxVarintLen64+len(owner)+len(meta))
	b = binary.AppendUvarint(b, uint64(len(owner)))
	b = append(b, owner...)
	return append(b, meta...)
}

func decodeInfo(v []byte, caller string) (worm.SegmentInfo, error) {
	n, k := binary.Uvarint(v)
	if k <= 0 || n > uint64(len(v)-k) {
		return worm.SegmentInfo{}, fmt.Errorf("%w: malformed segment metadata (%d bytes)", worm.ErrInvalid, len(v))
	}
	owner := string(v[k : k+int(n)])
	meta := append([]byte{}, v[k+int(n):]...)
	return worm.SegmentInfo{Owner: owner, Meta: meta, Won: owner == caller}, nil
}
