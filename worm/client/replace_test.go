package client_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/client"
	"github.com/wormspace/wormspace/worm/paxos"
	"github.com/wormspace/wormspace/worm/wire"
)

// addJoining starts a new, joining wormserver (wormd -join) with acceptor
// id and returns its index.
func (c *procCluster) addJoining(id uint32) int {
	c.t.Helper()
	nd := &node{id: id, acc: paxos.NewAcceptor(c.segSize)}
	c.nodes = append(c.nodes, nd)
	c.start(nd, "127.0.0.1:0")
	if _, err := nd.eng.Join(); err != nil {
		c.t.Fatal(err)
	}
	return len(c.nodes) - 1
}

func replace(t *testing.T, c *procCluster, servers []string, old, new string, interrupt string) (wire.Config, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return client.Replace(ctx, client.Replacement{
		Servers: servers, Key: c.key, Old: old, New: new, Logger: quiet(),
		ChunkBytes: 512, // many chunks even for a small state
		Progress:   func(l string) { t.Log("replace: " + l) },
		Interrupt:  func(step string) bool { return step == interrupt },
	})
}

// written writes value v to (seg, off) with capture+write.
func written(ctx context.Context, sp worm.Space, a worm.Addr, v []byte) error {
	tok, err := sp.Capture(ctx, a)
	if err != nil {
		if w, ok := worm.WrittenValue(err); ok && bytes.Equal(w, v) {
			return nil
		}
		return err
	}
	return sp.Write(ctx, a, tok, v)
}

// Replacing a dead member while clients keep writing: every write
// acknowledged before, during and after the change is readable from the
// new configuration after another original member dies too, which needs
// the new member's copied state; a client of the old list moved to the
// new configuration, and one dialed later with the old list learns it
// from the handshake.
func TestReplaceOnline(t *testing.T) {
	key := bytes.Repeat([]byte{9}, 32)
	c := newProcCluster(t, 3, 64, key)
	old := c.Servers()
	cl := c.dial(t, "writer")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for s := uint64(1); s <= 3; s++ {
		if _, err := cl.Alloc(ctx, s, nil); err != nil {
			t.Fatal(err)
		}
	}
	var acked sync.Map // worm.Addr -> []byte
	var next atomic.Uint32
	var stop atomic.Bool
	var wg sync.WaitGroup
	var errs sync.Map
	writer := func() {
		defer wg.Done()
		for !stop.Load() {
			n := next.Add(1) - 1
			if n >= 3*64 {
				return
			}
			a := worm.Addr{Seg: 1 + uint64(n/64), Off: n % 64}
			v := []byte(fmt.Sprintf("v%d", n))
			wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
			err := written(wctx, cl, a, v)
			wcancel()
			if err == nil {
				acked.Store(a, v)
			} else {
				errs.Store(a, err)
			}
		}
	}
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go writer()
	}
	for next.Load() < 30 {
		time.Sleep(time.Millisecond)
	}
	c.Stop(2) // the failed member
	n := c.addJoining(7)
	cfg, err := replace(t, c, old, old[2], c.nodes[n].addr, "")
	if err != nil {
		t.Fatal(err)
	}
	want := wire.Config{Epoch: 1, Members: []wire.Member{{ID: 1, Addr: old[0]}, {ID: 2, Addr: old[1]}, {ID: 7, Addr: c.nodes[n].addr}}}
	if !cfg.Equal(want) {
		t.Fatalf("new configuration %v, want %v", cfg, want)
	}
	during := next.Load()
	for next.Load() < during+30 && next.Load() < 3*64 {
		time.Sleep(time.Millisecond)
	}
	stop.Store(true)
	wg.Wait()
	errs.Range(func(k, v any) bool {
		t.Errorf("write %v failed: %v", k, v)
		return true
	})
	if cl.Epoch() != 1 || !slices.Equal(cl.Servers(), []string{old[0], old[1], c.nodes[n].addr}) {
		t.Fatalf("the writer is at epoch %d with servers %v", cl.Epoch(), cl.Servers())
	}
	// Status names the members of the new configuration, each answering
	// once the client's connection to the new member is up.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		var bad []string
		for i, st := range cl.Status(ctx) {
			if st.Addr != cl.Servers()[i] || st.Err != nil {
				bad = append(bad, fmt.Sprintf("server %d: %s, %v; want %s answering", i, st.Addr, st.Err, cl.Servers()[i]))
			}
		}
		if len(bad) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status: %v", bad)
		}
	}
	// Another original member dies: a quorum needs the new one. The
	// replaced one comes back with its old state (it was never sealed: it
	// serves epoch 0, to nobody, for a quorum of epoch 0 is sealed).
	c.Stop(0)
	c.Start(2)
	// The old list: 0 is down, 2 is out, 1 names the new configuration.
	late, err := client.Dial(ctx, client.Config{Servers: old, Key: key, ID: "late", Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer late.Close()
	if late.Epoch() != 1 {
		t.Fatalf("a client dialed with the old list is at epoch %d", late.Epoch())
	}
	count := 0
	acked.Range(func(k, v any) bool {
		count++
		for _, sp := range []*client.Client{cl, late} {
			got, err := sp.Read(ctx, k.(worm.Addr))
			if err != nil || !bytes.Equal(got, v.([]byte)) {
				t.Errorf("acknowledged %v = %q: read %q, %v", k, v, got, err)
			}
		}
		return true
	})
	t.Logf("%d writes acknowledged (%d after the replacement began), all readable from {new member, one original}", count, next.Load()-30)
	if err := written(ctx, late, worm.Addr{Seg: 3, Off: 63}, []byte("after")); err != nil && !errors.Is(err, worm.ErrWritten) {
		t.Fatalf("write in the new configuration with one original member down: %v", err)
	}
}

// A replacement interrupted after any step is finished by running it
// again (with the same arguments, or with none but the servers), and a
// client's operation issued while the epoch is sealed waits for the new
// configuration and then succeeds.
func TestReplaceInterrupted(t *testing.T) {
	for _, step := range []string{"decided", "sealed", "activated", "installing", "installed"} {
		t.Run(step, func(t *testing.T) {
			c := newProcCluster(t, 3, 16, nil)
			old := c.Servers()
			cl := c.dial(t, "w")
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if _, err := cl.Alloc(ctx, 1, nil); err != nil {
				t.Fatal(err)
			}
			for off := uint32(0); off < 16; off++ {
				if err := written(ctx, cl, worm.Addr{Seg: 1, Off: off}, []byte{byte(off)}); err != nil {
					t.Fatal(err)
				}
			}
			c.Stop(2)
			n := c.addJoining(4)
			if _, err := replace(t, c, old, old[2], c.nodes[n].addr, step); !errors.Is(err, client.ErrInterrupted) {
				t.Fatalf("interrupted replacement: %v", err)
			}
			// An operation now: it completes once the change is finished.
			done := make(chan error, 1)
			go func() {
				octx, ocancel := context.WithTimeout(ctx, 20*time.Second)
				defer ocancel()
				done <- written(octx, cl, worm.Addr{Seg: 1, Off: 15}, []byte{15})
			}()
			args := []string{old[2], c.nodes[n].addr}
			if step == "sealed" || step == "installing" {
				args = []string{"", ""} // finish only
			}
			cfg, err := replace(t, c, old, args[0], args[1], "")
			if err != nil {
				t.Fatalf("second run: %v", err)
			}
			if cfg.Epoch != 1 || !cfg.Has(4) {
				t.Fatalf("after the second run: %v", cfg)
			}
			if err := <-done; err != nil {
				t.Fatalf("write issued during the change: %v", err)
			}
			c.Stop(1)
			for off := uint32(0); off < 16; off++ {
				got, err := cl.Read(ctx, worm.Addr{Seg: 1, Off: off})
				if err != nil || !bytes.Equal(got, []byte{byte(off)}) {
					t.Fatalf("register 1/%d after the change with member 2 down: %q %v", off, got, err)
				}
			}
		})
	}
}

// While an epoch is sealed and its successor not yet active, operations
// wait (they do not fail at once, nor answer from a minority), and end
// with ErrUnavailable at their deadline if the change is not finished.
func TestSealedEpochUnavailable(t *testing.T) {
	c := newProcCluster(t, 3, 16, nil)
	old := c.Servers()
	cl := c.dial(t, "w")
	ctx := context.Background()
	if _, err := cl.Alloc(ctx, 1, nil); err != nil {
		t.Fatal(err)
	}
	n := c.addJoining(4)
	if _, err := replace(t, c, old, old[2], c.nodes[n].addr, "sealed"); !errors.Is(err, client.ErrInterrupted) {
		t.Fatal(err)
	}
	octx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, err := cl.Read(octx, worm.Addr{Seg: 1, Off: 0}); !errors.Is(err, worm.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("read while the epoch is sealed: %v, want ErrUnavailable at the deadline", err)
	}
	// A new client dialed with the old list sees the change under way.
	dctx, dcancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer dcancel()
	if _, err := client.Dial(dctx, client.Config{Servers: old, Logger: quiet()}); !errors.Is(err, worm.ErrUnavailable) {
		t.Fatalf("Dial while the epoch is sealed: %v", err)
	}
	if _, err := replace(t, c, old, "", "", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Read(ctx, worm.Addr{Seg: 1, Off: 0}); !errors.Is(err, worm.ErrEmpty) {
		t.Fatalf("read after the change: %v", err)
	}
}

// Replace refuses what it cannot do safely: a new member that is not
// joining, an old member that is not one, and (at epoch 0) a majority it
// cannot seal.
func TestReplaceRefuses(t *testing.T) {
	c := newProcCluster(t, 3, 16, nil)
	old := c.Servers()
	extra := newProcCluster(t, 1, 16, nil) // an active server, not joining
	if _, err := replace(t, c, old, old[2], extra.Servers()[0], ""); !errors.Is(err, client.ErrReplace) {
		t.Fatalf("replacing by a server that is not joining: %v", err)
	}
	n := c.addJoining(4)
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	nowhere := l.Addr().String()
	l.Close()
	if _, err := replace(t, c, old, nowhere, c.nodes[n].addr, ""); !errors.Is(err, client.ErrReplace) {
		t.Fatalf("replacing a server that is not a member: %v", err)
	}
	c.Stop(1)
	c.Stop(2)
	if _, err := replace(t, c, old, old[2], c.nodes[n].addr, ""); !errors.Is(err, client.ErrReplace) {
		t.Fatalf("replacing with a minority up: %v", err)
	}
}

// A member that is alive can be replaced while another is down: the
// read quorum is then the kept member and the replaced one (sealed, not
// kept), and the new configuration serves with the kept member and the
// new one. The member that was down, back, is brought into the new
// configuration by a run without arguments (it missed the change: a
// laggard), after which it makes a quorum with the new member.
func TestReplaceLiveMemberWithAnotherDown(t *testing.T) {
	c := newProcCluster(t, 3, 16, nil)
	old := c.Servers()
	cl := c.dial(t, "w")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cl.Alloc(ctx, 1, nil); err != nil {
		t.Fatal(err)
	}
	// Epoch 1 first (replace member 3 by 4), so that the configuration
	// names every member's id even when one is down.
	n1 := c.addJoining(4)
	if _, err := replace(t, c, old, old[2], c.nodes[n1].addr, ""); err != nil {
		t.Fatal(err)
	}
	c.Stop(2)
	// Values only member 1 and the new member 4 hold (member 2 is down).
	c.Stop(1)
	for off := uint32(0); off < 16; off++ {
		if err := written(ctx, cl, worm.Addr{Seg: 1, Off: off}, []byte{byte(off)}); err != nil {
			t.Fatalf("%v\n%s", err, strings.Join(cl.ConnStates(), "\n"))
		}
	}
	// Replace 4 (alive) by 5 while 2 is down: sources are 1 and 4.
	n2 := c.addJoining(5)
	cfg, err := replace(t, c, []string{old[0], old[1], c.nodes[n1].addr}, c.nodes[n1].addr, c.nodes[n2].addr, "")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Epoch != 2 || !cfg.Has(5) || cfg.Has(4) {
		t.Fatalf("configuration %v", cfg)
	}
	c.Stop(n1) // the replaced member: no longer needed
	for off := uint32(0); off < 16; off++ {
		got, err := cl.Read(ctx, worm.Addr{Seg: 1, Off: off})
		if err != nil || !bytes.Equal(got, []byte{byte(off)}) {
			t.Fatalf("1/%d with members 1 and 5: %q %v", off, got, err)
		}
	}
	c.Start(1) // still active in epoch 1, which no quorum serves
	if _, err := replace(t, c, []string{old[0], old[1], c.nodes[n2].addr}, "", "", ""); err != nil {
		t.Fatal(err)
	}
	c.Stop(0)
	for off := uint32(0); off < 16; off++ {
		// The client redials member 2, down until now, on its own
		// schedule: until then the read finds no quorum.
		got, err := cl.Read(ctx, worm.Addr{Seg: 1, Off: off})
		for deadline := time.Now().Add(5 * time.Second); errors.Is(err, worm.ErrUnavailable) && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
			got, err = cl.Read(ctx, worm.Addr{Seg: 1, Off: off})
		}
		if err != nil || !bytes.Equal(got, []byte{byte(off)}) {
			t.Fatalf("1/%d with members 2 (caught up) and 5: %q %v", off, got, err)
		}
	}
	if err := written(ctx, cl, worm.Addr{Seg: 1, Off: 0}, []byte{0}); err != nil {
		t.Fatalf("write with members 2 and 5: %v", err)
	}
}

// BenchmarkReplace measures a replacement of a member holding a given
// state, on in-process wormservers over loopback (storage in memory, so
// this is the cost of the protocol, the copies and the merge): each
// iteration replaces the previous new member by a fresh joining one. Bytes
// are the values copied per replacement (from a majority: twice the
// state).
func BenchmarkReplace(b *testing.B) {
	for _, mb := range []int{1, 16} {
		b.Run(fmt.Sprintf("%dMiB", mb), func(b *testing.B) {
			c := newProcCluster(b, 3, 64, nil)
			old := c.Servers()
			cl := c.dial(b, "fill")
			ctx := context.Background()
			value := bytes.Repeat([]byte("x"), 16<<10)
			segs := uint64(mb<<20) / (64 * uint64(len(value)))
			for s := uint64(1); s <= segs; s++ {
				if _, err := cl.Alloc(ctx, s, nil); err != nil {
					b.Fatal(err)
				}
				sc, err := cl.CaptureSegment(ctx, s)
				if err != nil {
					b.Fatal(err)
				}
				for off := uint32(0); off < 64; off += 16 {
					vals := make([][]byte, 16)
					for i := range vals {
						vals[i] = value
					}
					if err := cl.WriteBatch(ctx, s, off, sc.Token, vals); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.SetBytes(2 * int64(segs) * 64 * int64(len(value)))
			oldMember := old[2]
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				n := c.addJoining(uint32(10 + i))
				b.StartTimer()
				cfg, err := client.Replace(ctx, client.Replacement{Servers: old, Old: oldMember, New: c.nodes[n].addr, Logger: quiet()})
				if err != nil {
					b.Fatal(err)
				}
				oldMember = c.nodes[n].addr
				old = nil
				for _, m := range cfg.Members {
					old = append(old, m.Addr)
				}
			}
		})
	}
}
