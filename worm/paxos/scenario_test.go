package paxos

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"

	"github.com/wormspace/wormspace/worm"
)

// TestScenarios replays the data-driven scenarios in testdata/*.txt, in
// the style of etcd-io/raft's interaction tests: the pure core driven one
// message at a time, the test deciding which message is delivered,
// dropped or reordered, which acceptor crashes and when an operation gives
// up. Every command prints what happened, and the expected output is
// checked in; `go test ./worm/paxos -run Scenarios -rewrite` rewrites it
// after an intended change (review the diff).
//
// Commands (arguments are key=value):
//
//	init n=3 segsize=4           acceptors a0..a(n-1)
//	proposer name=p1 node=1      a proposer (client) with that node id
//	op name=w p=p1 kind=K ...    start an op; K and its arguments:
//	    alloc seg= meta=   check seg=   capture addr=SEG/OFF
//	    capture-seg seg=   read addr=   trim seg=
//	    write addr= values=v1,v2 [token=OP]   (the token an earlier
//	    capture op returned; no token: an unsafe write at ballot 0)
//	deliver [ids=1,2]            deliver messages in flight (default: all
//	                             that were in flight when the command began,
//	                             in order); requests reach acceptors,
//	                             responses reach their op
//	drop ids=1,2 | drop all      lose messages
//	refuse ids=1,2               the acceptors answer these requests with
//	                             StatusError and change nothing, as a
//	                             wormserver whose storage refuses (full
//	                             disk, failed engine)
//	stabilize                    deliver until nothing is in flight
//	fail op=w acceptor=2         the op's connection to a2 broke (Op.Fail)
//	nudge op=w / expire op=w     Op.Nudge, Op.Expire
//	crash acceptor=1             a1 loses its memory and its in-flight
//	                             messages; restart rebuilds it from the
//	                             records it made durable (Apply)
//	restart acceptor=1
//	net                          the messages in flight
//	state                        every acceptor's registers (from Snapshot)
//
// After each command the ops that finished print their results.
func TestScenarios(t *testing.T) {
	datadriven.Walk(t, "testdata", func(t *testing.T, path string) {
		s := &scenario{}
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			out, err := s.handle(d)
			if err != nil {
				return "error: " + err.Error() + "\n"
			}
			return out
		})
	})
}

// msg is one message in flight: a request from an op to an acceptor, or
// an acceptor's response to an op.
type msg struct {
	id   int
	op   string
	acc  int
	resp bool
	out  Out       // the request (and its tag) when !resp; the tag for resp
	r    *Response // the response when resp
}

type scenario struct {
	segSize uint32
	accs    []*Acceptor
	durable [][]Record
	down    []bool
	props   map[string]*Proposer
	ops     map[string]*Op
	opNames []string
	printed map[string]bool // ops whose result was printed
	net     []*msg
	nextID  int
	b       strings.Builder
}

func (s *scenario) printf(format string, args ...any) { fmt.Fprintf(&s.b, format, args...) }

func (s *scenario) handle(d *datadriven.TestData) (string, error) {
	s.b.Reset()
	if d.Cmd != "init" && s.accs == nil {
		return "", errors.New("init first")
	}
	var err error
	switch d.Cmd {
	case "init":
		err = s.init(d)
	case "proposer":
		err = s.proposer(d)
	case "op":
		err = s.startOp(d)
	case "deliver":
		err = s.deliver(d)
	case "drop":
		err = s.drop(d)
	case "refuse":
		err = s.refuse(d)
	case "stabilize":
		err = s.stabilize()
	case "fail", "nudge", "expire":
		err = s.poke(d)
	case "crash", "restart":
		err = s.crashRestart(d)
	case "net":
		for _, m := range s.net {
			s.printf("%s\n", s.fmtMsg(m))
		}
	case "state":
		s.state()
	default:
		err = fmt.Errorf("unknown command %q", d.Cmd)
	}
	if err != nil {
		return "", err
	}
	s.collect()
	s.finished()
	if s.b.Len() == 0 {
		return "ok\n", nil
	}
	return s.b.String(), nil
}

func arg(d *datadriven.TestData, key string) (string, bool) {
	for _, a := range d.CmdArgs {
		if a.Key == key {
			return strings.Join(a.Vals, ","), true
		}
	}
	return "", false
}

func mustArg(d *datadriven.TestData, key string) (string, error) {
	v, ok := arg(d, key)
	if !ok {
		return "", fmt.Errorf("%s needs %s=", d.Cmd, key)
	}
	return v, nil
}

func intArg(d *datadriven.TestData, key string) (int, error) {
	v, err := mustArg(d, key)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(v)
}

func (s *scenario) init(d *datadriven.TestData) error {
	n, err := intArg(d, "n")
	if err != nil {
		return err
	}
	seg, err := intArg(d, "segsize")
	if err != nil {
		return err
	}
	s.segSize = uint32(seg)
	s.accs = make([]*Acceptor, n)
	for i := range s.accs {
		s.accs[i] = NewAcceptor(s.segSize)
	}
	s.durable = make([][]Record, n)
	s.down = make([]bool, n)
	s.props = map[string]*Proposer{}
	s.ops = map[string]*Op{}
	s.printed = map[string]bool{}
	return nil
}

func (s *scenario) proposer(d *datadriven.TestData) error {
	name, err := mustArg(d, "name")
	if err != nil {
		return err
	}
	node, err := intArg(d, "node")
	if err != nil {
		return err
	}
	s.props[name] = NewProposer(uint64(node), name, len(s.accs), s.segSize)
	return nil
}

func (s *scenario) startOp(d *datadriven.TestData) error {
	name, err := mustArg(d, "name")
	if err != nil {
		return err
	}
	if _, dup := s.ops[name]; dup {
		return fmt.Errorf("op %s exists", name)
	}
	pn, err := mustArg(d, "p")
	if err != nil {
		return err
	}
	p := s.props[pn]
	if p == nil {
		return fmt.Errorf("no proposer %s", pn)
	}
	kind, err := mustArg(d, "kind")
	if err != nil {
		return err
	}
	seg := func() (uint64, error) {
		v, err := mustArg(d, "seg")
		if err != nil {
			return 0, err
		}
		return strconv.ParseUint(v, 10, 64)
	}
	addr := func() (worm.Addr, error) {
		v, err := mustArg(d, "addr")
		if err != nil {
			return worm.Addr{}, err
		}
		return worm.ParseAddr(v)
	}
	var op *Op
	switch kind {
	case "alloc", "check", "capture-seg", "trim":
		sg, err := seg()
		if err != nil {
			return err
		}
		switch kind {
		case "alloc":
			meta, _ := arg(d, "meta")
			op = p.Alloc(sg, []byte(meta))
		case "check":
			op = p.Check(sg)
		case "capture-seg":
			op = p.CaptureSegment(sg)
		case "trim":
			op = p.Trim(sg)
		}
	case "capture", "read", "write":
		a, err := addr()
		if err != nil {
			return err
		}
		switch kind {
		case "capture":
			op = p.Capture(a)
		case "read":
			op = p.Read(a)
		case "write":
			vs, err := mustArg(d, "values")
			if err != nil {
				return err
			}
			var values [][]byte
			for _, v := range strings.Split(vs, ",") {
				values = append(values, []byte(v))
			}
			var tok Ballot
			if from, ok := arg(d, "token"); ok {
				c := s.ops[from]
				if c == nil || !c.Done() || c.Result().Err != nil {
					return fmt.Errorf("token=%s: no successful capture op of that name", from)
				}
				tok = c.Result().Token
			}
			op = p.Write(a.Seg, a.Off, tok, values)
		}
	default:
		return fmt.Errorf("unknown op kind %q", kind)
	}
	s.ops[name] = op
	s.opNames = append(s.opNames, name)
	return nil
}

// collect moves every op's outbox into the network, in op order.
func (s *scenario) collect() {
	for _, name := range s.opNames {
		op := s.ops[name]
		for _, out := range op.TakeOutbox() {
			to := []int{out.To}
			if out.To == All {
				to = to[:0]
				for i := range s.accs {
					to = append(to, i)
				}
			}
			for _, i := range to {
				s.nextID++
				m := &msg{id: s.nextID, op: name, acc: i, out: out}
				if s.down[i] {
					// A crashed acceptor's connection is down: the request
					// cannot be sent, and the driver says so at once.
					if out.Tag != 0 {
						op.Unsent(i, out.Tag)
					}
					s.printf("%s (a%d down: unsent)\n", s.fmtMsg(m), i)
					continue
				}
				s.net = append(s.net, m)
				s.printf("%s\n", s.fmtMsg(m))
			}
		}
	}
}

// finished prints the results of ops that ended since the last command.
func (s *scenario) finished() {
	for _, name := range s.opNames {
		op := s.ops[name]
		if op.Done() && !s.printed[name] {
			s.printed[name] = true
			s.printf("%s done: %s\n", name, fmtResult(op.Result()))
		}
	}
}

func parseIDs(v string) (map[int]bool, error) {
	ids := map[int]bool{}
	for _, f := range strings.Split(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return nil, fmt.Errorf("bad id %q", f)
		}
		ids[n] = true
	}
	return ids, nil
}

func (s *scenario) deliver(d *datadriven.TestData) error {
	batch := slices.Clone(s.net)
	if v, ok := arg(d, "ids"); ok {
		ids, err := parseIDs(v)
		if err != nil {
			return err
		}
		batch = batch[:0]
		for _, m := range s.net {
			if ids[m.id] {
				batch = append(batch, m)
				delete(ids, m.id)
			}
		}
		if len(ids) > 0 {
			return fmt.Errorf("not in flight: %v", keys(ids))
		}
	}
	for _, m := range batch {
		s.deliverOne(m)
	}
	return nil
}

func keys(m map[int]bool) []int {
	var k []int
	for id := range m {
		k = append(k, id)
	}
	sort.Ints(k)
	return k
}

func (s *scenario) remove(m *msg) {
	s.net = slices.DeleteFunc(s.net, func(x *msg) bool { return x == m })
}

func (s *scenario) deliverOne(m *msg) {
	s.remove(m)
	if !m.resp {
		a := s.accs[m.acc]
		var resp Response
		recs := a.Handle(&m.out.Req, &resp, nil)
		// Durable before the reply leaves, as the server's engine does.
		for _, r := range recs {
			r.Value = bytes.Clone(r.Value)
			s.durable[m.acc] = append(s.durable[m.acc], r)
		}
		line := fmt.Sprintf("a%d <- #%d %s", m.acc, m.id, fmtReq(&m.out.Req))
		if len(recs) > 0 {
			line += " [durable: " + fmtRecs(recs) + "]"
		}
		s.printf("%s\n", line)
		if m.out.Tag != 0 {
			s.nextID++
			r := &msg{id: s.nextID, op: m.op, acc: m.acc, resp: true, out: m.out, r: resp.Clone()}
			s.net = append(s.net, r)
			s.printf("%s\n", s.fmtMsg(r))
		}
		return
	}
	op := s.ops[m.op]
	s.printf("%s <- #%d from a%d\n", m.op, m.id, m.acc)
	op.Step(m.acc, m.out.Tag, m.r)
	s.collect()
}

func (s *scenario) refuse(d *datadriven.TestData) error {
	v, err := mustArg(d, "ids")
	if err != nil {
		return err
	}
	ids, err := parseIDs(v)
	if err != nil {
		return err
	}
	for _, m := range slices.Clone(s.net) {
		if !ids[m.id] {
			continue
		}
		delete(ids, m.id)
		if m.resp {
			return fmt.Errorf("#%d is a response", m.id)
		}
		s.remove(m)
		s.printf("a%d <- #%d %s [refused]\n", m.acc, m.id, fmtReq(&m.out.Req))
		if m.out.Tag != 0 {
			s.nextID++
			r := &msg{id: s.nextID, op: m.op, acc: m.acc, resp: true, out: m.out,
				r: &Response{Kind: m.out.Req.Kind, Status: StatusError, Text: "storage refused"}}
			s.net = append(s.net, r)
			s.printf("%s\n", s.fmtMsg(r))
		}
	}
	if len(ids) > 0 {
		return fmt.Errorf("not in flight: %v", keys(ids))
	}
	return nil
}

func (s *scenario) drop(d *datadriven.TestData) error {
	if len(d.CmdArgs) == 1 && d.CmdArgs[0].Key == "all" {
		for _, m := range s.net {
			s.printf("dropped #%d\n", m.id)
		}
		s.net = nil
		return nil
	}
	v, err := mustArg(d, "ids")
	if err != nil {
		return err
	}
	ids, err := parseIDs(v)
	if err != nil {
		return err
	}
	for _, m := range slices.Clone(s.net) {
		if ids[m.id] {
			s.remove(m)
			delete(ids, m.id)
			s.printf("dropped #%d\n", m.id)
		}
	}
	if len(ids) > 0 {
		return fmt.Errorf("not in flight: %v", keys(ids))
	}
	return nil
}

func (s *scenario) stabilize() error {
	for i := 0; len(s.net) > 0; i++ {
		if i > 10000 {
			return errors.New("does not stabilize")
		}
		s.deliverOne(s.net[0])
	}
	return nil
}

func (s *scenario) poke(d *datadriven.TestData) error {
	name, err := mustArg(d, "op")
	if err != nil {
		return err
	}
	op := s.ops[name]
	if op == nil {
		return fmt.Errorf("no op %s", name)
	}
	switch d.Cmd {
	case "fail":
		a, err := intArg(d, "acceptor")
		if err != nil {
			return err
		}
		op.Fail(a)
	case "nudge":
		op.Nudge()
	case "expire":
		op.Expire()
	}
	s.collect()
	return nil
}

func (s *scenario) crashRestart(d *datadriven.TestData) error {
	i, err := intArg(d, "acceptor")
	if err != nil {
		return err
	}
	if i < 0 || i >= len(s.accs) {
		return fmt.Errorf("no acceptor %d", i)
	}
	if d.Cmd == "crash" {
		s.down[i] = true
		s.accs[i] = nil
		// Its connections break: every op with a request or a response
		// in flight to or from it learns of it, and those messages are
		// gone.
		failed := map[string]bool{}
		for _, m := range slices.Clone(s.net) {
			if m.acc == i {
				s.remove(m)
				s.printf("lost #%d\n", m.id)
				if m.out.Tag != 0 {
					failed[m.op] = true
				}
			}
		}
		for _, name := range s.opNames {
			if failed[name] {
				s.ops[name].Fail(i)
			}
		}
		return nil
	}
	a := NewAcceptor(s.segSize)
	for _, r := range s.durable[i] {
		if err := a.Apply(r); err != nil {
			return fmt.Errorf("a%d replay: %w", i, err)
		}
	}
	s.accs[i], s.down[i] = a, false
	s.printf("a%d restarted from %d records\n", i, len(s.durable[i]))
	return nil
}

func (s *scenario) state() {
	for i, a := range s.accs {
		if a == nil {
			s.printf("a%d: down\n", i)
			continue
		}
		var recs []Record
		a.Snapshot(func(r Record) error { recs = append(recs, r); return nil })
		sort.SliceStable(recs, func(x, y int) bool {
			if recs[x].Seg != recs[y].Seg {
				return recs[x].Seg < recs[y].Seg
			}
			return recs[x].Off < recs[y].Off
		})
		if len(recs) == 0 {
			s.printf("a%d: empty\n", i)
			continue
		}
		s.printf("a%d: %s\n", i, fmtRecs(recs))
	}
}

func (s *scenario) fmtMsg(m *msg) string {
	if m.resp {
		return fmt.Sprintf("#%d a%d -> %s %s", m.id, m.acc, m.op, fmtResp(m.r))
	}
	return fmt.Sprintf("#%d %s -> a%d %s", m.id, m.op, m.acc, fmtReq(&m.out.Req))
}

func fmtAddr(seg uint64, off uint32) string { return worm.Addr{Seg: seg, Off: off}.String() }

func fmtReq(r *Request) string {
	switch r.Kind {
	case KindPrepareSeg, KindTrim:
		s := fmt.Sprintf("%s %d", r.Kind, r.Seg)
		if r.Kind == KindPrepareSeg {
			s += " b=" + r.Ballot.String()
		}
		return s
	case KindAccept:
		var vs []string
		for _, v := range r.Values {
			vs = append(vs, strconv.Quote(string(v)))
		}
		return fmt.Sprintf("accept %s b=%s %s", fmtAddr(r.Seg, r.Off), r.Ballot, strings.Join(vs, ","))
	case KindDecide:
		s := fmt.Sprintf("decide %s count=%d b=%s", fmtAddr(r.Seg, r.Off), r.Count, r.Ballot)
		for _, v := range r.Values {
			s += " " + strconv.Quote(string(v))
		}
		return s
	case KindRead:
		return "read " + fmtAddr(r.Seg, r.Off)
	}
	return fmt.Sprintf("%s %s b=%s", r.Kind, fmtAddr(r.Seg, r.Off), r.Ballot)
}

func fmtReg(r RegState) string {
	if !r.HasValue {
		return "empty"
	}
	s := fmt.Sprintf("%q@%s", r.Value, r.Accepted)
	if r.Decided {
		s += " decided"
	}
	return s
}

func fmtResp(r *Response) string {
	s := fmt.Sprintf("%s %s", r.Kind, r.Status)
	switch r.Kind {
	case KindPrepare:
		s += fmt.Sprintf(" promised=%s reg=%s", r.Promised, fmtReg(r.Reg))
	case KindPrepareSeg:
		s += " promised=" + r.Promised.String()
		for _, rg := range r.Regs {
			s += fmt.Sprintf(" [%d]=%s", rg.Off, fmtReg(rg))
		}
		if len(r.Contended) > 0 {
			s += fmt.Sprintf(" contended=%v", r.Contended)
		}
	case KindRead:
		s += " reg=" + fmtReg(r.Reg)
	case KindAccept:
		for i, res := range r.Results {
			s += fmt.Sprintf(" [%d]=%s", i, res.Status)
			if res.Status == StatusNack {
				s += " promised=" + res.Promised.String()
			}
			if res.Status == StatusDecided {
				s += fmt.Sprintf(" %q", res.Value)
			}
		}
	}
	if r.Text != "" {
		s += " " + strconv.Quote(r.Text)
	}
	return s
}

func fmtRecs(recs []Record) string {
	var parts []string
	for _, r := range recs {
		p := fmt.Sprintf("%s %s", r.Kind, fmtAddr(r.Seg, r.Off))
		if r.Kind == RecordSegPromise || r.Kind == RecordTrim {
			p = fmt.Sprintf("%s %d", r.Kind, r.Seg)
		}
		if r.Kind != RecordTrim {
			p += " b=" + r.Ballot.String()
		}
		if r.Kind == RecordAccept {
			p += " " + strconv.Quote(string(r.Value))
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, "; ")
}

func fmtResult(r Result) string {
	var parts []string
	if r.Err != nil {
		parts = append(parts, "err="+r.Err.Error())
	} else {
		parts = append(parts, "ok")
	}
	if r.Value != nil {
		parts = append(parts, fmt.Sprintf("value=%q", r.Value))
	}
	if !r.Token.IsZero() {
		parts = append(parts, "token="+r.Token.String())
	}
	if len(r.Capture.Written) > 0 || len(r.Capture.Contended) > 0 {
		parts = append(parts, fmt.Sprintf("written=%d contended=%v", len(r.Capture.Written), r.Capture.Contended))
	}
	if r.Info.Owner != "" {
		parts = append(parts, fmt.Sprintf("owner=%s meta=%q", r.Info.Owner, r.Info.Meta))
	}
	return strings.Join(parts, " ")
}
