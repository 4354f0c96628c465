package storage

import (
	"encoding/binary"
	"hash/crc32"

	"github.com/wormspace/wormspace/worm/paxos"
)

// Frame layout (little endian):
//
//	[0:4]   CRC32C (Castagnoli) of bytes [4 : 8+n]
//	[4:8]   n, the payload length (1 <= n <= maxPayload)
//	[8:8+n] payload; payload[0] is the frame kind
const (
	frameHeader = 8
	maxPayload  = 1 << 28

	// Frame kinds 1..5 are the paxos.RecordKind values.
	kindGenHeader = 0x10
	kindCommit    = 0x11

	// record payload: kind u8 | seg u64 | off u32 | round u64 | node u64 | value
	recordFixed = 1 + 8 + 4 + 8 + 8
	// RecordOverhead is the encoded size of a record frame without its
	// value.
	RecordOverhead = frameHeader + recordFixed

	// commit payload: kind u8 | flags u8 | batch u64 | end u64
	commitPayload = 1 + 1 + 8 + 8
	commitSize    = frameHeader + commitPayload

	commitSnapshot = 1 // flag: this commit completes a generation's snapshot

	// header payload: kind u8 | magic [8] | version u32 | gen u64 | base u64 |
	// segSize u32 | clusterLen u16 | cluster
	headerFixed = 1 + 8 + 4 + 8 + 8 + 4 + 2
	genMagic    = "WORMGEN\x00"
)

// FormatVersion is the version of the on-disk format written by this
// package (identity file and generation headers).
const FormatVersion = 1

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// recordSize is the encoded size of rec's frame.
func recordSize(rec *paxos.Record) int { return RecordOverhead + len(rec.Value) }

// grow extends b by n bytes and returns the extended slice and the new part.
func grow(b []byte, n int) ([]byte, []byte) {
	start := len(b)
	if cap(b)-start < n {
		nb := make([]byte, start, 2*cap(b)+n)
		copy(nb, b)
		b = nb
	}
	b = b[:start+n]
	return b, b[start:]
}

func sealFrame(f []byte) {
	binary.LittleEndian.PutUint32(f[4:], uint32(len(f)-frameHeader))
	binary.LittleEndian.PutUint32(f[0:], crc32.Checksum(f[4:], castagnoli))
}

// appendRecord appends rec's frame to b. It does not allocate when b has
// room.
func appendRecord(b []byte, rec *paxos.Record) []byte {
	b, f := grow(b, recordSize(rec))
	f[8] = byte(rec.Kind)
	binary.LittleEndian.PutUint64(f[9:], rec.Seg)
	binary.LittleEndian.PutUint32(f[17:], rec.Off)
	binary.LittleEndian.PutUint64(f[21:], rec.Ballot.Round)
	binary.LittleEndian.PutUint64(f[29:], rec.Ballot.Node)
	copy(f[37:], rec.Value)
	sealFrame(f)
	return b
}

type commit struct {
	flags uint8
	batch uint64
	end   uint64 // logical log position after this frame
}

func appendCommit(b []byte, c commit) []byte {
	b, f := grow(b, commitSize)
	f[8] = kindCommit
	f[9] = c.flags
	binary.LittleEndian.PutUint64(f[10:], c.batch)
	binary.LittleEndian.PutUint64(f[18:], c.end)
	sealFrame(f)
	return b
}

type genHeader struct {
	version uint32
	gen     uint64
	base    uint64 // logical log position of file offset 0
	segSize uint32
	cluster string
}

func appendGenHeader(b []byte, h genHeader) []byte {
	b, f := grow(b, frameHeader+headerFixed+len(h.cluster))
	p := f[8:]
	p[0] = kindGenHeader
	copy(p[1:9], genMagic)
	binary.LittleEndian.PutUint32(p[9:], h.version)
	binary.LittleEndian.PutUint64(p[13:], h.gen)
	binary.LittleEndian.PutUint64(p[21:], h.base)
	binary.LittleEndian.PutUint32(p[29:], h.segSize)
	binary.LittleEndian.PutUint16(p[33:], uint16(len(h.cluster)))
	copy(p[35:], h.cluster)
	sealFrame(f)
	return b
}

// frameStatus is the verdict of decodeFrame.
type frameStatus uint8

const (
	frameOK    frameStatus = iota
	frameShort             // b ends before the frame does
	frameBad               // length out of range or checksum mismatch
)

// decodeFrame checks the frame at the start of b and returns its payload
// (aliasing b) and its total size. A frame is accepted only when its
// length is in range and its checksum matches; the payload's meaning is
// checked by the decoders below.
func decodeFrame(b []byte) (payload []byte, size int, st frameStatus) {
	if len(b) < frameHeader {
		return nil, 0, frameShort
	}
	n := binary.LittleEndian.Uint32(b[4:])
	if n == 0 || n > maxPayload {
		return nil, 0, frameBad
	}
	size = frameHeader + int(n)
	if len(b) < size {
		return nil, size, frameShort
	}
	if crc32.Checksum(b[4:size], castagnoli) != binary.LittleEndian.Uint32(b) {
		return nil, size, frameBad
	}
	return b[frameHeader:size], size, frameOK
}

// decodeRecord decodes a record payload. rec.Value aliases p.
func decodeRecord(p []byte) (paxos.Record, bool) {
	if len(p) < recordFixed || !paxos.RecordKind(p[0]).Valid() {
		return paxos.Record{}, false
	}
	rec := paxos.Record{
		Kind: paxos.RecordKind(p[0]),
		Seg:  binary.LittleEndian.Uint64(p[1:]),
		Off:  binary.LittleEndian.Uint32(p[9:]),
		Ballot: paxos.Ballot{
			Round: binary.LittleEndian.Uint64(p[13:]),
			Node:  binary.LittleEndian.Uint64(p[21:]),
		},
	}
	if len(p) > recordFixed {
		rec.Value = p[recordFixed:]
	}
	return rec, true
}

func decodeCommit(p []byte) (commit, bool) {
	if len(p) != commitPayload || p[0] != kindCommit || p[1]&^commitSnapshot != 0 {
		return commit{}, false
	}
	return commit{flags: p[1], batch: binary.LittleEndian.Uint64(p[2:]), end: binary.LittleEndian.Uint64(p[10:])}, true
}

func decodeGenHeader(p []byte) (genHeader, bool) {
	if len(p) < headerFixed || p[0] != kindGenHeader || string(p[1:9]) != genMagic {
		return genHeader{}, false
	}
	h := genHeader{
		version: binary.LittleEndian.Uint32(p[9:]),
		gen:     binary.LittleEndian.Uint64(p[13:]),
		base:    binary.LittleEndian.Uint64(p[21:]),
		segSize: binary.LittleEndian.Uint32(p[29:]),
	}
	n := int(binary.LittleEndian.Uint16(p[33:]))
	if len(p) != headerFixed+n {
		return genHeader{}, false
	}
	h.cluster = string(p[35:])
	return h, true
}
