package localcluster_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/check"
	"github.com/wormspace/wormspace/worm/client"
	"github.com/wormspace/wormspace/worm/localcluster"
)

// wormCLI runs the worm binary with the cluster's key and returns its
// stdout, stderr and exit code.
func wormCLI(t *testing.T, c *localcluster.Cluster, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(filepath.Join(bin, "worm"), args...)
	cmd.Env = append(os.Environ(), "WORM_SERVERS=", "WORM_KEY=", "WORM_KEY_FILE="+c.KeyFile)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

// dialList dials a client with the given server list.
func dialList(t *testing.T, c *localcluster.Cluster, servers []string, id string) *client.Client {
	t.Helper()
	key, err := c.Key()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := client.Dial(ctx, client.Config{Servers: servers, Key: key, ID: id, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// TestReplaceOnline is the scenario on real wormds: concurrent
// clients capture, write and read (recorded for porcupine) while wormd 3
// is killed with SIGKILL, a fresh wormd started with -join replaces it
// through `worm replace` run online, and then wormd 1 is killed too, so
// that the new configuration's only quorum needs the new member's copied
// state. Every acknowledged write is read back from the new configuration
// by a client dialed with the old list, and the whole history is
// linearizable. WORM_SEED replays the workload's choices.
func TestReplaceOnline(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("WORM_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("seed %d", seed)
	c := start(t, localcluster.Config{N: 3, SegmentSize: 1024})
	old := c.Servers()
	rec := check.NewRecorder()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	var spaces []worm.Space
	for i := 0; i < 4; i++ {
		spaces = append(spaces, rec.Wrap(dialList(t, c, old, fmt.Sprint("c", i))))
	}
	for s := uint64(0); s < 2; s++ {
		if _, err := spaces[0].Alloc(ctx, 10+s, nil); err != nil {
			t.Fatal(err)
		}
	}
	var acked sync.Map // worm.Addr -> []byte: writes acknowledged, values read
	learn := func(a worm.Addr, v []byte) {
		if prev, loaded := acked.LoadOrStore(a, bytes.Clone(v)); loaded && !bytes.Equal(prev.([]byte), v) {
			t.Errorf("%v seen as %q and %q", a, prev, v)
		}
	}
	// phase: 0 before the kill, 1 while one member is dead and the
	// replacement runs, 2 with the new member and another original dead.
	var phase atomic.Int32
	var outcomes [3]sync.Map // error kind -> *atomic.Int64
	count := func(err error) {
		k := "ok"
		for _, e := range []error{worm.ErrEmpty, worm.ErrWritten, worm.ErrPreempted, worm.ErrUnavailable, worm.ErrUnknownOutcome} {
			if errors.Is(err, e) {
				k = e.Error()
				break
			}
		}
		if err != nil && k == "ok" {
			k = err.Error()
		}
		v, _ := outcomes[phase.Load()].LoadOrStore(k, new(atomic.Int64))
		v.(*atomic.Int64).Add(1)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	began := time.Now()
	for i, sp := range spaces {
		wg.Add(1)
		go func(i int, sp worm.Space) {
			defer wg.Done()
			r := mrand.New(mrand.NewPCG(seed, uint64(i)))
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				// A window of 4 registers that slides every 20ms: registers
				// are fought over while empty, not only read once written.
				window := int(time.Since(began) / (20 * time.Millisecond))
				a := worm.Addr{Seg: 10 + uint64(r.IntN(2)), Off: uint32((window + r.IntN(4)) % 1024)}
				octx, ocancel := context.WithTimeout(ctx, 5*time.Second)
				switch r.IntN(3) {
				case 0:
					v, err := sp.Read(octx, a)
					count(err)
					if err == nil {
						learn(a, v)
					}
				default:
					tok, err := sp.Capture(octx, a)
					count(err)
					if w, ok := worm.WrittenValue(err); ok {
						learn(a, w)
					}
					if err == nil {
						v := []byte(fmt.Sprintf("c%d-%d", i, n))
						err := sp.Write(octx, a, tok, v)
						count(err)
						if err == nil {
							learn(a, v)
						} else if w, ok := worm.WrittenValue(err); ok {
							learn(a, w)
						}
					}
				}
				ocancel()
			}
		}(i, sp)
	}
	time.Sleep(time.Second)
	phase.Store(1)
	if err := c.Kill(2); err != nil {
		t.Fatal(err)
	}
	n, err := c.AddNode(ctx, "-join")
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	out, errOut, code := wormCLI(t, c, "replace", "-servers", strings.Join(old, ","), "-old", old[2], "-new", n.Addr, "-chunk", "4096")
	took := time.Since(t0)
	t.Logf("worm replace (%v):\n%s%s", took.Round(time.Millisecond), errOut, out)
	want := fmt.Sprintf("export WORM_SERVERS=%s,%s,%s\n", old[0], old[1], n.Addr)
	if code != 0 || out != want {
		t.Fatalf("worm replace: exit %d, stdout %q; want exit 0 and %q", code, out, want)
	}
	time.Sleep(time.Second)
	phase.Store(2)
	if err := c.Kill(0); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	close(stop)
	wg.Wait()
	for p := range outcomes {
		var line []string
		outcomes[p].Range(func(k, v any) bool {
			line = append(line, fmt.Sprintf("%s: %d", k, v.(*atomic.Int64).Load()))
			return true
		})
		t.Logf("phase %d: %s", p, strings.Join(line, ", "))
	}
	if v, ok := outcomes[2].Load("ok"); !ok || v.(*atomic.Int64).Load() < 10 {
		t.Fatalf("with the new member and one original member up, few operations succeeded: %v", v)
	}
	res := check.Require(t, rec.History(), time.Minute)
	if res.Outcome != porcupine.Ok {
		t.Fatalf("no definite verdict: %v", res)
	}
	t.Logf("history: %v", res)
	// Every acknowledged value, from a client dialed with the old list
	// (wormd 1 and 3 are gone; wormd 2 names the new configuration).
	reader := dialList(t, c, old, "reader")
	if reader.Epoch() != 1 {
		t.Fatalf("a client dialed with the old list is at epoch %d", reader.Epoch())
	}
	nacked := 0
	acked.Range(func(k, v any) bool {
		nacked++
		got, err := reader.Read(ctx, k.(worm.Addr))
		if err != nil || !bytes.Equal(got, v.([]byte)) {
			t.Errorf("%v was %q; the new configuration reads %q, %v", k, v, got, err)
		}
		return true
	})
	t.Logf("%d registers' acknowledged values read back from {wormd 2, the new member}", nacked)
}

// A replacement interrupted after the seal (the cluster waits: no quorum
// serves either epoch) or in the middle of the state transfer is finished
// by running `worm replace` again, without -old/-new or with them.
func TestReplaceInterruptedFinishedByCLI(t *testing.T) {
	for _, step := range []string{"sealed", "installing"} {
		t.Run(step, func(t *testing.T) {
			c := start(t, localcluster.Config{N: 3, SegmentSize: 16})
			old := c.Servers()
			key, err := c.Key()
			if err != nil {
				t.Fatal(err)
			}
			cl := dialList(t, c, old, "w")
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			for s := uint64(1); s <= 4; s++ {
				if _, err := cl.Alloc(ctx, s, nil); err != nil {
					t.Fatal(err)
				}
				for off := uint32(0); off < 16; off++ {
					a := worm.Addr{Seg: s, Off: off}
					tok, err := cl.Capture(ctx, a)
					if err == nil {
						err = cl.Write(ctx, a, tok, []byte(a.String()))
					}
					if err != nil {
						t.Fatal(err)
					}
				}
			}
			if err := c.Kill(2); err != nil {
				t.Fatal(err)
			}
			n, err := c.AddNode(ctx, "-join")
			if err != nil {
				t.Fatal(err)
			}
			_, err = client.Replace(ctx, client.Replacement{Servers: old, Key: key, Old: old[2], New: n.Addr, ChunkBytes: 256,
				Interrupt: func(s string) bool { return s == step }})
			if !errors.Is(err, client.ErrInterrupted) {
				t.Fatalf("interrupted replacement: %v", err)
			}
			if step == "sealed" {
				// Sealed, not yet active anywhere: no quorum serves.
				if _, _, code := wormCLI(t, c, "read", "-servers", strings.Join(old, ","), "-timeout", "500ms", "1/0"); code != 6 {
					t.Fatalf("read while sealed: exit %d, want 6 (unavailable)", code)
				}
			}
			args := []string{"replace", "-servers", strings.Join(old, ",")}
			if step == "installing" {
				args = append(args, "-old", old[2], "-new", n.Addr)
			}
			out, errOut, code := wormCLI(t, c, args...)
			t.Logf("second run:\n%s%s", errOut, out)
			if code != 0 || !strings.Contains(out, n.Addr) || !strings.Contains(errOut, "finishing the change") {
				t.Fatalf("second run: exit %d", code)
			}
			if err := c.Kill(0); err != nil {
				t.Fatal(err)
			}
			reader := dialList(t, c, old, "reader")
			for s := uint64(1); s <= 4; s++ {
				for off := uint32(0); off < 16; off++ {
					a := worm.Addr{Seg: s, Off: off}
					if got, err := reader.Read(ctx, a); err != nil || string(got) != a.String() {
						t.Fatalf("%v after the change with wormd 1 down: %q %v", a, got, err)
					}
				}
			}
		})
	}
}

// BenchmarkReplace measures `worm replace` of a member holding a given
// state on wormd processes with durable storage (fsync), the CLI included:
// each iteration replaces the previous new member by a fresh -join wormd.
// Bytes are the values copied per replacement (from a majority: twice the
// state). go test -run XXX -bench Replace -benchtime 1x ./worm/localcluster
func BenchmarkReplace(b *testing.B) {
	for _, mb := range []int{8, 64} {
		b.Run(fmt.Sprintf("%dMiB", mb), func(b *testing.B) {
			dir := b.TempDir()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			c, err := localcluster.Start(ctx, localcluster.Config{N: 3, Dir: dir, SegmentSize: 64, Wormd: filepath.Join(bin, "wormd")})
			if err != nil {
				b.Fatal(err)
			}
			defer c.Stop()
			servers := c.Servers()
			key, _ := c.Key()
			cl, err := client.Dial(ctx, client.Config{Servers: servers, Key: key, Logger: quiet()})
			if err != nil {
				b.Fatal(err)
			}
			defer cl.Close()
			value := bytes.Repeat([]byte("x"), 64<<10)
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
			old := servers[2]
			if err := c.Kill(2); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				n, err := c.AddNode(ctx, "-join")
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				cmd := exec.Command(filepath.Join(bin, "worm"), "replace", "-servers", strings.Join(servers, ","), "-old", old, "-new", n.Addr)
				cmd.Env = append(os.Environ(), "WORM_SERVERS=", "WORM_KEY=", "WORM_KEY_FILE="+c.KeyFile)
				out, err := cmd.CombinedOutput()
				if err != nil {
					b.Fatalf("worm replace: %v\n%s", err, out)
				}
				b.StopTimer()
				servers[2], old = n.Addr, n.Addr
				b.StartTimer()
			}
		})
	}
}
