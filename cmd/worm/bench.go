package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/bench"
	"github.com/wormspace/wormspace/worm/localcluster"
)

func init() {
	register(&command{
		name:    "bench",
		summary: "closed-loop benchmark of a cluster (write, batch, capture-write, read) against the raw TCP round trip",
		run:     cmdBench,
	})
	register(&command{
		name:    "echo-server",
		summary: "serve a TCP echo (the raw floor worm bench measures against): echo-server [-listen ADDR]",
		run:     cmdEchoServer,
	})
}

// cmdEchoServer serves a TCP echo and prints "listening ADDR" once ready;
// worm bench runs it as a separate process, because a round trip to
// another process (as to a wormd) costs a cross-process wake-up that an
// echo inside the benchmark's own process does not.
func cmdEchoServer(args []string) error {
	fs := flag.NewFlagSet("echo-server", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address")
	if _, err := parseArgs(fs, args, 0, "echo-server [-listen ADDR]"); err != nil {
		return err
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	fmt.Printf("listening %s\n", l.Addr())
	bench.EchoServer(l)
	return nil
}

// externalEcho starts `worm echo-server` as a child process and returns
// its address and a stop function.
func externalEcho() (string, func(), error) {
	exe, err := os.Executable()
	if err != nil {
		return "", nil, err
	}
	cmd := exec.Command(exe, "echo-server")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return "", nil, err
	}
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	stop := func() { cmd.Process.Kill(); cmd.Wait() }
	line, err := bufio.NewReader(out).ReadString('\n')
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "listening ")
	if err != nil || !ok {
		stop()
		return "", nil, fmt.Errorf("echo server did not start: %q %v", line, err)
	}
	return addr, stop, nil
}

const benchUsage = `usage: worm bench [-local 3 [-volatile] | -servers a,b,c] [flags]

Measures closed-loop clients against a WormSpace cluster and, in the same
run, the raw TCP round trip to an echo server on loopback, so that latencies
read as ratios to the physical floor. With -local N it starts N wormds on
loopback for the run (in a temporary directory) and stops them afterwards.`

// BenchReport is what -json writes.
type BenchReport struct {
	Time     time.Time `json:"time"`
	Servers  []string  `json:"servers"`
	Local    int       `json:"local,omitempty"`
	Volatile bool      `json:"volatile"`
	// RawRTT is the floor the ratios use: a round trip to an echo in
	// another process over loopback. RawRTTInProcess is the same to an
	// echo inside the benchmark's process (no cross-process wake-up).
	// RawQuorumRTT is the floor of the write's communication: one echo
	// process per server, a message to each, the first majority of the
	// echoes awaited (bench.RawQuorumRTT).
	RawRTT          bench.Result   `json:"raw_rtt"`
	RawRTTInProcess bench.Result   `json:"raw_rtt_in_process"`
	RawQuorumRTT    bench.Result   `json:"raw_quorum_rtt"`
	Results         []bench.Result `json:"results"`
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("bad count %q", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// benchApps holds the application benchmarks, `worm bench NAME [flags]`
// (kv, log, tx); each registers itself from its own file's init.
var benchApps = map[string]func(args []string) error{}

func cmdBench(args []string) error {
	if len(args) > 0 {
		if run, ok := benchApps[args[0]]; ok {
			return run(args[1:])
		}
	}
	var sf spaceFlags
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	sf.add(fs)
	local := fs.Int("local", 0, "start N wormds on loopback for the run instead of using -servers")
	volatile := fs.Bool("volatile", false, "with -local: wormds skip fsync (the throughput of the protocol, not of the disk)")
	workloads := fs.String("workloads", "write,batch,capture-write,read", "workloads to run, comma separated")
	clientsF := fs.String("clients", "1,16,64", "closed-loop client counts to sweep")
	duration := fs.Duration("duration", 5*time.Second, "measured time per run")
	warmup := fs.Duration("warmup", time.Second, "unmeasured time before each run")
	batch := fs.Int("batch", 16, "values per WriteBatch (batch workload)")
	valueSize := fs.Int("value", 64, "bytes per value")
	conns := fs.Int("conns", 1, "client library instances the clients share (each has one connection per server)")
	jsonOut := fs.String("json", "", "also write the report as JSON to this file")
	quick := fs.Bool("quick", false, "short runs (1s, 200ms warm-up)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of this (client) process during the workloads, not the floors, to this file")
	fs.Usage = func() { fmt.Fprintln(fs.Output(), benchUsage); fs.PrintDefaults() }
	if _, err := parseArgs(fs, args, 0, "bench [flags]"); err != nil {
		return err
	}
	if *quick {
		*duration, *warmup = time.Second, 200*time.Millisecond
	}
	var wls []bench.Workload
	for _, w := range strings.Split(*workloads, ",") {
		wl, err := bench.ParseWorkload(strings.TrimSpace(w))
		if err != nil {
			return &exitError{code: exitFailure, msg: err.Error()}
		}
		wls = append(wls, wl)
	}
	counts, err := parseInts(*clientsF)
	if err != nil {
		return &exitError{code: exitFailure, msg: "-clients: " + err.Error()}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if *local > 0 {
		dir, err := os.MkdirTemp("", "worm-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		mode := "durable (fsync)"
		if *volatile {
			mode = "volatile (no fsync)"
		}
		fmt.Fprintf(os.Stderr, "bench: starting %d local wormds, %s ...\n", *local, mode)
		lc, err := localcluster.Start(ctx, localcluster.Config{N: *local, Dir: dir, Volatile: *volatile})
		if err != nil {
			return err
		}
		defer lc.Stop()
		sf.servers = strings.Join(lc.Servers(), ",")
		sf.keyFile, sf.keyHex = lc.KeyFile, ""
	}

	var spaces []worm.Space
	for i := 0; i < *conns; i++ {
		dctx, cancel := context.WithTimeout(ctx, sf.timeout)
		cl, err := sf.dial(dctx)
		cancel()
		if err != nil {
			return err
		}
		defer cl.Close()
		spaces = append(spaces, cl)
	}

	// The floors: a raw echo round trip of the same size over kernel
	// loopback TCP, to another process (what a wormd is) and within this
	// one, measured in this run.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer l.Close()
	go bench.EchoServer(l)
	fmt.Fprintf(os.Stderr, "bench: raw TCP round trip (loopback echo, %d bytes), in process ...\n", *valueSize)
	rawIn, err := bench.RawRTT(ctx, &net.Dialer{}, l.Addr().String(), 1, *valueSize, *duration)
	if err != nil {
		return err
	}
	echoAddr, stopEcho, err := externalEcho()
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "bench: raw TCP round trip to another process ...\n")
	raw, err := bench.RawRTT(ctx, &net.Dialer{}, echoAddr, 1, *valueSize, *duration)
	stopEcho()
	if err != nil {
		return err
	}
	servers := strings.Split(sf.servers, ",")
	fmt.Fprintf(os.Stderr, "bench: raw TCP quorum round trip to %d echo processes (first %d of %d) ...\n", len(servers), len(servers)/2+1, len(servers))
	var echoAddrs []string
	for range servers {
		a, stop, err := externalEcho()
		if err != nil {
			return err
		}
		defer stop()
		echoAddrs = append(echoAddrs, a)
	}
	rawQ, err := bench.RawQuorumRTT(ctx, &net.Dialer{}, echoAddrs, 0, 1, *valueSize, *duration)
	if err != nil {
		return err
	}
	report := BenchReport{Time: time.Now().UTC(), Servers: servers, Local: *local, Volatile: *volatile, RawRTT: raw, RawRTTInProcess: rawIn, RawQuorumRTT: rawQ}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	for _, wl := range wls {
		for _, c := range counts {
			fmt.Fprintf(os.Stderr, "bench: %s with %d client(s) for %v ...\n", wl, c, *duration)
			r, err := bench.Run(ctx, bench.Config{Spaces: spaces, Workload: wl, Clients: c, Duration: *duration,
				Warmup: *warmup, ValueSize: *valueSize, Batch: *batch})
			if err != nil {
				return err
			}
			report.Results = append(report.Results, r)
			fmt.Fprintf(os.Stderr, "bench:   %v\n", r)
		}
	}
	printBench(os.Stdout, report)
	if *jsonOut != "" {
		b, _ := json.MarshalIndent(report, "", "  ")
		if err := os.WriteFile(*jsonOut, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func us(d time.Duration) string { return strconv.FormatFloat(float64(d)/1e3, 'f', 1, 64) }

func printBench(w *os.File, r BenchReport) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "workload\tclients\tops/s\twrites/s\tp50 µs\tp99 µs\tp50/raw\tp50/quorum\terrors\t")
	ratios := func(p50 time.Duration) string {
		q := "-"
		if r.RawQuorumRTT.Latency.P50 > 0 {
			q = fmt.Sprintf("%.1f", float64(p50)/float64(r.RawQuorumRTT.Latency.P50))
		}
		return fmt.Sprintf("%.1f\t%s", float64(p50)/float64(r.RawRTT.Latency.P50), q)
	}
	floor := func(name string, x bench.Result) {
		fmt.Fprintf(tw, "%s\t%d\t%.0f\t-\t%s\t%s\t%s\t%d\t\n", name, x.Clients, x.OpsPerSec, us(x.Latency.P50), us(x.Latency.P99), ratios(x.Latency.P50), x.Errors)
	}
	floor("raw-rtt (other process)", r.RawRTT)
	floor("raw-rtt (in process)", r.RawRTTInProcess)
	if r.RawQuorumRTT.Ops > 0 {
		floor(fmt.Sprintf("raw-quorum-rtt (%d processes)", len(r.Servers)), r.RawQuorumRTT)
	}
	for _, x := range r.Results {
		writes := "-"
		switch x.Workload {
		case bench.Batch:
			writes = fmt.Sprintf("%.0f", x.WritesPerSec)
		case bench.Write, bench.CaptureWrite:
			writes = fmt.Sprintf("%.0f", x.OpsPerSec)
		}
		fmt.Fprintf(tw, "%s\t%d\t%.0f\t%s\t%s\t%s\t%s\t%d\t\n", x.Workload, x.Clients, x.OpsPerSec, writes, us(x.Latency.P50), us(x.Latency.P99), ratios(x.Latency.P50), x.Errors)
	}
	tw.Flush()
}
