package paxos

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/wormspace/wormspace/worm"
)

// All addresses an Out to every acceptor.
const All = -1

// Out is a request an Op asks its driver to send.
type Out struct {
	To  int    // acceptor index in [0, N), or All
	Tag uint64 // request id; responses carry it back. 0: no response expected
	Req Request
}

// Result is the outcome of an Op. Err is nil or matches one of the worm
// error kinds. Value, Token, Capture, Info or Errs are filled by the Op kinds
// that produce them.
type Result struct {
	Err     error
	Value   []byte
	Token   Ballot
	Capture worm.SegmentCapture
	Info    worm.SegmentInfo
}

// Proposer holds what a client's operations share: its node identity, the
// cluster shape, the highest round it has seen and the segments it knows to
// be allocated. Its methods are safe for concurrent use; the Ops it creates
// are not (each Op belongs to one driver goroutine).
type Proposer struct {
	node    uint64
	id      string
	n       int
	quorum  int
	segSize uint32

	round     atomic.Uint64
	tag       atomic.Uint64
	allocated sync.Map // uint64 -> struct{}
	bound     bindings

	// MaxAttempts bounds the phase-1 retries of a contended capture before
	// it reports ErrPreempted.
	MaxAttempts int
}

// NewProposer returns a proposer for a cluster of n acceptors. node must be
// unique among all proposers that ever run (clients draw 64 random bits);
// id is the identity Alloc records.
func NewProposer(node uint64, id string, n int, segSize uint32) *Proposer {
	if n <= 0 || n > 64 {
		panic(fmt.Sprintf("paxos: %d acceptors (want 1..64)", n))
	}
	if node == 0 {
		panic("paxos: node 0 is reserved")
	}
	return &Proposer{node: node, id: id, n: n, quorum: n/2 + 1, segSize: segSize, MaxAttempts: 8}
}

// N returns the number of acceptors; Quorum the size of a majority.
func (p *Proposer) N() int              { return p.n }
func (p *Proposer) Quorum() int         { return p.quorum }
func (p *Proposer) ID() string          { return p.id }
func (p *Proposer) SegmentSize() uint32 { return p.segSize }

func (p *Proposer) newTag() uint64 { return p.tag.Add(1) }

// nextBallot returns a fresh ballot above every round this proposer has
// seen, including hint.
func (p *Proposer) nextBallot(hint Ballot) Ballot {
	for {
		cur := p.round.Load()
		r := max(cur, hint.Round) + 1
		if p.round.CompareAndSwap(cur, r) {
			return Ballot{Round: r, Node: p.node}
		}
	}
}

// observe raises the proposer's round knowledge.
func (p *Proposer) observe(b Ballot) {
	for {
		cur := p.round.Load()
		if b.Round <= cur || p.round.CompareAndSwap(cur, b.Round) {
			return
		}
	}
}

func (p *Proposer) markAllocated(seg uint64) { p.allocated.Store(seg, struct{}{}) }

// MarkAllocated records that seg is allocated, as the proposer does itself
// after an Alloc or a Check: its unsafe writes and reads of seg then skip
// the allocation check. For callers that learned it elsewhere (another
// process allocated seg and said so); a wrong claim lets an unsafe write
// land in an unallocated segment.
func (p *Proposer) MarkAllocated(seg uint64) { p.markAllocated(seg) }
func (p *Proposer) isAllocated(seg uint64) bool {
	_, ok := p.allocated.Load(seg)
	return ok
}

// Op is one WormSpace operation in progress: a deterministic state machine.
// After creating it, and after every Step, Fail, Nudge or Expire, the driver
// takes the requests to send with TakeOutbox; when Done reports true, Result
// is final. An Op ignores responses whose tag it does not expect, and
// duplicate responses.
type Op struct {
	p      *Proposer
	root   machine
	out    []Out
	done   bool
	res    Result
	exp    bool
	accept bool // a KindAccept has been sent: a write may take effect

	// The root machine and the first outbox entry live in the Op, saving
	// two allocations per operation.
	seq    seqM
	outBuf [1]Out
}

// rootSeq makes the Op's own sequence machine its root and returns it.
func (o *Op) rootSeq() *seqM {
	o.root = &o.seq
	return &o.seq
}

// TakeOutbox returns the requests to send and empties the outbox. The
// returned slice is valid until the next call on the Op.
func (o *Op) TakeOutbox() []Out {
	out := o.out
	o.out = o.out[:0]
	return out
}

// Done reports whether the Op has its Result.
func (o *Op) Done() bool { return o.done }

// Result returns the final outcome; valid once Done.
func (o *Op) Result() Result { return o.res }

// Step delivers acceptor from's response to the request with tag.
//
// Contract (the exhaustive explorer's reductions rely on it, and
// worm/explore checks them against exact exploration): an Op takes a
// response only if it answers one of the requests Pending reports (the
// current phase's tag, from an acceptor that has not answered or been
// given up on); it ignores every other response. Within one phase the
// outcome depends on which acceptors answered what, not on the order of
// their answers.
func (o *Op) Step(from int, tag uint64, resp *Response) {
	if o.done || from < 0 || from >= o.p.n {
		return
	}
	o.root.step(from, tag, resp)
}

// Fail tells the Op that acceptor from will not answer its outstanding
// requests (its connection broke or cannot be made). It applies to the
// requests sent so far: a driver must call Fail for every request it takes
// from the outbox and cannot send, right after taking it, and for the
// outstanding requests to an acceptor whose connection breaks.
func (o *Op) Fail(from int) {
	if o.done || from < 0 || from >= o.p.n {
		return
	}
	o.root.fail(from)
}

// Unsent tells the Op that the request with tag it just took from the
// outbox for acceptor from could not be sent at all (no connection): the
// acceptor certainly never saw it. It implies Fail(from), and lets a write
// that every other acceptor refused report a definite ErrPreempted instead
// of ErrUnknownOutcome while a minority is down. Drivers that cannot tell
// an unsent request from a lost one call Fail.
func (o *Op) Unsent(from int, tag uint64) {
	if o.done || from < 0 || from >= o.p.n {
		return
	}
	if ph := o.root.current(); ph != nil && ph.tag == tag && ph.answered&(1<<from) == 0 && ph.gaveUp&(1<<from) == 0 {
		ph.unsent |= 1 << from
	}
	o.root.fail(from)
}

// Nudge tells the Op to stop waiting for acceptors that have not answered
// yet when it already holds a quorum of answers (stragglers count as failed
// for the current phase). Drivers call it after a grace period.
func (o *Op) Nudge() {
	if !o.done {
		o.root.nudge()
	}
}

// Expire ends the Op at its deadline: it finishes with ErrUnavailable, or
// ErrUnknownOutcome where a write may still take effect.
func (o *Op) Expire() {
	if o.done {
		return
	}
	o.exp = true
	o.root.expire()
	if !o.done {
		panic("paxos: op did not finish on expire")
	}
}

// Pending returns, for a simulator that retransmits, the outstanding
// requests of the current phase addressed to acceptors that have not
// answered. Requests are idempotent at the acceptor.
func (o *Op) Pending() []Out {
	if o.done {
		return nil
	}
	ph := o.root.current()
	if ph == nil {
		return nil
	}
	var outs []Out
	for i := 0; i < o.p.n; i++ {
		if ph.answered&(1<<i) == 0 && ph.gaveUp&(1<<i) == 0 {
			outs = append(outs, Out{To: i, Tag: ph.tag, Req: ph.req})
		}
	}
	return outs
}

func (o *Op) finish(r Result) {
	o.done = true
	o.res = r
}

// machine is one step of an operation; machines nest (a write's resolving
// read, a read's repairing capture). A machine reports completion through
// the callback its parent gave it.
type machine interface {
	start()
	step(from int, tag uint64, resp *Response)
	fail(from int)
	nudge()
	expire()
	current() *phase
}

// phase tracks one broadcast request and who answered it.
type phase struct {
	tag      uint64
	req      Request
	answered uint64 // bitmask of acceptors that answered
	gaveUp   uint64 // bitmask of acceptors that failed or were nudged away
	// unsent: acceptors the driver could not send this phase's request to
	// at all (a subset of gaveUp). They certainly never saw it.
	unsent uint64
}

func (o *Op) broadcast(ph *phase, req Request) {
	*ph = phase{tag: o.p.newTag(), req: req}
	if req.Kind == KindAccept {
		o.accept = true
	}
	o.out = append(o.out, Out{To: All, Tag: ph.tag, Req: req})
}

// accept records an answer from `from`; false if it is stale or duplicate.
func (ph *phase) accept(from int, tag uint64) bool {
	bit := uint64(1) << from
	if tag != ph.tag || ph.answered&bit != 0 || ph.gaveUp&bit != 0 {
		return false
	}
	ph.answered |= bit
	return true
}

func (ph *phase) giveUp(from int) bool {
	bit := uint64(1) << from
	if ph.answered&bit != 0 || ph.gaveUp&bit != 0 {
		return false
	}
	ph.gaveUp |= bit
	return true
}

func (ph *phase) giveUpAll(n int) {
	for i := 0; i < n; i++ {
		ph.giveUp(i)
	}
}

func popcount(x uint64) int {
	c := 0
	for ; x != 0; x &= x - 1 {
		c++
	}
	return c
}

func (ph *phase) nAnswered() int { return popcount(ph.answered) }
func (ph *phase) nPending(n int) int {
	return n - popcount(ph.answered) - popcount(ph.gaveUp)
}

// ---------------------------------------------------------------------------
// Accept: phase 2 for consecutive registers, shared by writes, batches,
// unsafe writes and captures that finish a value.

type regOutcome uint8

const (
	outPending regOutcome = iota
	outOK
	outWritten   // another value is decided; value in written[i]
	outPreempted // certainly not accepted by a majority, and not resurrectable
	outAmbiguous // may or may not be chosen
	outTrimmed
	outRange
	outUnavailable // nothing changed anywhere (every answer was an error)
)

type acceptM struct {
	o      *Op
	seg    uint64
	off    uint32
	ballot Ballot
	values [][]byte
	ph     phase

	ok, nack, errs []uint8
	maybeOurs      []bool
	outcome        []regOutcome
	written        [][]byte
	open           int
	hint           Ballot
	done           func(m *acceptM)

	// one backs the per-register slices of a single-register accept
	// (every plain write), so that it takes one allocation, not seven.
	one struct {
		ok, nack, errs [1]uint8
		maybeOurs      [1]bool
		outcome        [1]regOutcome
		written        [1][]byte
	}
}

func newAccept(o *Op, seg uint64, off uint32, b Ballot, values [][]byte, done func(*acceptM)) *acceptM {
	n := len(values)
	m := &acceptM{o: o, seg: seg, off: off, ballot: b, values: values, open: n, done: done}
	if n == 1 {
		m.ok, m.nack, m.errs = m.one.ok[:], m.one.nack[:], m.one.errs[:]
		m.maybeOurs, m.outcome, m.written = m.one.maybeOurs[:], m.one.outcome[:], m.one.written[:]
		return m
	}
	m.ok, m.nack, m.errs, m.maybeOurs = make([]uint8, n), make([]uint8, n), make([]uint8, n), make([]bool, n)
	m.outcome, m.written = make([]regOutcome, n), make([][]byte, n)
	return m
}

func (m *acceptM) start() {
	m.o.broadcast(&m.ph, Request{Kind: KindAccept, Seg: m.seg, Off: m.off, Ballot: m.ballot, Values: m.values})
}

func (m *acceptM) current() *phase { return &m.ph }

func (m *acceptM) resolve(i int, out regOutcome) {
	if m.outcome[i] == outPending {
		m.outcome[i] = out
		m.open--
	}
}

func (m *acceptM) step(from int, tag uint64, resp *Response) {
	if resp.Kind != KindAccept || !m.ph.accept(from, tag) {
		return
	}
	switch resp.Status {
	case StatusOK:
		if len(resp.Results) != len(m.values) {
			// A malformed answer counts as an error answer.
			for i := range m.values {
				m.errs[i]++
			}
			break
		}
		for i, r := range resp.Results {
			switch r.Status {
			case StatusOK:
				m.ok[i]++
			case StatusDecided:
				if bytes.Equal(r.Value, m.values[i]) {
					m.ok[i]++
				} else if m.outcome[i] == outPending {
					m.written[i] = bytes.Clone(r.Value)
					m.resolve(i, outWritten)
				}
			case StatusNack:
				m.nack[i]++
				m.hint = m.hint.Max(r.Promised)
				// A nacking acceptor that holds a value may hold ours
				// (from this attempt or an identical earlier one that
				// someone's capture finished): not a definite preemption,
				// the write resolves it by reading.
				if r.HasValue {
					m.maybeOurs[i] = true
				}
			case StatusTrimmed:
				m.resolve(i, outTrimmed)
			case StatusOutOfRange:
				m.resolve(i, outRange)
			default:
				m.errs[i]++
			}
		}
	case StatusTrimmed:
		for i := range m.values {
			m.resolve(i, outTrimmed)
		}
	case StatusOutOfRange:
		for i := range m.values {
			m.resolve(i, outRange)
		}
	default: // invalid, error: nothing changed at that acceptor
		for i := range m.values {
			m.errs[i]++
		}
	}
	m.check(false)
}

func (m *acceptM) fail(from int) {
	if m.ph.giveUp(from) {
		m.check(false)
	}
}

func (m *acceptM) nudge() {
	if m.ph.nAnswered() >= m.o.p.quorum {
		m.ph.giveUpAll(m.o.p.n)
		m.check(false)
	}
}

func (m *acceptM) expire() { m.check(true) }

// check resolves every register whose fate is known; when final is set,
// the rest become ambiguous.
func (m *acceptM) check(final bool) {
	p := m.o.p
	pending := m.ph.nPending(p.n)
	gaveUp := popcount(m.ph.gaveUp)
	for i := range m.values {
		if m.outcome[i] != outPending {
			continue
		}
		ok := int(m.ok[i])
		switch {
		case ok >= p.quorum:
			m.resolve(i, outOK)
		case ok+pending >= p.quorum && !final:
			// still possible
		case pending > 0 && !final:
			// A majority is out of reach, but stragglers may still answer
			// and make the failure definite.
		case ok == 0 && gaveUp == 0 && !m.maybeOurs[i] && pending == 0 && m.errs[i] == 0:
			// Every acceptor answered, none took it, and none holds a
			// value that could be ours: a definite preemption.
			m.resolve(i, outPreempted)
		case ok == 0 && gaveUp == 0 && pending == 0 && m.nack[i] == 0 && !m.maybeOurs[i]:
			// Every acceptor answered with an error (storage refusing, a
			// failed engine): this attempt changed nothing anywhere.
			m.resolve(i, outUnavailable)
		default:
			m.resolve(i, outAmbiguous)
		}
	}
	if m.open == 0 && m.done != nil {
		d := m.done
		m.done = nil
		m.o.p.observe(m.hint)
		d(m)
	}
}

// refusedOnly reports, for an ambiguous register i, that this attempt had
// certainly no effect: every acceptor that received it refused it (a nack
// without any value) and the others never received it at all (Unsent). The
// register may still hold our value from an earlier write with the same
// token, so the caller confirms with a read before calling it preempted.
func (m *acceptM) refusedOnly(i int) bool {
	return m.ok[i] == 0 && m.nack[i] > 0 && m.errs[i] == 0 && !m.maybeOurs[i] &&
		m.ph.unsent != 0 && m.ph.gaveUp&^m.ph.unsent == 0 && !m.ballot.IsZero()
}

// decideReq is the KindDecide for count registers from (seg, off) chosen
// at b. At ballot 0 it carries their values: several unsafe writers of a
// register may each have left a different value at ballot 0 on some
// acceptors, and only the chosen one may be marked decided. values (len
// count) are only read at ballot 0.
func decideReq(seg uint64, off uint32, b Ballot, count uint32, values [][]byte) Request {
	req := Request{Kind: KindDecide, Seg: seg, Off: off, Ballot: b, Count: count}
	if b.IsZero() {
		req.Values = values
	}
	return req
}

// decide emits KindDecide for the runs of registers resolved outOK.
func (m *acceptM) decide() {
	start := -1
	flush := func(end int) {
		if start >= 0 {
			m.o.out = append(m.o.out, Out{To: All, Req: decideReq(m.seg, m.off+uint32(start), m.ballot, uint32(end-start), m.values[start:end])})
			start = -1
		}
	}
	for i, oc := range m.outcome {
		if oc == outOK {
			if start < 0 {
				start = i
			}
		} else {
			flush(i)
		}
	}
	flush(len(m.outcome))
}

// ---------------------------------------------------------------------------
// Read

type readM struct {
	o       *Op
	addr    worm.Addr
	ph      phase
	attempt int
	// per-ballot tallies of the answers so far
	tally    []ballotTally
	anyValue bool
	// observe: never repair. A write resolving its own ambiguous outcome
	// only looks: repairing would finish its value at a higher ballot and
	// let a write whose token a later capture preempted succeed.
	observe bool
	child   machine
	done    func(value []byte, err error)
}

type ballotTally struct {
	b     Ballot
	count int
	value []byte
}

func (m *readM) start() {
	m.tally = m.tally[:0]
	m.anyValue = false
	m.child = nil
	m.o.broadcast(&m.ph, Request{Kind: KindRead, Seg: m.addr.Seg, Off: m.addr.Off})
}

func (m *readM) current() *phase {
	if m.child != nil {
		return m.child.current()
	}
	return &m.ph
}

func (m *readM) finish(v []byte, err error) {
	if d := m.done; d != nil {
		m.done = nil
		d(v, err)
	}
}

func (m *readM) step(from int, tag uint64, resp *Response) {
	if m.child != nil {
		m.child.step(from, tag, resp)
		return
	}
	if resp.Kind != KindRead || !m.ph.accept(from, tag) {
		return
	}
	switch resp.Status {
	case StatusOK:
	case StatusTrimmed:
		m.finish(nil, worm.ErrTrimmed)
		return
	case StatusOutOfRange:
		m.finish(nil, worm.ErrOutOfRange)
		return
	default:
		// An acceptor that cannot answer counts as one that did not.
		m.ph.answered &^= 1 << from
		m.ph.gaveUp |= 1 << from
		m.check()
		return
	}
	r := &resp.Reg
	if r.HasValue {
		if r.Decided {
			m.finish(bytes.Clone(r.Value), nil)
			return
		}
		m.anyValue = true
		found := false
		for i := range m.tally {
			// Ballot 0 does not identify a value (several unsafe writers
			// of one register each write theirs there): tally values too.
			if m.tally[i].b == r.Accepted && bytes.Equal(m.tally[i].value, r.Value) {
				m.tally[i].count++
				found = true
				break
			}
		}
		if !found {
			m.tally = append(m.tally, ballotTally{b: r.Accepted, count: 1, value: bytes.Clone(r.Value)})
		}
	}
	m.check()
}

func (m *readM) check() {
	p := m.o.p
	for _, t := range m.tally {
		if t.count >= p.quorum {
			var vals [][]byte
			if t.b.IsZero() {
				vals = [][]byte{t.value} // only a ballot-0 decide carries it
			}
			m.o.out = append(m.o.out, Out{To: All, Req: decideReq(m.addr.Seg, m.addr.Off, t.b, 1, vals)})
			m.finish(t.value, nil)
			return
		}
	}
	answered, pending := m.ph.nAnswered(), m.ph.nPending(p.n)
	if answered >= p.quorum && !m.anyValue {
		m.finish(nil, worm.ErrEmpty)
		return
	}
	if answered+pending < p.quorum {
		m.finish(nil, worm.ErrUnavailable)
		return
	}
	if answered < p.quorum || pending > 0 {
		return // wait for more answers (or a nudge)
	}
	if m.observe {
		m.finish(nil, errUndecided)
		return
	}
	m.repair()
}

// errUndecided ends an observing read that found a value on a minority:
// it neither repairs nor reports empty.
var errUndecided = errors.New("paxos: register undecided")

// repair: a minority holds a value. Capture and finish the highest one.
func (m *readM) repair() {
	c := &captureM{o: m.o, addr: m.addr}
	c.done = func(tok Ballot, v []byte, err error) {
		m.child = nil
		switch {
		case err == nil:
			m.finish(nil, worm.ErrEmpty) // the capture found nothing: nothing was chosen
		case errorsIsWritten(err):
			m.finish(v, nil)
		case err == worm.ErrPreempted && m.attempt < m.o.p.MaxAttempts && !m.o.exp:
			m.attempt++
			m.start()
		case err == worm.ErrPreempted:
			m.finish(nil, worm.ErrUnavailable)
		default:
			m.finish(nil, err)
		}
	}
	m.child = c
	c.start()
}

func (m *readM) fail(from int) {
	if m.child != nil {
		m.child.fail(from)
		return
	}
	if m.ph.giveUp(from) {
		m.check()
	}
}

func (m *readM) nudge() {
	if m.child != nil {
		m.child.nudge()
		return
	}
	if m.ph.nAnswered() >= m.o.p.quorum {
		m.ph.giveUpAll(m.o.p.n)
		m.check()
	}
}

func (m *readM) expire() {
	if m.child != nil {
		m.child.expire()
		return
	}
	m.finish(nil, worm.ErrUnavailable)
}

// errorsIsWritten avoids importing errors for one comparison on a value we
// created ourselves.
func errorsIsWritten(err error) bool { _, ok := err.(*worm.WrittenError); return ok }

// ---------------------------------------------------------------------------
// Capture (one register)

type captureM struct {
	o       *Op
	addr    worm.Addr
	ballot  Ballot
	hint    Ballot
	attempt int
	ph      phase
	ok      int
	nacks   int
	best    Ballot
	bestVal []byte
	hasBest bool
	// zero tallies the ballot-0 values of the promises (see zeroVotes).
	zero    zeroVotes
	finishM *acceptM
	done    func(tok Ballot, value []byte, err error)
}

func (m *captureM) start() {
	m.ballot = m.o.p.nextBallot(m.hint)
	m.ok, m.nacks, m.hasBest, m.bestVal, m.best, m.finishM = 0, 0, false, nil, Ballot{}, nil
	m.zero.reset()
	m.o.broadcast(&m.ph, Request{Kind: KindPrepare, Seg: m.addr.Seg, Off: m.addr.Off, Ballot: m.ballot})
}

func (m *captureM) current() *phase {
	if m.finishM != nil {
		return &m.finishM.ph
	}
	return &m.ph
}

func (m *captureM) finish(tok Ballot, v []byte, err error) {
	if d := m.done; d != nil {
		m.done = nil
		d(tok, v, err)
	}
}

func (m *captureM) written(v []byte) {
	m.finish(Ballot{}, v, &worm.WrittenError{Addr: m.addr, Value: v})
}

func (m *captureM) step(from int, tag uint64, resp *Response) {
	if m.finishM != nil {
		m.finishM.step(from, tag, resp)
		return
	}
	if resp.Kind != KindPrepare || !m.ph.accept(from, tag) {
		return
	}
	switch resp.Status {
	case StatusOK, StatusNack:
	case StatusTrimmed:
		m.finish(Ballot{}, nil, worm.ErrTrimmed)
		return
	case StatusOutOfRange:
		m.finish(Ballot{}, nil, worm.ErrOutOfRange)
		return
	default:
		m.ph.answered &^= 1 << from
		m.ph.gaveUp |= 1 << from
		m.check()
		return
	}
	r := &resp.Reg
	if r.HasValue && r.Decided {
		m.written(bytes.Clone(r.Value))
		return
	}
	if resp.Status == StatusNack {
		m.nacks++
		m.hint = m.hint.Max(resp.Promised)
	} else {
		m.ok++
		if r.HasValue && (!m.hasBest || m.best.Less(r.Accepted)) {
			m.best, m.bestVal, m.hasBest = r.Accepted, bytes.Clone(r.Value), true
		}
		if r.HasValue && r.Accepted.IsZero() {
			m.zero.add(r.Value)
		}
	}
	m.check()
}

func (m *captureM) check() {
	p := m.o.p
	if m.ok >= p.quorum {
		if m.ph.nPending(p.n) > 0 {
			// Wait for every live acceptor (a nudge ends the wait): once
			// the capture returns, every acceptor that answers has
			// promised, so an older token's write is refused everywhere
			// instead of slipping into an acceptor the prepare had not
			// reached yet (which makes that write ambiguous).
			return
		}
		if !m.hasBest {
			m.finish(m.ballot, nil, nil)
			return
		}
		if m.best.IsZero() && m.zero.conflict() {
			v, ok := m.zero.choose(p.n, p.quorum, m.ok)
			if !ok {
				m.retry()
				return
			}
			m.bestVal = v
		}
		m.finishValue()
		return
	}
	if m.ok+m.ph.nPending(p.n) >= p.quorum {
		return
	}
	if m.nacks > 0 {
		m.retry()
		return
	}
	m.finish(Ballot{}, nil, worm.ErrUnavailable)
}

func (m *captureM) retry() {
	m.o.p.observe(m.hint)
	if m.attempt+1 >= m.o.p.MaxAttempts || m.o.exp {
		m.finish(Ballot{}, nil, worm.ErrPreempted)
		return
	}
	m.attempt++
	m.start()
}

// finishValue writes the highest accepted value at the capture's ballot.
func (m *captureM) finishValue() {
	v := m.bestVal
	m.finishM = newAccept(m.o, m.addr.Seg, m.addr.Off, m.ballot, [][]byte{v}, func(a *acceptM) {
		m.finishM = nil
		switch a.outcome[0] {
		case outOK:
			a.decide()
			m.o.p.bound.bind(m.addr, m.ballot, v, true)
			m.written(v)
		case outWritten:
			m.written(a.written[0])
		case outTrimmed:
			m.finish(Ballot{}, nil, worm.ErrTrimmed)
		case outRange:
			m.finish(Ballot{}, nil, worm.ErrOutOfRange)
		case outUnavailable:
			m.finish(Ballot{}, nil, worm.ErrUnavailable)
		default: // preempted or ambiguous: someone else is at work; go again
			m.hint = m.hint.Max(a.hint)
			if m.o.exp {
				m.finish(Ballot{}, nil, worm.ErrUnavailable)
				return
			}
			m.retry()
		}
	})
	m.finishM.start()
}

func (m *captureM) fail(from int) {
	if m.finishM != nil {
		m.finishM.fail(from)
		return
	}
	if m.ph.giveUp(from) {
		m.check()
	}
}

func (m *captureM) nudge() {
	if m.finishM != nil {
		m.finishM.nudge()
		return
	}
	// A quorum of promises decides; stragglers are waited for only
	// until the nudge.
	if m.ok >= m.o.p.quorum {
		m.ph.giveUpAll(m.o.p.n)
		m.check()
	}
}

func (m *captureM) expire() {
	if m.finishM != nil {
		m.finishM.expire()
		return
	}
	m.finish(Ballot{}, nil, worm.ErrUnavailable)
}

// ---------------------------------------------------------------------------
// Segment capture

type captureSegM struct {
	o         *Op
	seg       uint64
	ballot    Ballot
	hint      Ballot
	attempt   int
	ph        phase
	ok, nacks int
	regs      map[uint32]*segReg
	contended map[uint32]bool
	runs      [][2]uint32 // [start, end) offsets to finish, in order
	finishM   *acceptM
	done      func(worm.SegmentCapture, error)
}

type segReg struct {
	b       Ballot
	value   []byte
	decided bool
	zero    zeroVotes // the promises' ballot-0 values (see zero.go)
}

func (m *captureSegM) start() {
	m.ballot = m.o.p.nextBallot(m.hint)
	m.ok, m.nacks = 0, 0
	m.regs, m.contended = map[uint32]*segReg{}, map[uint32]bool{}
	m.o.broadcast(&m.ph, Request{Kind: KindPrepareSeg, Seg: m.seg, Ballot: m.ballot})
}

func (m *captureSegM) current() *phase {
	if m.finishM != nil {
		return &m.finishM.ph
	}
	return &m.ph
}

func (m *captureSegM) finish(c worm.SegmentCapture, err error) {
	if d := m.done; d != nil {
		m.done = nil
		d(c, err)
	}
}

func (m *captureSegM) step(from int, tag uint64, resp *Response) {
	if m.finishM != nil {
		m.finishM.step(from, tag, resp)
		return
	}
	if resp.Kind != KindPrepareSeg || !m.ph.accept(from, tag) {
		return
	}
	switch resp.Status {
	case StatusOK:
		m.ok++
		for _, r := range resp.Regs {
			if !r.HasValue || r.Off >= m.o.p.segSize {
				continue
			}
			cur := m.regs[r.Off]
			switch {
			case cur == nil:
				cur = &segReg{b: r.Accepted, value: bytes.Clone(r.Value), decided: r.Decided}
				m.regs[r.Off] = cur
			case cur.decided:
			case r.Decided || cur.b.Less(r.Accepted):
				cur.b, cur.value, cur.decided = r.Accepted, bytes.Clone(r.Value), r.Decided
			}
			if r.Accepted.IsZero() {
				cur.zero.add(r.Value)
			}
		}
		for _, off := range resp.Contended {
			m.contended[off] = true
		}
	case StatusNack:
		m.nacks++
		m.hint = m.hint.Max(resp.Promised)
	case StatusTrimmed:
		m.finish(worm.SegmentCapture{}, worm.ErrTrimmed)
		return
	default:
		m.ph.answered &^= 1 << from
		m.ph.gaveUp |= 1 << from
	}
	m.check()
}

func (m *captureSegM) check() {
	p := m.o.p
	if m.ok >= p.quorum {
		if m.ph.nPending(p.n) > 0 {
			return // wait for every live acceptor, as captureM.check does
		}
		m.planFinish()
		return
	}
	if m.ok+m.ph.nPending(p.n) >= p.quorum {
		return
	}
	if m.nacks > 0 {
		m.again()
		return
	}
	m.finish(worm.SegmentCapture{}, worm.ErrUnavailable)
}

// again starts phase 1 over at a higher ballot, or fails with
// ErrPreempted when the attempts or the deadline are used up.
func (m *captureSegM) again() {
	p := m.o.p
	if m.attempt+1 >= p.MaxAttempts || m.o.exp {
		m.finish(worm.SegmentCapture{}, worm.ErrPreempted)
		return
	}
	p.observe(m.hint)
	m.attempt++
	m.start()
}

// planFinish groups the registers that hold undecided values into runs of
// consecutive offsets and finishes them one run at a time.
func (m *captureSegM) planFinish() {
	p := m.o.p
	offs := make([]uint32, 0, len(m.regs))
	for off, r := range m.regs {
		if r.decided {
			continue
		}
		if r.b.IsZero() && r.zero.conflict() {
			v, ok := r.zero.choose(p.n, p.quorum, m.ok)
			if !ok {
				// Silent acceptors would tell which ballot-0 value was
				// chosen: ask again, as captureM does.
				m.again()
				return
			}
			r.value = v
		}
		offs = append(offs, off)
	}
	sort.Slice(offs, func(i, j int) bool { return offs[i] < offs[j] })
	m.runs = m.runs[:0]
	for _, off := range offs {
		if n := len(m.runs); n > 0 && m.runs[n-1][1] == off {
			m.runs[n-1][1]++
		} else {
			m.runs = append(m.runs, [2]uint32{off, off + 1})
		}
	}
	m.nextRun()
}

func (m *captureSegM) nextRun() {
	if len(m.runs) == 0 {
		m.result()
		return
	}
	run := m.runs[0]
	m.runs = m.runs[1:]
	vals := make([][]byte, 0, run[1]-run[0])
	for off := run[0]; off < run[1]; off++ {
		vals = append(vals, m.regs[off].value)
	}
	m.finishM = newAccept(m.o, m.seg, run[0], m.ballot, vals, func(a *acceptM) {
		m.finishM = nil
		a.decide()
		for i, oc := range a.outcome {
			off := run[0] + uint32(i)
			switch oc {
			case outOK:
				m.regs[off].decided = true
			case outWritten:
				m.regs[off].value, m.regs[off].decided = a.written[i], true
			case outTrimmed:
				m.finish(worm.SegmentCapture{}, worm.ErrTrimmed)
				return
			case outRange:
				m.finish(worm.SegmentCapture{}, worm.ErrOutOfRange)
				return
			default:
				// Preempted or ambiguous: the value may still be chosen
				// at another ballot, and a token at this ballot must never
				// carry a different value for this register. Start over
				// with a higher ballot.
				m.hint = m.hint.Max(a.hint)
				if m.o.exp || m.attempt+1 >= m.o.p.MaxAttempts {
					if oc == outUnavailable || m.o.exp {
						m.finish(worm.SegmentCapture{}, worm.ErrUnavailable)
					} else {
						m.finish(worm.SegmentCapture{}, worm.ErrPreempted)
					}
					return
				}
				m.o.p.observe(m.hint)
				m.attempt++
				m.start()
				return
			}
		}
		m.nextRun()
	})
	m.finishM.start()
}

func (m *captureSegM) result() {
	c := worm.SegmentCapture{Token: m.ballot}
	for off, r := range m.regs {
		if r.decided {
			// Phase 1 at this ballot found the register chosen: the
			// ballot is bound to that value (see bindings).
			m.o.p.bound.bind(worm.Addr{Seg: m.seg, Off: off}, m.ballot, r.value, true)
			c.Written = append(c.Written, worm.Entry{Off: off, Value: r.value})
		}
	}
	sort.Slice(c.Written, func(i, j int) bool { return c.Written[i].Off < c.Written[j].Off })
	for off := range m.contended {
		if _, w := m.regs[off]; !w {
			c.Contended = append(c.Contended, off)
		}
	}
	sort.Slice(c.Contended, func(i, j int) bool { return c.Contended[i] < c.Contended[j] })
	m.finish(c, nil)
}

func (m *captureSegM) fail(from int) {
	if m.finishM != nil {
		m.finishM.fail(from)
		return
	}
	if m.ph.giveUp(from) {
		m.check()
	}
}

func (m *captureSegM) nudge() {
	if m.finishM != nil {
		m.finishM.nudge()
		return
	}
	if m.ok >= m.o.p.quorum {
		m.ph.giveUpAll(m.o.p.n)
		m.check()
	}
}

func (m *captureSegM) expire() {
	if m.finishM != nil {
		m.finishM.expire()
		return
	}
	m.finish(worm.SegmentCapture{}, worm.ErrUnavailable)
}

// ---------------------------------------------------------------------------
// Write, WriteBatch, WriteUnsafe

type writeM struct {
	o       *Op
	seg     uint64
	off     uint32
	ballot  Ballot
	values  [][]byte
	acc     *acceptM
	errs    []error
	resolve []int  // indices still to resolve by reading
	refused []bool // per index: refusedOnly held (see acceptM.refusedOnly)
	child   machine
	done    func(errs []error)
}

func (m *writeM) start() {
	m.acc = newAccept(m.o, m.seg, m.off, m.ballot, m.values, m.accepted)
	m.child = m.acc
	m.acc.start()
}

func (m *writeM) accepted(a *acceptM) {
	a.decide()
	m.errs = make([]error, len(m.values))
	for i, oc := range a.outcome {
		addr := worm.Addr{Seg: m.seg, Off: m.off + uint32(i)}
		switch oc {
		case outOK:
		case outWritten:
			m.errs[i] = &worm.WrittenError{Addr: addr, Value: a.written[i]}
		case outPreempted:
			m.errs[i] = worm.ErrPreempted
		case outTrimmed:
			m.errs[i] = worm.ErrTrimmed
		case outRange:
			m.errs[i] = worm.ErrOutOfRange
		case outUnavailable:
			m.errs[i] = worm.ErrUnavailable
		default:
			m.errs[i] = worm.ErrUnknownOutcome
			if a.refusedOnly(i) && !m.o.p.bound.has(addr, m.ballot) {
				// No earlier ambiguous attempt of ours: an empty read
				// proves nothing with this token is there to be chosen.
				if m.refused == nil {
					m.refused = make([]bool, len(m.values))
				}
				m.refused[i] = true
			}
			m.o.p.bound.bind(addr, m.ballot, m.values[i], false)
			if !m.o.exp {
				m.resolve = append(m.resolve, i)
			}
		}
	}
	m.nextResolve()
}

// nextResolve reads each ambiguous register: our value means success,
// another value means written, anything else stays unknown.
func (m *writeM) nextResolve() {
	if len(m.resolve) == 0 || m.o.exp {
		m.child = nil
		if d := m.done; d != nil {
			m.done = nil
			d(m.errs)
		}
		return
	}
	i := m.resolve[0]
	m.resolve = m.resolve[1:]
	addr := worm.Addr{Seg: m.seg, Off: m.off + uint32(i)}
	r := &readM{o: m.o, addr: addr, observe: true}
	r.done = func(v []byte, err error) {
		switch {
		case err == nil && bytes.Equal(v, m.values[i]):
			m.errs[i] = nil
		case err == nil:
			m.errs[i] = &worm.WrittenError{Addr: addr, Value: v}
		case err == worm.ErrTrimmed:
			m.errs[i] = worm.ErrTrimmed
		case err == worm.ErrEmpty && m.refused != nil && m.refused[i]:
			// The attempt reached no acceptor that took it, and a quorum
			// holds no value: it had no effect.
			m.errs[i] = worm.ErrPreempted
			m.o.p.bound.unbind(addr, m.ballot)
		}
		m.nextResolve()
	}
	m.child = r
	r.start()
}

func (m *writeM) current() *phase {
	if m.child != nil {
		return m.child.current()
	}
	return nil
}
func (m *writeM) step(from int, tag uint64, resp *Response) {
	if m.child != nil {
		m.child.step(from, tag, resp)
	}
}
func (m *writeM) fail(from int) {
	if m.child != nil {
		m.child.fail(from)
	}
}
func (m *writeM) nudge() {
	if m.child != nil {
		m.child.nudge()
	}
}
func (m *writeM) expire() {
	if m.child != nil {
		m.child.expire()
	}
}

// ---------------------------------------------------------------------------
// Trim

type trimM struct {
	o    *Op
	seg  uint64
	ph   phase
	ok   int
	done func(error)
}

func (m *trimM) start()          { m.o.broadcast(&m.ph, Request{Kind: KindTrim, Seg: m.seg}) }
func (m *trimM) current() *phase { return &m.ph }
func (m *trimM) finish(err error) {
	if d := m.done; d != nil {
		m.done = nil
		d(err)
	}
}
func (m *trimM) step(from int, tag uint64, resp *Response) {
	if resp.Kind != KindTrim || !m.ph.accept(from, tag) {
		return
	}
	if resp.Status == StatusOK || resp.Status == StatusTrimmed {
		m.ok++
	} else {
		m.ph.answered &^= 1 << from
		m.ph.gaveUp |= 1 << from
	}
	m.check()
}
func (m *trimM) check() {
	p := m.o.p
	switch {
	case m.ok >= p.quorum:
		m.finish(nil)
	case m.ok+m.ph.nPending(p.n) < p.quorum:
		if m.ok > 0 {
			m.finish(worm.ErrUnknownOutcome)
		} else {
			m.finish(worm.ErrUnavailable)
		}
	}
}
func (m *trimM) fail(from int) {
	if m.ph.giveUp(from) {
		m.check()
	}
}
func (m *trimM) nudge() {}
func (m *trimM) expire() {
	if m.ok > 0 {
		m.finish(worm.ErrUnknownOutcome)
	} else {
		m.finish(worm.ErrUnavailable)
	}
}

// ---------------------------------------------------------------------------
// seqM runs machines one after another: an allocation check, then the
// operation proper. Each stage is built when the previous one finished.

type seqM struct {
	child machine
}

func (m *seqM) run(c machine) { m.child = c; c.start() }
func (m *seqM) start()        {}
func (m *seqM) current() *phase {
	if m.child != nil {
		return m.child.current()
	}
	return nil
}
func (m *seqM) step(from int, tag uint64, resp *Response) {
	if m.child != nil {
		m.child.step(from, tag, resp)
	}
}
func (m *seqM) fail(from int) {
	if m.child != nil {
		m.child.fail(from)
	}
}
func (m *seqM) nudge() {
	if m.child != nil {
		m.child.nudge()
	}
}
func (m *seqM) expire() {
	if m.child != nil {
		m.child.expire()
	}
}

// ---------------------------------------------------------------------------
// Segment metadata (Alloc / Check)

// EncodeSegmentInfo encodes what Alloc writes to a segment's metadata WOR.
func EncodeSegmentInfo(owner string, meta []byte) []byte {
	b := make([]byte, 0, 4+len(owner)+len(meta))
	b = binary.AppendUvarint(b, uint64(len(owner)))
	b = append(b, owner...)
	return append(b, meta...)
}

// DecodeSegmentInfo decodes a metadata WOR's value.
func DecodeSegmentInfo(v []byte) (owner string, meta []byte, err error) {
	n, k := binary.Uvarint(v)
	if k <= 0 || n > uint64(len(v)-k) {
		return "", nil, fmt.Errorf("%w: malformed segment metadata", worm.ErrInvalid)
	}
	return string(v[k : k+int(n)]), v[k+int(n):], nil
}

func (p *Proposer) info(v []byte) (worm.SegmentInfo, error) {
	owner, meta, err := DecodeSegmentInfo(v)
	if err != nil {
		return worm.SegmentInfo{}, err
	}
	return worm.SegmentInfo{Owner: owner, Meta: meta, Won: owner == p.id}, nil
}

// checkM reads a segment's metadata WOR.
func (o *Op) checkM(seg uint64, done func(worm.SegmentInfo, error)) machine {
	r := &readM{o: o, addr: worm.Addr{Seg: seg, Off: worm.MetaOffset}}
	r.done = func(v []byte, err error) {
		switch {
		case err == worm.ErrEmpty:
			done(worm.SegmentInfo{}, worm.ErrUnallocated)
		case err != nil:
			done(worm.SegmentInfo{}, err)
		default:
			info, derr := o.p.info(v)
			if derr == nil {
				o.p.markAllocated(seg)
			}
			done(info, derr)
		}
	}
	return r
}

// ---------------------------------------------------------------------------
// Constructors. Each returns an Op whose first requests are in its outbox.

func (p *Proposer) newOp() *Op {
	o := &Op{p: p}
	o.out = o.outBuf[:0]
	return o
}

// afterAllocCheck runs next once seg is known to be allocated.
func (o *Op) afterAllocCheck(seg uint64, next func(s *seqM)) {
	s := o.rootSeq()
	if o.p.isAllocated(seg) {
		next(s)
		return
	}
	s.run(o.checkM(seg, func(_ worm.SegmentInfo, err error) {
		if err != nil {
			o.finish(Result{Err: err})
			return
		}
		if o.exp {
			o.finish(Result{Err: worm.ErrUnavailable})
			return
		}
		next(s)
	}))
}

func (p *Proposer) badAddr(a worm.Addr) error {
	if a.Off >= p.segSize {
		return worm.ErrOutOfRange
	}
	return nil
}

func (p *Proposer) failed(err error) *Op {
	o := p.newOp()
	o.finish(Result{Err: err})
	return o
}

// Read starts a linearizable read of addr.
func (p *Proposer) Read(addr worm.Addr) *Op {
	if err := p.badAddr(addr); err != nil {
		return p.failed(err)
	}
	o := p.newOp()
	o.afterAllocCheck(addr.Seg, func(s *seqM) {
		r := &readM{o: o, addr: addr}
		r.done = func(v []byte, err error) { o.finish(Result{Value: v, Err: err}) }
		s.run(r)
	})
	return o
}

// Capture starts a capture of addr.
func (p *Proposer) Capture(addr worm.Addr) *Op {
	if err := p.badAddr(addr); err != nil {
		return p.failed(err)
	}
	o := p.newOp()
	o.afterAllocCheck(addr.Seg, func(s *seqM) {
		c := &captureM{o: o, addr: addr}
		c.done = func(tok Ballot, v []byte, err error) { o.finish(Result{Token: tok, Value: v, Err: err}) }
		s.run(c)
	})
	return o
}

// CaptureSegment starts a capture of every register of seg.
func (p *Proposer) CaptureSegment(seg uint64) *Op {
	o := p.newOp()
	o.afterAllocCheck(seg, func(s *seqM) {
		c := &captureSegM{o: o, seg: seg}
		c.done = func(sc worm.SegmentCapture, err error) { o.finish(Result{Capture: sc, Token: sc.Token, Err: err}) }
		s.run(c)
	})
	return o
}

// Write starts a write of values to consecutive registers from (seg, off)
// at ballot tok. A zero tok is an unsafe write (ballot 0), which first
// checks that the segment is allocated. Result.Err is nil, the single
// register's error, or a *worm.BatchError for several values.
func (p *Proposer) Write(seg uint64, off uint32, tok Ballot, values [][]byte) *Op {
	if len(values) == 0 {
		return p.failed(fmt.Errorf("%w: empty batch", worm.ErrInvalid))
	}
	if uint64(off)+uint64(len(values)) > uint64(p.segSize) {
		return p.failed(worm.ErrOutOfRange)
	}
	// Registers whose (register, token) is already bound to another value
	// are answered locally; the batch still carries the bound value for
	// them (one value per ballot stays true), so the others proceed.
	var local []error
	if !tok.IsZero() {
		for i, v := range values {
			addr := worm.Addr{Seg: seg, Off: off + uint32(i)}
			err := p.bound.conflict(addr, tok, v)
			if err == nil {
				continue
			}
			if local == nil {
				local = make([]error, len(values))
				values = append([][]byte(nil), values...)
			}
			if err == errBound {
				err = fmt.Errorf("%w: token %v already carries another value for %v whose outcome is unknown; read the register (only the identical write may be retried)", worm.ErrInvalid, tok, addr)
			}
			local[i] = err
			values[i] = p.bound.value(addr, tok)
		}
		if len(values) == 1 && local != nil {
			return p.failed(local[0])
		}
	}
	o := p.newOp()
	w := &writeM{o: o, seg: seg, off: off, ballot: tok, values: values}
	w.done = func(errs []error) {
		for i, e := range local {
			if e != nil {
				errs[i] = e
			}
		}
		if len(errs) == 1 {
			o.finish(Result{Err: errs[0]})
			return
		}
		for _, e := range errs {
			if e != nil {
				o.finish(Result{Err: &worm.BatchError{Seg: seg, Off: off, Errs: errs}})
				return
			}
		}
		o.finish(Result{})
	}
	if tok.IsZero() {
		o.afterAllocCheck(seg, func(s *seqM) { s.run(w) })
	} else {
		s := o.rootSeq()
		s.run(w)
	}
	return o
}

// Trim starts trimming seg.
func (p *Proposer) Trim(seg uint64) *Op {
	o := p.newOp()
	t := &trimM{o: o, seg: seg}
	t.done = func(err error) { o.finish(Result{Err: err}) }
	s := o.rootSeq()
	s.run(t)
	return o
}

// Check starts reading seg's allocation record.
func (p *Proposer) Check(seg uint64) *Op {
	o := p.newOp()
	s := o.rootSeq()
	s.run(o.checkM(seg, func(info worm.SegmentInfo, err error) { o.finish(Result{Info: info, Err: err}) }))
	return o
}

// Alloc starts allocating seg with meta: capture the metadata WOR, write
// this proposer's identity and meta; whoever's value is chosen won.
// allocAttempts multiplies MaxAttempts for Alloc: its outcome is always
// definite (someone's value is chosen and everyone learns it), so it
// keeps capturing through a duel of many concurrent allocators (24 on one
// segment in the conformance suite) until its deadline rather than giving
// up with ErrPreempted, which Alloc's contract does not have.
const allocAttempts = 8

func (p *Proposer) Alloc(seg uint64, meta []byte) *Op {
	o := p.newOp()
	s := o.rootSeq()
	mine := EncodeSegmentInfo(p.id, meta)
	addr := worm.Addr{Seg: seg, Off: worm.MetaOffset}
	attempts := 0
	var capture func()
	learned := func(v []byte) {
		info, err := p.info(v)
		if err == nil {
			p.markAllocated(seg)
		}
		o.finish(Result{Info: info, Err: err})
	}
	capture = func() {
		c := &captureM{o: o, addr: addr}
		c.done = func(tok Ballot, v []byte, err error) {
			switch {
			case errorsIsWritten(err):
				learned(v)
			case err == worm.ErrPreempted && attempts < allocAttempts*p.MaxAttempts && !o.exp:
				// Duelling allocators: capture again; once any value is
				// accepted, the next capture finishes it.
				attempts++
				capture()
			case err != nil:
				o.finish(Result{Err: err})
			default:
				w := &writeM{o: o, seg: seg, off: worm.MetaOffset, ballot: tok, values: [][]byte{mine}}
				w.done = func(errs []error) {
					err := errs[0]
					switch {
					case err == nil:
						learned(mine)
					case errorsIsWritten(err):
						v, _ := worm.WrittenValue(err)
						learned(v)
					case (err == worm.ErrPreempted || err == worm.ErrUnknownOutcome) && attempts < allocAttempts*p.MaxAttempts && !o.exp:
						// Preempted, or not known (stragglers given up on):
						// a new capture finishes whichever value is there,
						// ours or another allocator's, and makes it definite.
						attempts++
						capture()
					default:
						o.finish(Result{Err: err})
					}
				}
				s.run(w)
			}
		}
		s.run(c)
	}
	capture()
	return o
}
