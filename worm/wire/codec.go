package wire

import (
	"encoding/binary"
	"math"
	"slices"

	"github.com/wormspace/wormspace/worm/paxos"
)

// FrameType is the second field of a frame header.
type FrameType uint8

const (
	frameInvalid FrameType = iota
	// FrameRequest: client to server; the payload is a paxos.Request; the
	// ID is chosen by the client and echoed in the response.
	FrameRequest
	// FrameResponse: server to client; the payload is the paxos.Response to
	// the request with the same ID.
	FrameResponse
	// FramePush: server to client, unsolicited; the payload is a
	// paxos.Response of KindNotify; the ID is always 0. Its notify section
	// names the registers [Off, Off+Count) of Seg that accepted a value
	// (Count 0: notifications were dropped), and its regs section carries
	// the accepted ballot and value of those of them the server sends
	// values for (the others are hints without value).
	FramePush
	// FrameErr: the error frame, either direction; the payload is a u8
	// Code and the error text; the ID is always 0; the sender closes the
	// connection after it.
	FrameErr
	// FrameControl: a membership control message (control.go). Client to
	// server: a Control request with an ID of the client's choosing;
	// server to client: the ControlReply with the same ID, or with ID 0 a
	// membership push (the server's membership changed).
	FrameControl
	frameTypeCount
)

var frameTypeNames = [...]string{"invalid", "request", "response", "push", "error", "control"}

func (t FrameType) String() string {
	if t < frameTypeCount {
		return frameTypeNames[t]
	}
	return "frame(" + itoa(uint64(t)) + ")"
}

// Valid reports whether t is a known frame type.
func (t FrameType) Valid() bool { return t > frameInvalid && t < frameTypeCount }

const (
	// HeaderSize is the size of a frame header: u32 length, u8 type, u64 id.
	HeaderSize = 13
	// lengthCovers is the part of the header counted by the length field
	// (type and id): length = lengthCovers + len(payload).
	lengthCovers = HeaderSize - 4

	// DefaultMaxValue is the default maximum size of one value (1 MiB).
	DefaultMaxValue = 1 << 20
	// DefaultMaxFrame is the default maximum frame length (the value of the
	// length field): room for a batch of four maximum-size values plus
	// headers (4 MiB + 64 KiB).
	DefaultMaxFrame = 4<<20 + 64<<10
	// maxErrorText bounds the text of an error frame the encoder emits;
	// longer texts are cut (an error frame must never be refused for size).
	maxErrorText = 1024

	// Fixed part of an encoded paxos.Request: kind, seg, off, ballot
	// (round, node), count, number of values.
	requestFixed = 1 + 8 + 4 + 16 + 4 + 4
)

// Response section bits: a section is present only when its fields are
// non-zero, so the common replies stay small.
const (
	secPromised  = 1 << iota // u64 round, u64 node
	secReg                   // one register state
	secRegs                  // u32 n, n register states
	secContended             // u32 n, n u32 offsets
	secResults               // u32 n, n register results
	secNotify                // u64 seg, u32 off, u32 count
	secText                  // u32 n, n bytes
	secAll       = secPromised | secReg | secRegs | secContended | secResults | secNotify | secText
)

// Flag bits of an encoded RegState or RegResult.
const (
	regHasValue  = 1 << iota // RegState.HasValue / RegResult.HasValue
	regDecided               // RegState.Decided
	regAccepted              // accepted ballot follows (non-zero)
	regValue                 // u32 length and value bytes follow (Value != nil)
	regPromised              // RegResult: promised ballot follows (non-zero)
	regStateAll  = regHasValue | regDecided | regAccepted | regValue
	regResultAll = regHasValue | regAccepted | regValue | regPromised
	// minimum encoded sizes, used to bound counts before allocating
	minRegState  = 4 + 1
	minRegResult = 1 + 1
)

var le = binary.LittleEndian

// appendHeader appends a frame header whose length field is patched by
// finish.
func appendHeader(dst []byte, t FrameType, id uint64) []byte {
	dst = le.AppendUint32(dst, 0)
	dst = append(dst, byte(t))
	return le.AppendUint64(dst, id)
}

// finish patches the length field of the frame that starts at start.
func finish(dst []byte, start int) []byte {
	n := len(dst) - start - 4
	if n > math.MaxUint32 {
		panic("wire: frame longer than 4 GiB")
	}
	le.PutUint32(dst[start:], uint32(n))
	return dst
}

func appendBallot(dst []byte, b paxos.Ballot) []byte {
	dst = le.AppendUint64(dst, b.Round)
	return le.AppendUint64(dst, b.Node)
}

func appendBytes(dst, v []byte) []byte {
	if uint64(len(v)) > math.MaxUint32 {
		panic("wire: value longer than 4 GiB")
	}
	dst = le.AppendUint32(dst, uint32(len(v)))
	return append(dst, v...)
}

// RequestSize returns the length of the frame AppendRequest appends for r.
func RequestSize(r *paxos.Request) int {
	n := HeaderSize + requestFixed
	for _, v := range r.Values {
		n += 4 + len(v)
	}
	return n
}

// AppendRequest appends a request frame with the given id carrying r to dst
// and returns the extended buffer. It does not check limits (Writer does);
// it panics only for a value of 4 GiB or more.
func AppendRequest(dst []byte, id uint64, r *paxos.Request) []byte {
	start := len(dst)
	dst = slices.Grow(dst, RequestSize(r))
	dst = appendHeader(dst, FrameRequest, id)
	dst = append(dst, byte(r.Kind))
	dst = le.AppendUint64(dst, r.Seg)
	dst = le.AppendUint32(dst, r.Off)
	dst = appendBallot(dst, r.Ballot)
	dst = le.AppendUint32(dst, r.Count)
	dst = le.AppendUint32(dst, uint32(len(r.Values)))
	for _, v := range r.Values {
		dst = appendBytes(dst, v)
	}
	return finish(dst, start)
}

// AppendResponse appends a response frame with the given id carrying r.
// Like AppendRequest it checks no limits.
func AppendResponse(dst []byte, id uint64, r *paxos.Response) []byte {
	return appendResponse(dst, FrameResponse, id, r)
}

// AppendPush appends a push frame (id 0) carrying r, which should be a
// KindNotify response (Seg, Off, Count, and in Regs the accepted state of
// the registers whose values it carries).
func AppendPush(dst []byte, r *paxos.Response) []byte {
	return appendResponse(dst, FramePush, 0, r)
}

func regPresent(g *paxos.RegState) bool {
	return g.Off != 0 || !g.Accepted.IsZero() || g.HasValue || g.Decided || g.Value != nil
}

func appendResponse(dst []byte, t FrameType, id uint64, r *paxos.Response) []byte {
	start := len(dst)
	dst = appendHeader(dst, t, id)
	var sec byte
	if !r.Promised.IsZero() {
		sec |= secPromised
	}
	if regPresent(&r.Reg) {
		sec |= secReg
	}
	if len(r.Regs) > 0 {
		sec |= secRegs
	}
	if len(r.Contended) > 0 {
		sec |= secContended
	}
	if len(r.Results) > 0 {
		sec |= secResults
	}
	if r.Seg != 0 || r.Off != 0 || r.Count != 0 {
		sec |= secNotify
	}
	if r.Text != "" {
		sec |= secText
	}
	dst = append(dst, byte(r.Kind), byte(r.Status), sec)
	if sec&secPromised != 0 {
		dst = appendBallot(dst, r.Promised)
	}
	if sec&secReg != 0 {
		dst = appendRegState(dst, &r.Reg)
	}
	if sec&secRegs != 0 {
		dst = le.AppendUint32(dst, uint32(len(r.Regs)))
		for i := range r.Regs {
			dst = appendRegState(dst, &r.Regs[i])
		}
	}
	if sec&secContended != 0 {
		dst = le.AppendUint32(dst, uint32(len(r.Contended)))
		for _, o := range r.Contended {
			dst = le.AppendUint32(dst, o)
		}
	}
	if sec&secResults != 0 {
		dst = le.AppendUint32(dst, uint32(len(r.Results)))
		for i := range r.Results {
			dst = appendRegResult(dst, &r.Results[i])
		}
	}
	if sec&secNotify != 0 {
		dst = le.AppendUint64(dst, r.Seg)
		dst = le.AppendUint32(dst, r.Off)
		dst = le.AppendUint32(dst, r.Count)
	}
	if sec&secText != 0 {
		if uint64(len(r.Text)) > math.MaxUint32 {
			panic("wire: text longer than 4 GiB")
		}
		dst = le.AppendUint32(dst, uint32(len(r.Text)))
		dst = append(dst, r.Text...)
	}
	return finish(dst, start)
}

func appendRegState(dst []byte, g *paxos.RegState) []byte {
	var f byte
	if g.HasValue {
		f |= regHasValue
	}
	if g.Decided {
		f |= regDecided
	}
	if !g.Accepted.IsZero() {
		f |= regAccepted
	}
	if g.Value != nil {
		f |= regValue
	}
	dst = le.AppendUint32(dst, g.Off)
	dst = append(dst, f)
	if f&regAccepted != 0 {
		dst = appendBallot(dst, g.Accepted)
	}
	if f&regValue != 0 {
		dst = appendBytes(dst, g.Value)
	}
	return dst
}

func appendRegResult(dst []byte, g *paxos.RegResult) []byte {
	var f byte
	if g.HasValue {
		f |= regHasValue
	}
	if !g.Accepted.IsZero() {
		f |= regAccepted
	}
	if g.Value != nil {
		f |= regValue
	}
	if !g.Promised.IsZero() {
		f |= regPromised
	}
	dst = append(dst, byte(g.Status), f)
	if f&regPromised != 0 {
		dst = appendBallot(dst, g.Promised)
	}
	if f&regAccepted != 0 {
		dst = appendBallot(dst, g.Accepted)
	}
	if f&regValue != 0 {
		dst = appendBytes(dst, g.Value)
	}
	return dst
}

// AppendErrorFrame appends an error frame (id 0) with code and text; text
// longer than 1 KiB is cut.
func AppendErrorFrame(dst []byte, code Code, text string) []byte {
	if len(text) > maxErrorText {
		text = text[:maxErrorText]
	}
	start := len(dst)
	dst = appendHeader(dst, FrameErr, 0)
	dst = append(dst, byte(code))
	dst = append(dst, text...)
	return finish(dst, start)
}

// DecodeError decodes the payload of an error frame.
func DecodeError(payload []byte) (*RemoteError, error) {
	if len(payload) < 1 {
		return nil, malformed("error frame without a code")
	}
	c := Code(payload[0])
	if c >= codeCount {
		// A newer peer may know more codes; keep the text, classify as other.
		c = CodeOther
	}
	return &RemoteError{Code: c, Text: string(payload[1:])}, nil
}

// decoder reads little-endian fields from b; a read past the end sets bad
// and yields zeros, so the callers check once per structure.
type decoder struct {
	b   []byte
	bad bool
}

func (d *decoder) u8() uint8 {
	if len(d.b) < 1 {
		d.bad = true
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *decoder) u32() uint32 {
	if len(d.b) < 4 {
		d.bad = true
		d.b = nil
		return 0
	}
	v := le.Uint32(d.b)
	d.b = d.b[4:]
	return v
}

func (d *decoder) u64() uint64 {
	if len(d.b) < 8 {
		d.bad = true
		d.b = nil
		return 0
	}
	v := le.Uint64(d.b)
	d.b = d.b[8:]
	return v
}

func (d *decoder) ballot() paxos.Ballot {
	return paxos.Ballot{Round: d.u64(), Node: d.u64()}
}

// bytes returns the next n bytes, aliasing the input, with capacity
// clipped so that an append by the owner cannot overwrite the next field.
func (d *decoder) bytes(n uint32) []byte {
	if uint64(n) > uint64(len(d.b)) {
		d.bad = true
		d.b = nil
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

// count reads a u32 count of items of at least min bytes each and fails
// unless that many could fit in the remaining bytes.
func (d *decoder) count(min int) (int, bool) {
	n := d.u32()
	if d.bad || uint64(n) > uint64(len(d.b)/min) {
		d.bad = true
		return 0, false
	}
	return int(n), true
}

// value reads a length-prefixed value of at most maxValue bytes.
func (d *decoder) value(maxValue int) ([]byte, error) {
	n := d.u32()
	if d.bad {
		return nil, errTruncated
	}
	if uint64(n) > uint64(maxValue) {
		return nil, &FrameError{Reason: "value of " + itoa(uint64(n)) + " bytes exceeds the limit of " + itoa(uint64(maxValue)), Err: ErrValueTooLarge}
	}
	v := d.bytes(n)
	if d.bad {
		return nil, errTruncated
	}
	return v, nil
}

var errTruncated = &FrameError{Reason: "truncated payload", Err: ErrMalformed}

func orDefault(v, def int) int {
	if v <= 0 {
		return def
	}
	return v
}

// DecodeRequest decodes a request payload into r, reusing r.Values'
// backing array. Every value aliases payload (see the package
// documentation for ownership). Values longer than maxValue bytes are
// refused (maxValue <= 0 means DefaultMaxValue). On error r holds
// unspecified contents.
func DecodeRequest(payload []byte, maxValue int, r *paxos.Request) error {
	maxValue = orDefault(maxValue, DefaultMaxValue)
	d := decoder{b: payload}
	r.Kind = paxos.Kind(d.u8())
	r.Seg = d.u64()
	r.Off = d.u32()
	r.Ballot = d.ballot()
	r.Count = d.u32()
	n, ok := d.count(4)
	if !ok {
		if len(payload) < requestFixed {
			return errTruncated
		}
		return malformed("request claims more values than its payload holds")
	}
	if !r.Kind.Valid() {
		return malformed("unknown request kind %d", uint8(r.Kind))
	}
	if cap(r.Values) < n {
		r.Values = make([][]byte, n)
	}
	r.Values = r.Values[:n]
	for i := range r.Values {
		v, err := d.value(maxValue)
		if err != nil {
			r.Values = r.Values[:0]
			return err
		}
		r.Values[i] = v
	}
	if len(d.b) != 0 {
		return malformed("%d trailing bytes after a request", len(d.b))
	}
	return nil
}

// DecodeResponse decodes a response (or push) payload into r, reusing the
// backing arrays of r.Regs, r.Contended and r.Results. Values alias
// payload; r.Text is copied (it allocates when non-empty, which happens
// only on error and status replies). Values longer than maxValue bytes are
// refused (maxValue <= 0 means DefaultMaxValue). On error r holds
// unspecified contents.
func DecodeResponse(payload []byte, maxValue int, r *paxos.Response) error {
	maxValue = orDefault(maxValue, DefaultMaxValue)
	d := decoder{b: payload}
	r.Kind = paxos.Kind(d.u8())
	r.Status = paxos.Status(d.u8())
	sec := d.u8()
	if d.bad {
		return errTruncated
	}
	if !r.Kind.Valid() {
		return malformed("unknown response kind %d", uint8(r.Kind))
	}
	if !r.Status.Valid() {
		return malformed("unknown status %d", uint8(r.Status))
	}
	if sec&^secAll != 0 {
		return malformed("unknown response sections %#x", sec)
	}
	r.Promised = paxos.Ballot{}
	if sec&secPromised != 0 {
		r.Promised = d.ballot()
	}
	r.Reg = paxos.RegState{}
	if sec&secReg != 0 {
		if err := decodeRegState(&d, maxValue, &r.Reg); err != nil {
			return err
		}
	}
	r.Regs = r.Regs[:0]
	if sec&secRegs != 0 {
		n, ok := d.count(minRegState)
		if !ok {
			return malformed("response claims more registers than its payload holds")
		}
		if cap(r.Regs) < n {
			r.Regs = make([]paxos.RegState, n)
		}
		r.Regs = r.Regs[:n]
		for i := range r.Regs {
			if err := decodeRegState(&d, maxValue, &r.Regs[i]); err != nil {
				r.Regs = r.Regs[:0]
				return err
			}
		}
	}
	r.Contended = r.Contended[:0]
	if sec&secContended != 0 {
		n, ok := d.count(4)
		if !ok {
			return malformed("response claims more contended offsets than its payload holds")
		}
		if cap(r.Contended) < n {
			r.Contended = make([]uint32, n)
		}
		r.Contended = r.Contended[:n]
		for i := range r.Contended {
			r.Contended[i] = d.u32()
		}
	}
	r.Results = r.Results[:0]
	if sec&secResults != 0 {
		n, ok := d.count(minRegResult)
		if !ok {
			return malformed("response claims more results than its payload holds")
		}
		if cap(r.Results) < n {
			r.Results = make([]paxos.RegResult, n)
		}
		r.Results = r.Results[:n]
		for i := range r.Results {
			if err := decodeRegResult(&d, maxValue, &r.Results[i]); err != nil {
				r.Results = r.Results[:0]
				return err
			}
		}
	}
	r.Seg, r.Off, r.Count = 0, 0, 0
	if sec&secNotify != 0 {
		r.Seg = d.u64()
		r.Off = d.u32()
		r.Count = d.u32()
	}
	r.Text = ""
	if sec&secText != 0 {
		n := d.u32()
		t := d.bytes(n)
		if d.bad {
			return errTruncated
		}
		r.Text = string(t)
	}
	if d.bad {
		return errTruncated
	}
	if len(d.b) != 0 {
		return malformed("%d trailing bytes after a response", len(d.b))
	}
	return nil
}

func decodeRegState(d *decoder, maxValue int, g *paxos.RegState) error {
	g.Off = d.u32()
	f := d.u8()
	if d.bad {
		return errTruncated
	}
	if f&^regStateAll != 0 {
		return malformed("unknown register state flags %#x", f)
	}
	g.HasValue = f&regHasValue != 0
	g.Decided = f&regDecided != 0
	g.Accepted = paxos.Ballot{}
	if f&regAccepted != 0 {
		g.Accepted = d.ballot()
	}
	g.Value = nil
	if f&regValue != 0 {
		v, err := d.value(maxValue)
		if err != nil {
			return err
		}
		g.Value = v
	}
	if d.bad {
		return errTruncated
	}
	return nil
}

func decodeRegResult(d *decoder, maxValue int, g *paxos.RegResult) error {
	g.Status = paxos.Status(d.u8())
	f := d.u8()
	if d.bad {
		return errTruncated
	}
	if !g.Status.Valid() {
		return malformed("unknown register status %d", uint8(g.Status))
	}
	if f&^regResultAll != 0 {
		return malformed("unknown register result flags %#x", f)
	}
	g.HasValue = f&regHasValue != 0
	g.Promised = paxos.Ballot{}
	if f&regPromised != 0 {
		g.Promised = d.ballot()
	}
	g.Accepted = paxos.Ballot{}
	if f&regAccepted != 0 {
		g.Accepted = d.ballot()
	}
	g.Value = nil
	if f&regValue != 0 {
		v, err := d.value(maxValue)
		if err != nil {
			return err
		}
		g.Value = v
	}
	if d.bad {
		return errTruncated
	}
	return nil
}

func itoa(v uint64) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			return string(b[i:])
		}
	}
}
