package wormlog

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/wormspace/wormspace/worm"
)

// Errors of this package. Errors from the underlying worm.Space are wrapped
// with %w, so errors.Is(err, worm.ErrTrimmed) and the like work too.
var (
	// ErrUnwritten: the position holds neither a record nor a hole yet
	// (its register is empty or its segment is not allocated). Readers wait
	// or fill it (FillHole).
	ErrUnwritten = errors.New("wormlog: position not written")
	// ErrCorrupt: a register of the log holds bytes this package did not
	// write (not a record, not a hole marker).
	ErrCorrupt = errors.New("wormlog: register does not hold a log entry")
	// ErrForeign: a segment in the log's range was allocated by a different
	// log (its allocation metadata names another log). Fatal for a
	// sequencer: two logs overlap.
	ErrForeign = errors.New("wormlog: segment belongs to another log")
	// ErrClosed: the sequencer (or its remote handle) was closed.
	ErrClosed = errors.New("wormlog: sequencer closed")
	// ErrNoSequencer: Append or Tail on a Client built without a
	// TokenSource (a read-only client).
	ErrNoSequencer = errors.New("wormlog: client has no sequencer")
)

// Config identifies a log and tunes the components that serve it. The log
// occupies segments FirstSeg, FirstSeg+1, ... of a worm.Space: position p
// lives at worm.FlatAddr(p + FirstSeg*segSize, segSize), so position 0 is
// offset 0 of FirstSeg. Two logs in one space must use disjoint segment
// ranges; each segment's allocation record (its metadata WOR, written by
// Alloc) names the log, and a sequencer that finds another name stops with
// ErrForeign.
type Config struct {
	// Name identifies the log; recorded in every segment's allocation
	// metadata.
	Name string
	// FirstSeg is the log's first segment.
	FirstSeg uint64
	// Prefetch is how many segments a Sequencer keeps allocated and
	// captured ahead of the one it hands positions from (default 1).
	Prefetch int
	// HoleTimeout is how long Follow waits at a position that is known to
	// be assigned (a later position is written or the sequencer's tail is
	// beyond it) before it fills it with a hole (default 1s; negative:
	// never fill).
	HoleTimeout time.Duration
	// Logger receives diagnostics (default slog.Default()).
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.Prefetch <= 0 {
		c.Prefetch = 1
	}
	if c.HoleTimeout == 0 {
		c.HoleTimeout = time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.Logger = c.Logger.With("log", c.Name)
	return c
}

// meta is what every segment's allocation record holds.
func (c Config) meta() []byte { return append([]byte("wormlog/1\x00"), c.Name...) }

func (c Config) checkMeta(seg uint64, info worm.SegmentInfo) error {
	if !bytes.Equal(info.Meta, c.meta()) {
		return fmt.Errorf("%w: segment %d allocated by %q with metadata %q", ErrForeign, seg, info.Owner, info.Meta)
	}
	return nil
}

// layout maps positions to registers.
type layout struct {
	size  uint32
	first uint64
}

func (l layout) addr(pos uint64) worm.Addr {
	return worm.Addr{Seg: l.first + pos/uint64(l.size), Off: uint32(pos % uint64(l.size))}
}

func (l layout) seg(pos uint64) uint64 { return l.first + pos/uint64(l.size) }

func (l layout) pos(seg uint64, off uint32) uint64 {
	return (seg-l.first)*uint64(l.size) + uint64(off)
}

// Record is one position of the log: a record appended by a client, or a
// hole (a position nobody appended to in time, filled with a junk marker).
type Record struct {
	Pos   uint64
	Value []byte // nil for a hole
	Hole  bool
}

// Entry encoding. A register holds either the hole marker (one byte,
// tagHole; identical for every filler, so concurrent fills agree) or a
// record: tagRecord, an 8-byte nonce unique to the append, then the user's
// value. The nonce makes every append's bytes unique, so an idempotent
// rewrite can never make two appends succeed at one position, and an
// appender recognises its own record when it resolves an unknown outcome.
const (
	tagHole   = 0x00
	tagRecord = 0x01
	recHeader = 9
)

var holeMarker = []byte{tagHole}

func encodeRecord(nonce uint64, value []byte) []byte {
	b := make([]byte, recHeader+len(value))
	b[0] = tagRecord
	for i := 0; i < 8; i++ {
		b[1+i] = byte(nonce >> (56 - 8*i))
	}
	copy(b[recHeader:], value)
	return b
}

func decode(pos uint64, raw []byte) (Record, error) {
	switch {
	case len(raw) == 1 && raw[0] == tagHole:
		return Record{Pos: pos, Hole: true}, nil
	case len(raw) >= recHeader && raw[0] == tagRecord:
		return Record{Pos: pos, Value: raw[recHeader:]}, nil
	}
	return Record{Pos: pos}, fmt.Errorf("%w: position %d holds %d bytes", ErrCorrupt, pos, len(raw))
}
