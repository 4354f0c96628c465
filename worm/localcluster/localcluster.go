// Package localcluster runs a WormSpace cluster of real wormd processes on
// this machine's loopback interface: what `worm cluster up`, the
// integration tests, the fault harness and the benchmarks start.
//
//	cl, err := localcluster.Start(ctx, localcluster.Config{N: 3, Dir: dir, Wormd: "build/bin/wormd"})
//	defer cl.Stop()
//	fmt.Println(cl.ServersEnv()) // WORM_SERVERS=127.0.0.1:41001,...
//	cl.Kill(1)                   // SIGKILL: a crash
//	cl.Restart(ctx, 1)           // same data directory, same port
//
// Each wormd has its own data directory (Dir/wormd-N) and port, and logs to
// Dir/wormd-N.log. The cluster key is generated on first start into
// Dir/cluster.key (unless Insecure) and reused afterwards, so a cluster
// restarted on the same directory keeps its data and its key. Start waits
// until every wormd reports ready on its ready pipe.
//
// This package starts processes and must never import worm/server or
// worm/storage: it knows wormd only by its command line.
package localcluster

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Config describes a local cluster.
type Config struct {
	// N is the number of wormds (default 3).
	N int
	// Dir holds data directories, logs and the key. Required.
	Dir string
	// Wormd is the wormd binary. Default: Find().
	Wormd string
	// Ports, when set, are the ports to listen on (len N); default: free
	// ports chosen at first start and reused by Restart.
	Ports []int
	// Volatile starts every wormd with -volatile (no fsync).
	Volatile bool
	// Insecure runs without a cluster key.
	Insecure bool
	// SegmentSize for new data directories (0: wormd's default).
	SegmentSize int
	// Args are extra wormd flags.
	Args []string
	// Hosts, when set (len N), are the addresses the wormds listen on
	// instead of 127.0.0.1, e.g. netstack wormds on TAP devices.
	Hosts []string
	// NodeArgs, when set (len N), are extra wormd flags per node, after
	// Args (e.g. each one's -tap and -addr).
	NodeArgs [][]string
	// ReadyTimeout bounds the wait for one wormd to serve (default 20s).
	ReadyTimeout time.Duration
	// AllCPUs leaves each wormd's GOMAXPROCS to the Go runtime (every
	// CPU) instead of its share of the machine (ProcsEnv).
	AllCPUs bool
}

// ProcsEnv returns the environment entry that gives each of n servers
// started together on this machine its share of the CPUs,
// GOMAXPROCS=max(1, NumCPU/n), as a container with that CPU limit would
// (the Go runtime sizes GOMAXPROCS by a cgroup's limit); nothing when the
// share is every CPU, or when GOMAXPROCS is set in this process's
// environment (that choice stands, and the children inherit it).
//
// Three durable wormds on 2 vCPUs each believing it owns both woke
// threads for goroutines the other CPU could not run any sooner: one P
// each cut their CPU per WormTX commit by a quarter (98 against 127 µs
// over the three, 4.0 against 6.2 context switches; perf stat at 16
// clients) and raised, alternating runs of the same build, WormTX at
// 16 clients from 4.9-5.4k to 6.0-6.1k commits/s (worm bench tx) and
// durable batched writes from 13.9-14.0k to 16.9-17.2k/s at 16 clients
// and 21.3-23.3k to 28.8-29.7k at 64 (worm bench -local 3 -workloads
// write,batch,capture-write), single writes alike; volatile wormds
// measured alike either way.
func ProcsEnv(n int) []string {
	if _, set := os.LookupEnv("GOMAXPROCS"); set || n < 2 {
		return nil
	}
	share := max(1, runtime.NumCPU()/n)
	if share >= runtime.NumCPU() {
		return nil
	}
	return []string{"GOMAXPROCS=" + strconv.Itoa(share)}
}

// Node is one wormd of the cluster.
type Node struct {
	ID   int
	Addr string
	Data string
	Log  string

	mu   sync.Mutex
	cmd  *exec.Cmd
	exit chan struct{} // closed when cmd has been waited for
	err  error
	// extra are flags of this wormd alone (AddNode's).
	extra []string
}

// Cluster is a running local cluster.
type Cluster struct {
	cfg     Config
	Nodes   []*Node
	KeyFile string // empty when Insecure
}

// Find locates the wormd binary: $WORMD, next to the running executable,
// build/bin/wormd under the current directory or its parents, then $PATH.
func Find() (string, error) {
	if p := os.Getenv("WORMD"); p != "" {
		return p, nil
	}
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "wormd")
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, nil
		}
	}
	if wd, err := os.Getwd(); err == nil {
		for d := wd; ; d = filepath.Dir(d) {
			p := filepath.Join(d, "build", "bin", "wormd")
			if st, err := os.Stat(p); err == nil && !st.IsDir() {
				return p, nil
			}
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	if p, err := exec.LookPath("wormd"); err == nil {
		return p, nil
	}
	return "", errors.New("localcluster: wormd not found: run `make build` (it goes to build/bin/wormd), or set $WORMD")
}

// freePorts picks n free loopback ports below the kernel's ephemeral
// range (32768-60999 by default), so that no outgoing connection can take
// a wormd's port while that wormd is down between a kill and its restart:
// with ports from ":0" (inside the ephemeral range) a client's redial
// occasionally did, and the restart failed with "address in use".
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for try := 0; len(ports) < n; try++ {
		if try >= 10000 {
			return nil, errors.New("localcluster: no free loopback ports below the ephemeral range")
		}
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(10000+mrand.IntN(20000)))
		if err != nil {
			continue
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// Start starts (or restarts, on an existing Dir) the cluster and waits
// until every wormd serves.
func Start(ctx context.Context, cfg Config) (*Cluster, error) {
	if cfg.N <= 0 {
		cfg.N = 3
	}
	if cfg.Dir == "" {
		return nil, errors.New("localcluster: Dir is required")
	}
	if cfg.ReadyTimeout <= 0 {
		cfg.ReadyTimeout = 20 * time.Second
	}
	if cfg.Wormd == "" {
		w, err := Find()
		if err != nil {
			return nil, err
		}
		cfg.Wormd = w
	}
	if abs, err := filepath.Abs(cfg.Dir); err == nil {
		cfg.Dir = abs
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, err
	}
	c := &Cluster{cfg: cfg}
	if !cfg.Insecure {
		c.KeyFile = filepath.Join(cfg.Dir, "cluster.key")
		if _, err := os.Stat(c.KeyFile); errors.Is(err, os.ErrNotExist) {
			var k [32]byte
			if _, err := rand.Read(k[:]); err != nil {
				return nil, err
			}
			if err := os.WriteFile(c.KeyFile, []byte(hex.EncodeToString(k[:])+"\n"), 0o600); err != nil {
				return nil, err
			}
		}
	}
	ports := cfg.Ports
	if ports == nil {
		// Reuse the ports of an earlier run on this directory, so that
		// clients' WORM_SERVERS stays valid.
		if b, err := os.ReadFile(filepath.Join(cfg.Dir, "ports")); err == nil {
			for _, f := range strings.Fields(string(b)) {
				p, err := strconv.Atoi(f)
				if err == nil {
					ports = append(ports, p)
				}
			}
			if len(ports) != cfg.N {
				ports = nil
			}
		}
	}
	if ports == nil {
		p, err := freePorts(cfg.N)
		if err != nil {
			return nil, err
		}
		ports = p
	}
	if len(ports) != cfg.N {
		return nil, fmt.Errorf("localcluster: %d ports for %d nodes", len(ports), cfg.N)
	}
	if (cfg.Hosts != nil && len(cfg.Hosts) != cfg.N) || (cfg.NodeArgs != nil && len(cfg.NodeArgs) != cfg.N) {
		return nil, fmt.Errorf("localcluster: Hosts (%d) and NodeArgs (%d) need one entry per node (%d)", len(cfg.Hosts), len(cfg.NodeArgs), cfg.N)
	}
	var pl []string
	for _, p := range ports {
		pl = append(pl, strconv.Itoa(p))
	}
	if err := os.WriteFile(filepath.Join(cfg.Dir, "ports"), []byte(strings.Join(pl, " ")+"\n"), 0o644); err != nil {
		return nil, err
	}
	for i := 0; i < cfg.N; i++ {
		host := "127.0.0.1"
		if cfg.Hosts != nil {
			host = cfg.Hosts[i]
		}
		n := &Node{
			ID:   i + 1,
			Addr: net.JoinHostPort(host, strconv.Itoa(ports[i])),
			Data: filepath.Join(cfg.Dir, fmt.Sprintf("wormd-%d", i+1)),
			Log:  filepath.Join(cfg.Dir, fmt.Sprintf("wormd-%d.log", i+1)),
		}
		c.Nodes = append(c.Nodes, n)
	}
	errs := make(chan error, cfg.N)
	for _, n := range c.Nodes {
		go func(n *Node) { errs <- c.start(ctx, n) }(n)
	}
	var first error
	for range c.Nodes {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	if first != nil {
		c.Stop()
		return nil, first
	}
	return c, nil
}

// Servers returns the wormds' addresses.
func (c *Cluster) Servers() []string {
	var s []string
	for _, n := range c.Nodes {
		s = append(s, n.Addr)
	}
	return s
}

// ServersEnv returns "WORM_SERVERS=a,b,c".
func (c *Cluster) ServersEnv() string { return "WORM_SERVERS=" + strings.Join(c.Servers(), ",") }

// Key returns the cluster key (nil when Insecure).
func (c *Cluster) Key() ([]byte, error) {
	if c.KeyFile == "" {
		return nil, nil
	}
	b, err := os.ReadFile(c.KeyFile)
	if err != nil {
		return nil, err
	}
	return hex.DecodeString(strings.TrimSpace(string(b)))
}

func (c *Cluster) args(n *Node) []string {
	a := []string{"-id", strconv.Itoa(n.ID), "-data", n.Data, "-listen", n.Addr, "-ready-fd", "3"}
	if c.cfg.Volatile {
		a = append(a, "-volatile")
	}
	if c.KeyFile != "" {
		a = append(a, "-key-file", c.KeyFile)
	}
	if c.cfg.SegmentSize > 0 {
		a = append(a, "-segment-size", strconv.Itoa(c.cfg.SegmentSize))
	}
	a = append(a, c.cfg.Args...)
	if c.cfg.NodeArgs != nil && n.ID <= len(c.cfg.NodeArgs) {
		a = append(a, c.cfg.NodeArgs[n.ID-1]...)
	}
	return append(a, n.extra...)
}

// AddNode starts one more wormd on loopback, with the next acceptor id, a
// free port, its own data directory and log like the others, and extra
// flags (for example -join, for a new member that replaces a failed one:
// see `worm replace`), and appends it to Nodes. Kill and Restart work on
// it as on the others; its port is not recorded for a later Start on Dir.
func (c *Cluster) AddNode(ctx context.Context, extra ...string) (*Node, error) {
	ports, err := freePorts(1)
	if err != nil {
		return nil, err
	}
	id := len(c.Nodes) + 1
	n := &Node{
		ID:    id,
		Addr:  net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0])),
		Data:  filepath.Join(c.cfg.Dir, fmt.Sprintf("wormd-%d", id)),
		Log:   filepath.Join(c.cfg.Dir, fmt.Sprintf("wormd-%d.log", id)),
		extra: append([]string(nil), extra...),
	}
	if err := c.start(ctx, n); err != nil {
		return nil, err
	}
	c.Nodes = append(c.Nodes, n)
	return n, nil
}

// start launches n's wormd and waits for its ready line.
func (c *Cluster) start(ctx context.Context, n *Node) error {
	logf, err := os.OpenFile(n.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	defer pr.Close()
	cmd := exec.Command(c.cfg.Wormd, c.args(n)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{pw}
	cmd.Env = append(os.Environ(), "WORM_KEY=", "WORM_KEY_FILE=")
	if !c.cfg.AllCPUs {
		cmd.Env = append(cmd.Env, ProcsEnv(c.cfg.N)...)
	}
	// Its own process group: a Ctrl-C at the terminal reaches `worm
	// cluster up`, which stops the wormds gracefully itself.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		pw.Close()
		return fmt.Errorf("start wormd %d: %w", n.ID, err)
	}
	pw.Close()
	exit := make(chan struct{})
	n.mu.Lock()
	n.cmd, n.exit, n.err = cmd, exit, nil
	n.mu.Unlock()
	go func() {
		err := cmd.Wait()
		n.mu.Lock()
		n.err = err
		n.mu.Unlock()
		close(exit)
	}()
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(pr).ReadString('\n')
		line <- s
	}()
	timer := time.NewTimer(c.cfg.ReadyTimeout)
	defer timer.Stop()
	select {
	case s := <-line:
		if strings.HasPrefix(s, "ready ") {
			return nil
		}
		<-exit
		return fmt.Errorf("wormd %d exited before serving (%v); its log %s ends:\n%s", n.ID, n.exitErr(), n.Log, tail(n.Log, 10))
	case <-timer.C:
		_ = cmd.Process.Kill()
		return fmt.Errorf("wormd %d not ready after %v; log %s", n.ID, c.cfg.ReadyTimeout, n.Log)
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		return ctx.Err()
	}
}

func (n *Node) exitErr() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.err
}

// Running reports whether n's wormd process is alive.
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.exit == nil {
		return false
	}
	select {
	case <-n.exit:
		return false
	default:
		return true
	}
}

// Pid returns the wormd's process id (0 when not running).
func (n *Node) Pid() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil || n.cmd.Process == nil {
		return 0
	}
	return n.cmd.Process.Pid
}

func tail(path string, lines int) string {
	b, _ := os.ReadFile(path)
	ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}

func (c *Cluster) node(i int) (*Node, error) {
	if i < 0 || i >= len(c.Nodes) {
		return nil, fmt.Errorf("localcluster: no node %d", i)
	}
	return c.Nodes[i], nil
}

// signal sends sig to node i's wormd.
func (c *Cluster) signal(i int, sig syscall.Signal) error {
	n, err := c.node(i)
	if err != nil {
		return err
	}
	pid := n.Pid()
	if pid == 0 || !n.Running() {
		return fmt.Errorf("localcluster: wormd %d is not running", n.ID)
	}
	return syscall.Kill(pid, sig)
}

// Kill crashes node i (index into Nodes) with SIGKILL and waits for it to
// be gone.
func (c *Cluster) Kill(i int) error {
	if err := c.signal(i, syscall.SIGCONT); err != nil {
		return err
	}
	if err := c.signal(i, syscall.SIGKILL); err != nil {
		return err
	}
	<-c.Nodes[i].exit
	return nil
}

// Pause stops node i with SIGSTOP (its connections stay open) and returns
// once the process is stopped: the signal is asynchronous, and a wormd
// that still answers after Pause returned would make "two of three
// stopped" tests see a server answer. Resume continues it.
func (c *Cluster) Pause(i int) error {
	if err := c.signal(i, syscall.SIGSTOP); err != nil {
		return err
	}
	pid := c.Nodes[i].Pid()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return fmt.Errorf("localcluster: pause wormd %d: %w", c.Nodes[i].ID, err)
		}
		// The state follows the parenthesised command name.
		if j := strings.LastIndexByte(string(b), ')'); j >= 0 && j+2 < len(b) && (b[j+2] == 'T' || b[j+2] == 't') {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("localcluster: wormd %d not stopped 5s after SIGSTOP", c.Nodes[i].ID)
		}
		time.Sleep(time.Millisecond)
	}
}

// Resume continues node i after Pause.
func (c *Cluster) Resume(i int) error { return c.signal(i, syscall.SIGCONT) }

// Terminate stops node i gracefully (SIGTERM) and waits up to timeout,
// then kills it.
func (c *Cluster) Terminate(i int, timeout time.Duration) error {
	n, err := c.node(i)
	if err != nil {
		return err
	}
	if !n.Running() {
		return nil
	}
	_ = c.signal(i, syscall.SIGCONT)
	_ = c.signal(i, syscall.SIGTERM)
	select {
	case <-n.exit:
		return nil
	case <-time.After(timeout):
		_ = c.signal(i, syscall.SIGKILL)
		<-n.exit
		return fmt.Errorf("localcluster: wormd %d ignored SIGTERM for %v; killed", n.ID, timeout)
	}
}

// Restart starts node i again on its data directory and port (after Kill
// or Terminate; a running node is killed first).
func (c *Cluster) Restart(ctx context.Context, i int) error {
	n, err := c.node(i)
	if err != nil {
		return err
	}
	if n.Running() {
		if err := c.Kill(i); err != nil {
			return err
		}
	}
	return c.start(ctx, n)
}

// Stop terminates every wormd gracefully (SIGTERM, then SIGKILL after 10s).
func (c *Cluster) Stop() error {
	var wg sync.WaitGroup
	errs := make([]error, len(c.Nodes))
	for i := range c.Nodes {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errs[i] = c.Terminate(i, 10*time.Second)
		}(i)
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Build compiles cmd/wormd (and cmd/worm) from this module into dir with
// the go command, for tests that run real processes; it returns the wormd
// path. It must run inside the module's source tree.
func Build(dir string) (string, error) {
	cmd := exec.Command("go", "build", "-o", dir+string(filepath.Separator),
		"github.com/wormspace/wormspace/cmd/wormd", "github.com/wormspace/wormspace/cmd/worm")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("localcluster: building wormd: %v\n%s", err, out)
	}
	return filepath.Join(dir, "wormd"), nil
}
