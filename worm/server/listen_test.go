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
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop buffers at random")
	}
	ts := startServer(t, nil, true, nil)
	vals := [][]byte{[]byte("yes"), []byte("no")}
	// No subscriber: encoded and recorded for replay (a segment's record
	// stops growing at its cap).
	if n := testing.AllocsPerRun(1000, func() { ts.srv.onWrite(77, 0, ballot(1), vals) }); n != 0 {
		t.Fatalf("onWrite without subscribers: %v allocations", n)
	}
	note := newWriteNote(ballot(1), vals)
	note.release()
	if n := testing.AllocsPerRun(100, func() { newWriteNote(ballot(1), vals).release() }); n != 0 {
		t.Fatalf("writeNote: %v allocations per notification", n)
	}
}

// A new subscriber is sent the notifications of the segment's recent
// writes after the Listen reply (a value over notifyValueMax as a hint),
// then the live ones; a notification too large to keep is not replayed.
func TestListenReplaysRecentWrites(t *testing.T) {
	ts := startServer(t, nil, false, nil)
	lis, wr := ts.dial(), ts.dial()
	wr.roundTrip(1, accept(5, 0, []byte("yes")))
	wr.roundTrip(2, accept(5, 1, []byte("no"), []byte("x")))
	wr.roundTrip(3, accept(5, 7, bytes.Repeat([]byte("L"), notifyValueMax+1)))
	batch := make([][]byte, 8)
	for i := range batch {
		batch[i] = bytes.Repeat([]byte("b"), notifyValueMax)
	}
	wr.roundTrip(4, accept(5, 20, batch...))
	wr.roundTrip(5, accept(6, 0, []byte("other segment")))
	lis.do(10, &paxos.Request{Kind: paxos.KindListen, Seg: 5})
	if f := lis.must(); f.typ != wire.FrameResponse || f.id != 10 || f.resp.Status != paxos.StatusOK {
		t.Fatalf("listen reply: %v %+v", f.typ, f.resp)
	}
	want := []struct {
		off, count uint32
		vals       []string
	}{{0, 1, []string{"yes"}}, {1, 2, []string{"no", "x"}}, {7, 1, nil}}
	for _, w := range want {
		f := lis.must()
		if f.typ != wire.FramePush || f.resp.Seg != 5 || f.resp.Off != w.off || f.resp.Count != w.count || len(f.resp.Regs) != len(w.vals) {
			t.Fatalf("replayed %v %+v, want registers %d+%d", f.typ, f.resp, w.off, w.count)
		}
		for i, v := range w.vals {
			if string(f.resp.Regs[i].Value) != v {
				t.Fatalf("replayed %+v, want %q", f.resp.Regs, w.vals)
			}
		}
	}
	wr.roundTrip(6, accept(5, 9, []byte("live")))
	if f := lis.must(); f.typ != wire.FramePush || f.resp.Off != 9 {
		t.Fatalf("after the replay: %v %+v, want the live write of register 9", f.typ, f.resp)
	}
}

// The replay cache stays within its bounds, dropping the segments
// recorded first.
func TestRecentWritesBounded(t *testing.T) {
	var r recentWrites
	frame := bytes.Repeat([]byte("f"), 100)
	for seg := range uint64(3 * recentSegs) {
		r.record(seg, frame)
		if len(r.segs) > recentSegs || r.bytes > recentMax {
			t.Fatalf("%d segments, %d bytes", len(r.segs), r.bytes)
		}
	}
	if r.frames(0) != nil || len(r.frames(3*recentSegs-1)) != len(frame) {
		t.Fatal("the oldest segment is kept, or the newest is not")
	}
	for range 2 * recentSegMax / len(frame) {
		r.record(1<<40, frame)
	}
	if n := len(r.frames(1 << 40)); n > recentSegMax || n == 0 {
		t.Fatalf("one segment keeps %d bytes (cap %d)", n, recentSegMax)
	}
	big := bytes.Repeat([]byte("B"), recentFrameMax)
	for seg := range uint64(2 * recentMax / recentFrameMax) {
		r.record(1<<41+seg, big)
		if r.bytes > recentMax {
			t.Fatalf("%d bytes kept, cap %d", r.bytes, recentMax)
		}
	}
	if r.bytes < recentMax/2 {
		t.Fatalf("%d bytes kept of a cap of %d", r.bytes, recentMax)
	}
}
