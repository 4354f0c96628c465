// Package worm defines WormSpace: an address space of write-once registers
// (WORs), grouped into write-once segments (WOS).
//
// This package holds only the vocabulary shared by every implementation and
// every application: addresses, capture tokens, the error kinds, and the
// Space interface. It has two implementations:
//
//   - worm/spec: the atomic, in-memory specification (one process, no
//     network). Applications are tested against it; the distributed
//     implementation is checked to refine it.
//   - worm/client: the distributed implementation, a Paxos proposer and
//     learner talking to wormservers (worm/server) over worm/wire.
//
// Applications (apps/...) import this package and never the protocol
// internals (worm/paxos, worm/wire, worm/storage).
//
// This package must never import any other package of this module.
package worm

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// MetaOffset is the reserved offset of a segment's metadata WOR, written by
// Alloc. It lies outside the data offsets [0, SegmentSize).
const MetaOffset = ^uint32(0)

// Addr names one WOR: a segment and an offset inside it.
type Addr struct {
	Seg uint64
	Off uint32
}

func (a Addr) String() string {
	if a.Off == MetaOffset {
		return strconv.FormatUint(a.Seg, 10) + "/meta"
	}
	return strconv.FormatUint(a.Seg, 10) + "/" + strconv.FormatUint(uint64(a.Off), 10)
}

// ParseAddr parses "SEG/OFF" (decimal; OFF may be "meta").
func ParseAddr(s string) (Addr, error) {
	seg, off, ok := strings.Cut(s, "/")
	if !ok {
		return Addr{}, fmt.Errorf("worm: address %q: want SEG/OFF", s)
	}
	sv, err := strconv.ParseUint(seg, 10, 64)
	if err != nil {
		return Addr{}, fmt.Errorf("worm: address %q: bad segment: %w", s, err)
	}
	if off == "meta" {
		return Addr{Seg: sv, Off: MetaOffset}, nil
	}
	ov, err := strconv.ParseUint(off, 10, 32)
	if err != nil || ov == uint64(MetaOffset) {
		return Addr{}, fmt.Errorf("worm: address %q: bad offset", s)
	}
	return Addr{Seg: sv, Off: uint32(ov)}, nil
}

// FlatAddr maps a flat 64-bit address to (segment, offset) for a fixed
// segment size.
func FlatAddr(flat uint64, segSize uint32) Addr {
	return Addr{Seg: flat / uint64(segSize), Off: uint32(flat % uint64(segSize))}
}

// Flat is the inverse of FlatAddr.
func (a Addr) Flat(segSize uint32) uint64 { return a.Seg*uint64(segSize) + uint64(a.Off) }

// Ballot is a Paxos ballot: totally ordered by (Round, Node). Round 0 is
// reserved for unsafe writes. Node identifies the proposer; two proposers
// never share a Node (clients draw it at random from 64 bits).
type Ballot struct {
	Round uint64
	Node  uint64
}

// Less reports whether b orders before c.
func (b Ballot) Less(c Ballot) bool {
	return b.Round < c.Round || (b.Round == c.Round && b.Node < c.Node)
}

// IsZero reports whether b is the unsafe-write ballot (or no ballot).
func (b Ballot) IsZero() bool { return b == Ballot{} }

// Max returns the larger of b and c.
func (b Ballot) Max(c Ballot) Ballot {
	if b.Less(c) {
		return c
	}
	return b
}

func (b Ballot) String() string {
	return strconv.FormatUint(b.Round, 10) + "." + strconv.FormatUint(b.Node, 16)
}

// Token is a capture token: the ballot of a capture. A later capture by
// anyone preempts it; it never expires by time.
type Token = Ballot

// ParseToken parses the form printed by Ballot.String ("ROUND.NODEHEX").
func ParseToken(s string) (Token, error) {
	r, n, ok := strings.Cut(s, ".")
	if !ok {
		return Token{}, fmt.Errorf("worm: token %q: want ROUND.NODE", s)
	}
	rv, err := strconv.ParseUint(r, 10, 64)
	if err != nil {
		return Token{}, fmt.Errorf("worm: token %q: %w", s, err)
	}
	nv, err := strconv.ParseUint(n, 16, 64)
	if err != nil {
		return Token{}, fmt.Errorf("worm: token %q: %w", s, err)
	}
	if rv == 0 {
		return Token{}, fmt.Errorf("worm: token %q: round 0 is reserved for unsafe writes", s)
	}
	return Token{Round: rv, Node: nv}, nil
}

// The error kinds. Every error returned by a Space matches (errors.Is)
// exactly one of these, except context errors and programming errors such as
// ErrTooLarge or ErrInvalid.
var (
	// ErrEmpty: Read found no value, and none can have been chosen yet.
	ErrEmpty = errors.New("worm: register is empty")
	// ErrPreempted: a higher capture reached the acceptors first; this
	// call certainly had no effect. (An identical retry with the same
	// token is not certain to fail: it may reach an acceptor this call
	// could not. Capture again instead.)
	ErrPreempted = errors.New("worm: preempted by a higher capture")
	// ErrWritten: the register already holds another value. The error is a
	// *WrittenError carrying that value.
	ErrWritten = errors.New("worm: register already written")
	// ErrTrimmed: the segment was trimmed.
	ErrTrimmed = errors.New("worm: segment trimmed")
	// ErrUnallocated: the segment has not been allocated.
	ErrUnallocated = errors.New("worm: segment not allocated")
	// ErrOutOfRange: the offset is outside the segment.
	ErrOutOfRange = errors.New("worm: offset out of range")
	// ErrUnavailable: no quorum of wormservers could be reached; the
	// operation had no effect that anyone can observe as a value.
	ErrUnavailable = errors.New("worm: no quorum reachable")
	// ErrUnknownOutcome: a write may or may not take effect. Read the
	// register to find out; retrying the identical write is idempotent.
	ErrUnknownOutcome = errors.New("worm: write outcome unknown")
	// ErrTooLarge: a value exceeds the cluster's value size limit.
	ErrTooLarge = errors.New("worm: value too large")
	// ErrInvalid: a malformed argument (bad token, empty batch, ...).
	ErrInvalid = errors.New("worm: invalid argument")
)

// WrittenError reports that a register already holds Value (which differs
// from the value the caller tried to write). errors.Is(err, ErrWritten).
type WrittenError struct {
	Addr  Addr
	Value []byte
}

func (e *WrittenError) Error() string {
	return fmt.Sprintf("worm: register %v already written (%d bytes)", e.Addr, len(e.Value))
}

// Is makes errors.Is(err, ErrWritten) true.
func (e *WrittenError) Is(target error) bool { return target == ErrWritten }

// WrittenValue returns the stored value carried by a WrittenError in err's
// chain.
func WrittenValue(err error) ([]byte, bool) {
	var we *WrittenError
	if errors.As(err, &we) {
		return we.Value, true
	}
	return nil, false
}

// BatchError reports the per-register outcome of a WriteBatch that did not
// fully succeed: Errs[i] is nil when values[i] was written.
type BatchError struct {
	Seg  uint64
	Off  uint32
	Errs []error
}

func (e *BatchError) Error() string {
	for i, err := range e.Errs {
		if err != nil {
			return fmt.Sprintf("worm: batch write at %d/%d: register %d: %v", e.Seg, e.Off, e.Off+uint32(i), err)
		}
	}
	return "worm: batch write failed"
}

// Unwrap exposes the per-register errors to errors.Is / errors.As.
func (e *BatchError) Unwrap() []error { return e.Errs }

// SegmentInfo is what Alloc records in a segment's metadata WOR.
type SegmentInfo struct {
	Owner string // the identity of the client whose Alloc won
	Meta  []byte // that client's metadata
	Won   bool   // true when Owner is the calling client
}

// Entry is one written register of a segment.
type Entry struct {
	Off   uint32
	Value []byte
}

// SegmentCapture is the result of CaptureSegment.
type SegmentCapture struct {
	// Token covers every register of the segment that is not listed in
	// Written or Contended.
	Token Token
	// Written lists the registers (ascending offset) that already held a
	// value; the capture finished each, so each is chosen.
	Written []Entry
	// Contended lists offsets a higher per-register capture holds; a write
	// there with Token will be preempted.
	Contended []uint32
}

// Notification reports a write to register Off of a listened segment.
//
// When Chosen is set, Value is the register's chosen value: every Read of
// Off returns it from then on. The distributed implementation learns it
// as a Paxos learner does, from a quorum of wormservers that accepted the
// same value at the same ballot; the specification reports every write
// this way. Value belongs to the receiver.
//
// Otherwise the notification is a hint and Value is nil: the register was
// written, or a write reached some wormservers; read it to learn its value
// (or whether one was chosen). Hints come when the value is too large to
// travel in a notification, before a value is known to be chosen, and
// when the listener heard from too few wormservers to tell.
//
// Lost reports that notifications may have been missed (a wormserver
// connection was re-established, or the listener fell behind); the
// listener should rescan. Off and Value are then meaningless.
//
// A register may be announced more than once (typically a hint, then its
// chosen value).
type Notification struct {
	Off    uint32
	Chosen bool
	Value  []byte
	Lost   bool
}

// Space is WormSpace: an address space of write-once registers.
//
// Every method is safe for concurrent use by many goroutines. Blocking
// methods honour ctx: when it ends, the call returns ctx's error wrapped in
// ErrUnavailable (nothing was written) or ErrUnknownOutcome (a write may
// still take effect). Values passed in are not retained after the call
// returns; values returned belong to the caller.
type Space interface {
	// Capture runs a capture (Paxos phase 1) on addr and returns its token.
	// If the register may already hold a value, Capture finishes that value
	// and returns a *WrittenError instead of a token.
	Capture(ctx context.Context, addr Addr) (Token, error)
	// Write writes value with a token from Capture or CaptureSegment.
	// Writing a value the register already holds succeeds (idempotent).
	// Errors: ErrPreempted, *WrittenError, ErrTrimmed, ErrUnknownOutcome,
	// ErrUnavailable, ErrOutOfRange, ErrTooLarge.
	Write(ctx context.Context, addr Addr, tok Token, value []byte) error
	// WriteUnsafe writes at the reserved ballot 0 without capturing: one
	// round trip, meant for a single designated writer per register
	// (WormTX votes). Several writers of different values still leave the
	// register write-once and linearizable (one value wins, the others
	// get *WrittenError); what they lose is liveness: while an acceptor
	// is silent a capture or read may not tell which ballot-0 value won,
	// and retries until it answers. Errors as Write's, ErrPreempted
	// included (a capture got there first).
	WriteUnsafe(ctx context.Context, addr Addr, value []byte) error
	// Read returns the register's chosen value, or ErrEmpty when nothing can
	// have been chosen yet. Linearizable.
	Read(ctx context.Context, addr Addr) ([]byte, error)

	// Alloc allocates segment seg: the first caller wins and records its
	// identity and meta; every caller learns the winner.
	Alloc(ctx context.Context, seg uint64, meta []byte) (SegmentInfo, error)
	// Check returns the segment's allocation record, or ErrUnallocated.
	Check(ctx context.Context, seg uint64) (SegmentInfo, error)
	// CaptureSegment captures every register of seg in one round.
	CaptureSegment(ctx context.Context, seg uint64) (SegmentCapture, error)
	// WriteBatch writes values to consecutive registers starting at
	// (seg, off) with one message per wormserver. On partial failure it
	// returns a *BatchError.
	WriteBatch(ctx context.Context, seg uint64, off uint32, tok Token, values [][]byte) error
	// Trim garbage-collects seg. Monotone and idempotent; later operations
	// on seg return ErrTrimmed.
	Trim(ctx context.Context, seg uint64) error
	// Listen delivers write notifications for seg until ctx ends; the
	// channel is then closed. Every register written after Listen returns
	// is announced at least once (with its chosen value, or as a hint),
	// unless a Lost notification says that some were missed. See
	// Notification.
	Listen(ctx context.Context, seg uint64) (<-chan Notification, error)

	// SegmentSize is the number of data registers per segment.
	SegmentSize() uint32
	// ID is this client's identity, as recorded by Alloc.
	ID() string
	// Close releases the Space's resources.
	Close() error
}
