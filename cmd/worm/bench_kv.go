package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/wormspace/wormspace/apps/wormpaxos"
	"github.com/wormspace/wormspace/apps/wormpaxos/kv"
	"github.com/wormspace/wormspace/worm/bench"
	"github.com/wormspace/wormspace/worm/client"
	"github.com/wormspace/wormspace/worm/localcluster"
)

func init() { benchApps["kv"] = cmdBenchKV }

const benchKVUsage = `usage: worm bench kv [-front inproc,tcp] [-policy sticky,rotating,leaderless] [-batch on,off] [-clients 1,16,64] [-local 3] [-volatile] [-quick] [-json FILE]

Measures WormPaxos: closed-loop key-value clients (apps/wormpaxos/kv) put
keys through three replicas of one replicated log in this process, each
with its own WormSpace client, replicating through -local wormds started
for the run. Every leader policy runs batched (adaptive, up to 1024 commands or 64 KiB per
register, adaptive: with a write in flight the next batch waits until it
is full or the write returns; up to 4 writes in flight) and unbatched (one command per register),
at each client count. Sticky: every client proposes at replica 0 (the
leader). Rotating and leaderless: client i proposes at replica i mod 3.
A put returns once its command is applied at the proposing replica; the
other replicas learn and apply the log meanwhile. -front inproc (the
default): the clients call the replica directly (kv.NewClient over the
*wormpaxos.Replica); -front tcp: each client has a loopback connection to
its replica's kv.Serve front (still in this process, so the client side's
CPU is counted too).`

// KVBenchRow is one configuration.
type KVBenchRow struct {
	Policy string `json:"policy"`
	// Front: "inproc" (clients call the replica in this process) or
	// "tcp" (clients reach the replica's kv.Serve front over loopback).
	Front   string       `json:"front"`
	Batched bool         `json:"batched"`
	Result  bench.Result `json:"result"`
	// Writes: registers written per second (a batch is one); Batch is the
	// mean commands per register.
	WritesPerSec float64 `json:"writes_per_sec"`
	MeanBatch    float64 `json:"mean_batch"`
}

// KVBenchReport is what -json writes.
type KVBenchReport struct {
	Time     time.Time     `json:"time"`
	Volatile bool          `json:"volatile"`
	Wormds   []string      `json:"wormds"`
	Duration time.Duration `json:"duration_ns"`
	Warmup   time.Duration `json:"warmup_ns"`
	Rows     []KVBenchRow  `json:"rows"`
}

func cmdBenchKV(args []string) error {
	fs := flag.NewFlagSet("bench kv", flag.ContinueOnError)
	policiesF := fs.String("policy", "sticky,rotating,leaderless", "leader policies to run")
	batchF := fs.String("batch", "on,off", "batched (on: adaptive, up to 1024 commands or 64 KiB per register) and/or unbatched (off)")
	clientsF := fs.String("clients", "1,16,64", "closed-loop client counts to sweep")
	local := fs.Int("local", 3, "wormds to start on loopback for the run")
	volatile := fs.Bool("volatile", false, "wormds skip fsync (the protocol, not the disk)")
	quick := fs.Bool("quick", false, "short runs (1s, 200ms warm-up)")
	duration := fs.Duration("duration", 5*time.Second, "measured time per configuration")
	warmup := fs.Duration("warmup", time.Second, "unmeasured time before each measurement")
	jsonOut := fs.String("json", "", "also write the report as JSON to this file")
	profDir := fs.String("cpuprofile", "", "write a CPU profile of this process per run into this directory")
	frontsF := fs.String("front", "inproc", "where clients submit: inproc (kv clients call the replica in this process) and/or tcp (kv clients over loopback TCP to each replica's kv.Serve front, also in this process)")
	fs.Usage = func() { fmt.Fprintln(fs.Output(), benchKVUsage); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 || *local < 1 {
		fs.Usage()
		return errUsage
	}
	if *quick {
		*duration, *warmup = time.Second, 200*time.Millisecond
	}
	counts, err := parseInts(*clientsF)
	if err != nil {
		return &exitError{code: exitFailure, msg: "-clients: " + err.Error()}
	}
	var policies []wormpaxos.Policy
	for _, p := range strings.Split(*policiesF, ",") {
		pol, err := wormpaxos.ParsePolicy(strings.TrimSpace(p))
		if err != nil {
			return &exitError{code: exitFailure, msg: "-policy: " + err.Error()}
		}
		policies = append(policies, pol)
	}
	var fronts []string
	for _, f := range strings.Split(*frontsF, ",") {
		switch f = strings.TrimSpace(f); f {
		case "inproc", "tcp":
			fronts = append(fronts, f)
		default:
			return &exitError{code: exitFailure, msg: fmt.Sprintf("-front: %q (inproc, tcp)", f)}
		}
	}
	var batches []bool
	for _, b := range strings.Split(*batchF, ",") {
		switch strings.TrimSpace(b) {
		case "on":
			batches = append(batches, true)
		case "off":
			batches = append(batches, false)
		default:
			return &exitError{code: exitFailure, msg: fmt.Sprintf("-batch: %q (on, off)", b)}
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	dir, err := os.MkdirTemp("", "worm-bench-kv-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	mode := "durable (fsync)"
	if *volatile {
		mode = "volatile (no fsync)"
	}
	fmt.Fprintf(os.Stderr, "bench kv: starting %d local wormds, %s ...\n", *local, mode)
	lc, err := localcluster.Start(ctx, localcluster.Config{N: *local, Dir: filepath.Join(dir, "wormds"), Volatile: *volatile})
	if err != nil {
		return err
	}
	defer lc.Stop()
	key, err := lc.Key()
	if err != nil {
		return err
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	var spaces []*client.Client
	for i := range 3 {
		dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		cl, err := client.Dial(dctx, client.Config{Servers: lc.Servers(), Key: key, ID: "bench-kv-replica-" + strconv.Itoa(i), Logger: quiet})
		cancel()
		if err != nil {
			return err
		}
		defer cl.Close()
		spaces = append(spaces, cl)
	}
	report := KVBenchReport{Time: time.Now().UTC(), Volatile: *volatile, Wormds: lc.Servers(), Duration: *duration, Warmup: *warmup}
	logBase := uint64(time.Now().UnixNano()/1000) << 12
	for _, front := range fronts {
		for _, pol := range policies {
			for _, batched := range batches {
				for _, c := range counts {
					name := fmt.Sprintf("%s-%v-%s-c%d", front, pol, onOff(batched), c)
					fmt.Fprintf(os.Stderr, "bench kv: %s clients, %v, batch %s, %d client(s), %v ...\n", front, pol, onOff(batched), c, *duration)
					stopProf, err := startProfile(*profDir, name+".pprof")
					if err != nil {
						return err
					}
					// Every run gets a log of its own.
					logBase += 1 << 24
					row, err := runKVPuts(ctx, spaces, front, pol, batched, c, logBase, *warmup, *duration, quiet)
					stopProf()
					if err != nil {
						return fmt.Errorf("%s: %w", name, err)
					}
					fmt.Fprintf(os.Stderr, "bench kv:   %v (%.1f commands per register)\n", row.Result, row.MeanBatch)
					report.Rows = append(report.Rows, row)
				}
			}
		}
	}
	printKVBench(os.Stdout, report)
	if *jsonOut != "" {
		b, _ := json.MarshalIndent(report, "", "  ")
		if err := os.WriteFile(*jsonOut, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// runKVPuts measures closed-loop puts through three replicas of a fresh
// log at logBase.
func runKVPuts(ctx context.Context, spaces []*client.Client, front string, pol wormpaxos.Policy, batched bool, clients int, logBase uint64, warmup, duration time.Duration, logger *slog.Logger) (KVBenchRow, error) {
	rctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	maxBatch := 1
	if batched {
		maxBatch = 0 // WormPaxos's defaults: adaptive, up to 1024 commands or 64 KiB
	}
	var reps []*wormpaxos.Replica
	for i, sp := range spaces {
		r, err := wormpaxos.New(sp, kv.NewStore(), wormpaxos.Config{Policy: pol, LogBase: logBase, Replicas: len(spaces), Index: i,
			MaxBatch: maxBatch, Logger: logger})
		if err != nil {
			return KVBenchRow{}, err
		}
		reps = append(reps, r)
		wg.Go(func() {
			if err := r.Run(rctx); err != nil && rctx.Err() == nil {
				logger.Error("bench kv: replica", "index", i, "err", err)
			}
		})
	}
	// Client i proposes at replica 0 (Sticky) or i mod 3.
	addrs := make([]string, len(reps))
	if front == "tcp" {
		for i, r := range reps {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return KVBenchRow{}, err
			}
			wg.Go(func() { _ = kv.Serve(rctx, r, ln) })
			addrs[i] = ln.Addr().String()
		}
	}
	kvs := make([]*kv.Client, clients)
	for i := range kvs {
		at := 0
		if pol != wormpaxos.Sticky {
			at = i % len(reps)
		}
		if front == "tcp" {
			// One connection per client, opened at its first put.
			c, err := kv.Dial(rctx, &net.Dialer{}, addrs[at])
			if err != nil {
				return KVBenchRow{}, err
			}
			kvs[i] = c
		} else {
			kvs[i] = kv.NewClient(fmt.Sprintf("bench-%d-%d", logBase, i), reps[at])
		}
		// No timer per attempt: a timed-out attempt would be retried at
		// the same (and only) replica anyway; bench.Loop bounds each put.
		kvs[i].AttemptTimeout = 0
	}
	defer func() {
		for _, c := range kvs {
			c.Close()
		}
	}()
	// One untimed put per proposing replica lets the policy set up (the
	// leader's or the owners' first segments) before timing starts.
	for i := range min(clients, len(reps)) {
		pctx, pcancel := context.WithTimeout(ctx, 30*time.Second)
		err := kvs[i].Put(pctx, "warm", "up")
		pcancel()
		if err != nil {
			return KVBenchRow{}, fmt.Errorf("first put: %w", err)
		}
	}
	w0 := writes(reps)
	value := strings.Repeat("v", 16)
	r, err := bench.Loop(ctx, bench.LoopConfig{Workload: bench.Workload(fmt.Sprintf("kv-put-%v-batch-%s", pol, onOff(batched))),
		Clients: clients, Warmup: warmup, Duration: duration},
		func(ctx context.Context, i int) error {
			return kvs[i].Put(ctx, "k"+strconv.Itoa(i), value)
		})
	if err != nil {
		return KVBenchRow{}, err
	}
	row := KVBenchRow{Policy: pol.String(), Front: front, Batched: batched, Result: r}
	// Registers written over the whole loop, warm-up included (the
	// replicas count them, not the loop): their rate, and the commands
	// per register at the measured put rate.
	if w := writes(reps) - w0; w > 0 {
		row.WritesPerSec = float64(w) / (r.Duration + warmup).Seconds()
		row.MeanBatch = r.OpsPerSec / row.WritesPerSec
	}
	if r.Ops == 0 {
		return row, errors.New("no put completed")
	}
	return row, nil
}

// writes sums the replicas' chosen batch writes.
func writes(reps []*wormpaxos.Replica) uint64 {
	var n uint64
	for _, r := range reps {
		n += r.Stats().Writes
	}
	return n
}

func printKVBench(w io.Writer, r KVBenchReport) {
	mode := "durable (fsync)"
	if r.Volatile {
		mode = "volatile (no fsync)"
	}
	fmt.Fprintf(w, "WormPaxos KV puts, 3 replicas and the closed-loop clients in this process (front inproc: direct calls; tcp: over loopback to kv.Serve), %d wormds, %s; %v per run\n", len(r.Wormds), mode, r.Duration)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "front\tpolicy\tbatch\tclients\tputs/s\tp50 µs\tp99 µs\tregisters/s\tcommands/register\terrors\t")
	for _, row := range r.Rows {
		x := row.Result
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%.0f\t%s\t%s\t%.0f\t%.1f\t%d\t\n", row.Front, row.Policy, onOff(row.Batched), x.Clients, x.OpsPerSec,
			us(x.Latency.P50), us(x.Latency.P99), row.WritesPerSec, row.MeanBatch, x.Errors)
	}
	tw.Flush()
	for _, row := range r.Rows {
		if row.Result.Errors > 0 {
			fmt.Fprintf(w, "%s c=%d: %d errors, first: %s\n", row.Result.Workload, row.Result.Clients, row.Result.Errors, strings.TrimSpace(row.Result.FirstError))
		}
	}
}
