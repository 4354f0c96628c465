package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/wormspace/wormspace/apps/chain"
	"github.com/wormspace/wormspace/worm/localcluster"
	"github.com/wormspace/wormspace/worm/wire"
)

func init() {
	register(&command{
		name:    "chain",
		summary: "chain-replicated registers (the Corfu-style baseline): chain serve|up|status",
		run:     cmdChain,
	})
}

const chainUsage = `usage: worm chain serve -listen ADDR -data DIR -chain A0,A1,... [flags]
       worm chain up [-n 3] [-dir DIR] [-volatile] [-insecure]
       worm chain status [-chain A0,A1,...]

serve runs one replica of a chain (apps/chain): write-once registers
replicated head to tail, behind the same WormSpace interface as wormd's
Paxos registers. Every replica is given the whole chain, head first; its
position is where its -listen address appears (or -index). It replies only
after its state change is on disk (fsync shared by concurrent requests),
recovers after kill -9, and uses the cluster key of the wormd handshake.

up starts N replicas on loopback (as processes of this binary) and prints
WORM_CHAIN and WORM_KEY_FILE; status prints each replica's status.`

func cmdChain(args []string) error {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, chainUsage)
		return errUsage
	}
	switch args[0] {
	case "serve":
		return cmdChainServe(args[1:])
	case "up":
		return cmdChainUp(args[1:])
	case "status":
		return cmdChainStatus(args[1:])
	case "-h", "-help", "--help", "help":
		fmt.Fprintln(os.Stderr, chainUsage)
		return nil
	}
	fmt.Fprintln(os.Stderr, chainUsage)
	return errUsage
}

func parseChainList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func loopbackAddr(listen string) bool {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

func cmdChainServe(args []string) error {
	fs := flag.NewFlagSet("chain serve", flag.ContinueOnError)
	var sf spaceFlags
	fs.StringVar(&sf.keyFile, "key-file", os.Getenv("WORM_KEY_FILE"), "cluster key file (default $WORM_KEY_FILE)")
	fs.StringVar(&sf.keyHex, "key-hex", os.Getenv("WORM_KEY"), "cluster key in hex (default $WORM_KEY)")
	listen := fs.String("listen", "127.0.0.1:7080", "address to serve on (host:port); must appear in -chain unless -index is given")
	data := fs.String("data", "", "data directory (required; created if absent)")
	chainF := fs.String("chain", os.Getenv("WORM_CHAIN"), "every replica's address, head first (default $WORM_CHAIN)")
	index := fs.Int("index", -1, "this replica's position in -chain (default: where -listen appears)")
	cluster := fs.String("cluster", "wormspace-chain", "cluster name; the data directory and every client must agree")
	volatile := fs.Bool("volatile", false, "skip fsync (benchmarks only: acknowledged writes can be lost on power failure)")
	insecure := fs.Bool("insecure", false, "allow serving without a key on non-loopback addresses")
	segSize := fs.Uint("segment-size", chain.DefaultSegmentSize, "registers per segment; recorded by a new data directory, and must match an existing one")
	maxValue := fs.Int("max-value", wire.DefaultMaxValue, "largest value accepted, in bytes")
	readyFD := fs.Int("ready-fd", -1, "write \"ready ADDR\\n\" to this fd once serving")
	pprofAddr := fs.String("pprof", "", "serve /debug/pprof on this address (profiling)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	if _, err := parseArgs(fs, args, 0, "chain serve -listen ADDR -data DIR -chain A0,A1,... [flags]"); err != nil {
		return err
	}
	if *data == "" {
		return &exitError{code: exitFailure, msg: "-data is required"}
	}
	list := parseChainList(*chainF)
	if len(list) == 0 {
		return &exitError{code: exitFailure, msg: "-chain is required (every replica's address, head first)"}
	}
	if *index < 0 {
		*index = slices.Index(list, *listen)
		if *index < 0 {
			return &exitError{code: exitFailure, msg: fmt.Sprintf("-listen %s is not in -chain %s: give -index", *listen, *chainF)}
		}
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("-log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	slog.SetDefault(log)
	key, err := sf.key()
	if err != nil {
		return err
	}
	if key != nil && len(key) < wire.MinKeySize {
		return fmt.Errorf("cluster key of %d bytes: want at least %d", len(key), wire.MinKeySize)
	}
	if key == nil && !loopbackAddr(*listen) && !*insecure {
		return fmt.Errorf("refusing to serve %s without a cluster key: give -key-file/-key-hex, listen on loopback, or pass -insecure", *listen)
	}
	if key == nil {
		log.Warn("no cluster key: clients are not authenticated", "listen", *listen)
	}
	if *volatile {
		log.Warn("VOLATILE MODE: fsync is skipped; acknowledged writes can be lost on power failure. Use for benchmarks only.")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	start := time.Now()
	disk, rep, err := chain.OpenDisk(*data, chain.DiskOptions{SegmentSize: uint32(*segSize), Cluster: *cluster, Volatile: *volatile, Logger: log})
	if err != nil {
		return fmt.Errorf("data directory %s: %w", *data, err)
	}
	live, trimmed := rep.Segments()
	log.Info("recovered", "data", *data, "segment_size", rep.SegmentSize(), "live_segments", live, "trimmed_segments", trimmed,
		"live_bytes", rep.LiveBytes(), "took", time.Since(start).Round(time.Millisecond))
	srv, err := chain.NewServer(chain.ServerConfig{Chain: list, Index: *index, Cluster: *cluster, Key: key, MaxValue: *maxValue, Logger: log}, rep, disk)
	if err != nil {
		disk.Close()
		return err
	}
	defer srv.Close()
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	if *pprofAddr != "" {
		mux := http.NewServeMux()
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		pl, err := net.Listen("tcp", *pprofAddr)
		if err != nil {
			return fmt.Errorf("-pprof %s: %w", *pprofAddr, err)
		}
		hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go hs.Serve(pl)
		defer hs.Close()
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	log.Info("serving", "listen", l.Addr().String(), "index", *index, "chain", list, "volatile", *volatile)
	if *readyFD >= 0 {
		f := os.NewFile(uintptr(*readyFD), "ready")
		fmt.Fprintf(f, "ready %s\n", l.Addr())
		f.Close()
	}
	select {
	case <-ctx.Done():
		log.Info("stopping")
		return srv.Close()
	case err := <-served:
		return err
	}
}

// localChain is a chain of `worm chain serve` processes on loopback, for
// `worm chain up` and `worm bench log`.
type localChain struct {
	Addrs   []string
	KeyFile string
	Logs    []string
	cfg     localChainConfig
	cmds    []*exec.Cmd
	exits   []chan struct{}
}

type localChainConfig struct {
	// Exe is the worm binary (default: this executable).
	Exe      string
	N        int
	Dir      string
	KeyFile  string // the cluster key (hex); empty with Insecure
	Volatile bool
	// SegmentSize for new data directories (0: the default).
	SegmentSize int
	// Args are extra `chain serve` flags, per replica (may be nil).
	Args func(i int) []string
}

// startLocalChain starts cfg.N replicas, each in Dir/replica-I with its
// log in Dir/replica-I.log, and waits until every one serves.
func startLocalChain(ctx context.Context, cfg localChainConfig) (*localChain, error) {
	if cfg.Exe == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, err
		}
		cfg.Exe = exe
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, err
	}
	// Ports are chosen now, since every replica must know the whole
	// chain before it starts; below the kernel's ephemeral range, so that
	// no outgoing connection takes one while its replica restarts.
	var ls []net.Listener
	lc := &localChain{KeyFile: cfg.KeyFile, cfg: cfg}
	for try := 0; len(ls) < cfg.N && try < 10000; try++ {
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", 10000+mrand.IntN(20000)))
		if err != nil {
			continue
		}
		ls = append(ls, l)
		lc.Addrs = append(lc.Addrs, l.Addr().String())
	}
	for _, l := range ls {
		l.Close()
	}
	if len(ls) < cfg.N {
		return nil, errors.New("no free loopback ports below the ephemeral range")
	}
	lc.cmds = make([]*exec.Cmd, cfg.N)
	lc.exits = make([]chan struct{}, cfg.N)
	lc.Logs = make([]string, cfg.N)
	if err := lc.startAll(ctx); err != nil {
		lc.Stop()
		return nil, err
	}
	return lc, nil
}

// startAll starts every replica that is not running and waits until each
// serves.
func (lc *localChain) startAll(ctx context.Context) error {
	errs := make(chan error, len(lc.Addrs))
	n := 0
	for i := range lc.Addrs {
		if lc.running(i) {
			continue
		}
		n++
		go func(i int) { errs <- lc.start(ctx, lc.cfg.Exe, lc.cfg, i) }(i)
	}
	var first error
	for ; n > 0; n-- {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	if first != nil {
		return first
	}
	return lc.waitLinked(ctx)
}

// waitLinked waits until every replica but the tail reports its link to
// its successor up: before that, the chain refuses writes.
func (lc *localChain) waitLinked(ctx context.Context) error {
	sf := spaceFlags{keyFile: lc.KeyFile}
	key, err := sf.key()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	cl, err := dialChain(ctx, lc.Addrs, key, "local-chain")
	if err != nil {
		return err
	}
	defer cl.Close()
	for {
		linked := 0
		for i, st := range cl.Status(ctx) {
			var doc struct {
				LinkUp bool `json:"link_up"`
			}
			if st.Err == nil && json.Unmarshal([]byte(st.Status), &doc) == nil && (doc.LinkUp || i == len(lc.Addrs)-1) {
				linked++
			}
		}
		if linked == len(lc.Addrs) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("chain replicas not linked to their successors: %w", ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (lc *localChain) running(i int) bool {
	if lc.exits[i] == nil {
		return false
	}
	select {
	case <-lc.exits[i]:
		return false
	default:
		return true
	}
}

func (lc *localChain) start(ctx context.Context, exe string, cfg localChainConfig, i int) error {
	data := filepath.Join(cfg.Dir, fmt.Sprintf("replica-%d", i))
	lc.Logs[i] = data + ".log"
	args := []string{"chain", "serve", "-listen", lc.Addrs[i], "-data", data, "-chain", strings.Join(lc.Addrs, ","), "-index", strconv.Itoa(i), "-ready-fd", "3"}
	if cfg.Volatile {
		args = append(args, "-volatile")
	}
	if cfg.KeyFile != "" {
		args = append(args, "-key-file", cfg.KeyFile)
	}
	if cfg.SegmentSize > 0 {
		args = append(args, "-segment-size", strconv.Itoa(cfg.SegmentSize))
	}
	if cfg.Args != nil {
		args = append(args, cfg.Args(i)...)
	}
	logf, err := os.OpenFile(lc.Logs[i], os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	defer pr.Close()
	cmd := exec.Command(exe, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{pw}
	cmd.Env = append(os.Environ(), "WORM_KEY=", "WORM_KEY_FILE=", "WORM_CHAIN=")
	// Each replica its share of the CPUs, as a local cluster's wormds
	// get theirs: the baseline runs as the WormSpace side does.
	cmd.Env = append(cmd.Env, localcluster.ProcsEnv(len(lc.Addrs))...)
	// Its own process group: a Ctrl-C at the terminal reaches this
	// process, which stops the replicas gracefully itself.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		pw.Close()
		return fmt.Errorf("start chain replica %d: %w", i, err)
	}
	pw.Close()
	exit := make(chan struct{})
	lc.cmds[i], lc.exits[i] = cmd, exit
	go func() {
		cmd.Wait()
		close(exit)
	}()
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(pr).ReadString('\n')
		line <- s
	}()
	timer := time.NewTimer(20 * time.Second)
	defer timer.Stop()
	select {
	case s := <-line:
		if strings.HasPrefix(s, "ready ") {
			return nil
		}
		<-exit
		b, _ := os.ReadFile(lc.Logs[i])
		return fmt.Errorf("chain replica %d exited before serving; its log %s says:\n%s", i, lc.Logs[i], lastLines(string(b), 10))
	case <-timer.C:
		cmd.Process.Kill()
		return fmt.Errorf("chain replica %d not ready after 20s; log %s", i, lc.Logs[i])
	case <-ctx.Done():
		cmd.Process.Kill()
		return ctx.Err()
	}
}

func lastLines(s string, n int) string {
	ls := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(ls) > n {
		ls = ls[len(ls)-n:]
	}
	return strings.Join(ls, "\n")
}

// Pids returns the replicas' process ids.
func (lc *localChain) Pids() []int {
	var out []int
	for _, c := range lc.cmds {
		if c != nil && c.Process != nil {
			out = append(out, c.Process.Pid)
		}
	}
	return out
}

// Kill crashes replica i with SIGKILL and waits for it to be gone.
func (lc *localChain) Kill(i int) {
	if c := lc.cmds[i]; c != nil && c.Process != nil && lc.running(i) {
		c.Process.Signal(syscall.SIGKILL)
		<-lc.exits[i]
	}
}

// Stop terminates every replica (SIGTERM, then SIGKILL after 10s).
func (lc *localChain) Stop() {
	var wg sync.WaitGroup
	for i, c := range lc.cmds {
		if c == nil || c.Process == nil || !lc.running(i) {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.Process.Signal(syscall.SIGTERM)
			select {
			case <-lc.exits[i]:
			case <-time.After(10 * time.Second):
				c.Process.Signal(syscall.SIGKILL)
				<-lc.exits[i]
			}
		}()
	}
	wg.Wait()
}

// dialChain connects a chain client to lc (or to the replicas in addrs).
func dialChain(ctx context.Context, addrs []string, key []byte, id string) (*chain.Client, error) {
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if os.Getenv("WORM_DEBUG") != "" {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return chain.Dial(ctx, chain.Config{Chain: addrs, Key: key, ID: id, Logger: logger})
}

func cmdChainUp(args []string) error {
	fs := flag.NewFlagSet("chain up", flag.ContinueOnError)
	n := fs.Int("n", 3, "number of replicas")
	dir := fs.String("dir", "build/chain", "directory for data, logs and the key")
	volatile := fs.Bool("volatile", false, "replicas skip fsync (benchmarks only)")
	insecure := fs.Bool("insecure", false, "run without a cluster key")
	segSize := fs.Int("segment-size", 0, "registers per segment for new data directories")
	if _, err := parseArgs(fs, args, 0, "chain up [-n 3] [-dir DIR] [-volatile] [-insecure]"); err != nil {
		return err
	}
	if *n < 1 {
		return &exitError{code: exitFailure, msg: "-n must be at least 1"}
	}
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		return err
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}
	// A fresh directory each time: the chain's ports are new, and a
	// replica's data belongs to its position in the chain it served.
	ents, _ := os.ReadDir(abs)
	if len(ents) > 0 {
		return &exitError{code: exitFailure, msg: fmt.Sprintf("%s is not empty: chain up starts a new chain (its ports are new); give an empty -dir", abs)}
	}
	keyFile := ""
	if !*insecure {
		keyFile = filepath.Join(abs, "cluster.key")
		if err := writeKeyFile(keyFile); err != nil {
			return err
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	lc, err := startLocalChain(ctx, localChainConfig{N: *n, Dir: abs, KeyFile: keyFile, Volatile: *volatile, SegmentSize: *segSize})
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "worm chain: %d replicas ready (logs: %s/replica-N.log); Ctrl-C stops them\n", *n, abs)
	line := "export WORM_CHAIN=" + strings.Join(lc.Addrs, ",")
	if keyFile != "" {
		line += " WORM_KEY_FILE=" + keyFile
	}
	fmt.Println(line)
	<-ctx.Done()
	fmt.Fprintln(os.Stderr, "worm chain: stopping ...")
	lc.Stop()
	return nil
}

// writeKeyFile writes a fresh random cluster key (hex) to path.
func writeKeyFile(path string) error {
	var k [32]byte
	if _, err := rand.Read(k[:]); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(fmt.Sprintf("%x\n", k)), 0o600)
}

func cmdChainStatus(args []string) error {
	fs := flag.NewFlagSet("chain status", flag.ContinueOnError)
	var sf spaceFlags
	sf.add(fs)
	chainF := fs.String("chain", os.Getenv("WORM_CHAIN"), "every replica's address, head first (default $WORM_CHAIN)")
	if _, err := parseArgs(fs, args, 0, "chain status [-chain A0,A1,...]"); err != nil {
		return err
	}
	list := parseChainList(*chainF)
	if len(list) == 0 {
		return &exitError{code: exitFailure, msg: "no chain: give -chain or set WORM_CHAIN (worm chain up prints it)"}
	}
	key, err := sf.key()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), sf.timeout)
	defer cancel()
	cl, err := dialChain(ctx, list, key, sf.id)
	if err != nil {
		return classify(err)
	}
	defer cl.Close()
	bad := false
	for _, st := range cl.Status(ctx) {
		if st.Err != nil {
			bad = true
			fmt.Printf("%s\terror: %v\n", st.Addr, st.Err)
			continue
		}
		var doc map[string]any
		if json.Unmarshal([]byte(st.Status), &doc) == nil {
			b, _ := json.Marshal(doc)
			fmt.Printf("%s\t%s\n", st.Addr, b)
		} else {
			fmt.Printf("%s\t%s\n", st.Addr, st.Status)
		}
	}
	if bad {
		return &exitError{code: exitUnavail, msg: "some replicas did not answer"}
	}
	return nil
}
