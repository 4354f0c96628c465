package main

import (
	"cmp"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/wormspace/wormspace/apps/wormlog"
	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/bench"
	"github.com/wormspace/wormspace/worm/client"
	"github.com/wormspace/wormspace/worm/localcluster"
)

func init() { benchApps["log"] = cmdBenchLog }

const benchLogUsage = `usage: worm bench log [-clients 1,4,16,64] [-duration 5s] [-warmup 1s] [-rounds 1] [-volatile] [-quick] [-value 64] [-json FILE]

Measures WormLog appends (closed-loop appenders; the sequencer WormLog
provides, in this process) over two kinds of write-once registers in one
run: Paxos registers on 3 local wormds, and chain registers (apps/chain,
the Corfu-style baseline) on 3 local chain replicas. The two systems are
interleaved at each client count (in alternating order), so that drift of
a noisy machine falls on both. The raw TCP round trip to an echo in another
process is measured in the same run as the floor.`

// LogBenchRow is one client count: both systems.
type LogBenchRow struct {
	Clients int `json:"clients"`
	// Paxos and Chain are the median runs (by p50) of the rounds, kept
	// whole in PaxosRounds and ChainRounds when there are several.
	Paxos       bench.Result   `json:"paxos"`
	Chain       bench.Result   `json:"chain"`
	PaxosRounds []bench.Result `json:"paxos_rounds,omitempty"`
	ChainRounds []bench.Result `json:"chain_rounds,omitempty"`
	// ChainOverPaxosP50 and ChainOverPaxosP99 are latency ratios (above 1:
	// the chain is slower); PaxosOverChainThroughput above 1: Paxos
	// appends more per second.
	ChainOverPaxosP50        float64 `json:"chain_over_paxos_p50"`
	ChainOverPaxosP99        float64 `json:"chain_over_paxos_p99"`
	PaxosOverChainThroughput float64 `json:"paxos_over_chain_throughput"`
}

// LogBenchReport is what -json writes.
type LogBenchReport struct {
	Time      time.Time     `json:"time"`
	Volatile  bool          `json:"volatile"`
	ValueSize int           `json:"value_size"`
	Duration  time.Duration `json:"duration_ns"`
	Warmup    time.Duration `json:"warmup_ns"`
	Settle    time.Duration `json:"settle_ns"`
	Rounds    int           `json:"rounds"`
	Wormds    []string      `json:"wormds"`
	Chain     []string      `json:"chain"`
	// RawRTT is the floor: a round trip to an echo in another process
	// over loopback, one client.
	RawRTT bench.Result  `json:"raw_rtt"`
	Rows   []LogBenchRow `json:"rows"`
}

func cmdBenchLog(args []string) error {
	fs := flag.NewFlagSet("bench log", flag.ContinueOnError)
	clientsF := fs.String("clients", "1,4,16,64", "closed-loop appender counts to sweep")
	duration := fs.Duration("duration", 5*time.Second, "measured time per system and client count")
	warmup := fs.Duration("warmup", time.Second, "unmeasured time before each measurement")
	volatile := fs.Bool("volatile", false, "wormds and chain replicas skip fsync (the protocols, not the disk)")
	quick := fs.Bool("quick", false, "short runs (1s, 200ms warm-up)")
	valueSize := fs.Int("value", 64, "bytes per appended value")
	segSize := fs.Int("segment-size", 1024, "registers per segment, both systems")
	prefetch := fs.Int("prefetch", 2, "segments the sequencer keeps captured ahead (wormlog.Config.Prefetch)")
	systems := fs.String("systems", "paxos,chain", "which systems to run (paxos, chain or both)")
	jsonOut := fs.String("json", "", "also write the report as JSON to this file")
	rounds := fs.Int("rounds", 1, "measurements per system and client count (alternating which goes first); the table shows the median run")
	// The default settle time is not zero: on a small machine the system
	// measured first leaves work behind (its processes' garbage
	// collection, buffers) that slowed whichever ran right after it by
	// up to a third in runs without a pause.
	settle := fs.Duration("settle", time.Second, "idle time before each measurement")
	profDir := fs.String("cpuprofile", "", "write a CPU profile of this process (the appenders' side) per run into this directory")
	fs.Usage = func() { fmt.Fprintln(fs.Output(), benchLogUsage); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return errUsage
	}
	if *quick {
		*duration, *warmup, *settle = time.Second, 200*time.Millisecond, 200*time.Millisecond
	}
	if *rounds < 1 {
		*rounds = 1
	}
	counts, err := parseInts(*clientsF)
	if err != nil {
		return &exitError{code: exitFailure, msg: "-clients: " + err.Error()}
	}
	runPaxos, runChain := false, false
	for _, s := range parseChainList(*systems) {
		switch s {
		case "paxos":
			runPaxos = true
		case "chain":
			runChain = true
		default:
			return &exitError{code: exitFailure, msg: fmt.Sprintf("-systems: unknown system %q (paxos, chain)", s)}
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	dir, err := os.MkdirTemp("", "worm-bench-log-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	mode := "durable (fsync)"
	if *volatile {
		mode = "volatile (no fsync)"
	}
	fmt.Fprintf(os.Stderr, "bench log: starting 3 wormds and 3 chain replicas, %s ...\n", mode)
	lc, err := localcluster.Start(ctx, localcluster.Config{N: 3, Dir: filepath.Join(dir, "paxos"), Volatile: *volatile, SegmentSize: *segSize})
	if err != nil {
		return err
	}
	defer lc.Stop()
	key, err := lc.Key()
	if err != nil {
		return err
	}
	// Both systems authenticate with the same cluster key.
	ch, err := startLocalChain(ctx, localChainConfig{N: 3, Dir: filepath.Join(dir, "chain"), KeyFile: lc.KeyFile, Volatile: *volatile, SegmentSize: *segSize})
	if err != nil {
		return err
	}
	defer ch.Stop()

	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	px, err := client.Dial(dctx, client.Config{Servers: lc.Servers(), Key: key, ID: "bench-log-paxos", Logger: quiet})
	if err != nil {
		return fmt.Errorf("dial wormds: %w", err)
	}
	defer px.Close()
	cc, err := dialChain(dctx, ch.Addrs, key, "bench-log-chain")
	if err != nil {
		return fmt.Errorf("dial chain: %w", err)
	}
	defer cc.Close()

	echoAddr, stopEcho, err := externalEcho()
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "bench log: raw TCP round trip to another process (%d bytes) ...\n", *valueSize)
	raw, err := bench.RawRTT(ctx, &net.Dialer{}, echoAddr, 1, *valueSize, *duration)
	stopEcho()
	if err != nil {
		return err
	}
	report := LogBenchReport{Time: time.Now().UTC(), Volatile: *volatile, ValueSize: *valueSize, Duration: *duration, Warmup: *warmup, Settle: *settle, Rounds: *rounds,
		Wormds: lc.Servers(), Chain: ch.Addrs, RawRTT: raw}
	type system struct {
		name string
		sp   worm.Space
		out  func(*LogBenchRow) *bench.Result
	}
	paxos := system{"paxos", px, func(r *LogBenchRow) *bench.Result { return &r.Paxos }}
	chainSys := system{"chain", cc, func(r *LogBenchRow) *bench.Result { return &r.Chain }}
	pair := 0
	for _, c := range counts {
		row := LogBenchRow{Clients: c}
		for round := 0; round < *rounds; round++ {
			// Alternate which system goes first, pair after pair: the
			// one measured second runs while the first one's processes
			// still settle, whatever -settle gives them.
			order := []system{paxos, chainSys}
			if pair%2 == 1 {
				order = []system{chainSys, paxos}
			}
			pair++
			for _, s := range order {
				if (s.name == "paxos" && !runPaxos) || (s.name == "chain" && !runChain) {
					continue
				}
				runtime.GC()
				settleFor(ctx, *settle)
				fmt.Fprintf(os.Stderr, "bench log: %s, %d appender(s), %v ...\n", s.name, c, *duration)
				stopProf, err := startProfile(*profDir, fmt.Sprintf("%s-c%d-r%d.pprof", s.name, c, round))
				if err != nil {
					return err
				}
				r, err := runLogAppends(ctx, s.sp, s.name, c, *warmup, *duration, *valueSize, *prefetch)
				stopProf()
				if err != nil {
					return fmt.Errorf("%s with %d appenders: %w", s.name, c, err)
				}
				fmt.Fprintf(os.Stderr, "bench log:   %v\n", r)
				if s.name == "paxos" {
					row.PaxosRounds = append(row.PaxosRounds, r)
				} else {
					row.ChainRounds = append(row.ChainRounds, r)
				}
			}
		}
		row.Paxos, row.Chain = medianRun(row.PaxosRounds), medianRun(row.ChainRounds)
		if *rounds == 1 {
			row.PaxosRounds, row.ChainRounds = nil, nil
		}
		if row.Paxos.Ops > 0 && row.Chain.Ops > 0 {
			row.ChainOverPaxosP50 = float64(row.Chain.Latency.P50) / float64(row.Paxos.Latency.P50)
			row.ChainOverPaxosP99 = float64(row.Chain.Latency.P99) / float64(row.Paxos.Latency.P99)
			row.PaxosOverChainThroughput = row.Paxos.OpsPerSec / row.Chain.OpsPerSec
		}
		report.Rows = append(report.Rows, row)
	}
	printLogBench(os.Stdout, report)
	if *jsonOut != "" {
		b, _ := json.MarshalIndent(report, "", "  ")
		if err := os.WriteFile(*jsonOut, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// settleFor waits d or until ctx ends.
func settleFor(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// medianRun returns the run with the median p50 (the lower middle one of
// an even count), or a zero Result.
func medianRun(rs []bench.Result) bench.Result {
	if len(rs) == 0 {
		return bench.Result{}
	}
	s := slices.Clone(rs)
	slices.SortFunc(s, func(a, b bench.Result) int { return cmp.Compare(a.Latency.P50, b.Latency.P50) })
	return s[(len(s)-1)/2]
}

// startProfile starts a CPU profile into dir/name (nothing when dir is
// empty) and returns the function that stops it.
func startProfile(dir, name string) (func(), error) {
	if dir == "" {
		return func() {}, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.Create(filepath.Join(dir, name))
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

// runLogAppends measures closed-loop WormLog appends over sp: a fresh log
// in segments no earlier run used, its sequencer in this process.
func runLogAppends(ctx context.Context, sp worm.Space, name string, clients int, warmup, duration time.Duration, valueSize, prefetch int) (bench.Result, error) {
	segBase := uint64(time.Now().UnixNano()/1000) << 8
	cfg := wormlog.Config{Name: fmt.Sprintf("bench-%s-%d", name, segBase), FirstSeg: segBase, Prefetch: prefetch,
		HoleTimeout: -1, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	seq := wormlog.NewSequencer(sp, cfg)
	defer seq.Close()
	lg := wormlog.NewClient(sp, cfg, seq)
	value := make([]byte, valueSize)
	for i := range value {
		value[i] = byte('a' + i%26)
	}
	// One untimed append proves the log works (and lets the sequencer
	// capture its first segments) before timing starts.
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	_, err := lg.Append(pctx, value)
	cancel()
	if err != nil {
		return bench.Result{}, fmt.Errorf("first append: %w", err)
	}
	return bench.Loop(ctx, bench.LoopConfig{Workload: bench.Workload("log-append-" + name), Clients: clients, Duration: duration, Warmup: warmup},
		func(ctx context.Context, _ int) error {
			_, err := lg.Append(ctx, value)
			return err
		})
}

func printLogBench(w *os.File, r LogBenchReport) {
	mode := "durable (fsync)"
	if r.Volatile {
		mode = "volatile (no fsync)"
	}
	rounds := ""
	if r.Rounds > 1 {
		rounds = fmt.Sprintf(", median of %d rounds", r.Rounds)
	}
	fmt.Fprintf(w, "WormLog appends, %d-byte values, %s; %v per run%s; raw TCP round trip (other process) p50 %sµs p99 %sµs\n",
		r.ValueSize, mode, r.Duration, rounds, us(r.RawRTT.Latency.P50), us(r.RawRTT.Latency.P99))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "clients\tpaxos appends/s\tp50 µs\tp99 µs\tp50/raw\tchain appends/s\tp50 µs\tp99 µs\tp50/raw\tchain/paxos p50\tchain/paxos p99\tpaxos/chain appends/s\terrors\t")
	ratio := func(x float64) string {
		if x == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f", x)
	}
	cols := func(x bench.Result) string {
		if x.Ops == 0 {
			return "-\t-\t-\t-"
		}
		return fmt.Sprintf("%.0f\t%s\t%s\t%.1f", x.OpsPerSec, us(x.Latency.P50), us(x.Latency.P99), float64(x.Latency.P50)/float64(r.RawRTT.Latency.P50))
	}
	for _, row := range r.Rows {
		errs := fmt.Sprintf("%d/%d", row.Paxos.Errors, row.Chain.Errors)
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t\n", row.Clients, cols(row.Paxos), cols(row.Chain),
			ratio(row.ChainOverPaxosP50), ratio(row.ChainOverPaxosP99), ratio(row.PaxosOverChainThroughput), errs)
	}
	tw.Flush()
	for _, row := range r.Rows {
		for _, x := range []bench.Result{row.Paxos, row.Chain} {
			if x.Errors > 0 {
				fmt.Fprintf(w, "%s c=%d: %d errors, first: %s\n", x.Workload, x.Clients, x.Errors, strings.TrimSpace(x.FirstError))
			}
		}
	}
}
