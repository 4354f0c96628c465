package server

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/paxos"
	"github.com/wormspace/wormspace/worm/wire"
)

// membServer starts a server over log (a new memLog when nil), its
// acceptor recovered from the log's durable records (a restart), joining
// when join is set.
func membServer(t *testing.T, join bool, log *memLog, id uint32) *testServer {
	t.Helper()
	if log == nil {
		log = newMemLog()
	}
	ts := startServerOn(t, recovered(t, log), log, func(c *Config) { c.AcceptorID = id })
	if join {
		if _, err := ts.eng.Join(); err != nil {
			t.Fatal(err)
		}
	}
	return ts
}

// recovered replays log's durable records into a new acceptor, as
// storage does after a crash.
func recovered(t *testing.T, log *memLog) *paxos.Acceptor {
	t.Helper()
	acc := paxos.NewAcceptor(testSegSize)
	log.mu.Lock()
	defer log.mu.Unlock()
	for _, r := range log.recs[:log.durable] {
		if err := acc.Apply(r); err != nil {
			t.Fatal(err)
		}
	}
	return acc
}

// startServerOn is startServer over a given acceptor.
func startServerOn(t *testing.T, acc *paxos.Acceptor, log *memLog, tweak func(*Config)) *testServer {
	t.Helper()
	eng := NewEngine(acc, log, quietLogger(), nil)
	cfg := Config{Engine: eng, AcceptorID: 7, Cluster: "test", Logger: quietLogger(), HandshakeTimeout: 2 * time.Second}
	if tweak != nil {
		tweak(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{t: t, srv: srv, eng: eng, log: log, served: make(chan error, 1), pipe: newPipeListener()}
	go func() { ts.served <- srv.Serve(ts.pipe) }()
	t.Cleanup(func() {
		srv.Close()
		<-ts.served
		eng.Close()
	})
	return ts
}

// dialEpoch dials a test client bound to epoch.
func (ts *testServer) dialEpoch(epoch uint64) *testClient {
	ts.t.Helper()
	nc, err := ts.rawDial()
	if err != nil {
		ts.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	sh, err := wire.ClientHandshake(ctx, nc, wire.ClientHello{ID: "tester", Epoch: epoch}, nil)
	if err != nil {
		ts.t.Fatal(err)
	}
	c := &testClient{t: ts.t, nc: nc, r: wire.NewReader(nc, int(sh.MaxFrame)), w: wire.NewWriter(nc, int(sh.MaxFrame), int(sh.MaxValue)), hello: sh}
	ts.t.Cleanup(func() { nc.Close() })
	return c
}

// control sends a control request and returns its reply, and the
// membership pushes that arrived before it.
func (c *testClient) control(id uint64, req *wire.Control) (*wire.ControlReply, []wire.Membership) {
	c.t.Helper()
	c.sendControl(id, req)
	return c.awaitControl(id)
}

func (c *testClient) sendControl(id uint64, req *wire.Control) {
	c.t.Helper()
	c.wmu.Lock()
	c.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err := c.nc.Write(wire.AppendControl(nil, id, req))
	c.wmu.Unlock()
	if err != nil {
		c.t.Fatalf("control %v: %v", req.Op, err)
	}
}

// awaitControl reads the reply to control request id, and the membership
// pushes that arrive before it.
func (c *testClient) awaitControl(id uint64) (*wire.ControlReply, []wire.Membership) {
	c.t.Helper()
	var pushes []wire.Membership
	for {
		f := c.rawFrame()
		if f.Type != wire.FrameControl {
			c.t.Fatalf("control reply %d: got a %v frame", id, f.Type)
		}
		var r wire.ControlReply
		if err := wire.DecodeControlReply(f.Payload, 0, &r); err != nil {
			c.t.Fatal(err)
		}
		if f.ID == 0 {
			pushes = append(pushes, r.Membership)
			continue
		}
		if f.ID != id {
			c.t.Fatalf("control reply to %d, want %d", f.ID, id)
		}
		for i := range r.Records {
			r.Records[i].Value = bytes.Clone(r.Records[i].Value)
		}
		return &r, pushes
	}
}

func (c *testClient) rawFrame() wire.Frame {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	f, err := c.r.Next()
	if err != nil {
		c.t.Fatalf("reading a frame: %v", err)
	}
	return f
}

// push reads the next frame, which must be a membership push.
func (c *testClient) push() wire.Membership {
	c.t.Helper()
	f := c.rawFrame()
	var r wire.ControlReply
	if f.Type != wire.FrameControl || f.ID != 0 || wire.DecodeControlReply(f.Payload, 0, &r) != nil {
		c.t.Fatalf("got %v %d, want a membership push", f.Type, f.ID)
	}
	return r.Membership
}

var (
	cfg1 = wire.Config{Epoch: 1, Members: []wire.Member{{ID: 7, Addr: "a:1"}, {ID: 8, Addr: "b:1"}, {ID: 9, Addr: "n:1"}}}
	cfg2 = wire.Config{Epoch: 1, Members: []wire.Member{{ID: 7, Addr: "a:1"}, {ID: 8, Addr: "b:1"}, {ID: 10, Addr: "m:1"}}}
)

func tokenAccept(seg uint64, off uint32, b worm.Ballot, v string) *paxos.Request {
	return &paxos.Request{Kind: paxos.KindAccept, Seg: seg, Off: off, Ballot: b, Values: [][]byte{[]byte(v)}}
}

// A sealed member refuses every request of the sealed epoch with
// StatusSealed and changes nothing; the seal is persisted before the
// reply and survives a restart; a request handled before the seal is
// answered normally even when its sync comes after.
func TestSealRefusesEpochAndPersists(t *testing.T) {
	log := newMemLog()
	ts := membServer(t, false, log, 7)
	c := ts.dial()
	if r := c.roundTrip(1, accept(3, 0, []byte("before"))); r.Status != paxos.StatusOK {
		t.Fatalf("accept before the seal: %+v", r)
	}
	// An accept whose sync is held back while the seal happens.
	gate := make(chan struct{})
	log.mu.Lock()
	log.gate = gate
	log.mu.Unlock()
	c.do(2, accept(3, 1, []byte("racing")))
	eventually(t, "the racing accept to be handled", func() bool { return log.appended() >= 2 })
	admin := ts.dial()
	admin.sendControl(9, &wire.Control{Op: wire.CtlSeal, Epoch: 0, Config: cfg1})
	// The seal is in force at once (before it is durable: refusals
	// reveal nothing)...
	eventually(t, "the seal", func() bool { m, _ := ts.eng.Membership(); return m.State == wire.StateSealed })
	close(gate)
	// ...and answered once its record is durable.
	rep, _ := admin.awaitControl(9)
	if rep.Status != wire.CtlOK || rep.Membership.State != wire.StateSealed || !rep.Membership.Next.Equal(cfg1) {
		t.Fatalf("seal: %+v", rep)
	}
	log.mu.Lock()
	sealAt := -1
	for i, r := range log.recs {
		if r.Kind == paxos.RecordMembership {
			sealAt = i
		}
	}
	if sealAt < 0 || sealAt >= log.durable {
		t.Fatalf("the seal was answered with its record at %d, durable %d", sealAt, log.durable)
	}
	log.mu.Unlock()
	// The push of the seal and the reply to the racing accept, in either
	// order.
	var gotReply, gotPush bool
	for !gotReply || !gotPush {
		f := c.rawFrame()
		switch f.Type {
		case wire.FrameControl:
			var r wire.ControlReply
			if f.ID != 0 || wire.DecodeControlReply(f.Payload, 0, &r) != nil || r.Membership.State != wire.StateSealed {
				t.Fatalf("push after the seal: %d %+v", f.ID, r)
			}
			gotPush = true
		case wire.FrameResponse:
			var r paxos.Response
			if f.ID != 2 || wire.DecodeResponse(f.Payload, 0, &r) != nil || r.Status != paxos.StatusOK {
				t.Fatalf("the accept handled before the seal: %d %+v", f.ID, r)
			}
			gotReply = true
		default:
			t.Fatalf("unexpected %v frame", f.Type)
		}
	}
	before := log.appended()
	for i, req := range []*paxos.Request{
		accept(3, 2, []byte("after")),
		{Kind: paxos.KindRead, Seg: 3, Off: 0},
		{Kind: paxos.KindPrepare, Seg: 3, Off: 2, Ballot: ballot(5)},
		{Kind: paxos.KindPrepareSeg, Seg: 3, Ballot: ballot(5)},
		{Kind: paxos.KindTrim, Seg: 3},
	} {
		if r := c.roundTrip(uint64(10+i), req); r.Status != paxos.StatusSealed {
			t.Fatalf("%v after the seal: %v, want sealed", req.Kind, r.Status)
		}
	}
	c.do(20, &paxos.Request{Kind: paxos.KindDecide, Seg: 3, Off: 0, Count: 1})
	c.works2(t)
	if n := log.appended(); n != before {
		t.Fatalf("sealed member appended %d records", n-before)
	}
	// Restart on the log's durable records: still sealed.
	ts.srv.Close()
	ts.eng.Close()
	ts2 := membServer(t, false, log, 7)
	c2 := ts2.dial()
	if c2.hello.Membership.State != wire.StateSealed || !c2.hello.Membership.Next.Equal(cfg1) {
		t.Fatalf("hello after restart: %v", c2.hello.Membership)
	}
	if r := c2.roundTrip(1, &paxos.Request{Kind: paxos.KindRead, Seg: 3, Off: 0}); r.Status != paxos.StatusSealed {
		t.Fatalf("read after restart: %v, want sealed", r.Status)
	}
	// Connections bound to the next epoch are refused until activation.
	c3 := ts2.dialEpoch(1)
	if r := c3.roundTrip(1, &paxos.Request{Kind: paxos.KindRead, Seg: 3, Off: 0}); r.Status != paxos.StatusSealed {
		t.Fatalf("read of epoch 1 before activation: %v", r.Status)
	}
	rep, _ = ts2.dial().control(1, &wire.Control{Op: wire.CtlActivate, Config: cfg1})
	if rep.Status != wire.CtlOK || !rep.Membership.Serves(1) {
		t.Fatalf("activate: %+v", rep)
	}
	if m := c3.push(); !m.Serves(1) {
		t.Fatalf("push after activation: %v", m)
	}
	if m := c2.push(); !m.Serves(1) {
		t.Fatalf("push after activation on a connection of epoch 0: %v", m)
	}
	r := c3.roundTrip(2, &paxos.Request{Kind: paxos.KindRead, Seg: 3, Off: 1})
	if r.Status != paxos.StatusOK || string(r.Reg.Value) != "racing" {
		t.Fatalf("read of epoch 1 after activation: %+v", r)
	}
	if r := c2.roundTrip(2, &paxos.Request{Kind: paxos.KindRead, Seg: 3, Off: 0}); r.Status != paxos.StatusSealed {
		t.Fatalf("read of epoch 0 after activation of 1: %v", r.Status)
	}
}

// works2 checks the connection still answers (with sealed, since the
// epoch is sealed): decides are dropped silently.
func (c *testClient) works2(t *testing.T) {
	t.Helper()
	if r := c.roundTrip(999, &paxos.Request{Kind: paxos.KindRead, Seg: 1}); r.Status != paxos.StatusSealed {
		t.Fatalf("read: %v", r.Status)
	}
}

// The rules of seal and activate: only an active member of the epoch
// seals it, once per configuration; only members of the next
// configuration are activated in it.
func TestSealAndActivateRules(t *testing.T) {
	ts := membServer(t, false, nil, 7)
	a := ts.dial()
	expect := func(rep *wire.ControlReply, want wire.ControlStatus, what string) {
		t.Helper()
		if rep.Status != want {
			t.Fatalf("%s: %v (%s), want %v", what, rep.Status, rep.Text, want)
		}
	}
	rep, _ := a.control(1, &wire.Control{Op: wire.CtlSeal, Epoch: 1, Config: wire.Config{Epoch: 2, Members: cfg1.Members}})
	expect(rep, wire.CtlRefused, "seal of an epoch not served")
	rep, _ = a.control(2, &wire.Control{Op: wire.CtlSeal, Epoch: 0, Config: wire.Config{Epoch: 0, Members: cfg1.Members}})
	expect(rep, wire.CtlInvalid, "seal for a configuration of the same epoch")
	rep, _ = a.control(3, &wire.Control{Op: wire.CtlSeal, Epoch: 0, Config: wire.Config{Epoch: 1}})
	expect(rep, wire.CtlInvalid, "seal for an empty configuration")
	rep, _ = a.control(4, &wire.Control{Op: wire.CtlActivate, Config: cfg1})
	expect(rep, wire.CtlRefused, "activation without a seal")
	rep, _ = a.control(5, &wire.Control{Op: wire.CtlExport, Epoch: 0})
	expect(rep, wire.CtlRefused, "export of an active member")
	rep, _ = a.control(6, &wire.Control{Op: wire.CtlInstall, Config: cfg1})
	expect(rep, wire.CtlRefused, "install into a member")
	rep, pushes := a.control(7, &wire.Control{Op: wire.CtlSeal, Epoch: 0, Config: cfg1})
	expect(rep, wire.CtlOK, "seal")
	if len(pushes) != 1 || pushes[0].State != wire.StateSealed {
		t.Fatalf("pushes after the seal: %v", pushes)
	}
	rep, pushes = a.control(8, &wire.Control{Op: wire.CtlSeal, Epoch: 0, Config: cfg1})
	expect(rep, wire.CtlOK, "the same seal again")
	if len(pushes) != 0 {
		t.Fatalf("%d pushes after a seal that changed nothing", len(pushes))
	}
	rep, _ = a.control(9, &wire.Control{Op: wire.CtlSeal, Epoch: 0, Config: cfg2})
	expect(rep, wire.CtlRefused, "a seal for another configuration")
	// A member that missed changes is pointed at a later configuration.
	ts3 := membServer(t, false, nil, 7)
	d := ts3.dial()
	rep, _ = d.control(1, &wire.Control{Op: wire.CtlSeal, Epoch: 0, Config: cfg1})
	expect(rep, wire.CtlOK, "seal")
	cfg3 := wire.Config{Epoch: 3, Members: cfg1.Members}
	rep, _ = d.control(2, &wire.Control{Op: wire.CtlSeal, Epoch: 0, Config: cfg3})
	if rep.Status != wire.CtlOK || !rep.Membership.Next.Equal(cfg3) {
		t.Fatalf("sealed member pointed at a later configuration: %v %s", rep.Status, rep.Text)
	}
	rep, _ = d.control(3, &wire.Control{Op: wire.CtlSeal, Epoch: 0, Config: cfg1})
	expect(rep, wire.CtlRefused, "pointing a sealed member back at an older configuration")
	rep, _ = d.control(4, &wire.Control{Op: wire.CtlActivate, Config: cfg3})
	if rep.Status != wire.CtlOK || !rep.Membership.Serves(3) {
		t.Fatalf("catching up to epoch 3: %v %s", rep.Status, rep.Text)
	}
	rep, _ = a.control(10, &wire.Control{Op: wire.CtlActivate, Config: cfg2})
	expect(rep, wire.CtlRefused, "activation in another configuration")
	notMember := wire.Config{Epoch: 1, Members: []wire.Member{{ID: 8, Addr: "b:1"}, {ID: 9, Addr: "n:1"}, {ID: 10, Addr: "m:1"}}}
	ts2 := membServer(t, false, nil, 7)
	b := ts2.dial()
	rep, _ = b.control(1, &wire.Control{Op: wire.CtlSeal, Epoch: 0, Config: notMember})
	expect(rep, wire.CtlOK, "seal by a member that the next configuration removes")
	rep, _ = b.control(2, &wire.Control{Op: wire.CtlActivate, Config: notMember})
	expect(rep, wire.CtlRefused, "activation of a removed member")
	rep, _ = a.control(11, &wire.Control{Op: wire.CtlActivate, Config: cfg1})
	expect(rep, wire.CtlOK, "activation")
	rep, _ = a.control(12, &wire.Control{Op: wire.CtlActivate, Config: cfg1})
	expect(rep, wire.CtlOK, "the same activation again")
	rep, _ = a.control(13, &wire.Control{Op: wire.CtlSeal, Epoch: 0, Config: cfg1})
	expect(rep, wire.CtlRefused, "a seal of an epoch already left")
}

// The whole transfer at the server level: a sealed member exports its
// state in chunks bounded by the budget, a joining member serves nothing,
// installs the chunks (durably), refuses activation until the transfer is
// declared complete, then serves the next epoch with the state.
func TestExportInstallActivate(t *testing.T) {
	src := membServer(t, false, nil, 7)
	c := src.dial()
	b := ballot(3)
	c.roundTrip(1, &paxos.Request{Kind: paxos.KindPrepareSeg, Seg: 4, Ballot: b})
	vals := [][]byte{}
	for i := 0; i < 20; i++ {
		vals = append(vals, bytes.Repeat([]byte{byte('a' + i)}, 100))
	}
	if r := c.roundTrip(2, &paxos.Request{Kind: paxos.KindAccept, Seg: 4, Off: 0, Ballot: b, Values: vals}); r.Status != paxos.StatusOK {
		t.Fatal(r.Status)
	}
	c.roundTrip(3, accept(5, 0, []byte("unsafe")))
	c.roundTrip(4, &paxos.Request{Kind: paxos.KindTrim, Seg: 6})
	admin := src.dial()
	if rep, _ := admin.control(1, &wire.Control{Op: wire.CtlSeal, Epoch: 0, Config: cfg1}); rep.Status != wire.CtlOK {
		t.Fatal(rep.Text)
	}

	dst := membServer(t, true, nil, 9)
	jc := dst.dial()
	if jc.hello.Membership.State != wire.StateJoining {
		t.Fatalf("joining server's hello: %v", jc.hello.Membership)
	}
	if r := jc.roundTrip(1, &paxos.Request{Kind: paxos.KindRead, Seg: 4, Off: 0}); r.Status != paxos.StatusSealed {
		t.Fatalf("a joining member answered a read: %v", r.Status)
	}
	jadmin := dst.dial()
	if rep, _ := jadmin.control(1, &wire.Control{Op: wire.CtlActivate, Config: cfg1}); rep.Status != wire.CtlRefused {
		t.Fatalf("activation before any install: %v", rep.Status)
	}
	var cur paxos.ExportCursor
	chunks := 0
	for {
		rep, _ := admin.control(uint64(10+chunks), &wire.Control{Op: wire.CtlExport, Epoch: 0, Cursor: cur, MaxBytes: 300})
		if rep.Status != wire.CtlOK {
			t.Fatalf("export: %v %s", rep.Status, rep.Text)
		}
		size := 0
		for i := range rep.Records {
			size += len(rep.Records[i].Value)
		}
		if len(rep.Records) > 0 && size > 300+100 {
			t.Fatalf("a chunk of %d value bytes for a budget of 300", size)
		}
		in, _ := jadmin.control(uint64(100+chunks), &wire.Control{Op: wire.CtlInstall, Config: cfg1, Records: rep.Records})
		if in.Status != wire.CtlOK || in.Conflicts != 0 {
			t.Fatalf("install: %v %s (%d conflicts)", in.Status, in.Text, in.Conflicts)
		}
		chunks++
		if rep.Done {
			break
		}
		cur = rep.Next
	}
	if chunks < 5 {
		t.Fatalf("the state came in %d chunks; the budget should have split it", chunks)
	}
	if rep, _ := jadmin.control(2, &wire.Control{Op: wire.CtlInstall, Config: cfg2}); rep.Status != wire.CtlRefused {
		t.Fatalf("install for another configuration: %v", rep.Status)
	}
	if rep, _ := jadmin.control(3, &wire.Control{Op: wire.CtlActivate, Config: cfg1}); rep.Status != wire.CtlRefused {
		t.Fatalf("activation before install-done: %v", rep.Status)
	}
	if rep, _ := jadmin.control(4, &wire.Control{Op: wire.CtlInstallDone, Config: cfg1}); rep.Status != wire.CtlOK || !rep.Membership.Installed {
		t.Fatalf("install-done: %+v", rep)
	}
	// The installed state is durable: restart the joining member on its
	// log and directory before activating it.
	dst.srv.Close()
	dst.eng.Close()
	dst = membServer(t, false, dst.log.(*memLog), 9)
	jadmin = dst.dial()
	if rep, _ := jadmin.control(5, &wire.Control{Op: wire.CtlActivate, Config: cfg1}); rep.Status != wire.CtlOK {
		t.Fatalf("activate: %v %s", rep.Status, rep.Text)
	}
	n := dst.dialEpoch(1)
	for off := uint32(0); off < 20; off++ {
		r := n.roundTrip(uint64(off+1), &paxos.Request{Kind: paxos.KindRead, Seg: 4, Off: off})
		if r.Status != paxos.StatusOK || r.Reg.Accepted != b || !bytes.Equal(r.Reg.Value, vals[off]) {
			t.Fatalf("register 4/%d on the new member: %+v", off, r)
		}
	}
	if r := n.roundTrip(30, &paxos.Request{Kind: paxos.KindRead, Seg: 5, Off: 0}); string(r.Reg.Value) != "unsafe" {
		t.Fatalf("5/0 on the new member: %+v", r)
	}
	if r := n.roundTrip(31, &paxos.Request{Kind: paxos.KindRead, Seg: 6, Off: 0}); r.Status != paxos.StatusTrimmed {
		t.Fatalf("trimmed segment on the new member: %v", r.Status)
	}
	// The range promise came along: the capture's token writes there.
	if r := n.roundTrip(32, tokenAccept(4, 25, b, "later")); r.Status != paxos.StatusOK || r.Results[0].Status != paxos.StatusOK {
		t.Fatalf("write with the segment's token on the new member: %+v", r)
	}
	// A joining member that was never installed refuses install-done
	// for a configuration it does not join.
	other := membServer(t, true, nil, 10)
	if rep, _ := other.dial().control(1, &wire.Control{Op: wire.CtlInstallDone, Config: cfg2}); rep.Status != wire.CtlRefused {
		t.Fatalf("install-done without install: %v", rep.Status)
	}
}

// Join on a new server makes it joining, durably; Join refuses a server
// that holds state; a recorded membership that cannot be decoded stops
// the engine rather than letting it serve an epoch it may have sealed.
func TestJoinAndRecordedMembership(t *testing.T) {
	log := newMemLog()
	ts := membServer(t, true, log, 9)
	if m, _ := ts.eng.Membership(); m.State != wire.StateJoining {
		t.Fatalf("after Join: %v", m)
	}
	ts.srv.Close()
	ts.eng.Close()
	ts = membServer(t, false, log, 9)
	if m, _ := ts.eng.Membership(); m.State != wire.StateJoining {
		t.Fatalf("joining is not durable: restarted as %v", m)
	}
	if m, err := ts.eng.Join(); err != nil || m.State != wire.StateJoining {
		t.Fatalf("Join again: %v %v", m, err)
	}
	member := membServer(t, false, nil, 7)
	c := member.dial()
	c.roundTrip(1, accept(1, 0, []byte("x")))
	if _, err := member.eng.Join(); !errors.Is(err, ErrJoinNotEmpty) {
		t.Fatalf("Join on a server with state: %v", err)
	}
	if rep, _ := member.dial().control(1, &wire.Control{Op: wire.CtlSeal, Config: cfg1}); rep.Status != wire.CtlOK {
		t.Fatal(rep.Text)
	}
	if _, err := member.eng.Join(); !errors.Is(err, ErrAlreadyMember) {
		t.Fatalf("Join on a sealed member: %v", err)
	}
	bad := newMemLog()
	bad.Append([]paxos.Record{{Kind: paxos.RecordMembership, Value: []byte(`{"format":1,"state":"sea`)}})
	bad.Sync()
	eng := NewEngine(recovered(t, bad), bad, quietLogger(), nil)
	defer eng.Close()
	if err := eng.Failed(); err == nil || !strings.Contains(err.Error(), "membership") {
		t.Fatalf("engine over a corrupt membership record: %v", err)
	}
}
