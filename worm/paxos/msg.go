package paxos

import "github.com/wormspace/wormspace/worm"

// Ballot is worm.Ballot; repeated here so that core code reads naturally.
type Ballot = worm.Ballot

// Kind names a request (and the response to it).
type Kind uint8

const (
	KindInvalid Kind = iota
	// KindPrepare: phase 1 for one register (Seg, Off) at Ballot.
	KindPrepare
	// KindPrepareSeg: phase 1 for every register of Seg at Ballot (range
	// promise; per-register promises that are higher override it).
	KindPrepareSeg
	// KindAccept: phase 2 at Ballot for len(Values) consecutive registers
	// starting at (Seg, Off). Ballot zero is an unsafe write.
	KindAccept
	// KindDecide: the registers [Off, Off+Count) of Seg were chosen at
	// Ballot; an acceptor that accepted exactly that ballot marks them
	// decided. At ballot 0 Values carries the Count chosen values and
	// only an acceptor holding that very value marks it (see zero.go).
	// No response.
	KindDecide
	// KindRead: report the accepted state of (Seg, Off).
	KindRead
	// KindTrim: trim Seg.
	KindTrim
	// KindListen / KindUnlisten: subscribe to write notifications of Seg.
	// Handled by the server, not the acceptor core.
	KindListen
	KindUnlisten
	// KindNotify: server-to-client push: (Seg, Off..Off+Count) accepted a
	// value. Response-only kind.
	KindNotify
	// KindStatus: server health and statistics. Handled by the server.
	KindStatus
	kindCount
)

var kindNames = [...]string{"invalid", "prepare", "prepare-seg", "accept", "decide", "read", "trim", "listen", "unlisten", "notify", "status"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "kind(" + itoa(uint64(k)) + ")"
}

// Valid reports whether k is a known kind.
func (k Kind) Valid() bool { return k > KindInvalid && k < kindCount }

// Status is an acceptor's verdict on one register (or on a whole request).
type Status uint8

const (
	// StatusOK: promised (prepare), accepted (accept), done (trim, read).
	StatusOK Status = iota
	// StatusNack: a higher ballot is promised; Promised carries it.
	StatusNack
	// StatusDecided: the register holds a different, decided (chosen) value,
	// carried in Value. Accept only.
	StatusDecided
	// StatusTrimmed: the segment is trimmed.
	StatusTrimmed
	// StatusOutOfRange: the offset is outside the segment.
	StatusOutOfRange
	// StatusInvalid: the request is malformed (Text explains).
	StatusInvalid
	// StatusError: the server failed to process the request (for example
	// its disk is full); nothing was changed. Text explains.
	StatusError
	// StatusSealed: the wormserver does not serve the configuration epoch
	// the request was issued under (the epoch was sealed for a membership
	// change, or the server is not yet a member of it); nothing was
	// changed. Drivers report it to the Op as Unsent (the acceptor
	// certainly did not act on the request) and run the operation again
	// under the newer configuration. The acceptor core never produces it.
	StatusSealed
	statusCount
)

var statusNames = [...]string{"ok", "nack", "decided", "trimmed", "out-of-range", "invalid", "error", "sealed"}

func (s Status) String() string {
	if int(s) < len(statusNames) {
		return statusNames[s]
	}
	return "status(" + itoa(uint64(s)) + ")"
}

// Valid reports whether s is a known status.
func (s Status) Valid() bool { return s < statusCount }

// Request is a message from a proposer (client) to an acceptor (wormserver).
//
// Ownership: a Request handed to the acceptor core is only read during the
// call; the core copies any value it keeps. Values may alias a decoder's
// buffer.
type Request struct {
	Kind   Kind
	Seg    uint64
	Off    uint32
	Ballot Ballot
	// Count is the number of registers for KindDecide and KindNotify.
	Count uint32
	// Values are the values of KindAccept, for registers Off, Off+1, ...
	Values [][]byte
}

// RegState is an acceptor's accepted state for one register.
type RegState struct {
	Off      uint32
	Accepted Ballot // ballot of Value; meaningful only when HasValue
	HasValue bool
	Decided  bool
	Value    []byte
}

// RegResult is an acceptor's verdict on one register of a KindAccept.
type RegResult struct {
	Status Status
	// Promised is the acceptor's promise for the register when Status is
	// StatusNack.
	Promised Ballot
	// Accepted is the ballot the acceptor had accepted for the register
	// when it answered StatusNack (zero when none), so that a proposer can
	// tell whether its own earlier attempt reached this acceptor.
	Accepted Ballot
	HasValue bool
	// Value is the decided value when Status is StatusDecided.
	Value []byte
}

// Response is an acceptor's answer to a Request.
//
// Ownership: slices in a Response produced by the acceptor core alias the
// acceptor's state and are valid only until the acceptor handles its next
// request; encode (or copy) the response before that.
type Response struct {
	Kind   Kind
	Status Status // StatusTrimmed / StatusOutOfRange / StatusInvalid / StatusError apply to the whole request
	// Promised: for KindPrepare and KindPrepareSeg, the acceptor's promise
	// after handling (equal to the request's ballot on success; the higher
	// promise on StatusNack).
	Promised Ballot
	// Reg: KindPrepare and KindRead: the register's accepted state.
	Reg RegState
	// Regs: KindPrepareSeg: every register of the segment that holds an
	// accepted value, ascending by offset.
	Regs []RegState
	// Contended: KindPrepareSeg: offsets whose per-register promise is
	// higher than the request's ballot (the range promise does not cover
	// them).
	Contended []uint32
	// Results: KindAccept: one verdict per value, in order.
	Results []RegResult
	// Seg, Off, Count: KindNotify.
	Seg   uint64
	Off   uint32
	Count uint32
	// Text: a human-readable explanation for StatusInvalid / StatusError,
	// or the status document for KindStatus.
	Text string
}

// RecordKind names a durable acceptor state change.
type RecordKind uint8

const (
	RecordInvalid RecordKind = iota
	// RecordPromise: register (Seg, Off) promised Ballot.
	RecordPromise
	// RecordSegPromise: segment Seg range-promised Ballot.
	RecordSegPromise
	// RecordAccept: register (Seg, Off) accepted Value at Ballot (and
	// promised at least Ballot).
	RecordAccept
	// RecordDecide: register (Seg, Off) is decided at Ballot. Those of
	// Snapshot and Export at ballot 0 carry the decided Value, which
	// Install checks (see zero.go); Handle's need not, and Apply ignores
	// it: the acceptor wrote them only for the value it held.
	RecordDecide
	// RecordTrim: segment Seg is trimmed; its registers are gone.
	RecordTrim
	// RecordMembership: the wormserver's membership in the sequence of
	// configurations (worm/server encodes it in Value), kept with the
	// acceptor's state so that it is as durable as the state it governs.
	// The acceptor never interprets it: it keeps the latest one, replays
	// it and emits it in snapshots, and neither exports nor installs it
	// (a membership belongs to one server). Seg, Off and Ballot are zero.
	RecordMembership
	recordKindCount
)

var recordKindNames = [...]string{"invalid", "promise", "seg-promise", "accept", "decide", "trim", "membership"}

func (k RecordKind) String() string {
	if int(k) < len(recordKindNames) {
		return recordKindNames[k]
	}
	return "record(" + itoa(uint64(k)) + ")"
}

// Valid reports whether k is a known record kind.
func (k RecordKind) Valid() bool { return k > RecordInvalid && k < recordKindCount }

// Record is one durable change of acceptor state. The acceptor core emits
// records; the server makes them durable (worm/storage) before it sends the
// responses that depend on them; on restart the records are replayed into a
// fresh Acceptor with Apply. Replaying a record twice is harmless.
//
// Ownership: Value aliases acceptor state; storage must encode it before
// the acceptor handles its next request.
type Record struct {
	Kind   RecordKind
	Seg    uint64
	Off    uint32
	Ballot Ballot
	Value  []byte
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

// Clone returns a deep copy of r whose slices alias nothing (the acceptor's
// responses alias its state and scratch space).
func (r *Response) Clone() *Response {
	c := new(Response)
	*c = *r
	if r.Reg.Value != nil {
		c.Reg.Value = append([]byte(nil), r.Reg.Value...)
	}
	if r.Regs != nil {
		c.Regs = make([]RegState, len(r.Regs))
		for i, g := range r.Regs {
			g.Value = append([]byte(nil), g.Value...)
			c.Regs[i] = g
		}
	}
	if r.Contended != nil {
		c.Contended = append([]uint32(nil), r.Contended...)
	}
	if r.Results != nil {
		c.Results = make([]RegResult, len(r.Results))
		for i, g := range r.Results {
			if g.Value != nil {
				g.Value = append([]byte(nil), g.Value...)
			}
			c.Results[i] = g
		}
	}
	return c
}
