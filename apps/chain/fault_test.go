package chain

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wormspace/wormspace/apps/wormlog/wormlogtest"
	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/check"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// waitDown waits until cl has noticed that replica i is gone.
func waitDown(t *testing.T, cl *Client, i int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); cl.conns[i].up(); {
		if time.Now().After(deadline) {
			t.Fatalf("client still connected to killed replica %d", i)
		}
		time.Sleep(time.Millisecond)
	}
}

// waitUp waits until cl is connected to every replica again.
func waitUp(t *testing.T, cl *Client) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); cl.down(cl.allMask) != nil; {
		if time.Now().After(deadline) {
			t.Fatalf("client did not reconnect: %v", cl.down(cl.allMask))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestDeadReplica: with any one replica down, every operation that needs
// it fails with ErrUnavailable (nothing can have changed), reads that need
// only the tail still answer correctly, and after a restart on the same
// directory every acknowledged value is there and the chain works again.
func TestDeadReplica(t *testing.T) {
	for dead := 0; dead < 3; dead++ {
		t.Run([]string{"head", "middle", "tail"}[dead], func(t *testing.T) {
			ctx := ctxT(t)
			tc := startChain(t, 3, 16, false)
			cl := tc.client(t)
			seg := uint64(100)
			if _, err := cl.Alloc(ctx, seg, nil); err != nil {
				t.Fatal(err)
			}
			sc, err := cl.CaptureSegment(ctx, seg)
			if err != nil {
				t.Fatal(err)
			}
			if err := cl.Write(ctx, worm.Addr{Seg: seg, Off: 0}, sc.Token, []byte("before")); err != nil {
				t.Fatal(err)
			}
			tc.kill(dead)
			waitDown(t, cl, dead)

			unavailable := func(what string, err error) {
				t.Helper()
				if !errors.Is(err, worm.ErrUnavailable) || errors.Is(err, worm.ErrUnknownOutcome) {
					t.Fatalf("%s with replica %d down: %v, want ErrUnavailable", what, dead, err)
				}
			}
			a1 := worm.Addr{Seg: seg, Off: 1}
			unavailable("Write", cl.Write(ctx, a1, sc.Token, []byte("during")))
			unavailable("WriteBatch", cl.WriteBatch(ctx, seg, 2, sc.Token, [][]byte{[]byte("x"), []byte("y")}))
			_, err = cl.Capture(ctx, a1)
			unavailable("Capture", err)
			_, err = cl.CaptureSegment(ctx, seg)
			unavailable("CaptureSegment", err)
			_, err = cl.Alloc(ctx, seg+1, nil)
			unavailable("Alloc", err)
			unavailable("Trim", cl.Trim(ctx, seg+2))
			if dead == 2 {
				_, err = cl.Read(ctx, worm.Addr{Seg: seg, Off: 0})
				unavailable("Read", err)
				_, err = cl.Check(ctx, seg)
				unavailable("Check", err)
				lctx, cancel := context.WithCancel(ctx)
				_, err = cl.Listen(lctx, seg)
				cancel()
				unavailable("Listen", err)
			} else {
				// The tail alone serves reads, and they are right.
				if v, err := cl.Read(ctx, worm.Addr{Seg: seg, Off: 0}); err != nil || string(v) != "before" {
					t.Fatalf("Read with replica %d down: %q, %v", dead, v, err)
				}
				if _, err := cl.Read(ctx, a1); !errors.Is(err, worm.ErrEmpty) {
					t.Fatalf("Read of the register written while replica %d was down: %v, want ErrEmpty", dead, err)
				}
			}

			tc.restart(dead)
			waitUp(t, cl)
			tc.waitLinks()
			// The dead replica recovered "before" from its log: a capture
			// of register 0 finds it committed.
			if _, err := cl.Capture(ctx, worm.Addr{Seg: seg, Off: 0}); !errors.Is(err, worm.ErrWritten) {
				t.Fatalf("Capture of a register written before the crash: %v, want WrittenError", err)
			} else if v, _ := worm.WrittenValue(err); string(v) != "before" {
				t.Fatalf("Capture found %q, want %q", v, "before")
			}
			tok, err := cl.Capture(ctx, a1)
			if err != nil {
				t.Fatalf("Capture after restart: %v", err)
			}
			if err := cl.Write(ctx, a1, tok, []byte("after")); err != nil {
				t.Fatalf("Write after restart: %v", err)
			}
			for _, c := range []*Client{cl, tc.client(t)} {
				for off, want := range map[uint32]string{0: "before", 1: "after"} {
					if v, err := c.Read(ctx, worm.Addr{Seg: seg, Off: off}); err != nil || string(v) != want {
						t.Fatalf("Read(%d) after restart: %q, %v; want %q", off, v, err, want)
					}
				}
			}
		})
	}
}

// TestStrandedValue builds the state a crashed writer or capturer leaves
// behind: the head holds a value the rest of the chain does not. Reads say
// empty (nothing is committed), a write of the value's own token is
// ambiguous, a write of another value repairs the register (finishes the
// stranded value) before it reports it, and from then on everyone agrees.
func TestStrandedValue(t *testing.T) {
	ctx := ctxT(t)
	tc := startChain(t, 3, 16, false)
	a, b := tc.client(t), tc.client(t)
	seg := uint64(7)
	if _, err := a.Alloc(ctx, seg, nil); err != nil {
		t.Fatal(err)
	}
	addr := worm.Addr{Seg: seg, Off: 3}
	tok, err := a.Capture(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	// A rival's seal reaches the middle replica only (its capture died).
	higher := worm.Token{Round: tok.Round + 10, Node: 42}
	c, err := b.ask(ctx, 1, &request{op: opSeal, seg: seg, off: addr.Off, tok: higher})
	if err != nil || c.replies[0].resp.status != StatusOK {
		t.Fatalf("seal of the middle replica: %v", err)
	}
	b.release(c)
	err = a.Write(ctx, addr, tok, []byte("stranded"))
	if !errors.Is(err, worm.ErrUnknownOutcome) {
		t.Fatalf("write refused after the head stored it: %v, want ErrUnknownOutcome", err)
	}
	if _, err := b.Read(ctx, addr); !errors.Is(err, worm.ErrEmpty) {
		t.Fatalf("read of a value stranded at the head: %v, want ErrEmpty", err)
	}
	// Another writer meets the stranded value at the head: it must not
	// report it before it is committed, so it finishes it first.
	err = b.WriteUnsafe(ctx, addr, []byte("other"))
	if v, ok := worm.WrittenValue(err); !ok || string(v) != "stranded" {
		t.Fatalf("write over a stranded value: %v, want WrittenError(stranded)", err)
	}
	for _, cl := range []*Client{a, b} {
		if v, err := cl.Read(ctx, addr); err != nil || string(v) != "stranded" {
			t.Fatalf("read after repair: %q, %v", v, err)
		}
	}
	// The original writer's identical retry now succeeds (idempotent).
	if err := a.Write(ctx, addr, tok, []byte("stranded")); err != nil {
		t.Fatalf("identical retry after repair: %v", err)
	}

	// The same, found by a capture: it finishes the value and reports it.
	addr2 := worm.Addr{Seg: seg, Off: 4}
	tok2, err := a.Capture(ctx, addr2)
	if err != nil {
		t.Fatal(err)
	}
	c, err = b.ask(ctx, 2, &request{op: opSeal, seg: seg, off: addr2.Off, tok: worm.Token{Round: tok2.Round + 10, Node: 42}})
	if err != nil {
		t.Fatal(err)
	}
	b.release(c)
	if err := a.Write(ctx, addr2, tok2, []byte("half")); !errors.Is(err, worm.ErrUnknownOutcome) {
		t.Fatalf("write refused at the tail: %v, want ErrUnknownOutcome", err)
	}
	_, err = b.Capture(ctx, addr2)
	if v, ok := worm.WrittenValue(err); !ok || string(v) != "half" {
		t.Fatalf("capture of a register stranded at head and middle: %v, want WrittenError(half)", err)
	}
	if v, err := a.Read(ctx, addr2); err != nil || string(v) != "half" {
		t.Fatalf("read after the capture finished it: %q, %v", v, err)
	}
}

// TestMisconfigured: a client given the chain in another order, or a
// replica list that is not a chain, is refused with ErrConfig.
func TestMisconfigured(t *testing.T) {
	tc := startChain(t, 3, 16, true)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, chain := range [][]string{
		{tc.addrs[1], tc.addrs[0], tc.addrs[2]},
		{tc.addrs[0], tc.addrs[1]},
	} {
		cl, err := Dial(ctx, Config{Chain: chain, Key: tc.key, Logger: quiet})
		if err == nil {
			cl.Close()
			t.Fatalf("Dial with chain %v succeeded", chain)
		}
		if !errors.Is(err, ErrConfig) {
			t.Fatalf("Dial with chain %v: %v, want ErrConfig", chain, err)
		}
	}
	wrongKey := bytes.Repeat([]byte{7}, 32)
	if cl, err := Dial(ctx, Config{Chain: tc.addrs, Key: wrongKey, Logger: quiet}); err == nil {
		cl.Close()
		t.Fatal("Dial with a wrong key succeeded")
	}
}

// replicaKiller kills one replica now and then and restarts it a little
// later, never more than one at a time.
type replicaKiller struct {
	tc    *testChain
	mu    sync.Mutex
	down  int
	kills int
}

func (k *replicaKiller) step(rng *rand.Rand) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.down >= 0 || rng.IntN(12) != 0 {
		return
	}
	i := rng.IntN(len(k.tc.addrs))
	if rng.IntN(2) == 0 {
		k.tc.crash(i)
	} else {
		k.tc.kill(i)
	}
	k.down = i
	k.kills++
	time.AfterFunc(time.Duration(10+rng.IntN(40))*time.Millisecond, k.heal)
}

func (k *replicaKiller) heal() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.down >= 0 {
		k.tc.restart(k.down)
		k.down = -1
	}
}

// Inject and Heal adapt the killer to wormlogtest.Nemesis.
func (k *replicaKiller) Inject(rng *rand.Rand, _ worm.Space) { k.step(rng) }
func (k *replicaKiller) Heal()                               { k.heal() }

// TestLinearizableUnderCrashes records concurrent register operations of
// several clients while replicas are stopped and restarted (their
// connections break, as when the process dies; they recover from their
// logs) and checks the history with porcupine: unavailability and
// unknown outcomes are allowed, wrong answers are not.
func TestLinearizableUnderCrashes(t *testing.T) {
	tc := startChain(t, 3, 16, false)
	k := &replicaKiller{tc: tc, down: -1}
	rec := check.NewRecorder()
	var cs []worm.Space
	for i := 0; i < 3; i++ {
		cs = append(cs, rec.Wrap(tc.client(t)))
	}
	ctx := ctxT(t)
	segs := []uint64{500, 501}
	for _, s := range segs {
		for {
			if _, err := cs[0].Alloc(ctx, s, nil); err == nil {
				break
			}
		}
	}
	const workers, ops, regs = 6, 400, 4
	var wg sync.WaitGroup
	var fails atomic.Int64
	stop := make(chan struct{})
	go func() {
		rng := rand.New(rand.NewPCG(1, 2))
		for {
			select {
			case <-stop:
				return
			case <-time.After(3 * time.Millisecond):
				k.step(rng)
			}
		}
	}()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 99))
			c := cs[w%len(cs)]
			var tok worm.Token
			for i := 0; i < ops; i++ {
				seg := segs[rng.IntN(len(segs))]
				a := worm.Addr{Seg: seg, Off: uint32(rng.IntN(regs))}
				v := []byte(fmt.Sprintf("w%d-%d", w, rng.IntN(3)))
				octx, cancel := context.WithTimeout(ctx, 2*time.Second)
				var err error
				switch rng.IntN(8) {
				case 0, 1:
					_, err = c.Read(octx, a)
				case 2:
					tok, err = c.Capture(octx, a)
				case 3:
					if !tok.IsZero() {
						err = c.Write(octx, a, tok, v)
					}
				case 4:
					err = c.WriteUnsafe(octx, a, v)
				case 5:
					var sc worm.SegmentCapture
					sc, err = c.CaptureSegment(octx, seg)
					tok = sc.Token
				case 6:
					if !tok.IsZero() {
						err = c.WriteBatch(octx, seg, a.Off, tok, [][]byte{v, v})
					}
				case 7:
					_, err = c.Check(octx, seg)
				}
				cancel()
				if errors.Is(err, worm.ErrUnavailable) || errors.Is(err, worm.ErrUnknownOutcome) {
					fails.Add(1)
					time.Sleep(time.Millisecond)
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	k.heal()
	t.Logf("%d replica kills, %d operations unavailable or ambiguous", k.kills, fails.Load())
	if k.kills == 0 {
		t.Fatal("the killer never killed: the test checked nothing about crashes")
	}
	// A final read of every register by a fresh client, after healing,
	// pins down every ambiguous write.
	final := rec.Wrap(tc.client(t))
	for _, s := range segs {
		for off := uint32(0); off < regs; off++ {
			for {
				_, err := final.Read(ctx, worm.Addr{Seg: s, Off: off})
				if !errors.Is(err, worm.ErrUnavailable) {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
	}
	check.Require(t, rec.History(), time.Minute)
}

// TestWormLogUnderCrashes runs WormLog's randomized suite while replicas
// are stopped and restarted.
func TestWormLogUnderCrashes(t *testing.T) {
	tc := startChain(t, 3, 16, false)
	k := &replicaKiller{tc: tc, down: -1}
	wormlogtest.RunWith(t, tc.open(4), wormlogtest.Options{Nemesis: k, Seeds: 4, Duration: 400 * time.Millisecond})
	t.Logf("%d replica kills", k.kills)
}
