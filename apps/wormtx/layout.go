package wormtx

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"

	"github.com/wormspace/wormspace/worm"
)

// TxID names a transaction. A transaction with a segment of its own (the
// inbox mode and the direct mode's reserved segments) is named by the
// number of that segment. A transaction in a shared segment
// (CoordinatorConfig.Shared) is named by its slot: bit 63 set, the
// segment number in bits 20..62, the slot's first register in bits 0..19
// (see SlotTxID).
type TxID uint64

// Slot TxIDs: a flag bit, then the segment, then the slot's offset.
const (
	sharedBit  = 1 << 63
	slotBits   = 20
	maxSlotOff = 1<<slotBits - 1
	// MaxSharedSegment is the largest segment number a shared segment may
	// have (its TxIDs must fit in 63 bits).
	MaxSharedSegment = 1<<(63-slotBits) - 1
)

// SlotTxID names the transaction whose slot starts at register off of
// shared segment seg. seg must be at most MaxSharedSegment, off below
// 1<<20.
func SlotTxID(seg uint64, off uint32) TxID {
	return TxID(sharedBit | seg<<slotBits | uint64(off))
}

// Shared reports whether t names a slot of a shared segment.
func (t TxID) Shared() bool { return t&sharedBit != 0 }

// Segment is the segment holding t's registers.
func (t TxID) Segment() uint64 {
	if t.Shared() {
		return uint64(t&^sharedBit) >> slotBits
	}
	return uint64(t)
}

// slotOff is the first register of t's slot (0 for a segment of its own).
func (t TxID) slotOff() uint32 {
	if t.Shared() {
		return uint32(t & maxSlotOff)
	}
	return 0
}

func (t TxID) String() string {
	if t.Shared() {
		return "tx" + strconv.FormatUint(t.Segment(), 10) + "." + strconv.FormatUint(uint64(t.slotOff()), 10)
	}
	return "tx" + strconv.FormatUint(uint64(t), 10)
}

// Outcome is the fate of a transaction.
type Outcome uint8

const (
	// Pending: not every vote is known yet, and none is no. Only Status
	// reports it; Resolve and Await never return it without an error.
	Pending Outcome = iota
	// Commit: every participant voted yes.
	Commit
	// Abort: some vote is no (cast by its participant or filled in by a
	// recoverer after a timeout).
	Abort
)

func (o Outcome) String() string {
	switch o {
	case Pending:
		return "pending"
	case Commit:
		return "commit"
	case Abort:
		return "abort"
	}
	return fmt.Sprintf("Outcome(%d)", uint8(o))
}

// Vote is the chosen content of a vote register.
type Vote uint8

const (
	// VoteMissing: the register is empty (nothing chosen yet).
	VoteMissing Vote = iota
	// VoteYes: the participant voted yes (with WriteUnsafe, or carried
	// over by a recoverer's capture).
	VoteYes
	// VoteNo: the participant voted no.
	VoteNo
	// VoteTimedOut: a recoverer captured the register and wrote no because
	// the vote was missing after its timeout. It counts as no.
	VoteTimedOut
)

func (v Vote) String() string {
	switch v {
	case VoteMissing:
		return "missing"
	case VoteYes:
		return "yes"
	case VoteNo:
		return "no"
	case VoteTimedOut:
		return "timed-out"
	}
	return fmt.Sprintf("Vote(%d)", uint8(v))
}

// Descriptor is what a transaction's segment records in its metadata
// register (Alloc): who takes part, and the application's payload.
type Descriptor struct {
	// Participants are the participants' names, in vote order: participant
	// i owns vote register i. Names are unique and non-empty.
	Participants []string
	// Payload is opaque to the protocol (the bank puts the transfer here).
	Payload []byte
}

// Index returns the position of participant name, or -1.
func (d Descriptor) Index(name string) int {
	for i, p := range d.Participants {
		if p == name {
			return i
		}
	}
	return -1
}

// Tx is a transaction whose descriptor is known: the handle that Resolve,
// Status and the participant operations work on without reading the
// metadata register again.
type Tx struct {
	ID TxID
	Descriptor
	// NextSegment, in a prepare of a transaction in a shared segment, is
	// the segment the coordinator allocated ahead for its transactions
	// after those of this one's segment (0: none yet). It is a hint: a
	// participant that records its set segments (ParticipantConfig.Segments)
	// records that one in the background (HandlePrepare), so that its
	// first vote there does not wait for the record, a metadata read and
	// a force. A Messenger may drop it; nothing else reads it.
	NextSegment uint64
}

// Register layout of a transaction segment with n participants:
//
//	[0, n)        vote of participant i (WriteUnsafe by i; capture+write
//	              of VoteTimedOut by a recoverer)
//	n             decision (capture+write by whoever learns it first)
//	[n+1, 2n+1)   ack of participant i: the outcome it applied (WriteUnsafe)
//	2n+1          coordinator ack: the outcome it learned (WriteUnsafe), or
//	              "abandoned" (capture+write by a participant after a grace)
//
// A segment therefore needs 2n+2 registers. These are the transaction's
// canonical indexes. A transaction in a shared segment has a slot of
// SlotWidth(n) = 2n+3 registers starting at its slot offset b: b holds
// the descriptor, and canonical index k lives at b+1+k.
func (t Tx) n() int { return len(t.Participants) }

// at is the register of canonical index k.
func (t Tx) at(k int) worm.Addr {
	if t.ID.Shared() {
		return worm.Addr{Seg: t.ID.Segment(), Off: t.ID.slotOff() + 1 + uint32(k)}
	}
	return worm.Addr{Seg: uint64(t.ID), Off: uint32(k)}
}

// canon maps a register offset of t's segment to its canonical index;
// ok is false for registers outside t's votes, decision and acks (other
// slots of a shared segment, the descriptor).
func (t Tx) canon(off uint32) (k int, ok bool) {
	if t.ID.Shared() {
		b := t.ID.slotOff()
		if off <= b || off > b+uint32(2*t.n()+2) {
			return 0, false
		}
		return int(off - b - 1), true
	}
	if int(off) > 2*t.n()+1 {
		return 0, false
	}
	return int(off), true
}

func (t Tx) voteAddr(i int) worm.Addr  { return t.at(i) }
func (t Tx) decisionAddr() worm.Addr   { return t.at(t.n()) }
func (t Tx) ackAddr(i int) worm.Addr   { return t.at(t.n() + 1 + i) }
func (t Tx) coordAckAddr() worm.Addr   { return t.at(2*t.n() + 1) }
func (t Tx) segment() uint64           { return t.ID.Segment() }
func (t Tx) sharedDescAddr() worm.Addr { return worm.Addr{Seg: t.ID.Segment(), Off: t.ID.slotOff()} }

// RegistersNeeded is the segment size a transaction with n participants
// needs.
func RegistersNeeded(n int) uint32 { return uint32(2*n + 2) }

// SlotWidth is the number of registers a transaction with n participants
// takes in a shared segment: its descriptor and RegistersNeeded(n).
func SlotWidth(n int) uint32 { return uint32(2*n + 3) }

// Register values. Single bytes: votes, decisions and acks are tiny.
var (
	valYes      = []byte("y")
	valNo       = []byte("n")
	valTimedOut = []byte("t")
	// valFenced: a participant that votes with records settled its own
	// vote register after a restart (records.go). It counts as no, and
	// as that participant's acknowledgement: it holds nothing of the
	// transaction, so it has nothing to apply.
	valFenced  = []byte("f")
	valCommit  = []byte("C")
	valAbort   = []byte("A")
	valAbandon = []byte("X")
)

func voteValue(yes bool) []byte {
	if yes {
		return valYes
	}
	return valNo
}

// valYesRecord starts a yes vote that carries its participant's prepare
// record (voteRecord): 'Y', the transaction's payload (uvarint length,
// bytes), then the Resource's record.
const valYesRecord = 'Y'

// voteRecord is a yes vote carrying what a Restorable participant needs
// to restore its prepared state after a restart: the payload of the
// transaction's descriptor (its participants are the segment's, see
// setSegmentMeta) and the Resource's record. It is the same bytes on
// every retry for one transaction (ballot 0 holds one value).
func voteRecord(payload, rec []byte) []byte {
	v := binary.AppendUvarint([]byte{valYesRecord}, uint64(len(payload)))
	v = append(v, payload...)
	return append(v, rec...)
}

// parseVoteRecord splits a vote written by voteRecord; ok is false for
// any other value.
func parseVoteRecord(v []byte) (payload, rec []byte, ok bool) {
	if len(v) == 0 || v[0] != valYesRecord {
		return nil, nil, false
	}
	n, k := binary.Uvarint(v[1:])
	if k <= 0 || n > uint64(len(v)-1-k) {
		return nil, nil, false
	}
	v = v[1+k:]
	return v[:n], v[n:], true
}

func parseVote(v []byte) (Vote, error) {
	if _, _, ok := parseVoteRecord(v); ok {
		return VoteYes, nil
	}
	switch {
	case bytes.Equal(v, valYes):
		return VoteYes, nil
	case bytes.Equal(v, valNo):
		return VoteNo, nil
	case bytes.Equal(v, valTimedOut), bytes.Equal(v, valFenced):
		return VoteTimedOut, nil
	}
	return VoteMissing, fmt.Errorf("%w: vote register holds %q", ErrInconsistent, v)
}

func outcomeValue(o Outcome) []byte {
	switch o {
	case Commit:
		return valCommit
	case Abort:
		return valAbort
	}
	panic(fmt.Sprintf("wormtx: no register value for outcome %v", o))
}

func parseOutcome(v []byte) (Outcome, error) {
	switch {
	case bytes.Equal(v, valCommit):
		return Commit, nil
	case bytes.Equal(v, valAbort):
		return Abort, nil
	}
	return Pending, fmt.Errorf("%w: outcome register holds %q", ErrInconsistent, v)
}

// Errors for expected conditions.
var (
	// ErrNotTransaction: the segment's metadata is not a transaction
	// descriptor (the segment belongs to something else).
	ErrNotTransaction = errors.New("wormtx: segment is not a transaction")
	// ErrNotParticipant: the caller is not named in the descriptor.
	ErrNotParticipant = errors.New("wormtx: not a participant of the transaction")
	// ErrInvalid: a malformed request (no participants, duplicate or empty
	// names, too many participants for the segment size, unknown inbox).
	ErrInvalid = errors.New("wormtx: invalid transaction")
	// ErrInconsistent: registers disagree in a way the protocol rules out
	// (for example a decision register contradicting the votes). It means
	// the Space broke its contract; it is reported, never repaired.
	ErrInconsistent = errors.New("wormtx: inconsistent transaction state")
	// ErrCrashed: a simulated crash point fired (CoordinatorConfig.Crash,
	// ParticipantConfig.Crash). The process must behave as if it died: do
	// nothing more for the transaction.
	ErrCrashed = errors.New("wormtx: simulated crash")
)

const descMagic = "wtx1"

// MarshalDescriptor encodes d as a transaction segment's metadata.
func MarshalDescriptor(d Descriptor) []byte {
	b := []byte(descMagic)
	b = binary.AppendUvarint(b, uint64(len(d.Participants)))
	for _, p := range d.Participants {
		b = binary.AppendUvarint(b, uint64(len(p)))
		b = append(b, p...)
	}
	b = binary.AppendUvarint(b, uint64(len(d.Payload)))
	return append(b, d.Payload...)
}

// UnmarshalDescriptor decodes metadata written by MarshalDescriptor.
// Errors match ErrNotTransaction.
func UnmarshalDescriptor(b []byte) (Descriptor, error) {
	if !bytes.HasPrefix(b, []byte(descMagic)) {
		return Descriptor{}, ErrNotTransaction
	}
	b = b[len(descMagic):]
	// uvarint reads a minimal uvarint: a descriptor has one encoding, so
	// that every replica and tool agrees on its bytes.
	uvarint := func(b []byte) (uint64, int) {
		n, k := binary.Uvarint(b)
		if k > 0 && k != len(binary.AppendUvarint(nil, n)) {
			return 0, -1
		}
		return n, k
	}
	chunk := func() ([]byte, bool) {
		n, k := uvarint(b)
		if k <= 0 || n > uint64(len(b)-k) {
			return nil, false
		}
		c := b[k : k+int(n)]
		b = b[k+int(n):]
		return c, true
	}
	n, k := uvarint(b)
	if k <= 0 || n > uint64(len(b)) {
		return Descriptor{}, fmt.Errorf("%w: bad participant count", ErrNotTransaction)
	}
	b = b[k:]
	d := Descriptor{Participants: make([]string, 0, n)}
	for range n {
		c, ok := chunk()
		if !ok {
			return Descriptor{}, fmt.Errorf("%w: truncated participant", ErrNotTransaction)
		}
		d.Participants = append(d.Participants, string(c))
	}
	c, ok := chunk()
	if !ok || len(b) != 0 {
		return Descriptor{}, fmt.Errorf("%w: bad payload", ErrNotTransaction)
	}
	d.Payload = bytes.Clone(c)
	if err := d.validate(0); err != nil {
		return Descriptor{}, fmt.Errorf("%w: %w", ErrNotTransaction, err)
	}
	return d, nil
}

// validate checks names and, when segSize > 0, that the layout fits.
func (d Descriptor) validate(segSize uint32) error {
	if len(d.Participants) == 0 {
		return fmt.Errorf("%w: no participants", ErrInvalid)
	}
	seen := make(map[string]bool, len(d.Participants))
	for _, p := range d.Participants {
		if p == "" {
			return fmt.Errorf("%w: empty participant name", ErrInvalid)
		}
		if seen[p] {
			return fmt.Errorf("%w: participant %q named twice", ErrInvalid, p)
		}
		seen[p] = true
	}
	if segSize > 0 && uint64(RegistersNeeded(len(d.Participants))) > uint64(segSize) {
		return fmt.Errorf("%w: %d participants need %d registers, segments hold %d",
			ErrInvalid, len(d.Participants), RegistersNeeded(len(d.Participants)), segSize)
	}
	return nil
}

// Inbox entries: 'T', the transaction's segment (8 bytes big endian), the
// descriptor. Carrying the descriptor saves participants a Check.
func marshalEntry(t Tx) []byte {
	b := []byte{'T'}
	b = binary.BigEndian.AppendUint64(b, uint64(t.ID))
	return append(b, MarshalDescriptor(t.Descriptor)...)
}

func unmarshalEntry(b []byte) (Tx, error) {
	if len(b) < 9 || b[0] != 'T' {
		return Tx{}, fmt.Errorf("%w: bad inbox entry", ErrInconsistent)
	}
	d, err := UnmarshalDescriptor(b[9:])
	if err != nil {
		return Tx{}, err
	}
	return Tx{ID: TxID(binary.BigEndian.Uint64(b[1:9])), Descriptor: d}, nil
}
