package wormtx

import (
	"context"
	"testing"
	"time"

	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/spec"
)

// recvChosen waits for a chosen notification of off on ch.
func recvChosen(t *testing.T, ch <-chan worm.Notification, off uint32) worm.Notification {
	t.Helper()
	tm := time.After(5 * time.Second)
	for {
		select {
		case nt, ok := <-ch:
			if !ok {
				t.Fatalf("channel closed before register %d was announced", off)
			}
			if nt.Chosen && nt.Off == off {
				return nt
			}
		case <-tm:
			t.Fatalf("register %d never announced", off)
		}
	}
}

// A shared segment's listener hands each slot the notifications of its
// registers only, replays to a late subscriber the chosen values its slot
// already had, and is not held up by a subscriber that never reads.
func TestSegListenerDemux(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st := spec.New(64)
	w, r := st.Client("w"), st.Client("r")
	const seg = 9
	if _, err := w.Alloc(ctx, seg, []byte("m")); err != nil {
		t.Fatal(err)
	}
	l := startSegListener(ctx, r, seg, 0)
	<-l.ready
	if l.err != nil {
		t.Fatal(l.err)
	}
	defer l.cancel()
	a := l.subscribe(0, 8, 1)
	stuck := l.subscribe(0, 63, 2) // never read
	defer l.unsubscribe(a)
	defer l.unsubscribe(stuck)
	// Enough writes in a's slot and beyond to fill stuck's buffer.
	for off := uint32(0); off < 40; off++ {
		if err := w.WriteUnsafe(ctx, worm.Addr{Seg: seg, Off: off}, []byte{byte(off)}); err != nil {
			t.Fatal(err)
		}
	}
	for off := uint32(0); off <= 8; off++ {
		if nt := recvChosen(t, a.ch, off); nt.Value[0] != byte(off) {
			t.Fatalf("register %d announced %v", off, nt.Value)
		}
	}
	// A late subscriber to slot [20, 28] is replayed its chosen values,
	// and then hears new ones even though stuck's buffer is full.
	b := l.subscribe(20, 28, 3)
	defer l.unsubscribe(b)
	for off := uint32(20); off <= 28; off++ {
		recvChosen(t, b.ch, off)
	}
	if err := w.WriteUnsafe(ctx, worm.Addr{Seg: seg, Off: 50}, []byte("x")); err != nil {
		t.Fatal(err)
	}
	c := l.subscribe(50, 50, 4)
	defer l.unsubscribe(c)
	recvChosen(t, c.ch, 50)
	// Nothing outside a's slot reached a.
	select {
	case nt := <-a.ch:
		if !nt.Lost && (nt.Off > 8) {
			t.Fatalf("slot [0, 8] got register %d", nt.Off)
		}
	default:
	}
	// An unsubscribed slot hears nothing more, and leaves nothing behind
	// in the index; a slot sharing its registers still hears them.
	d := l.subscribe(41, 45, 5)
	e := l.subscribe(43, 47, 6)
	defer l.unsubscribe(e)
	l.unsubscribe(d)
	if err := w.WriteUnsafe(ctx, worm.Addr{Seg: seg, Off: 42}, []byte("y")); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteUnsafe(ctx, worm.Addr{Seg: seg, Off: 44}, []byte("z")); err != nil {
		t.Fatal(err)
	}
	recvChosen(t, e.ch, 44)
	select {
	case nt := <-d.ch:
		t.Fatalf("an unsubscribed slot got %+v", nt)
	default:
	}
	l.mu.Lock()
	for off, subs := range l.byOff {
		for _, x := range subs {
			if x == d {
				t.Errorf("the index still has the unsubscribed slot at offset %d", off)
			}
		}
	}
	if n := len(l.byOff[44]); n != 2 { // stuck's and e's
		t.Errorf("offset 44 has %d subscribers in the index, want 2", n)
	}
	l.mu.Unlock()
	// When the segment is trimmed, subscribers' channels close and the
	// listener is dead: a new subscription is refused.
	if err := w.Trim(ctx, seg); err != nil {
		t.Fatal(err)
	}
	tm := time.After(5 * time.Second)
	for open := true; open; {
		select {
		case _, open = <-b.ch:
		case <-tm:
			t.Fatal("subscriber's channel not closed after the trim")
		}
	}
	if s := l.subscribe(0, 1, 7); s != nil {
		t.Fatal("a dead listener took a subscription")
	}
}
