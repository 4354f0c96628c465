package server

import (
	"bytes"
	"strings"
	"testing"

	"github.com/wormspace/wormspace/worm/paxos"
	"github.com/wormspace/wormspace/worm/wire"
)

// A notification carries the accepted ballot and the values of at most
// notifyValueMax bytes; a larger value is announced without it. The
// values are the accept's, although the connection's read buffer was
// reused by later requests while the notification waited for the sync.
func TestNotifyCarriesBallotAndValues(t *testing.T) {
	log := newMemLog()
	ts := startServer(t, log, false, nil)
	lis, wr := ts.dial(), ts.dial()
	if r := lis.roundTrip(1, &paxos.Request{Kind: paxos.KindListen, Seg: 5}); r.Status != paxos.StatusOK {
		t.Fatalf("listen: %+v", r)
	}
	// An unsafe write (ballot 0) is announced with the zero ballot.
	wr.roundTrip(6, accept(5, 30, []byte("u")))
	if p := lis.must(); p.resp.Off != 30 || p.resp.Count != 1 || len(p.resp.Regs) != 1 || !p.resp.Regs[0].Accepted.IsZero() || string(p.resp.Regs[0].Value) != "u" {
		t.Fatalf("unsafe write notification: %+v", p.resp)
	}
	b := ballot(3)
	if r := wr.roundTrip(2, &paxos.Request{Kind: paxos.KindPrepareSeg, Seg: 5, Ballot: b}); r.Status != paxos.StatusOK {
		t.Fatalf("prepare: %+v", r)
	}
	big := bytes.Repeat([]byte("B"), notifyValueMax+1)
	edge := bytes.Repeat([]byte("e"), notifyValueMax)
	log.mu.Lock()
	log.gate = make(chan struct{})
	log.mu.Unlock()
	for len(log.entered) > 0 {
		<-log.entered // earlier syncs'
	}
	wr.do(3, &paxos.Request{Kind: paxos.KindAccept, Seg: 5, Off: 10, Ballot: b, Values: [][]byte{[]byte("one"), big, {}, edge}})
	waitSync(t, log.entered)
	// Overwrite the server's read buffer while the notification waits.
	wr.do(4, &paxos.Request{Kind: paxos.KindRead, Seg: 5, Off: 0, Ballot: paxos.Ballot{Round: 1 << 60}})
	wr.do(5, accept(6, 0, []byte(strings.Repeat("x", 2000))))
	close(log.gate)
	for range 3 {
		wr.response()
	}
	p := lis.must()
	if p.typ != wire.FramePush || p.resp.Kind != paxos.KindNotify || p.resp.Seg != 5 || p.resp.Off != 10 || p.resp.Count != 4 {
		t.Fatalf("notification: %v %+v", p.typ, p.resp)
	}
	want := []paxos.RegState{
		{Off: 10, Accepted: b, HasValue: true, Value: []byte("one")},
		{Off: 12, Accepted: b, HasValue: true, Value: []byte{}},
		{Off: 13, Accepted: b, HasValue: true, Value: edge},
	}
	if len(p.resp.Regs) != len(want) {
		t.Fatalf("notification carries %d values, want %d (the %d-byte one as a hint): %+v", len(p.resp.Regs), len(want), len(big), p.resp.Regs)
	}
	// (The test client's Clone turns the empty value into nil; the wire
	// keeps them apart, see wire's TestNotifyWithValues.)
	for i := range want {
		g := &p.resp.Regs[i]
		if g.Off != want[i].Off || g.Accepted != want[i].Accepted || !g.HasValue || !bytes.Equal(g.Value, want[i].Value) {
			t.Fatalf("value %d: %+v, want %+v", i, *g, want[i])
		}
	}
}

// Encoding a notification for subscribers reuses pooled buffers: a steady
// stream of small writes does not allocate per notification in the hook.
func TestOnWriteDoesNotAllocate(t *testing.T) {
	ts := startServer(t, nil, true, nil)
	vals := [][]byte{[]byte("yes"), []byte("no")}
	// No subscriber: nothing to encode.
	if n := testing.AllocsPerRun(100, func() { ts.srv.onWrite(77, 0, ballot(1), vals) }); n != 0 {
		t.Fatalf("onWrite without subscribers: %v allocations", n)
	}
	note := newWriteNote(ballot(1), vals)
	note.release()
	if n := testing.AllocsPerRun(100, func() { newWriteNote(ballot(1), vals).release() }); n != 0 {
		t.Fatalf("writeNote: %v allocations per notification", n)
	}
}
