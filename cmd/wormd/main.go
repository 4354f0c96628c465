// Command wormd is the wormserver: one process is one Paxos acceptor for
// the whole WormSpace, persistent in its data directory.
//
//	wormd -id 1 -data /var/lib/wormd -listen 127.0.0.1:7001
//
// It makes every state change durable (fsync, shared by concurrent
// requests: group commit) before it replies; -volatile skips the fsync for
// benchmarks and says so loudly. It recovers its state after a crash
// (kill -9, power loss) from its data directory, and refuses to start on a
// corrupt directory or one that belongs to another cluster.
//
// Clients and servers authenticate each other with a cluster key (-key-file,
// -key-hex, or $WORM_KEY / $WORM_KEY_FILE, at least 32 bytes). Without a key
// wormd listens only on loopback addresses unless -insecure is given.
//
// TCP comes from the kernel (-stack kernel) or from gVisor's userspace
// netstack attached to a NIC (-stack netstack -iface eth0 -addr 10.0.0.2/24,
// as in the boot image) or a TAP device (-tap NAME).
//
// A wormd started with -join on an empty data directory is a new member
// that will replace a failed one: it serves nothing until `worm replace`
// has installed the cluster's state in it and activated it (see README,
// Operations). Its membership (epoch, sealed or joining) is recorded with
// the acceptor's state in the data directory.
//
// When it runs as PID 1 it is the boot image's init (kernel/guest), which
// starts wormd again as its service.
package main

import (
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/wormspace/wormspace/kernel/guest"
	"github.com/wormspace/wormspace/netstack"
	"github.com/wormspace/wormspace/worm/server"
	"github.com/wormspace/wormspace/worm/storage"
	"github.com/wormspace/wormspace/worm/wire"
)

func main() {
	if os.Getpid() == 1 {
		guest.Main()
	}
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "wormd: "+err.Error())
		os.Exit(1)
	}
}

type options struct {
	id          uint
	data        string
	listen      string
	cluster     string
	stack       string
	iface, tap  string
	addr, gw    string
	volatile    bool
	groupCommit server.GroupCommit
	join        bool
	keyFile     string
	keyHex      string
	insecure    bool
	segSize     uint
	maxValue    uint
	readyFD     int
	metrics     string
	pprof       bool
	logLevel    string
	logJSON     bool
	shutdownFor time.Duration
	echoListen  string
	knobs       string
	faults      faultFlags // -net-faults (faults.go)
}

func parse(args []string) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("wormd", flag.ContinueOnError)
	fs.UintVar(&o.id, "id", 1, "acceptor id, unique in the cluster (1..2^32-1)")
	fs.StringVar(&o.data, "data", "", "data directory (required; created if absent)")
	fs.StringVar(&o.listen, "listen", "127.0.0.1:7070", "address to serve on (host:port)")
	fs.StringVar(&o.cluster, "cluster", "wormspace", "cluster name; the data directory and every client must agree")
	fs.StringVar(&o.stack, "stack", "kernel", "TCP/IP stack: kernel, or netstack (gVisor, needs -iface or -tap and -addr)")
	fs.StringVar(&o.iface, "iface", "", "netstack: NIC to attach through an AF_PACKET socket")
	fs.StringVar(&o.tap, "tap", "", "netstack: TAP device to attach")
	fs.StringVar(&o.addr, "addr", "", "netstack: the stack's address/prefix, e.g. 10.0.0.2/24")
	fs.StringVar(&o.gw, "gw", "", "netstack: default gateway (optional)")
	fs.BoolVar(&o.volatile, "volatile", false, "skip fsync (benchmarks only: acknowledged writes can be lost on power failure)")
	fs.TextVar(&o.groupCommit, "group-commit", server.GroupCommitAdaptive, "how syncs are scheduled: adaptive (a sync that starts a burst of requests waits, up to half an fsync, for the followers recent bursts had) or immediate (every sync starts at once)")
	fs.BoolVar(&o.join, "join", false, "start as a new member replacing a failed one: serve nothing until `worm replace` installs the cluster's state and activates it (needs an empty data directory; recorded there, so a restart stays joining)")
	fs.StringVar(&o.keyFile, "key-file", os.Getenv("WORM_KEY_FILE"), "file holding the cluster key (hex or raw, >= 32 bytes); default $WORM_KEY_FILE")
	fs.StringVar(&o.keyHex, "key-hex", os.Getenv("WORM_KEY"), "the cluster key in hex; default $WORM_KEY")
	fs.BoolVar(&o.insecure, "insecure", false, "allow serving without a key on non-loopback addresses")
	fs.UintVar(&o.segSize, "segment-size", 1024, "registers per segment; recorded by a new data directory, and must match an existing one")
	fs.UintVar(&o.maxValue, "max-value", wire.DefaultMaxValue, "largest value accepted, in bytes")
	fs.IntVar(&o.readyFD, "ready-fd", -1, "write \"ready ADDR\\n\" to this fd once serving")
	fs.StringVar(&o.metrics, "metrics", "", "serve Prometheus metrics on http://ADDR/metrics (e.g. 127.0.0.1:9101)")
	fs.BoolVar(&o.pprof, "pprof", false, "also serve /debug/pprof on the -metrics address")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.BoolVar(&o.logJSON, "log-json", false, "log JSON lines instead of text")
	fs.StringVar(&o.knobs, "netstack-knobs", "", "netstack: knobs overriding netstack.DefaultKnobs, as name=value pairs (dispatch=recvmmsg,processors=1,send_buffer=4096/65536/262144) or a JSON object; unknown names are errors")
	fs.StringVar(&o.echoListen, "echo-listen", "", "also serve a raw TCP echo on this address over the same stack (the round-trip floor worm compare measures against)")
	fs.DurationVar(&o.shutdownFor, "shutdown-timeout", 10*time.Second, "how long a graceful shutdown waits for requests in flight")
	o.faults.register(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if o.data == "" {
		return nil, errors.New("-data is required")
	}
	if o.id == 0 || o.id > 1<<32-1 {
		return nil, fmt.Errorf("-id %d: want 1..4294967295", o.id)
	}
	if o.knobs != "" {
		if o.stack != "netstack" {
			return nil, fmt.Errorf("-netstack-knobs needs -stack netstack")
		}
		if _, err := netstack.ParseKnobs(o.knobs); err != nil {
			return nil, fmt.Errorf("-netstack-knobs: %w", err)
		}
	}
	if err := o.faults.check(o); err != nil {
		return nil, err
	}
	if o.pprof && o.metrics == "" {
		return nil, errors.New("-pprof needs -metrics ADDR")
	}
	return o, nil
}

// loadKey returns the cluster key from -key-hex or -key-file (nil: none).
func loadKey(o *options) ([]byte, error) {
	if o.keyHex != "" && o.keyFile != "" {
		return nil, errors.New("give the key once: -key-hex ($WORM_KEY) or -key-file ($WORM_KEY_FILE)")
	}
	var key []byte
	switch {
	case o.keyHex != "":
		k, err := hex.DecodeString(strings.TrimSpace(o.keyHex))
		if err != nil {
			return nil, fmt.Errorf("-key-hex: %w", err)
		}
		key = k
	case o.keyFile != "":
		b, err := os.ReadFile(o.keyFile)
		if err != nil {
			return nil, fmt.Errorf("-key-file: %w", err)
		}
		key = ParseKey(b)
	default:
		return nil, nil
	}
	if len(key) < 32 {
		return nil, fmt.Errorf("cluster key of %d bytes: want at least 32", len(key))
	}
	return key, nil
}

// ParseKey reads a key file's contents: hex when the trimmed contents are
// all hex digits, raw bytes otherwise.
func ParseKey(b []byte) []byte {
	t := strings.TrimSpace(string(b))
	if k, err := hex.DecodeString(t); err == nil && len(t) > 0 {
		return k
	}
	return b
}

// loopbackOnly reports whether host names only loopback addresses.
func loopbackOnly(listen string) bool {
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

func newLogger(o *options) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(o.logLevel)); err != nil {
		return nil, fmt.Errorf("-log-level: %w", err)
	}
	hopts := &slog.HandlerOptions{Level: lvl}
	var h slog.Handler = slog.NewTextHandler(os.Stderr, hopts)
	if o.logJSON {
		h = slog.NewJSONHandler(os.Stderr, hopts)
	}
	return slog.New(h).With("acceptor", o.id), nil
}

func openNetwork(o *options, log *slog.Logger) (netstack.Network, error) {
	cfg := netstack.Config{Stack: o.stack, Iface: o.iface, TAP: o.tap, TAPFD: -1, PrepareIface: o.iface != "", Logger: log}
	o.faults.attach(&cfg)
	if o.stack == "netstack" {
		k, err := netstack.ParseKnobs(o.knobs)
		if err != nil {
			return nil, fmt.Errorf("-netstack-knobs: %w", err)
		}
		cfg.Knobs = &k
		if ov := k.Overrides(); ov != "" {
			log.Info("netstack knobs differ from the defaults", "overrides", ov)
		}
		if prev := k.ApplyGoProcs(); prev != 0 && prev != k.GoProcs {
			log.Info("netstack: GOMAXPROCS set by the go_procs knob", "go_procs", k.GoProcs, "was", prev)
		}
		p, err := netip.ParsePrefix(o.addr)
		if err != nil {
			return nil, fmt.Errorf("-addr %q: %w", o.addr, err)
		}
		cfg.Addr = p
		if o.gw != "" {
			g, err := netip.ParseAddr(o.gw)
			if err != nil {
				return nil, fmt.Errorf("-gw %q: %w", o.gw, err)
			}
			cfg.Gateway = g
		}
	}
	return netstack.Open(cfg)
}

func run(args []string) error {
	o, err := parse(args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	log, err := newLogger(o)
	if err != nil {
		return err
	}
	key, err := loadKey(o)
	if err != nil {
		return err
	}
	if key == nil && !loopbackOnly(o.listen) && !o.insecure {
		return fmt.Errorf("refusing to serve %s without a cluster key: give -key-file/-key-hex (or $WORM_KEY), listen on loopback, or pass -insecure", o.listen)
	}
	if key == nil {
		log.Warn("no cluster key: clients are not authenticated", "listen", o.listen)
	}
	if o.volatile {
		log.Warn("VOLATILE MODE: fsync is skipped; acknowledged writes can be lost on power failure. Use for benchmarks only.")
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	start := time.Now()
	slog.SetDefault(log)
	st, acc, err := storage.Open(o.data, storage.Options{
		SegmentSize: uint32(o.segSize),
		Cluster:     o.cluster,
		Volatile:    o.volatile,
		Logger:      log,
	})
	if err != nil {
		return fmt.Errorf("data directory %s: %w", o.data, err)
	}
	defer st.Close()
	live, trimmed := acc.Segments()
	log.Info("recovered", "data", o.data, "segment_size", acc.SegmentSize(), "live_segments", live, "trimmed_segments", trimmed, "live_bytes", acc.LiveBytes(), "took", time.Since(start).Round(time.Millisecond))

	eng := server.NewEngine(acc, st, log, nil)
	eng.SetGroupCommit(o.groupCommit)
	defer eng.Close()
	if err := eng.Failed(); err != nil {
		return fmt.Errorf("data directory %s: %w", o.data, err)
	}
	if o.join {
		_, err := eng.Join()
		switch {
		case errors.Is(err, server.ErrAlreadyMember):
			log.Warn("-join ignored: this data directory is already a member")
		case err != nil:
			return fmt.Errorf("-join: data directory %s: %w", o.data, err)
		}
	}
	memb, _ := eng.Membership()
	log.Info("membership", "state", memb.String())
	srv, err := server.New(server.Config{
		Engine:      eng,
		AcceptorID:  uint32(o.id),
		Cluster:     o.cluster,
		SegmentSize: acc.SegmentSize(),
		MaxValue:    uint32(o.maxValue),
		Key:         key,
		Logger:      log,
	})
	if err != nil {
		return err
	}

	nw, err := openNetwork(o, log)
	if err != nil {
		return err
	}
	defer nw.Close()
	l, err := nw.Listen(ctx, "tcp", o.listen)
	if err != nil {
		return fmt.Errorf("listen %s on %s: %w", o.listen, nw, err)
	}
	if o.echoListen != "" {
		el, err := serveEcho(ctx, nw, o.echoListen, log)
		if err != nil {
			return err
		}
		defer el.Close()
	}

	if o.metrics != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", srv.Metrics())
		o.faults.serve(mux, log)
		if o.pprof {
			mux.HandleFunc("/debug/pprof/", pprof.Index)
			mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
			mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
			mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
			mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		}
		ml, err := net.Listen("tcp", o.metrics)
		if err != nil {
			return fmt.Errorf("-metrics %s: %w", o.metrics, err)
		}
		hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go hs.Serve(ml)
		defer hs.Close()
		log.Info("metrics", "url", "http://"+ml.Addr().String()+"/metrics", "pprof", o.pprof)
	}

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(l) }()
	log.Info("serving", "addr", l.Addr().String(), "stack", nw.String(), "cluster", o.cluster, "auth", key != nil)
	if o.readyFD >= 0 {
		f := os.NewFile(uintptr(o.readyFD), "ready")
		fmt.Fprintf(f, "ready %s\n", l.Addr())
		f.Close()
	}

	select {
	case err := <-serveErr:
		srv.Close()
		eng.Close()
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down: finishing requests in flight")
	sctx, cancel := context.WithTimeout(context.Background(), o.shutdownFor)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("graceful shutdown incomplete", "err", err)
	}
	if err := eng.Close(); err != nil {
		log.Warn("engine close", "err", err)
	}
	if err := st.Close(); err != nil {
		return fmt.Errorf("closing storage: %w", err)
	}
	log.Info("stopped")
	return nil
}
