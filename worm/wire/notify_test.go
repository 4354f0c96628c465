package wire

import (
	"testing"

	"github.com/wormspace/wormspace/worm/paxos"
)

// TestNotifyWithValues round-trips a push that carries accepted values: a
// run of three registers of which two carry their ballot and value (one
// of them empty, at the unsafe ballot 0) and the third is a hint.
func TestNotifyWithValues(t *testing.T) {
	in := &paxos.Response{Kind: paxos.KindNotify, Seg: 1 << 41, Off: 7, Count: 3, Regs: []paxos.RegState{
		{Off: 7, Accepted: bal, HasValue: true, Value: []byte("yes")},
		{Off: 8, HasValue: true, Value: []byte{}},
	}}
	f := splitFrame(t, AppendPush(nil, in))
	if f.Type != FramePush || f.ID != 0 {
		t.Fatalf("frame %v id %d, want push id 0", f.Type, f.ID)
	}
	var out paxos.Response
	if err := DecodeResponse(f.Payload, 0, &out); err != nil {
		t.Fatal(err)
	}
	if !equalResponse(in, &out) {
		t.Fatalf("round trip:\n in  %+v\n out %+v", in, &out)
	}
	if out.Regs[1].Value == nil || !out.Regs[1].Accepted.IsZero() {
		t.Fatalf("empty value at ballot 0 decoded as %+v", out.Regs[1])
	}
}
