package main

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/wormspace/wormspace/cmd/internal/compare"
	"github.com/wormspace/wormspace/netstack"
	"github.com/wormspace/wormspace/qemu"
	"github.com/wormspace/wormspace/worm/bench"
	"github.com/wormspace/wormspace/worm/localcluster"
)

func init() {
	register(&command{
		name:    "compare",
		summary: "the OS-stack comparison: the same workloads on host/VM × kernel/netstack clusters, with floors",
		run:     cmdCompare,
	})
	register(&command{
		name:    "compare-echo",
		summary: "TCP echo for worm compare's floor: compare-echo [-stack kernel|netstack -tap T -addr A/N] -listen ADDR",
		run:     cmdCompareEcho,
	})
}

const compareUsage = `usage: worm compare [flags]

Runs the same workloads on a matrix of 3-acceptor clusters:
  host-kernel    wormd processes, kernel TCP over loopback (the reference)
  host-netstack  wormd processes on gVisor netstack on TAPs in a private namespace
  vm-kernel      VMs from the boot image (make image), guest kernel TCP
  vm-netstack    VMs from the boot image, netstack in the guest
plus floors in the same run: over each path (into the VMs too) a raw TCP
echo round trip (raw-echo) and a stream of 64 KiB writes through the same
echo server (raw-stream, MB/s each way), and the in-process specification. A netstack configuration can also run as a
variant with knobs of its own, over -netstack-knobs, beside its base:
  -configs host-kernel,host-netstack,host-netstack@coalesce_acks=false
(several knobs joined by +), so that a knob is judged within one run.
Repetitions are interleaved across
configurations; rows are medians with min-max. Writes report.json,
results.csv, table.txt, table.md and SVG+PNG plots into -out, and removes
every process, namespace, TAP and VM it made, also on Ctrl-C.`

func cmdCompare(args []string) error {
	fs := flag.NewFlagSet("compare", flag.ContinueOnError)
	configs := fs.String("configs", strings.Join(compare.Configs, ","), "configurations, comma separated; a netstack one may carry knobs: host-netstack@coalesce_acks=false+go_procs=2")
	workloads := fs.String("workloads", strings.Join(compare.Workloads, ","), "workloads, comma separated")
	clientsF := fs.String("clients", "1,4,16,64", "closed-loop client counts to sweep")
	ratesF := fs.String("rates", "", "open-loop WormLog append rates (ops/s) for latency under load, e.g. 500,2000 (none by default)")
	duration := fs.Duration("duration", 3*time.Second, "measured time per run")
	warmup := fs.Duration("warmup", time.Second, "unmeasured warm-up before each run")
	reps := fs.Int("reps", 3, "repetitions, interleaved across configurations")
	value := fs.Int("value", 64, "bytes per value (and per echo message)")
	knobsF := fs.String("netstack-knobs", "", "netstack knob overrides for every netstack in the run (wormds, guests, echo floor), e.g. dispatch=recvmmsg,processors=1")
	durable := fs.Bool("durable", false, "wormds fsync (default: volatile, so the disk does not mask the network stack)")
	out := fs.String("out", "", "output directory (default build/compare/<timestamp>)")
	image := fs.String("image", qemu.DefaultImageDir, "boot image directory for the VM configurations")
	accelF := fs.String("accel", "auto", "VM accelerator: auto, kvm or tcg")
	pprofF := fs.Bool("pprof", false, "profile acceptor 1 of each host configuration (CPU, allocations) after the runs")
	profWl := fs.String("profile-workload", "write", "workload to profile under")
	profC := fs.Int("profile-clients", 16, "clients while profiling")
	profFor := fs.Duration("profile-for", 5*time.Second, "profile length")
	quick := fs.Bool("quick", false, "short run: 1 rep, clients 1,16, 500ms after 200ms warm-up")
	fs.Usage = func() { fmt.Fprintln(fs.Output(), compareUsage); fs.PrintDefaults() }
	if _, err := parseArgs(fs, args, 0, "compare [flags]"); err != nil {
		return err
	}
	set := givenFlags(fs)
	if *quick {
		if !set["reps"] {
			*reps = 1
		}
		if !set["clients"] {
			*clientsF = "1,16"
		}
		if !set["duration"] {
			*duration = 500 * time.Millisecond
		}
		if !set["warmup"] {
			*warmup = 200 * time.Millisecond
		}
	}
	counts, err := parseInts(*clientsF)
	if err != nil {
		return &exitError{code: exitFailure, msg: "-clients: " + err.Error()}
	}
	var rates []int
	if *ratesF != "" {
		if rates, err = parseInts(*ratesF); err != nil {
			return &exitError{code: exitFailure, msg: "-rates: " + err.Error()}
		}
	}
	accel, err := qemu.ParseAccel(*accelF)
	if err != nil {
		return &exitError{code: exitFailure, msg: err.Error()}
	}
	if *out == "" {
		*out = filepath.Join("build", "compare", time.Now().Format("20060102-150405"))
	}
	wormd, err := localcluster.Find()
	if err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	o := compare.Options{
		Configs: splitList(*configs), Workloads: splitList(*workloads), Clients: counts, Rates: rates,
		Duration: *duration, Warmup: *warmup, Reps: *reps, ValueSize: *value, Volatile: !*durable, NetstackKnobs: *knobsF,
		Out: *out, Wormd: wormd, EchoCmd: []string{exe, "compare-echo"},
		ImageDir: *image, Accel: accel, Pprof: *pprofF, ProfileWorkload: *profWl, ProfileClients: *profC, ProfileFor: *profFor,
		Progress: os.Stderr,
	}
	rep, err := compare.Run(ctx, o)
	if err != nil {
		if ctx.Err() != nil {
			return &exitError{code: exitFailure, msg: "compare: interrupted; everything it started has been removed"}
		}
		return err
	}
	fmt.Print(compare.Table(rep))
	for _, p := range rep.Profiles {
		if p.Error != "" {
			fmt.Printf("\nprofile %s %s: %s\n", p.Config, p.Kind, p.Error)
		}
	}
	fmt.Printf("\nreport: %s (%s)\n", *out, strings.Join(rep.Files, " "))
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// cmdCompareEcho serves the raw echo floor over the kernel or a netstack
// on a TAP, in a process of its own (as a wormd is), and prints
// "ready ADDR" on stdout once it accepts.
func cmdCompareEcho(args []string) error {
	fs := flag.NewFlagSet("compare-echo", flag.ContinueOnError)
	stackF := fs.String("stack", "kernel", "kernel or netstack")
	tap := fs.String("tap", "", "netstack: TAP device (created)")
	addr := fs.String("addr", "", "netstack: address/prefix")
	listen := fs.String("listen", "127.0.0.1:0", "listen address")
	knobsF := fs.String("knobs", os.Getenv("WORM_NETSTACK_KNOBS"), "netstack knob overrides (netstack.ParseKnobs); default $WORM_NETSTACK_KNOBS")
	if _, err := parseArgs(fs, args, 0, "compare-echo [flags]"); err != nil {
		return err
	}
	knobs, err := netstack.ParseKnobs(*knobsF)
	if err != nil {
		return fmt.Errorf("-knobs: %w", err)
	}
	cfg := netstack.Config{Stack: *stackF, TAP: *tap, TAPFD: -1, Knobs: &knobs}
	if *stackF == "netstack" {
		knobs.ApplyGoProcs() // as wormd does: the floor is the same process shape
		p, err := netip.ParsePrefix(*addr)
		if err != nil {
			return fmt.Errorf("-addr: %w", err)
		}
		cfg.Addr = p
	}
	n, err := netstack.Open(cfg)
	if err != nil {
		return err
	}
	defer n.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	l, err := n.Listen(ctx, "tcp", *listen)
	if err != nil {
		return err
	}
	go func() { <-ctx.Done(); l.Close() }()
	fmt.Printf("ready %s\n", l.Addr())
	bench.EchoServer(l)
	return nil
}
