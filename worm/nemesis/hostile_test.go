package nemesis_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/paxos"
	"github.com/wormspace/wormspace/worm/server"
	"github.com/wormspace/wormspace/worm/wire"
)

// vmRSS returns a process's resident set size in bytes.
func vmRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmRSS")
}

// closedByPeer reports whether the server closes conn (EOF or reset)
// within d, draining whatever it sends first.
func closedByPeer(conn net.Conn, d time.Duration) bool {
	conn.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, conn)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	return true // io.Copy returns nil at EOF; a reset is an error too
}

// hostileEnv is one attack's target: a real wormd with a large value
// stored, and a well-behaved client.
type hostileEnv struct {
	addr string
	key  []byte
	ctx  context.Context
	// authed dials and completes the handshake with the cluster key.
	authed func() (net.Conn, error)
	// bad records whether wormd closed a bad connection within d.
	bad func(conn net.Conn, d time.Duration)
	// keep holds a connection open until the attack ends.
	keep func(net.Conn)
	// fail counts attack dials or handshakes that failed.
	fail func()
}

const hostileBig = 512 << 10

// TestHostileClients: a real wormd is fed garbage, truncated frames,
// oversize length prefixes (before and after authentication), floods of
// idle and churning connections, and slow readers that pipeline large
// reads and never read the replies — each attack on its own wormd, while
// a well-behaved client keeps writing and reading. Every operation of the
// good client succeeds, a client dialed during the attack is served,
// wormd closes every bad connection, and its RSS (VmRSS) stays bounded.
func TestHostileClients(t *testing.T) {
	if testing.Short() {
		t.Skip("hostile-client test takes ~40s")
	}
	garbage := make([][]byte, 40)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range garbage {
		garbage[i] = make([]byte, 1+rng.IntN(8192))
		for j := range garbage[i] {
			garbage[i][j] = byte(rng.Uint32())
		}
	}
	oversize := func() []byte {
		var h [wire.HeaderSize]byte
		binary.LittleEndian.PutUint32(h[:], 0xfffffff0)
		h[4] = 1
		return h[:]
	}()
	readReq := wire.AppendRequest(nil, 1, &paxos.Request{Kind: paxos.KindRead, Seg: 7, Off: 0})
	slowReaders := func(conns, reqs int) func(e *hostileEnv) {
		return func(e *hostileEnv) {
			for i := 0; i < conns; i++ {
				conn, err := e.authed()
				if err != nil {
					e.fail()
					continue
				}
				e.keep(conn)
				go func() {
					var b []byte
					for j := 0; j < reqs; j++ {
						b = wire.AppendRequest(b, uint64(j+1), &paxos.Request{Kind: paxos.KindRead, Seg: 7, Off: 0})
					}
					conn.SetWriteDeadline(time.Now().Add(20 * time.Second))
					conn.Write(b) // blocks once wormd stops reading: the point
				}()
			}
		}
	}
	attacks := []struct {
		name   string
		rssMiB int64
		run    func(e *hostileEnv)
	}{
		{"garbage", 64, func(e *hostileEnv) {
			for _, g := range garbage {
				conn, err := net.Dial("tcp", e.addr)
				if err != nil {
					e.fail()
					continue
				}
				conn.Write(g)
				e.bad(conn, 12*time.Second)
			}
		}},
		{"oversize", 64, func(e *hostileEnv) {
			for i := 0; i < 20; i++ {
				conn, err := net.Dial("tcp", e.addr)
				if err != nil {
					e.fail()
					continue
				}
				conn.Write(oversize)
				e.bad(conn, 12*time.Second)
				if conn, err = e.authed(); err != nil {
					e.fail()
					continue
				}
				conn.Write(oversize)
				e.bad(conn, 5*time.Second)
				if conn, err = e.authed(); err != nil {
					e.fail()
					continue
				}
				g := append([]byte(nil), garbage[i]...)
				if len(g) < wire.HeaderSize {
					g = append(g, make([]byte, wire.HeaderSize)...)
				}
				binary.LittleEndian.PutUint32(g, uint32(len(g)-4)) // plausible length, garbage inside
				conn.Write(g)
				e.bad(conn, 5*time.Second)
			}
		}},
		{"truncated", 64, func(e *hostileEnv) {
			for i := 0; i < 40; i++ {
				conn, err := e.authed()
				if err != nil {
					e.fail()
					continue
				}
				conn.Write(readReq[:len(readReq)/2])
				e.keep(conn)
			}
		}},
		{"flood", 128, func(e *hostileEnv) {
			for i := 0; i < 600; i++ {
				conn, err := net.Dial("tcp", e.addr)
				if err != nil {
					e.fail()
					continue
				}
				e.keep(conn)
			}
			for i := 0; i < 2000; i++ {
				conn, err := net.Dial("tcp", e.addr)
				if err != nil {
					e.fail()
					continue
				}
				conn.Close()
			}
		}},
		// Shallow pipelines (16 reads of 512 KiB each: about one
		// connection's MaxPending of output).
		{"slow-readers", 256, slowReaders(8, 16)},
		// Deep pipelines: 8 connections x 400 reads of 512 KiB (1.6 GiB
		// if wormd buffered every reply). wormd holds at most its reply
		// budget (server.DefaultMaxPendingTotal) for replies, queued or
		// waiting for a sync; with the Go heap up to twice the live bytes
		// and the engine's pool of response copies, its RSS grows by less
		// than three times that (measured: about 110 MiB; 2.5-3.3 GiB
		// before the budget existed).
		{"slow-readers-deep", 3 * server.DefaultMaxPendingTotal >> 20, slowReaders(8, 400)},
	}
	for _, a := range attacks {
		t.Run(a.name, func(t *testing.T) {
			hostile(t, a.rssMiB<<20, a.run)
		})
	}
}

// hostile runs one attack against a fresh wormd while a good client works.
func hostile(t *testing.T, rssLimit int64, attack func(e *hostileEnv)) {
	c := startCluster(t, 1)
	good := dial(t, c, "good")
	key, _ := c.Key()
	pid := c.Nodes[0].Pid()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, s := range []uint64{7, 8} {
		if _, err := good.Alloc(ctx, s, nil); err != nil {
			t.Fatal(err)
		}
	}
	tok, err := good.Capture(ctx, worm.Addr{Seg: 7})
	if err != nil {
		t.Fatal(err)
	}
	if err := good.Write(ctx, worm.Addr{Seg: 7}, tok, bytes.Repeat([]byte("B"), hostileBig)); err != nil {
		t.Fatal(err)
	}
	base, err := vmRSS(pid)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var maxRSS atomic.Int64
	maxRSS.Store(base)
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			if r, err := vmRSS(pid); err == nil && r > maxRSS.Load() {
				maxRSS.Store(r)
			}
		}
	})
	// The well-behaved client: read-or-write on its own registers.
	var goodOps, goodErrs, worst atomic.Int64
	var firstErr atomic.Value
	wg.Go(func() {
		for off := uint32(0); ; off = (off + 1) % 255 {
			select {
			case <-stop:
				return
			default:
			}
			t0 := time.Now()
			a := worm.Addr{Seg: 8, Off: off}
			v := []byte(fmt.Sprintf("good-%d", off))
			err := func() error {
				octx, cancel := context.WithTimeout(ctx, 3*time.Second)
				defer cancel()
				got, err := good.Read(octx, a)
				if err == nil {
					if !bytes.Equal(got, v) {
						return fmt.Errorf("read %v: %q, want %q", a, got, v)
					}
					return nil
				}
				if !errors.Is(err, worm.ErrEmpty) {
					return err
				}
				tok, err := good.Capture(octx, a)
				if err != nil {
					return err
				}
				return good.Write(octx, a, tok, v)
			}()
			if d := int64(time.Since(t0)); d > worst.Load() {
				worst.Store(d)
			}
			goodOps.Add(1)
			if err != nil {
				goodErrs.Add(1)
				firstErr.CompareAndSwap(nil, err)
			}
			time.Sleep(2 * time.Millisecond)
		}
	})
	var closedBad, openBad, attackErrs atomic.Int64
	var kmu sync.Mutex
	var kept []net.Conn
	e := &hostileEnv{
		addr: c.Nodes[0].Addr, key: key, ctx: ctx,
		authed: func() (net.Conn, error) {
			conn, err := net.Dial("tcp", c.Nodes[0].Addr)
			if err != nil {
				return nil, err
			}
			hctx, hcancel := context.WithTimeout(ctx, 5*time.Second)
			defer hcancel()
			if _, err := wire.ClientHandshake(hctx, conn, wire.ClientHello{ID: "evil"}, key); err != nil {
				conn.Close()
				return nil, err
			}
			return conn, nil
		},
		bad: func(conn net.Conn, d time.Duration) {
			if closedByPeer(conn, d) {
				closedBad.Add(1)
			} else {
				openBad.Add(1)
			}
			conn.Close()
		},
		keep: func(conn net.Conn) { kmu.Lock(); kept = append(kept, conn); kmu.Unlock() },
		fail: func() { attackErrs.Add(1) },
	}
	began := time.Now()
	attack(e)
	if d := 4*time.Second - time.Since(began); d > 0 {
		time.Sleep(d) // let kept connections weigh on wormd a while
	}
	fresh := dial(t, c, "fresh-during-attack")
	if v, err := fresh.Read(ctx, worm.Addr{Seg: 7}); err != nil || len(v) != hostileBig {
		t.Errorf("a client dialed during the attack: read %d bytes, %v", len(v), err)
	}
	close(stop)
	wg.Wait()
	kmu.Lock()
	for _, conn := range kept {
		conn.Close()
	}
	kmu.Unlock()

	growth := maxRSS.Load() - base
	t.Logf("good client: %d operations, %d failed (first: %v), slowest %v", goodOps.Load(), goodErrs.Load(), firstErr.Load(), time.Duration(worst.Load()).Round(time.Millisecond))
	t.Logf("bad connections closed by wormd: %d, left open: %d; attack dials or handshakes that failed: %d; connections held: %d", closedBad.Load(), openBad.Load(), attackErrs.Load(), len(kept))
	t.Logf("wormd VmRSS: %d MiB before, max %d MiB during (+%d MiB, limit +%d MiB)", base>>20, maxRSS.Load()>>20, growth>>20, rssLimit>>20)
	if goodOps.Load() < 50 {
		t.Errorf("the good client did only %d operations", goodOps.Load())
	}
	if goodErrs.Load() > 0 {
		t.Errorf("the good client saw %d failures under attack (first: %v)", goodErrs.Load(), firstErr.Load())
	}
	if openBad.Load() > 0 {
		t.Errorf("%d bad connections were left open by wormd", openBad.Load())
	}
	if attackErrs.Load() > 0 {
		t.Errorf("%d attack dials or handshakes failed: the attack did not land in full", attackErrs.Load())
	}
	if growth > rssLimit {
		t.Errorf("wormd's RSS grew by %d MiB under attack (limit %d MiB)", growth>>20, rssLimit>>20)
	}
	if !c.Nodes[0].Running() {
		t.Fatal("wormd died under attack")
	}
	v, err := good.Read(ctx, worm.Addr{Seg: 7})
	if err != nil || len(v) != hostileBig {
		t.Fatalf("after the attack: read %d bytes, %v", len(v), err)
	}
}
