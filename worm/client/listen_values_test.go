package client_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/client"
	"github.com/wormspace/wormspace/worm/paxos"
)

// collector gathers a listener's notifications.
type collector struct {
	mu     sync.Mutex
	chosen map[uint32][][]byte // every value announced chosen, by register
	seen   map[uint32]bool     // announced at all
	lost   bool
}

func collect(ch <-chan worm.Notification) (*collector, <-chan struct{}) {
	c := &collector{chosen: map[uint32][][]byte{}, seen: map[uint32]bool{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for n := range ch {
			c.mu.Lock()
			switch {
			case n.Lost:
				c.lost = true
			case n.Chosen:
				c.chosen[n.Off] = append(c.chosen[n.Off], n.Value)
				c.seen[n.Off] = true
			default:
				if n.Value != nil {
					panic("a hint with a value")
				}
				c.seen[n.Off] = true
			}
			c.mu.Unlock()
		}
	}()
	return c, done
}

// settleValue captures and writes v until addr holds a value.
func settleValue(ctx context.Context, sp worm.Space, a worm.Addr, v []byte) {
	for ctx.Err() == nil {
		tok, err := sp.Capture(ctx, a)
		if err == nil {
			err = sp.Write(ctx, a, tok, v)
		}
		if err == nil || errors.Is(err, worm.ErrWritten) {
			return
		}
		time.Sleep(time.Duration(rand.IntN(500)) * time.Microsecond)
	}
}

// Listen learns values from the wormservers' notifications, and every
// value it announces as chosen is the one every later read returns: on a
// five-server cluster, with clients racing captures and writes of
// different values, a designated ballot-0 writer racing recoverers that
// capture its register and write "no" (the WormTX pattern), and a server
// going down and coming back meanwhile.
func TestListenChosenValuesAreChosen(t *testing.T) {
	pc := newProcCluster(t, 5, 64, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	lc := pc.dial(t, "listener")
	const seg = 3
	if _, err := lc.Alloc(ctx, seg, nil); err != nil {
		t.Fatal(err)
	}
	lctx, lcancel := context.WithCancel(ctx)
	ch, err := lc.Listen(lctx, seg)
	if err != nil {
		t.Fatal(err)
	}
	col, done := collect(ch)
	var writers []*client.Client
	for i := range 4 {
		writers = append(writers, pc.dial(t, fmt.Sprint("w", i)))
	}
	var wg sync.WaitGroup
	for off := uint32(0); off < 48; off++ {
		a := worm.Addr{Seg: seg, Off: off}
		if off%2 == 0 {
			// Contended captures and writes of different values.
			for i, w := range writers {
				wg.Go(func() { settleValue(ctx, w, a, fmt.Appendf(nil, "v%d-%d", off, i)) })
			}
			continue
		}
		// One designated ballot-0 writer, two recoverers.
		wg.Go(func() {
			if err := writers[0].WriteUnsafe(ctx, a, []byte("yes")); err != nil && !errors.Is(err, worm.ErrPreempted) && !errors.Is(err, worm.ErrWritten) && !errors.Is(err, worm.ErrUnknownOutcome) {
				t.Errorf("unsafe write %v: %v", a, err)
			}
		})
		for _, w := range writers[1:3] {
			wg.Go(func() {
				time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond)
				settleValue(ctx, w, a, []byte("no"))
			})
		}
		if off == 21 {
			pc.Stop(4)
		}
		if off == 37 {
			pc.Start(4)
		}
	}
	wg.Wait()
	// Give the last notifications time to arrive, then compare with reads.
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		col.mu.Lock()
		n := len(col.chosen)
		col.mu.Unlock()
		if n == 48 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	lcancel()
	<-done
	reader := pc.dial(t, "reader")
	for off := uint32(0); off < 48; off++ {
		v, err := reader.Read(ctx, worm.Addr{Seg: seg, Off: off})
		if err != nil {
			t.Fatalf("read %d: %v", off, err)
		}
		for _, c := range col.chosen[off] {
			if !bytes.Equal(c, v) {
				t.Fatalf("register %d: announced %q as chosen, reads %q", off, c, v)
			}
		}
		if !col.seen[off] && !col.lost {
			t.Errorf("register %d (%q) never announced, and no Lost", off, v)
		}
	}
	// Under contention and a restart, many registers end with their
	// acceptances spread over ballots or their reports lost: those are
	// announced as hints. Some must still be learned outright.
	t.Logf("%d of 48 registers learned from notifications (lost: %v)", len(col.chosen), col.lost)
	if len(col.chosen) == 0 {
		t.Errorf("no register learned as chosen from notifications")
	}
}

// regReply captures one engine reply.
type regReply struct{ ch chan paxos.RegState }

func (r regReply) Reply(_ uint64, resp *paxos.Response) {
	g := resp.Reg
	g.Value = bytes.Clone(g.Value)
	r.ch <- g
}
func (r regReply) Abandon(uint64) { close(r.ch) }

// nopReply discards an engine reply.
type nopReply struct{ done chan struct{} }

func (r nopReply) Reply(uint64, *paxos.Response) { close(r.done) }
func (r nopReply) Abandon(uint64)                { close(r.done) }

// Misuse of WriteUnsafe: two writers put different values at ballot 0.
// Whatever the listener announces as chosen, a quorum of the acceptors
// holds it at ballot 0, and a register split between the writers (no
// quorum for either) is never announced as chosen. Acceptor 0 accepts "A"
// and acceptor 1 "B" directly; then, for half of the registers, writer a
// or b races for acceptor 2 through the client.
func TestListenBallotZeroSplit(t *testing.T) {
	pc := newProcCluster(t, 3, 64, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	lc, a, b := pc.dial(t, "l"), pc.dial(t, "a"), pc.dial(t, "b")
	const seg = 4
	if _, err := lc.Alloc(ctx, seg, nil); err != nil {
		t.Fatal(err)
	}
	lctx, lcancel := context.WithCancel(ctx)
	ch, err := lc.Listen(lctx, seg)
	if err != nil {
		t.Fatal(err)
	}
	col, done := collect(ch)
	const regs = 64
	for off := uint32(0); off < regs; off++ {
		for i, v := range []string{"A", "B"} {
			r := nopReply{done: make(chan struct{})}
			pc.nodes[i].eng.Handle(&paxos.Request{Kind: paxos.KindAccept, Seg: seg, Off: off, Values: [][]byte{[]byte(v)}}, r, 1)
			<-r.done
		}
	}
	var wg sync.WaitGroup
	for off := uint32(0); off < regs/2; off++ {
		ad := worm.Addr{Seg: seg, Off: off}
		w, v := a, "A"
		if off%2 == 1 {
			w, v = b, "B"
		}
		wg.Go(func() {
			if err := w.WriteUnsafe(ctx, ad, []byte(v)); err != nil {
				t.Errorf("unsafe write %v: %v", ad, err)
			}
		})
	}
	wg.Wait()
	time.Sleep(200 * time.Millisecond)
	lcancel()
	<-done
	for off := uint32(0); off < regs; off++ {
		held := map[string]int{}
		for _, nd := range pc.nodes {
			r := regReply{ch: make(chan paxos.RegState, 1)}
			nd.eng.Handle(&paxos.Request{Kind: paxos.KindRead, Seg: seg, Off: off}, r, 1)
			g := <-r.ch
			if g.HasValue && g.Accepted.IsZero() {
				held[string(g.Value)]++
			}
		}
		for _, c := range col.chosen[off] {
			if held[string(c)] < 2 {
				t.Fatalf("register %d: %q announced chosen, held at ballot 0 by %d of 3 acceptors (%v)", off, c, held[string(c)], held)
			}
		}
		switch {
		case off < regs/2 && len(col.chosen[off]) != 1:
			t.Errorf("register %d, held by a quorum (%v): announced chosen %q, want once", off, held, col.chosen[off])
		case off >= regs/2 && len(col.chosen[off]) != 0:
			t.Errorf("register %d, split (%v): announced chosen %q", off, held, col.chosen[off])
		case !col.seen[off]:
			t.Errorf("register %d never announced", off)
		}
	}
}

// With one server of three down, Listen subscribes at the two others and
// learns chosen values: a failure must not count as one of the quorum's
// answers (it did, and Listen returned "1 of 3 servers subscribed").
func TestListenWithOneServerDown(t *testing.T) {
	pc := newProcCluster(t, 3, 64, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := pc.dial(t, "listener")
	const seg = 5
	if _, err := c.Alloc(ctx, seg, nil); err != nil {
		t.Fatal(err)
	}
	pc.Stop(2)
	for i := 0; i < 5; i++ {
		lctx, lcancel := context.WithCancel(ctx)
		ch, err := c.Listen(lctx, seg)
		if err != nil {
			t.Fatalf("listen %d with one server down: %v", i, err)
		}
		a := worm.Addr{Seg: seg, Off: uint32(i)}
		settleValue(ctx, c, a, []byte("v"))
		timeout := time.After(5 * time.Second)
	wait:
		for {
			select {
			case n := <-ch:
				if n.Lost || !n.Chosen || n.Off != a.Off {
					// The stopped server's connection going down, hints
					// before a quorum, earlier registers replayed to a new
					// subscriber.
					continue
				}
				if string(n.Value) != "v" {
					t.Fatalf("notification %+v, want %v chosen with v", n, a)
				}
				break wait
			case <-timeout:
				t.Fatalf("no notification for %v", a)
			}
		}
		lcancel()
	}
}
