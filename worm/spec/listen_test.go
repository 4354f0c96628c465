package spec_test

import (
	"context"
	"testing"
	"time"

	"github.com/wormspace/wormspace/worm"
)

// The spec's notifications carry the written value as chosen, one copy per
// listener: a listener that scribbles on its copy changes neither the
// register nor the other listener's copy. Batches announce every register.
func TestListenCarriesChosenValues(t *testing.T) {
	_, a, b := allocated(t, 16)
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch1, err := b.Listen(lctx, 1)
	must(t, err)
	ch2, err := a.Listen(lctx, 1)
	must(t, err)
	must(t, a.WriteUnsafe(ctx, worm.Addr{Seg: 1, Off: 2}, []byte("vote")))
	sc, err := a.CaptureSegment(ctx, 1)
	must(t, err)
	must(t, a.WriteBatch(ctx, 1, 5, sc.Token, [][]byte{[]byte("x"), {}}))
	next := func(ch <-chan worm.Notification) worm.Notification {
		t.Helper()
		select {
		case n := <-ch:
			return n
		case <-time.After(10 * time.Second):
			t.Fatal("no notification")
		}
		return worm.Notification{}
	}
	want := []struct {
		off uint32
		v   string
	}{{2, "vote"}, {5, "x"}, {6, ""}}
	for _, w := range want {
		n1, n2 := next(ch1), next(ch2)
		for _, n := range []worm.Notification{n1, n2} {
			if n.Off != w.off || !n.Chosen || n.Value == nil || string(n.Value) != w.v || n.Lost {
				t.Fatalf("notification %+v, want register %d chosen %q", n, w.off, w.v)
			}
		}
		if len(n1.Value) > 0 {
			n1.Value[0] = '!'
			if n2.Value[0] == '!' {
				t.Fatal("two listeners share one value")
			}
			v, err := a.Read(ctx, worm.Addr{Seg: 1, Off: w.off})
			must(t, err)
			if string(v) != w.v {
				t.Fatalf("register %d reads %q after a listener changed its copy", w.off, v)
			}
		}
	}
}
