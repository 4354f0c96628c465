package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wormspace/wormspace/apps/wormpaxos/kv"
	"github.com/wormspace/wormspace/worm/localcluster"
)

// TestKVKill9 runs the replicated key-value store as processes: three
// real wormds, three `worm kv serve` replicas (sticky leader). A client
// counts with compare-and-swap while the leader (the replica that leased
// the log's segment) is killed with SIGKILL; a survivor takes over by
// capturing. Exactly once: every CAS is acknowledged as done (a command
// applied twice would answer false the second time, a lost one would
// leave a gap), and the counter ends at the number of acknowledgements.
// The old leader, restarted, catches up from the log and answers a
// linearizable read with the same count.
func TestKVKill9(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	exe, dir, _, env := appCluster(ctx, t)

	addrs := make([]string, 3)
	for i := range addrs {
		addrs[i] = freeLoopbackAddr(t)
	}
	env = append(env, "WORM_KV="+strings.Join(addrs, ","))
	replicas := make([]*exec.Cmd, 3)
	start := func(i int) {
		replicas[i] = startLogged(t, env, filepath.Join(dir, fmt.Sprintf("kv-%d.log", i)),
			exe, "kv", "serve", "-index", strconv.Itoa(i), "-log-level", "debug")
	}
	for i := range replicas {
		start(i)
	}
	defer func() {
		for i, cmd := range replicas {
			if cmd != nil && cmd.ProcessState == nil {
				_ = cmd.Process.Signal(syscall.SIGTERM)
				_ = cmd.Wait()
			}
			if t.Failed() {
				b, _ := os.ReadFile(filepath.Join(dir, fmt.Sprintf("kv-%d.log", i)))
				t.Logf("replica %d log:\n%s", i, b)
			}
		}
	}()

	c, err := kv.Dial(ctx, &net.Dialer{Timeout: time.Second}, addrs...)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The first operation waits for the replicas to listen and elect.
	for {
		err := c.Put(ctx, "n", "0")
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the store never took a first put: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	const before, after = 20, 30
	count := 0
	cas := func() {
		t.Helper()
		ok, err := c.CAS(ctx, "n", strconv.Itoa(count), strconv.Itoa(count+1))
		if err != nil {
			t.Fatalf("CAS %d -> %d: %v", count, count+1, err)
		}
		if !ok {
			v, _, _ := c.Get(ctx, "n")
			t.Fatalf("CAS %d -> %d answered not done (the counter holds %q): applied twice, or an earlier one lost", count, count+1, v)
		}
		count++
	}
	for range before {
		cas()
	}
	// The leader is the replica that leased the log's segment (replicas
	// log at debug level); usually replica 0, which the client tries
	// first, but another if it took the first command.
	logOf := func(i int) string {
		b, _ := os.ReadFile(filepath.Join(dir, fmt.Sprintf("kv-%d.log", i)))
		return string(b)
	}
	leader := -1
	for i := range replicas {
		if strings.Contains(logOf(i), "msg=lease") {
			if leader >= 0 {
				t.Fatalf("replicas %d and %d both leased segments before any failure", leader, i)
			}
			leader = i
		}
	}
	if leader < 0 {
		t.Fatal("no replica logged a lease: no leader to kill")
	}
	logSize := make([]int, 3) // what each logged before the kill
	for i := range replicas {
		logSize[i] = len(logOf(i))
	}
	if err := replicas[leader].Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = replicas[leader].Wait()
	t0 := time.Now()
	cas() // served by a replica that took over
	t.Logf("replica %d (the leader) killed; the first CAS after it took %v", leader, time.Since(t0))
	for range after - 1 {
		cas()
	}
	// A survivor took over: it leased a segment after the kill.
	took := false
	for i := range replicas {
		if i != leader && strings.Contains(logOf(i)[logSize[i]:], "msg=lease") {
			took = true
		}
	}
	if !took {
		t.Error("no surviving replica leased a segment after the leader's kill")
	}
	if v, ok, err := c.Get(ctx, "n"); err != nil || !ok || v != strconv.Itoa(count) {
		t.Fatalf("the counter reads %q (present %v, %v) after %d acknowledged increments", v, ok, err, count)
	}

	// The old leader again, asked on its own: it catches up from the log.
	start(leader)
	c0, err := kv.Dial(ctx, &net.Dialer{Timeout: time.Second}, addrs[leader])
	if err != nil {
		t.Fatal(err)
	}
	defer c0.Close()
	for {
		v, ok, err := c0.Get(ctx, "n")
		if err == nil {
			if !ok || v != strconv.Itoa(count) {
				t.Fatalf("restarted replica %d reads %q (present %v), want %d", leader, v, ok, count)
			}
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("restarted replica %d never answered: %v", leader, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// appCluster builds worm and wormd and starts three durable wormds, for a
// test that runs the applications as processes (skipped with -short). It
// returns the worm binary, a directory for the test's files, the cluster
// and an environment that points worm commands at it.
func appCluster(ctx context.Context, t *testing.T) (exe, dir string, lc *localcluster.Cluster, env []string) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs processes")
	}
	exe = buildWorm(t)
	buildWormd(t, filepath.Dir(exe))
	dir = t.TempDir()
	lc, err := localcluster.Start(ctx, localcluster.Config{N: 3, Dir: filepath.Join(dir, "wormds"), Wormd: filepath.Join(filepath.Dir(exe), "wormd")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lc.Stop() })
	env = append(os.Environ(), "WORM_SERVERS="+strings.Join(lc.Servers(), ","), "WORM_KEY_FILE="+lc.KeyFile, "WORM_KEY=")
	return exe, dir, lc, env
}

// startLogged starts exe with args and env, its output appended to
// logPath (a restarted process adds to its predecessor's log).
func startLogged(t *testing.T, env []string, logPath, exe string, args ...string) *exec.Cmd {
	t.Helper()
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(exe, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd
}

// freeLoopbackAddr returns a loopback address with a port free right now.
func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
