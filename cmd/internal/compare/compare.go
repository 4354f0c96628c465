// Package compare is the OS-stack comparison harness behind `worm compare`
// and `make compare`: the same wormd and the same workloads on a matrix of
// configurations, each a 3-acceptor cluster,
//
//	host-kernel    wormd processes, kernel TCP over loopback (the reference)
//	host-netstack  wormd processes on gVisor netstack, each on a TAP device
//	               bridged in a private network namespace; clients on the
//	               kernel stack reach them over the TAPs
//	vm-kernel      VMs from the boot image (qemu package), guest kernel TCP
//	vm-netstack    VMs from the boot image, netstack in the guest
//
// with two floors measured in the same run: a raw 64-byte TCP echo round
// trip to another process over each host path (loopback; netstack on a
// TAP), and the in-process specification (worm/spec, no network at all)
// under the same workloads.
//
// Every configuration's cluster is started once and kept for the whole
// run; repetitions are interleaved across configurations (rep 1 of every
// configuration, then rep 2, ...) so that drift of a noisy machine hits all
// alike. Each measurement is a closed-loop run from worm/bench (write,
// read, capture-write), a WormLog append loop or WormPaxos KV puts, after
// a warm-up; open-loop WormLog appends at fixed rates (Options.Rates) give
// latency under load. The cluster's CPU time (wormd or QEMU processes,
// from /proc/PID/stat) and the harness's own (getrusage) are sampled around it. Rows report the
// median over repetitions with min and max, and ratios to host-kernel.
//
// Run writes report.json, results.csv, a text table and SVG+PNG plots to
// Options.Out, and removes every process, namespace, TAP and VM it made,
// also when ctx is cancelled (Ctrl-C).
package compare

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/wormspace/wormspace/netstack"
	"github.com/wormspace/wormspace/qemu"
	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/bench"
	"github.com/wormspace/wormspace/worm/client"
	"github.com/wormspace/wormspace/worm/spec"
)

var discardLogger = slog.New(slog.NewTextHandler(io.Discard, nil))

// Spec is the pseudo-configuration of the in-process specification floor.
const Spec = "spec"

// Options describe a comparison run.
type Options struct {
	// Configs to run (default Configs); Spec is always added unless
	// NoSpecFloor.
	Configs []string
	// Workloads (default Workloads) and closed-loop client counts
	// (default 1,4,16,64).
	Workloads []string
	Clients   []int
	// Rates are open-loop arrival rates (ops/s) of WormLog appends, each
	// measured like a workload (none by default).
	Rates []int
	// Duration of each measurement after Warmup; Reps repetitions.
	Duration, Warmup time.Duration
	Reps             int
	// ValueSize in bytes (default 64); also the echo message size.
	ValueSize int
	// Volatile runs wormds without fsync (default in the CLI: the
	// comparison is about the network stack, not the disk).
	Volatile bool
	// NetstackKnobs overrides the netstack knobs of every netstack in the
	// run (host-netstack wormds and echo floor, vm-netstack guests;
	// netstack.ParseKnobs syntax). Empty: netstack.DefaultKnobs.
	NetstackKnobs string
	// Out is the output directory (created).
	Out string
	// Wormd is the wormd binary; EchoCmd the command (binary and leading
	// arguments) of the echo helper (`worm compare-echo`), which takes
	// -stack, -tap, -addr and -listen and prints "ready ADDR".
	Wormd   string
	EchoCmd []string
	// ImageDir and Accel for the VM configurations.
	ImageDir string
	Accel    qemu.Accel
	// Pprof serves /debug/pprof from the host configurations' wormds and
	// profiles acceptor 1 (CPU and allocations) under ProfileWorkload
	// with ProfileClients for ProfileFor after the repetitions.
	Pprof           bool
	ProfileWorkload string
	ProfileClients  int
	ProfileFor      time.Duration
	NoSpecFloor     bool
	// Progress receives one line per step (nil: discarded).
	Progress io.Writer
}

func (o *Options) defaults() error {
	if _, err := netstack.ParseKnobs(o.NetstackKnobs); err != nil {
		return fmt.Errorf("compare: netstack knobs: %w", err)
	}
	if len(o.Configs) == 0 {
		o.Configs = slices.Clone(Configs)
	}
	for i, c := range o.Configs {
		if err := checkConfig(o, c); err != nil {
			return err
		}
		if slices.Contains(o.Configs[:i], c) {
			return fmt.Errorf("compare: configuration %q given twice", c)
		}
	}
	if len(o.Workloads) == 0 {
		o.Workloads = slices.Clone(Workloads)
	}
	for _, w := range o.Workloads {
		if !slices.Contains(Workloads, w) {
			return fmt.Errorf("compare: unknown workload %q (want %s)", w, strings.Join(Workloads, ", "))
		}
	}
	if len(o.Clients) == 0 {
		o.Clients = []int{1, 4, 16, 64}
	}
	if o.Duration <= 0 {
		o.Duration = 3 * time.Second
	}
	if o.Warmup < 0 {
		o.Warmup = 0
	}
	if o.Reps <= 0 {
		o.Reps = 3
	}
	if o.ValueSize <= 0 {
		o.ValueSize = 64
	}
	if o.Out == "" {
		return errors.New("compare: Out is required")
	}
	if o.ImageDir == "" {
		o.ImageDir = qemu.DefaultImageDir
	}
	if o.Accel == "" {
		o.Accel = qemu.AccelAuto
	}
	if o.ProfileWorkload == "" {
		o.ProfileWorkload = string(bench.Write)
	}
	if o.ProfileClients <= 0 {
		o.ProfileClients = 16
	}
	if o.ProfileFor <= 0 {
		o.ProfileFor = 5 * time.Second
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	return nil
}

// Stat is a median with its spread over repetitions.
type Stat struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
}

func statOf(xs []float64) Stat {
	if len(xs) == 0 {
		return Stat{}
	}
	s := slices.Clone(xs)
	sort.Float64s(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return Stat{Median: m, Min: s[0], Max: s[len(s)-1]}
}

// Sample is one measurement.
type Sample struct {
	Rep       int     `json:"rep"`
	OpsPerSec float64 `json:"ops_per_sec"`
	P50us     float64 `json:"p50_us"`
	P99us     float64 `json:"p99_us"`
	// ServerCPUus is the cluster processes' CPU time per operation (µs),
	// ClientCPUus the harness's own.
	ServerCPUus float64 `json:"server_cpu_us_per_op"`
	ClientCPUus float64 `json:"client_cpu_us_per_op"`
	// CPUBusy is the share of the run's CPUs (Env.CPUs) that the
	// cluster and the harness kept busy while the sample ran: their CPU
	// time over wall time times CPUs. Near 1, the machine is saturated
	// and latency is mostly CPU per operation, not the network's round
	// trip.
	CPUBusy float64 `json:"cpu_busy"`
	// PacerLateP50us and PacerLateP99us (open-loop samples) are how long
	// after its scheduled start the harness issued an operation: part of
	// each latency, and the harness's own (see pacer).
	PacerLateP50us float64 `json:"pacer_late_p50_us,omitempty"`
	PacerLateP99us float64 `json:"pacer_late_p99_us,omitempty"`
	Ops            int64   `json:"ops"`
	Errors         int64   `json:"errors"`
	FirstError     string  `json:"first_error,omitempty"`
}

// Row is one configuration × workload × client count.
type Row struct {
	Config   string `json:"config"`
	Workload string `json:"workload"`
	Clients  int    `json:"clients"`
	// Rate is the open-loop arrival rate (OpenLoop rows; Clients is 0).
	Rate int `json:"rate,omitempty"`
	// Floor marks the floors (echo, spec).
	Floor     bool     `json:"floor,omitempty"`
	Samples   []Sample `json:"samples"`
	OpsPerSec Stat     `json:"ops_per_sec"`
	P50us     Stat     `json:"p50_us"`
	P99us     Stat     `json:"p99_us"`
	ServerCPU Stat     `json:"server_cpu_us_per_op"`
	ClientCPU Stat     `json:"client_cpu_us_per_op"`
	CPUBusy   Stat     `json:"cpu_busy"`
	Errors    int64    `json:"errors"`
	// Ratios to the same workload and client count on host-kernel (0:
	// not applicable): throughput, p50, p99 and server CPU per op.
	TputRatio float64 `json:"throughput_ratio,omitempty"`
	P50Ratio  float64 `json:"p50_ratio,omitempty"`
	P99Ratio  float64 `json:"p99_ratio,omitempty"`
	CPURatio  float64 `json:"server_cpu_ratio,omitempty"`
	// StackTputRatio and StackP50Ratio compare netstack with the kernel
	// in the same place: host-netstack to host-kernel, vm-netstack to
	// vm-kernel (the cost of the stack alone).
	StackTputRatio float64 `json:"stack_throughput_ratio,omitempty"`
	StackP50Ratio  float64 `json:"stack_p50_ratio,omitempty"`
}

// ConfigStatus says whether a configuration ran.
type ConfigStatus struct {
	Name        string         `json:"name"`
	Description string         `json:"description"`
	Status      string         `json:"status"` // "ok", "skipped: ...", "failed: ..."
	Info        map[string]any `json:"info,omitempty"`
}

// Report is everything a run produced.
type Report struct {
	Started  time.Time      `json:"started"`
	Finished time.Time      `json:"finished"`
	Env      Env            `json:"env"`
	Settings map[string]any `json:"settings"`
	Configs  []ConfigStatus `json:"configs"`
	Rows     []Row          `json:"rows"`
	// Goals judges host-netstack's rows against GoalThroughput and
	// GoalP50, per configuration and load.
	Goals    []GoalCheck `json:"goals,omitempty"`
	Profiles []Profile   `json:"profiles,omitempty"`
	Files    []string    `json:"files"`
}

// EchoWorkload names the raw echo floor rows.
const EchoWorkload = "raw-echo"

// StreamWorkload names the bulk floor rows: StreamChunk-byte writes
// streamed through the same echo server on one connection. Their ops/s
// are megabytes (10^6 bytes) per second each way, their p50/p99 the time
// a chunk takes to come back, queueing in the pipe included.
const StreamWorkload = "raw-stream"

// StreamChunk is the write size of the bulk floor.
const StreamChunk = 64 << 10

// floorWorkload reports whether wl is one of the raw floors over a path
// (not a WormSpace workload).
func floorWorkload(wl string) bool { return wl == EchoWorkload || wl == StreamWorkload }

type runner struct {
	o       *Options
	rep     *Report
	rows    map[string]*Row
	order   []string
	clients map[string]worm.Space
	cls     map[string]cluster
	// vmAccel is the accelerator VM configurations use: o.Accel
	// resolved, and TCG after a KVM that failed to boot a guest.
	vmAccel    qemu.Accel
	vmAccelWhy string
	step       int
	steps      int
	t0         time.Time
	// paused records which clusters quiesceAllBut paused.
	paused map[string]bool
}

// quiesceAllBut pauses every VM cluster but cfg's and resumes cfg's, so
// that the configuration measured has the machine to itself: idle guests
// under TCG still run their timer ticks (six took about 15% of one CPU
// here). A failure is reported and the run goes on: a guest that cannot
// be resumed shows as errors in its rows.
func (r *runner) quiesceAllBut(ctx context.Context, cfg string) {
	if r.paused == nil {
		r.paused = map[string]bool{}
	}
	for _, name := range slices.Sorted(maps.Keys(r.cls)) {
		want := name != cfg
		if r.paused[name] == want {
			continue
		}
		t := time.Now()
		if err := r.cls[name].pause(ctx, want); err != nil {
			r.progress("%s: pause=%v: %s", name, want, oneLine(err.Error()))
			continue
		}
		if d := time.Since(t); !want && d > 500*time.Millisecond {
			r.progress("%s: resumed; its first round trips took %v", name, d.Round(time.Millisecond))
		}
		r.paused[name] = want
	}
}

func (r *runner) progress(format string, a ...any) {
	fmt.Fprintf(r.o.Progress, "compare %6.1fs  %s\n", time.Since(r.t0).Seconds(), fmt.Sprintf(format, a...))
}

func (r *runner) row(cfg, wl string, clients int, floor bool) *Row {
	k := fmt.Sprintf("%s|%s|%d", cfg, wl, clients)
	if x, ok := r.rows[k]; ok {
		return x
	}
	x := &Row{Config: cfg, Workload: wl, Clients: clients, Floor: floor}
	if clients < 0 { // open loop: the key carries the rate
		x.Clients, x.Rate = 0, -clients
	}
	r.rows[k] = x
	r.order = append(r.order, k)
	return x
}

// Run runs the comparison and writes its report files into o.Out.
func Run(ctx context.Context, o Options) (*Report, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return nil, err
	}
	r := &runner{o: &o, rows: map[string]*Row{}, clients: map[string]worm.Space{}, cls: map[string]cluster{}, t0: time.Now()}
	r.rep = &Report{Started: time.Now().UTC(), Settings: map[string]any{
		"workloads": o.Workloads, "clients": o.Clients, "duration_ms": o.Duration.Milliseconds(),
		"warmup_ms": o.Warmup.Milliseconds(), "reps": o.Reps, "value_bytes": o.ValueSize, "volatile": o.Volatile,
		"netstack_knobs_overrides": o.NetstackKnobs,
		"interleaving":             "rep-major: every configuration's rep k before any rep k+1",
		"idle_vms":                 "paused (QMP stop) while other configurations are measured",
	}}
	defer func() {
		for name, c := range r.cls {
			r.progress("%s: stopping", name)
			c.close()
		}
	}()

	// Bring every configuration up once.
	var active []string
	if !o.NoSpecFloor {
		r.clients[Spec] = spec.New(1024).Client("compare")
		r.rep.Configs = append(r.rep.Configs, ConfigStatus{Name: Spec, Description: "floor: the in-process specification (worm/spec), no network", Status: "ok"})
		active = append(active, Spec)
	}
	for _, cfg := range o.Configs {
		st := ConfigStatus{Name: cfg, Description: Describe(cfg)}
		if why := r.unavailable(cfg); why != "" {
			st.Status = "skipped: " + why
			r.progress("%s: %s", cfg, st.Status)
			r.rep.Configs = append(r.rep.Configs, st)
			continue
		}
		r.progress("%s: starting 3 acceptors (%s)", cfg, Describe(cfg))
		c, err := r.start(ctx, cfg)
		if err == nil {
			var cl *client.Client
			dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			cl, err = client.Dial(dctx, client.Config{Servers: c.servers(), Key: c.key(), Dialer: c.dialer(), Logger: discardLogger})
			cancel()
			if err != nil {
				c.close()
				err = fmt.Errorf("client: %w", err)
			} else {
				r.cls[cfg] = c
				r.clients[cfg] = cl
				defer cl.Close()
			}
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if err != nil {
			st.Status = "failed: " + oneLine(err.Error())
			r.progress("%s: %s", cfg, st.Status)
		} else {
			st.Status = "ok"
			st.Info = c.info()
			r.progress("%s: up, servers %s", cfg, strings.Join(c.servers(), ","))
			active = append(active, cfg)
		}
		r.rep.Configs = append(r.rep.Configs, st)
	}
	r.rep.Env = captureEnv(&o, r.cls)
	if r.vmAccel != "" {
		r.rep.Env.Accel, r.rep.Env.AccelWhy = string(r.vmAccel), r.vmAccelWhy
	}

	perRep := 0
	for _, cfg := range active {
		if c, ok := r.cls[cfg]; ok && c.echoAddr() != "" {
			perRep += 2 // the echo and the stream floors
		}
		perRep += len(o.Workloads)*len(o.Clients) + len(o.Rates)
	}
	r.steps = perRep * o.Reps
	for rep := 1; rep <= o.Reps; rep++ {
		for _, cfg := range active {
			r.quiesceAllBut(ctx, cfg)
			if err := r.measureConfig(ctx, rep, cfg); err != nil {
				return nil, err
			}
		}
	}
	r.quiesceAllBut(ctx, "")
	if o.Pprof {
		r.profile(ctx)
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	r.rep.Finished = time.Now().UTC()
	r.finish()
	if err := writeOutputs(r.rep, o.Out); err != nil {
		return r.rep, err
	}
	return r.rep, nil
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " | ")
	if len(s) > 400 {
		s = s[:400] + "..."
	}
	return s
}

// unavailable says why cfg cannot run on this machine ("" if it can).
func (r *runner) unavailable(cfg string) string {
	switch baseConfig(cfg) {
	case HostKernel:
		if r.o.Wormd == "" {
			return "no wormd binary"
		}
	case HostNetstack:
		if r.o.Wormd == "" {
			return "no wormd binary"
		}
		if os.Geteuid() != 0 {
			return "needs root for a network namespace and TAP devices"
		}
		if _, err := os.Stat("/dev/net/tun"); err != nil {
			return "no /dev/net/tun"
		}
	case VMKernel, VMNetstack:
		if err := qemu.CanUseTAP(); err != nil {
			return "VM clusters need TAP networking: " + err.Error()
		}
		for _, f := range []string{qemu.KernelFile, qemu.InitrdFile} {
			if _, err := os.Stat(filepath.Join(r.o.ImageDir, f)); err != nil {
				return fmt.Sprintf("no boot image in %s (run `make image`)", r.o.ImageDir)
			}
		}
	}
	return ""
}

func (r *runner) start(ctx context.Context, cfg string) (cluster, error) {
	dir := filepath.Join(r.o.Out, "run", cfg)
	switch baseConfig(cfg) {
	case HostKernel, HostNetstack:
		return startHost(ctx, r.o, cfg, dir)
	}
	if r.vmAccel == "" {
		a, why, err := qemu.ResolveAccel(r.o.Accel)
		if err != nil {
			return nil, err
		}
		r.vmAccel, r.vmAccelWhy = a, why
	}
	progress := func(s string) { r.progress("%s", s) }
	c, err := startVM(ctx, r.o, r.vmAccel, cfg, dir, progress)
	if err != nil && ctx.Err() == nil && r.vmAccel == qemu.AccelKVM && r.o.Accel == qemu.AccelAuto {
		r.progress("%s: KVM did not boot the guest (%s); falling back to TCG", cfg, oneLine(err.Error()))
		r.vmAccel = qemu.AccelTCG
		r.vmAccelWhy = "tcg (auto: /dev/kvm opens but a KVM guest did not become ready: " + oneLine(err.Error()) + ")"
		c, err = startVM(ctx, r.o, r.vmAccel, cfg, dir, progress)
	}
	if err != nil {
		return nil, err
	}
	return c, nil
}

// measureConfig runs one repetition of everything on cfg.
func (r *runner) measureConfig(ctx context.Context, rep int, cfg string) error {
	c := r.cls[cfg]
	var pids []int
	if c != nil {
		pids = c.pids()
		if a := c.echoAddr(); a != "" {
			// The floors over this path: an echo round trip, then a
			// stream through the same echo server.
			if err := r.measureFloor(ctx, rep, cfg, EchoWorkload, func() (bench.Result, error) {
				return bench.RawRTT(ctx, c.dialer(), a, 1, r.o.ValueSize, r.o.Duration)
			}); err != nil {
				return err
			}
			if err := r.measureFloor(ctx, rep, cfg, StreamWorkload, func() (bench.Result, error) {
				return bench.RawStream(ctx, c.dialer(), a, StreamChunk, r.o.Duration)
			}); err != nil {
				return err
			}
		}
	}
	sp := r.clients[cfg]
	for _, rate := range r.o.Rates {
		r.step++
		cpu0, cerr := cpuOf(pids)
		res, late, err := runOpenLog(ctx, sp, rate, r.o.Warmup, r.o.Duration, r.o.ValueSize)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var srvD time.Duration
		if cpu1, err := cpuOf(pids); err == nil && cerr == nil {
			srvD = cpu1 - cpu0
		}
		row := r.row(cfg, OpenLoop, -rate, cfg == Spec)
		s := Sample{Rep: rep, Errors: 1}
		if err != nil {
			s.FirstError = err.Error()
		} else {
			s = sampleOf(rep, res, perOp(srvD, res.OpsPerSec*(r.o.Warmup+r.o.Duration).Seconds()), 0)
			s.PacerLateP50us, s.PacerLateP99us = us(late.P50), us(late.P99)
		}
		row.Samples = append(row.Samples, s)
		r.progress("[%d/%d] rep %d %s %s @%d/s: %s", r.step, r.steps, rep, cfg, OpenLoop, rate, sampleLine(s))
	}
	for _, wl := range r.o.Workloads {
		for _, n := range r.o.Clients {
			r.step++
			cpu0, cerr := cpuOf(pids)
			self0 := selfCPU()
			start := time.Now()
			var res bench.Result
			var err error
			switch wl {
			case LogAppend:
				res, err = runLog(ctx, sp, n, r.o.Warmup, r.o.Duration, r.o.ValueSize)
			case KVPut:
				res, err = runKV(ctx, sp, n, r.o.Warmup, r.o.Duration, r.o.ValueSize)
			default:
				res, err = bench.Run(ctx, bench.Config{Spaces: []worm.Space{sp}, Workload: bench.Workload(wl), Clients: n,
					Duration: r.o.Duration, Warmup: r.o.Warmup, ValueSize: r.o.ValueSize})
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			// CPU is sampled around warm-up and measurement alike, and
			// divided by the operations of the whole window, estimated
			// from the measured rate.
			window := r.o.Warmup + r.o.Duration
			selfD := selfCPU() - self0
			var srvD time.Duration
			if cpu1, err := cpuOf(pids); err == nil && cerr == nil {
				srvD = cpu1 - cpu0
			}
			row := r.row(cfg, wl, n, cfg == Spec)
			var s Sample
			if err != nil {
				s = Sample{Rep: rep, Errors: 1, FirstError: err.Error()}
			} else {
				opsWindow := res.OpsPerSec * window.Seconds()
				s = sampleOf(rep, res, perOp(srvD, opsWindow), perOp(selfD, opsWindow))
				if cpus := r.rep.Env.CPUs; cpus > 0 && (srvD > 0 || cfg == Spec) {
					s.CPUBusy = (srvD + selfD).Seconds() / (time.Since(start).Seconds() * float64(cpus))
				}
			}
			row.Samples = append(row.Samples, s)
			r.progress("[%d/%d] rep %d %s %s c=%d: %s", r.step, r.steps, rep, cfg, wl, n, sampleLine(s))
		}
	}
	return nil
}

func perOp(d time.Duration, ops float64) float64 {
	if ops <= 0 {
		return 0
	}
	return float64(d.Microseconds()) / ops
}

func sampleOf(rep int, res bench.Result, srv, self float64) Sample {
	return Sample{Rep: rep, OpsPerSec: res.OpsPerSec, P50us: us(res.Latency.P50), P99us: us(res.Latency.P99),
		ServerCPUus: srv, ClientCPUus: self, Ops: res.Ops, Errors: res.Errors, FirstError: res.FirstError}
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }

// measureFloor takes one sample of the raw floor wl on cfg by run; it
// fails only when ctx ends (a failed measurement is a sample with its
// error). The bulk floor's throughput is recorded in MB/s each way.
func (r *runner) measureFloor(ctx context.Context, rep int, cfg, wl string, run func() (bench.Result, error)) error {
	r.step++
	res, err := run()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	s := Sample{Rep: rep}
	if err != nil {
		s.Errors, s.FirstError = 1, err.Error()
	} else {
		s = sampleOf(rep, res, 0, 0)
	}
	line := sampleLine
	if wl == StreamWorkload {
		s.OpsPerSec = res.OpsPerSec * StreamChunk / 1e6
		line = streamLine
	}
	row := r.row(cfg, wl, 1, true)
	row.Samples = append(row.Samples, s)
	r.progress("[%d/%d] rep %d %s %s: %s", r.step, r.steps, rep, cfg, wl, line(s))
	return nil
}

// streamLine is sampleLine for a bulk floor sample (ops/s are MB/s).
func streamLine(s Sample) string {
	if s.Ops == 0 && s.FirstError != "" {
		return "FAILED: " + oneLine(s.FirstError)
	}
	return fmt.Sprintf("%.1f MB/s each way, %d KiB chunk back in p50=%.1fµs p99=%.1fµs", s.OpsPerSec, StreamChunk>>10, s.P50us, s.P99us)
}

func sampleLine(s Sample) string {
	if s.Ops == 0 && s.FirstError != "" {
		return "FAILED: " + oneLine(s.FirstError)
	}
	l := fmt.Sprintf("%.0f ops/s p50=%.1fµs p99=%.1fµs", s.OpsPerSec, s.P50us, s.P99us)
	if s.ServerCPUus > 0 {
		l += fmt.Sprintf(" server-cpu=%.1fµs/op", s.ServerCPUus)
	}
	if s.Errors > 0 {
		l += fmt.Sprintf(" errors=%d (%s)", s.Errors, oneLine(s.FirstError))
	}
	return l
}

// finish computes medians and ratios.
func (r *runner) finish() {
	for _, k := range r.order {
		x := r.rows[k]
		var tp, p50, p99, sc, cc, busy []float64
		for _, s := range x.Samples {
			x.Errors += s.Errors
			if s.Ops == 0 {
				continue
			}
			tp = append(tp, s.OpsPerSec)
			p50 = append(p50, s.P50us)
			p99 = append(p99, s.P99us)
			sc = append(sc, s.ServerCPUus)
			cc = append(cc, s.ClientCPUus)
			busy = append(busy, s.CPUBusy)
		}
		x.OpsPerSec, x.P50us, x.P99us, x.ServerCPU, x.ClientCPU = statOf(tp), statOf(p50), statOf(p99), statOf(sc), statOf(cc)
		x.CPUBusy = statOf(busy)
	}
	// Report order: by workload, clients, then configuration order.
	wlOrder := append(append([]string{EchoWorkload, StreamWorkload}, Workloads...), OpenLoop)
	var rows []Row
	for _, k := range r.order {
		rows = append(rows, *r.rows[k])
	}
	sort.SliceStable(rows, func(i, j int) bool {
		a, b := rows[i], rows[j]
		if a.Workload != b.Workload {
			return slices.Index(wlOrder, a.Workload) < slices.Index(wlOrder, b.Workload)
		}
		if a.Clients != b.Clients {
			return a.Clients < b.Clients
		}
		if a.Rate != b.Rate {
			return a.Rate < b.Rate
		}
		return r.configRank(a.Config) < r.configRank(b.Config)
	})
	ref := map[string]Row{}
	for _, x := range rows {
		if x.Config == HostKernel || x.Config == VMKernel {
			ref[fmt.Sprintf("%s|%s|%d|%d", x.Config, x.Workload, x.Clients, x.Rate)] = x
		}
	}
	div := func(a, b float64) float64 {
		if a == 0 || b == 0 {
			return 0
		}
		return a / b
	}
	for i := range rows {
		x := &rows[i]
		kernelPeer := map[string]string{HostNetstack: HostKernel, VMNetstack: VMKernel}[baseConfig(x.Config)]
		if k, ok := ref[fmt.Sprintf("%s|%s|%d|%d", kernelPeer, x.Workload, x.Clients, x.Rate)]; ok {
			x.StackTputRatio = div(x.OpsPerSec.Median, k.OpsPerSec.Median)
			x.StackP50Ratio = div(x.P50us.Median, k.P50us.Median)
		}
		b, ok := ref[fmt.Sprintf("%s|%s|%d|%d", HostKernel, x.Workload, x.Clients, x.Rate)]
		if !ok {
			continue
		}
		x.TputRatio = div(x.OpsPerSec.Median, b.OpsPerSec.Median)
		x.P50Ratio = div(x.P50us.Median, b.P50us.Median)
		x.P99Ratio = div(x.P99us.Median, b.P99us.Median)
		x.CPURatio = div(x.ServerCPU.Median, b.ServerCPU.Median)
	}
	r.rep.Rows = rows
	r.rep.Goals = checkGoals(rows)
}

// configRank orders rows' configurations: the spec floor first, then as
// configRank (package level) says.
func (r *runner) configRank(cfg string) int {
	if cfg == Spec {
		return -1
	}
	return configRank(r.o.Configs, cfg)
}
