package explore

import (
	"crypto/sha256"
	"encoding/binary"
	"hash/fnv"

	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/paxos"
)

// The one register every script works on, in a segment of one register.
const segSize = 1

var reg = worm.Addr{Seg: 0, Off: 0}

// inputKind names a call into an Op.
type inputKind uint8

const (
	inStep inputKind = iota + 1
	inFail
	inNudge
	inExpire
	inUnsent
)

// input is one call into a client's current Op. A client's whole state
// (its Proposer, its current Op, its place in the script) is a
// deterministic function of its sequence of inputs.
type input struct {
	kind  inputKind
	opSeq int // the op it was given to (checked on replay)
	from  int
	tag   uint64
	resp  *paxos.Response // immutable once logged
	text  string          // canonical text of resp
	// h chains the hashes of every input up to this one.
	h [16]byte
}

func (in *input) chain(prev [16]byte) {
	var b []byte
	b = append(b, prev[:]...)
	b = append(b, byte(in.kind))
	b = binary.AppendUvarint(b, uint64(in.opSeq))
	b = binary.AppendUvarint(b, uint64(in.from))
	b = binary.AppendUvarint(b, in.tag)
	b = append(b, in.text...)
	s := sha256.Sum256(b)
	copy(in.h[:], s[:16])
}

// client is the live state of one scripted proposer.
type client struct {
	idx    int
	spec   *Client
	p      *paxos.Proposer
	pc     int // index of the current action in the script; len(Script) when done
	op     *paxos.Op
	opSeq  int // 0: the prelude allocation check; then one per op started
	tries  int // retries of the current write used
	tok    worm.Token
	hasTok bool
	log    []*input
	digest uint64 // running hash of everything the client emitted
	// preTag is the tag of the prelude's read; preErr its outcome.
	preTag uint64
	preErr error
}

// hooks are the driver's reactions to a client's outputs; nil in replay.
type hooks interface {
	emit(c *client, out *paxos.Out)
	started(c *client, a Action)
	finished(c *client, a Action, res paxos.Result)
}

func newClient(idx int, spec *Client, n, maxAttempts int) *client {
	c := &client{idx: idx, spec: spec}
	c.p = paxos.NewProposer(spec.Node, spec.Name, n, segSize)
	c.p.MaxAttempts = maxAttempts
	// Prelude: learn that the segment is allocated, so that the scripted
	// ops go straight to the register. The read's requests are not sent;
	// the explorer feeds one answer (the metadata register is decided).
	c.op = c.p.Check(reg.Seg)
	for _, out := range c.op.TakeOutbox() {
		c.preTag = out.Tag
		c.note(&out)
	}
	return c
}

func (c *client) lastHash() [16]byte {
	if len(c.log) == 0 {
		return [16]byte{}
	}
	return c.log[len(c.log)-1].h
}

func (c *client) note(out *paxos.Out) {
	h := fnv.New64a()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], c.digest)
	h.Write(b[:])
	h.Write(appendRequest([]byte{byte(out.To + 1), byte(out.Tag)}, &out.Req))
	c.digest = h.Sum64()
}

func (c *client) noteResult(r *paxos.Result) {
	h := fnv.New64a()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], c.digest)
	h.Write(b[:])
	h.Write([]byte(describeResult(r)))
	c.digest = h.Sum64()
}

// live reports whether the client has an op running.
func (c *client) live() bool { return c.op != nil && !c.op.Done() }

// apply logs in and hands it to the current op.
func (c *client) apply(in *input) {
	if in.opSeq != c.opSeq || c.op == nil {
		panic("explore: input for another op")
	}
	in.chain(c.lastHash())
	c.log = append(c.log[:len(c.log):len(c.log)], in)
	c.call(in)
}

func (c *client) call(in *input) {
	switch in.kind {
	case inStep:
		c.op.Step(in.from, in.tag, in.resp)
	case inFail:
		c.op.Fail(in.from)
	case inNudge:
		c.op.Nudge()
	case inExpire:
		c.op.Expire()
	case inUnsent:
		c.op.Unsent(in.from, in.tag)
	}
}

// settle takes the op's outbox and, each time the op is done, moves the
// script on, until the current op waits for input (or the script ends).
func (c *client) settle(h hooks) {
	for c.op != nil {
		for _, out := range c.op.TakeOutbox() {
			c.note(&out)
			if h != nil && c.opSeq > 0 {
				h.emit(c, &out)
			}
		}
		if !c.op.Done() {
			return
		}
		res := c.op.Result()
		c.noteResult(&res)
		c.advance(res, h)
	}
}

// advance records the finished op's result and starts the next op.
func (c *client) advance(res paxos.Result, h hooks) {
	script := c.spec.Script
	if c.opSeq == 0 {
		c.preErr = res.Err
	} else {
		a := script[c.pc]
		if h != nil {
			h.finished(c, a, res)
		}
		switch {
		case a.Op == Capture:
			c.tok, c.hasTok = res.Token, res.Err == nil
			c.pc++
			c.tries = 0
		case (a.Op == Write || a.Op == WriteUnsafe) && res.Err == worm.ErrUnknownOutcome && c.tries < a.Retries:
			c.tries++ // reissue the identical write
		default:
			c.pc++
			c.tries = 0
		}
	}
	c.op = nil
	for c.pc < len(script) {
		a := script[c.pc]
		var op *paxos.Op
		switch a.Op {
		case Capture:
			op = c.p.Capture(reg)
		case Write:
			if !c.hasTok {
				c.pc++
				continue // no token: skip
			}
			op = c.p.Write(reg.Seg, reg.Off, c.tok, [][]byte{[]byte(a.Value)})
		case WriteUnsafe:
			op = c.p.Write(reg.Seg, reg.Off, worm.Token{}, [][]byte{[]byte(a.Value)})
		case Read:
			op = c.p.Read(reg)
		}
		c.op = op
		c.opSeq++
		if h != nil {
			h.started(c, a)
		}
		return
	}
}

// replay rebuilds a client from its input log, without hooks.
func replayClient(idx int, spec *Client, n, maxAttempts int, log []*input) *client {
	c := newClient(idx, spec, n, maxAttempts)
	for _, in := range log {
		if in.opSeq != c.opSeq || c.op == nil {
			panic("explore: replay diverged: input for another op")
		}
		c.call(in)
		c.settle(nil)
	}
	c.log = log
	return c
}

func describeResult(r *paxos.Result) string {
	switch {
	case r.Err != nil:
		return "err " + r.Err.Error()
	case r.Value != nil:
		return "value " + string(r.Value)
	default:
		return "token " + r.Token.String()
	}
}
