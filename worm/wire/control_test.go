package wire

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/wormspace/wormspace/worm/paxos"
)

func sampleMembership() Membership {
	return Membership{State: StateSealed, Epoch: 7,
		Members: []Member{{1, "127.0.0.1:7001"}, {2, "127.0.0.1:7002"}, {3, "127.0.0.1:7003"}},
		Next:    Config{Epoch: 8, Members: []Member{{1, "127.0.0.1:7001"}, {2, "127.0.0.1:7002"}, {9, "127.0.0.1:7009"}}}}
}

func sampleRecords() []paxos.Record {
	b := paxos.Ballot{Round: 3, Node: 0xdeadbeefcafe}
	return []paxos.Record{
		{Kind: paxos.RecordTrim, Seg: 4},
		{Kind: paxos.RecordSegPromise, Seg: 5, Ballot: b},
		{Kind: paxos.RecordAccept, Seg: 5, Off: 1, Ballot: b, Value: []byte("value")},
		{Kind: paxos.RecordAccept, Seg: 5, Off: 2, Ballot: paxos.Ballot{}, Value: []byte{}},
		{Kind: paxos.RecordDecide, Seg: 5, Off: 1, Ballot: b},
		{Kind: paxos.RecordPromise, Seg: 5, Off: ^uint32(0), Ballot: b},
	}
}

func sampleControls() []*Control {
	next := sampleMembership().Next
	return []*Control{
		{Op: CtlMembership},
		{Op: CtlSeal, Epoch: 7, Config: next},
		{Op: CtlActivate, Config: next},
		{Op: CtlExport, Epoch: 7, Cursor: paxos.ExportCursor{Seg: 5, Pos: 2}, MaxBytes: 1 << 20},
		{Op: CtlInstall, Config: next, Records: sampleRecords()},
		{Op: CtlInstallDone, Config: next},
	}
}

func sampleControlReplies() []*ControlReply {
	m := sampleMembership()
	return []*ControlReply{
		{Op: CtlMembership, Membership: m},
		{Op: CtlSeal, Status: CtlRefused, Text: "sealed for another configuration", Membership: m},
		{Op: CtlExport, Membership: m, Records: sampleRecords(), Next: paxos.ExportCursor{Seg: 6, Pos: 1}},
		{Op: CtlExport, Done: true},
		{Op: CtlInstall, Status: CtlFailed, Conflicts: 2, Text: "storage: no space left on device", Membership: Membership{State: StateJoining, Next: m.Next, Installed: true}},
	}
}

func TestControlRoundTrip(t *testing.T) {
	for _, c := range sampleControls() {
		b := AppendControl(nil, 77, c)
		f, err := NewReader(bytes.NewReader(b), 0).Next()
		if err != nil || f.Type != FrameControl || f.ID != 77 {
			t.Fatalf("%v: frame %v %d %v", c.Op, f.Type, f.ID, err)
		}
		var got Control
		if err := DecodeControl(f.Payload, 0, &got); err != nil {
			t.Fatalf("%v: %v", c.Op, err)
		}
		if !reflect.DeepEqual(normControl(&got), normControl(c)) {
			t.Fatalf("%v: decoded %+v, want %+v", c.Op, got, *c)
		}
	}
	for _, r := range sampleControlReplies() {
		b := AppendControlReply(nil, 0, r)
		f, err := NewReader(bytes.NewReader(b), 0).Next()
		if err != nil || f.Type != FrameControl || f.ID != 0 {
			t.Fatalf("%v reply: frame %v %d %v", r.Op, f.Type, f.ID, err)
		}
		var got ControlReply
		if err := DecodeControlReply(f.Payload, 0, &got); err != nil {
			t.Fatalf("%v reply: %v", r.Op, err)
		}
		if !reflect.DeepEqual(normReply(&got), normReply(r)) {
			t.Fatalf("%v reply: decoded %+v, want %+v", r.Op, got, *r)
		}
	}
}

// normalise empty slices (the codec does not keep nil and empty apart
// for member lists and records).
func normControl(c *Control) Control {
	x := *c
	if len(x.Records) == 0 {
		x.Records = nil
	}
	x.Records = normRecords(x.Records)
	if len(x.Config.Members) == 0 {
		x.Config.Members = nil
	}
	return x
}

func normReply(r *ControlReply) ControlReply {
	x := *r
	if len(x.Records) == 0 {
		x.Records = nil
	}
	x.Records = normRecords(x.Records)
	if len(x.Membership.Members) == 0 {
		x.Membership.Members = nil
	}
	if len(x.Membership.Next.Members) == 0 {
		x.Membership.Next.Members = nil
	}
	return x
}

func normRecords(rs []paxos.Record) []paxos.Record {
	out := append([]paxos.Record(nil), rs...)
	for i := range out {
		if len(out[i].Value) == 0 {
			out[i].Value = nil
		}
	}
	return out
}

func TestControlMalformed(t *testing.T) {
	install := AppendControl(nil, 1, &Control{Op: CtlInstall, Config: sampleMembership().Next, Records: sampleRecords()[2:3]})[HeaderSize:]
	// layout: op | u64 epoch @1 | u64 cfg epoch @9 | u8 n @17 | members (3 × (4+1+14)) @18..75 | cursor @75 | u32 max @91 | u32 nrec @95 | rec: kind @99 seg @100 off @108 ballot @112 vlen @128 value @132
	mut := func(f func(b []byte)) []byte {
		b := bytes.Clone(install)
		f(b)
		return b
	}
	cases := []struct {
		name string
		p    []byte
		want error
	}{
		{"op 0", mut(func(b []byte) { b[0] = 0 }), ErrMalformed},
		{"op unknown", mut(func(b []byte) { b[0] = 200 }), ErrMalformed},
		{"too many members", mut(func(b []byte) { b[17] = MaxMembers + 1 }), ErrMalformed},
		{"members past end", mut(func(b []byte) { b[17] = 60 }), ErrMalformed},
		{"huge record count", mut(func(b []byte) { le.PutUint32(b[95:], 0xffffffff) }), ErrMalformed},
		{"record kind unknown", mut(func(b []byte) { b[99] = 99 }), ErrMalformed},
		{"value too large", mut(func(b []byte) { le.PutUint32(b[128:], DefaultMaxValue+1) }), ErrValueTooLarge},
		{"value past end", mut(func(b []byte) { le.PutUint32(b[128:], 6) }), ErrMalformed},
		{"trailing", append(bytes.Clone(install), 0), ErrMalformed},
		{"empty", nil, ErrMalformed},
	}
	for _, c := range cases {
		if err := DecodeControl(c.p, 0, new(Control)); !errors.Is(err, c.want) {
			t.Errorf("control %s: %v, want %v", c.name, err, c.want)
		}
	}
	if err := DecodeControl(install, 0, new(Control)); err != nil {
		t.Fatalf("the layout comment is wrong: %v", err)
	}
	reply := AppendControlReply(nil, 1, &ControlReply{Op: CtlSeal, Membership: Membership{State: StateActive, Epoch: 2}})[HeaderSize:]
	// layout: op | status @1 | flags @2 | conflicts @3 | next @7 | state @23 | mflags @24 | epoch @25 | n @33 | next epoch @34 | n @42 | u32 text @43
	rmut := func(f func(b []byte)) []byte {
		b := bytes.Clone(reply)
		f(b)
		return b
	}
	rcases := []struct {
		name string
		p    []byte
		want error
	}{
		{"status unknown", rmut(func(b []byte) { b[1] = 9 }), ErrMalformed},
		{"flags unknown", rmut(func(b []byte) { b[2] = 2 }), ErrMalformed},
		{"member state unknown", rmut(func(b []byte) { b[23] = 3 }), ErrMalformed},
		{"membership flags unknown", rmut(func(b []byte) { b[24] = 4 }), ErrMalformed},
		{"text too long", rmut(func(b []byte) { le.PutUint32(b[43:], 2000) }), ErrMalformed},
		{"truncated", reply[:30], ErrMalformed},
	}
	for _, c := range rcases {
		if err := DecodeControlReply(c.p, 0, new(ControlReply)); !errors.Is(err, c.want) {
			t.Errorf("reply %s: %v, want %v", c.name, err, c.want)
		}
	}
	if err := DecodeControlReply(reply, 0, new(ControlReply)); err != nil {
		t.Fatalf("the reply layout comment is wrong: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	ok := sampleMembership().Next
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("h", MaxAddr+1)
	for name, c := range map[string]Config{
		"empty":        {Epoch: 1},
		"id 0":         {Epoch: 1, Members: []Member{{0, "a:1"}}},
		"no address":   {Epoch: 1, Members: []Member{{1, ""}}},
		"long address": {Epoch: 1, Members: []Member{{1, long}}},
		"same id":      {Epoch: 1, Members: []Member{{1, "a:1"}, {1, "b:1"}}},
		"same address": {Epoch: 1, Members: []Member{{1, "a:1"}, {2, "a:1"}}},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("%s: %v validates", name, c)
		}
	}
	if !ok.Has(9) || ok.Has(3) || !ok.Equal(ok.Clone()) || ok.Equal(Config{Epoch: 8}) {
		t.Fatal("Has/Equal")
	}
	m := sampleMembership()
	if m.Serves(7) || !m.Current().Equal(m.Next) {
		t.Fatalf("sealed membership %v serves 7 or names %v", m, m.Current())
	}
	a := Membership{State: StateActive, Epoch: 8, Members: m.Next.Members}
	if !a.Serves(8) || a.Serves(7) || !a.Current().Equal(m.Next) {
		t.Fatalf("active membership %v", a)
	}
}

// A server whose membership cannot be encoded fails its handshake rather
// than sending a truncated hello.
func TestServerHelloMembershipLimits(t *testing.T) {
	h := testServerHello
	h.Membership = Membership{State: StateActive, Epoch: 1, Members: []Member{{1, strings.Repeat("x", MaxAddr+1)}}}
	if _, err := encodeServerHello(&h, nil, nil); err == nil {
		t.Fatal("encoded a member address over MaxAddr")
	}
	h.Membership = Membership{State: StateActive, Epoch: 1, Members: make([]Member, MaxMembers+1)}
	if _, err := encodeServerHello(&h, nil, nil); err == nil {
		t.Fatal("encoded more than MaxMembers members")
	}
	// The largest legal membership fits the server hello limit.
	var big []Member
	for i := 0; i < MaxMembers; i++ {
		big = append(big, Member{ID: uint32(i + 1), Addr: strings.Repeat(string(rune('a'+i%26)), MaxAddr)})
	}
	h.Membership = Membership{State: StateSealed, Epoch: 1, Members: big, Next: Config{Epoch: 2, Members: big}}
	h.Cluster = strings.Repeat("c", MaxIdentity)
	b, err := encodeServerHello(&h, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	m, err := readHSMsg(bytes.NewReader(b), maxServerHelloBody)
	if err != nil {
		t.Fatalf("largest server hello (%d bytes) refused: %v", len(b), err)
	}
	back, _, err := decodeServerHello(m)
	if err != nil || !back.Membership.Equal(h.Membership) {
		t.Fatalf("largest server hello: %v", err)
	}
}
