package localcluster_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/check"
	"github.com/wormspace/wormspace/worm/client"
	"github.com/wormspace/wormspace/worm/localcluster"
	"github.com/wormspace/wormspace/worm/spacetest"
)

// bin holds the wormd and worm binaries built for these tests.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "worm-bin-")
	if err != nil {
		panic(err)
	}
	if _, err := localcluster.Build(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func start(t *testing.T, cfg localcluster.Config) *localcluster.Cluster {
	t.Helper()
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	cfg.Wormd = filepath.Join(bin, "wormd")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := localcluster.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop() })
	return c
}

func dial(t testing.TB, c *localcluster.Cluster, id string) *client.Client {
	t.Helper()
	key, err := c.Key()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := client.Dial(ctx, client.Config{Servers: c.Servers(), Key: key, ID: id, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// TestConformance runs the worm.Space conformance suite against three
// wormd processes (durable mode: every reply waits for fsync).
func TestConformance(t *testing.T) {
	c := start(t, localcluster.Config{N: 3, SegmentSize: 64})
	n := 0
	spacetest.Run(t, func(t *testing.T) []worm.Space {
		n++
		return []worm.Space{dial(t, c, fmt.Sprint("a", n)), dial(t, c, fmt.Sprint("b", n))}
	})
}

// TestPowerLoss: every write acknowledged before all wormds are killed
// with SIGKILL at once is there after they restart; nothing else is.
func TestPowerLoss(t *testing.T) {
	const regs = 1 << 14
	c := start(t, localcluster.Config{N: 3, SegmentSize: regs})
	cl := dial(t, c, "writer")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := cl.Alloc(ctx, 1, nil); err != nil {
		t.Fatal(err)
	}
	sc, err := cl.CaptureSegment(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	// Concurrent writers, so that replies share fsyncs; the kill lands
	// while writes are in flight.
	var acked sync.Map
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var next atomic.Uint32
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				off := next.Add(1) - 1
				if off >= regs {
					return
				}
				v := []byte("v" + strconv.Itoa(int(off)))
				wctx, wcancel := context.WithTimeout(ctx, 2*time.Second)
				err := cl.Write(wctx, worm.Addr{Seg: 1, Off: off}, sc.Token, v)
				wcancel()
				if err == nil {
					acked.Store(off, v)
				}
			}
		}()
	}
	// Kill once writes are flowing, well before they run out.
	for next.Load() < 200 {
		time.Sleep(time.Millisecond)
	}
	var kw sync.WaitGroup
	for i := range c.Nodes {
		kw.Add(1)
		go func(i int) { defer kw.Done(); c.Kill(i) }(i)
	}
	kw.Wait()
	close(stop)
	wg.Wait()
	n := 0
	acked.Range(func(any, any) bool { n++; return true })
	if n == 0 {
		t.Fatal("no write was acknowledged before the kill")
	}
	for i := range c.Nodes {
		if err := c.Restart(ctx, i); err != nil {
			t.Fatal(err)
		}
	}
	cl2 := dial(t, c, "reader")
	acked.Range(func(k, v any) bool {
		got, err := cl2.Read(ctx, worm.Addr{Seg: 1, Off: k.(uint32)})
		if err != nil || !bytes.Equal(got, v.([]byte)) {
			t.Errorf("acknowledged write %d: read %q, %v after power loss", k, got, err)
		}
		return true
	})
	if next.Load() >= regs {
		t.Fatalf("the writers finished before the kill: the kill did not land mid-stream")
	}
	t.Logf("%d acknowledged writes survived kill -9 of every wormd (killed mid-stream)", n)
}

// TestKillAndRestart: with one of three wormds killed the cluster keeps
// serving; with two killed operations fail with ErrUnavailable (never a
// wrong answer); restarted, the wormds serve again with their state, and
// the client reconnects by itself. It records the time to recover.
func TestKillAndRestart(t *testing.T) {
	c := start(t, localcluster.Config{N: 3, SegmentSize: 64})
	cl := dial(t, c, "k")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	write := func(off uint32, v string) error {
		a := worm.Addr{Seg: 2, Off: off}
		octx, ocancel := context.WithTimeout(ctx, 3*time.Second)
		defer ocancel()
		tok, err := cl.Capture(octx, a)
		if err != nil {
			return err
		}
		return cl.Write(octx, a, tok, []byte(v))
	}
	if _, err := cl.Alloc(ctx, 2, nil); err != nil {
		t.Fatal(err)
	}
	if err := write(0, "before"); err != nil {
		t.Fatal(err)
	}
	if err := c.Kill(0); err != nil {
		t.Fatal(err)
	}
	if err := write(1, "one down"); err != nil {
		t.Fatalf("write with one of three killed: %v", err)
	}
	if err := c.Kill(1); err != nil {
		t.Fatal(err)
	}
	if err := write(2, "two down"); !errors.Is(err, worm.ErrUnavailable) {
		t.Fatalf("write with two killed: %v, want ErrUnavailable", err)
	}
	rctx, rcancel := context.WithTimeout(ctx, 3*time.Second)
	_, err := cl.Read(rctx, worm.Addr{Seg: 2, Off: 0})
	rcancel()
	if !errors.Is(err, worm.ErrUnavailable) {
		t.Fatalf("read with two killed: %v, want ErrUnavailable", err)
	}
	healed := time.Now()
	if err := c.Restart(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if err := c.Restart(ctx, 1); err != nil {
		t.Fatal(err)
	}
	for {
		if err := write(3, "healed"); err == nil {
			break
		} else if time.Since(healed) > 20*time.Second {
			t.Fatalf("no service 20s after restart: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("service resumed %v after the restarts began (restart included)", time.Since(healed).Round(time.Millisecond))
	for off, want := range map[uint32]string{0: "before", 1: "one down", 3: "healed"} {
		if v, err := cl.Read(ctx, worm.Addr{Seg: 2, Off: off}); err != nil || string(v) != want {
			t.Fatalf("read %d: %q %v, want %q", off, v, err, want)
		}
	}
}

// TestLinearizableUnderKill9: concurrent clients capture, write and read
// while wormds are killed with SIGKILL and restarted (one at a time); the
// history must be linearizable. WORM_SEED replays the fault schedule.
func TestLinearizableUnderKill9(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("WORM_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("seed %d", seed)
	c := start(t, localcluster.Config{N: 3, SegmentSize: 1024})
	rec := check.NewRecorder()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var spaces []worm.Space
	for i := 0; i < 4; i++ {
		spaces = append(spaces, rec.Wrap(dial(t, c, fmt.Sprint("c", i))))
	}
	for s := uint64(0); s < 2; s++ {
		if _, err := spaces[0].Alloc(ctx, 10+s, nil); err != nil {
			t.Fatal(err)
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var ops atomic.Int64
	// Clients contend on a window of 4 registers that slides every 20ms,
	// so that registers are fought over while empty, not only read once
	// written.
	began := time.Now()
	var kinds sync.Map // error kind -> *atomic.Int64
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
		v, _ := kinds.LoadOrStore(k, new(atomic.Int64))
		v.(*atomic.Int64).Add(1)
	}
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
				window := int(time.Since(began) / (20 * time.Millisecond))
				a := worm.Addr{Seg: 10 + uint64(r.IntN(2)), Off: uint32((window + r.IntN(4)) % 1024)}
				octx, ocancel := context.WithTimeout(ctx, 2*time.Second)
				switch r.IntN(3) {
				case 0:
					_, err := sp.Read(octx, a)
					count(err)
				default:
					tok, err := sp.Capture(octx, a)
					count(err)
					if err == nil {
						count(sp.Write(octx, a, tok, []byte(fmt.Sprintf("c%d-%d", i, n))))
					}
				}
				ocancel()
				ops.Add(1)
			}
		}(i, sp)
	}
	r := mrand.New(mrand.NewPCG(seed, 99))
	deadline := time.Now().Add(5 * time.Second)
	kills := 0
	for time.Now().Before(deadline) {
		i := r.IntN(3)
		if err := c.Kill(i); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(50+r.IntN(200)) * time.Millisecond)
		if err := c.Restart(ctx, i); err != nil {
			t.Fatal(err)
		}
		kills++
		time.Sleep(time.Duration(50+r.IntN(200)) * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	res := check.Require(t, rec.History(), time.Minute)
	if res.Outcome != porcupine.Ok {
		t.Fatalf("no definite verdict: %v", res)
	}
	t.Logf("%d operations, %d kill -9 + restart: %v", ops.Load(), kills, res)
	kinds.Range(func(k, v any) bool { t.Logf("  %s: %d", k, v.(*atomic.Int64).Load()); return true })
}

// TestRefusesForeignDirectory: wormd started on another cluster's data
// directory exits with a clear message instead of serving.
func TestRefusesForeignDirectory(t *testing.T) {
	dir := t.TempDir()
	c := start(t, localcluster.Config{N: 1, Dir: dir})
	c.Stop()
	out, err := exec.Command(filepath.Join(bin, "wormd"), "-data", c.Nodes[0].Data, "-cluster", "other", "-listen", "127.0.0.1:0").CombinedOutput()
	if err == nil {
		t.Fatalf("wormd served another cluster's directory:\n%s", out)
	}
	if !strings.Contains(string(out), "foreign data directory") || !strings.Contains(string(out), `not cluster "other"`) {
		t.Fatalf("refusal does not name the cause:\n%s", out)
	}
	t.Logf("refused: %s", strings.SplitN(strings.TrimSpace(string(out)), "\n", 2)[0])
}

// TestRefusesOpenNetworkWithoutKey: without a key, wormd serves loopback
// only unless -insecure.
func TestRefusesOpenNetworkWithoutKey(t *testing.T) {
	out, err := exec.Command(filepath.Join(bin, "wormd"), "-data", t.TempDir(), "-listen", "0.0.0.0:0").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "without a cluster key") {
		t.Fatalf("wormd on 0.0.0.0 without a key: err=%v\n%s", err, out)
	}
}

// TestCLI runs the worm command against a cluster and checks outputs and
// exit codes as README documents them.
func TestCLI(t *testing.T) {
	c := start(t, localcluster.Config{N: 3, SegmentSize: 16})
	env := append(os.Environ(), c.ServersEnv(), "WORM_KEY_FILE="+c.KeyFile, "WORM_KEY=")
	run := func(stdin string, args ...string) (string, int) {
		t.Helper()
		cmd := exec.Command(filepath.Join(bin, "worm"), args...)
		cmd.Env = env
		cmd.Stdin = strings.NewReader(stdin)
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
		if code != 0 && strings.Count(strings.TrimSpace(errb.String()), "\n") > 0 {
			t.Errorf("worm %v: error is not one line:\n%s", args, errb.String())
		}
		return out.String(), code
	}
	expect := func(wantOut string, wantCode int, stdin string, args ...string) {
		t.Helper()
		out, code := run(stdin, args...)
		if code != wantCode || (wantOut != "*" && out != wantOut) {
			t.Fatalf("worm %s: exit %d, stdout %q; want exit %d, stdout %q", strings.Join(args, " "), code, out, wantCode, wantOut)
		}
	}
	expect("*", 0, "", "alloc", "-meta", "m", "5")
	expect("", 0, "", "write", "5/0", "hello")
	expect("hello\n", 0, "", "read", "5/0")
	expect("hello\n", 4, "", "write", "5/0", "other")    // written: the stored value on stdout
	expect("", 0, "", "write", "5/0", "hello")           // identical: idempotent
	expect("", 2, "", "read", "5/1")                     // empty
	expect("", 0, "from stdin", "write", "5/1", "-")     // VALUE from stdin
	expect("from stdin", 0, "", "read", "-raw", "5/1")   // raw: no newline
	expect("", 0, "", "unsafe-write", "5/2", "vote-yes") // ballot 0
	expect("vote-yes\n", 4, "", "unsafe-write", "5/2", "vote-no")
	tok, code := run("", "capture", "5/3")
	if code != 0 {
		t.Fatalf("capture: exit %d", code)
	}
	tok = strings.TrimSpace(tok)
	if _, code := run("", "capture", "5/3"); code != 0 { // preempts tok
		t.Fatalf("second capture: exit %d", code)
	}
	expect("", 3, "", "write", "-token", tok, "5/3", "late") // preempted
	expect("*", 0, "", "check", "5")
	expect("", 2, "", "check", "6") // unallocated
	expect("", 0, "", "trim", "5")
	expect("", 5, "", "read", "5/0") // trimmed
	expect("", 1, "", "read", "nonsense")
	for i := range c.Nodes {
		c.Kill(i)
	}
	expect("", 6, "", "read", "-timeout", "1s", "5/0") // unavailable
}

// dirBytes is the allocated size of the files under dir.
func dirBytes(t *testing.T, dir string) int64 {
	var n int64
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				n += st.Blocks * 512
			}
		}
		return nil
	})
	return n
}

// TestTrimReclaimsStorage: trimmed segments' storage is given back (the
// engine compacts the log), and what was not trimmed survives a restart
// after the compaction.
func TestTrimReclaimsStorage(t *testing.T) {
	c := start(t, localcluster.Config{N: 3, SegmentSize: 64, Volatile: true})
	cl := dial(t, c, "trimmer")
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	value := bytes.Repeat([]byte("x"), 64<<10)
	const segs = 12 // 12 × 64 × 64 KiB = 48 MiB per wormd
	for s := uint64(1); s <= segs; s++ {
		if _, err := cl.Alloc(ctx, s, nil); err != nil {
			t.Fatal(err)
		}
		sc, err := cl.CaptureSegment(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		for off := uint32(0); off < 64; off += 8 {
			vals := make([][]byte, 8)
			for i := range vals {
				vals[i] = value
			}
			if err := cl.WriteBatch(ctx, s, off, sc.Token, vals); err != nil {
				t.Fatal(err)
			}
		}
	}
	before := dirBytes(t, c.Nodes[0].Data)
	for s := uint64(1); s < segs; s++ {
		if err := cl.Trim(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	// One more request makes sure the compaction's snapshot is synced
	// (the old generation is removed after that sync).
	if _, err := cl.Read(ctx, worm.Addr{Seg: segs, Off: 0}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	after := dirBytes(t, c.Nodes[0].Data)
	for after > before/3 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		cl.Read(ctx, worm.Addr{Seg: segs, Off: 1})
		after = dirBytes(t, c.Nodes[0].Data)
	}
	t.Logf("wormd-1 data directory: %d KiB before trimming %d of %d segments, %d KiB after", before>>10, segs-1, segs, after>>10)
	if after > before/3 {
		t.Fatalf("trimming %d of %d segments left %d of %d bytes on disk", segs-1, segs, after, before)
	}
	for i := range c.Nodes {
		if err := c.Restart(ctx, i); err != nil {
			t.Fatal(err)
		}
	}
	cl2 := dial(t, c, "after")
	if v, err := cl2.Read(ctx, worm.Addr{Seg: segs, Off: 63}); err != nil || !bytes.Equal(v, value) {
		t.Fatalf("untrimmed register after compaction and restart: %d bytes, %v", len(v), err)
	}
	if _, err := cl2.Read(ctx, worm.Addr{Seg: 1, Off: 0}); !errors.Is(err, worm.ErrTrimmed) {
		t.Fatalf("trimmed register after restart: %v, want ErrTrimmed", err)
	}
}

// TestAppsCLI runs the applications' commands against a cluster: a log
// append read back, a WormTX demo with a crashed coordinator, and a
// three-replica KV store that survives kill -9 of a replica.
func TestAppsCLI(t *testing.T) {
	c := start(t, localcluster.Config{N: 3})
	ports, err := freeLoopbackPorts(3)
	if err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), c.ServersEnv(), "WORM_KEY_FILE="+c.KeyFile, "WORM_KEY=", "WORM_SEQUENCER=",
		"WORM_KV="+strings.Join(ports, ","))
	worm := func(args ...string) (string, error) {
		cmd := exec.Command(filepath.Join(bin, "worm"), args...)
		cmd.Env = env
		out, err := cmd.Output()
		return strings.TrimSpace(string(out)), err
	}
	if out, err := worm("log", "append", "first record"); err != nil || out != "0" {
		t.Fatalf("log append: %q %v", out, err)
	}
	if out, err := worm("log", "append", "second"); err != nil || out != "1" {
		t.Fatalf("log append: %q %v", out, err)
	}
	if out, err := worm("log", "read", "0"); err != nil || out != "first record" {
		t.Fatalf("log read: %q %v", out, err)
	}
	out, err := worm("tx", "-q", "-transfers", "3", "-crash-coordinator", "coordinator-before-await")
	if err != nil || !strings.Contains(out, "invariants held") || !strings.Contains(out, "1 coordinator crash") {
		t.Fatalf("tx: %q %v", out, err)
	}
	var replicas []*exec.Cmd
	for i := range ports {
		cmd := exec.Command(filepath.Join(bin, "worm"), "kv", "serve", "-index", strconv.Itoa(i))
		cmd.Env = env
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		replicas = append(replicas, cmd)
	}
	defer func() {
		for _, r := range replicas {
			r.Process.Kill()
			r.Wait()
		}
	}()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := worm("kv", "put", "k", "v1"); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("kv put: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if out, err := worm("kv", "get", "k"); err != nil || out != "v1" {
		t.Fatalf("kv get: %q %v", out, err)
	}
	replicas[0].Process.Kill() // the first leader, most likely
	replicas[0].Wait()
	if _, err := worm("kv", "put", "k", "v2"); err != nil {
		t.Fatalf("kv put after killing replica 0: %v", err)
	}
	if out, err := worm("kv", "get", "k"); err != nil || out != "v2" {
		t.Fatalf("kv get after killing replica 0: %q %v", out, err)
	}
}

func freeLoopbackPorts(n int) ([]string, error) {
	var out []string
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		out = append(out, l.Addr().String())
	}
	return out, nil
}

// The wormds of a local cluster get their share of the machine's CPUs
// (GOMAXPROCS=max(1, NumCPU/N)) unless the cluster asks for all of them
// or GOMAXPROCS is set by whoever starts it.
func TestWormdsShareTheCPUs(t *testing.T) {
	if _, set := os.LookupEnv("GOMAXPROCS"); set {
		t.Skip("GOMAXPROCS is set in the environment: the wormds inherit it, and the share is not computed")
	}
	procs := func(c *localcluster.Cluster) []string {
		var got []string
		for _, n := range c.Nodes {
			env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", n.Pid()))
			if err != nil {
				t.Fatal(err)
			}
			v := "(unset)"
			for _, kv := range bytes.Split(env, []byte{0}) {
				if s, ok := strings.CutPrefix(string(kv), "GOMAXPROCS="); ok {
					v = s
				}
			}
			got = append(got, v)
		}
		return got
	}
	share := max(1, runtime.NumCPU()/3)
	want := strconv.Itoa(share)
	if share >= runtime.NumCPU() {
		want = "(unset)"
	}
	if got := procs(start(t, localcluster.Config{N: 3, Volatile: true})); !slices.Equal(got, []string{want, want, want}) {
		t.Errorf("GOMAXPROCS of 3 wormds on %d CPUs: %q; want %s each", runtime.NumCPU(), got, want)
	}
	if got := procs(start(t, localcluster.Config{N: 3, Volatile: true, AllCPUs: true})); !slices.Equal(got, []string{"(unset)", "(unset)", "(unset)"}) {
		t.Errorf("GOMAXPROCS of 3 wormds with AllCPUs: %q; want it unset", got)
	}
}
