package compare

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"image/png"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wormspace/wormspace/qemu"
	"github.com/wormspace/wormspace/worm/localcluster"
)

func TestStatOf(t *testing.T) {
	s := statOf([]float64{5, 1, 3})
	if s != (Stat{Median: 3, Min: 1, Max: 5}) {
		t.Fatalf("odd: %+v", s)
	}
	s = statOf([]float64{4, 1, 3, 10})
	if s != (Stat{Median: 3.5, Min: 1, Max: 10}) {
		t.Fatalf("even: %+v", s)
	}
}

// TestProcCPU checks /proc/PID/stat parsing against getrusage for this
// process after burning some CPU.
func TestProcCPU(t *testing.T) {
	// Burn 200ms of CPU (however long that takes on a loaded machine).
	base := selfCPU()
	x := 0
	for deadline := time.Now().Add(20 * time.Second); selfCPU()-base < 200*time.Millisecond && time.Now().Before(deadline); {
		x++
	}
	got, err := procCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	want := selfCPU()
	// /proc counts in 10ms ticks, getrusage more finely.
	if got < want-50*time.Millisecond || got > want+20*time.Millisecond || got < 150*time.Millisecond {
		t.Fatalf("procCPU %v, getrusage %v (loop %d)", got, want, x)
	}
	if _, err := cpuOf([]int{os.Getpid(), 1 << 30}); err == nil {
		t.Fatal("cpuOf of a missing process: no error")
	}
}

// repoRoot finds the module root (for the boot image under build/image).
func repoRoot(t *testing.T) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..")
}

// e2eVariant is the configuration variant the end-to-end run measures.
const e2eVariant = HostNetstack + VariantSep + "busy_poll_us=20+congestion_control=reno"

// e2eConfigs picks the configurations this machine can run: host-kernel
// always; host-netstack and a variant of it with root and /dev/net/tun;
// the VM ones when
// WORM_COMPARE_VM=1 and the image and TAP networking are there (they add
// boot time and, under TCG, slow runs).
func e2eConfigs(t *testing.T, imageDir string) []string {
	cfgs := []string{HostKernel}
	if os.Geteuid() != 0 {
		t.Logf("host-netstack left out: not root (needs a network namespace and TAP devices)")
	} else if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Logf("host-netstack left out: %v", err)
	} else {
		// A variant of it with knobs of its own, over the run's
		// (congestion_control=cubic below): measured beside its base.
		cfgs = append(cfgs, HostNetstack, e2eVariant)
	}
	if os.Getenv("WORM_COMPARE_VM") == "0" {
		t.Logf("VM configurations left out (WORM_COMPARE_VM=0)")
		return cfgs
	}
	if err := qemu.CanUseTAP(); err != nil {
		t.Logf("VM configurations left out: %v", err)
		return cfgs
	}
	if _, err := os.Stat(filepath.Join(imageDir, qemu.InitrdFile)); err != nil {
		t.Logf("VM configurations left out: no image in %s (make image)", imageDir)
		return cfgs
	}
	return append(cfgs, VMKernel, VMNetstack)
}

// TestCompareQuickEndToEnd builds worm and wormd, runs `worm compare
// -quick` on the configurations this machine supports, and checks that
// every configuration produced figures for every workload and client
// count, and that the JSON, CSV, SVG and PNG files parse.
func TestCompareQuickEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds binaries and runs clusters")
	}
	bin := t.TempDir()
	if _, err := localcluster.Build(bin); err != nil {
		t.Fatal(err)
	}
	root := repoRoot(t)
	imageDir := filepath.Join(root, "build", "image")
	cfgs := e2eConfigs(t, imageDir)
	out := filepath.Join(t.TempDir(), "report")
	workloads := []string{"write", "read", "capture-write", "log-append", "kv-put"}
	clients := []int{1, 4}
	cmd := exec.Command(filepath.Join(bin, "worm"), "compare", "-quick",
		"-configs", strings.Join(cfgs, ","), "-workloads", strings.Join(workloads, ","),
		"-clients", "1,4", "-rates", "300", "-duration", "300ms", "-warmup", "100ms", "-reps", "2",
		// A knob override reaches every netstack of the run (host wormds
		// by -netstack-knobs, guests by worm.knobs): a bad one would stop
		// them, and the report must record it.
		"-netstack-knobs", "congestion_control=cubic",
		"-image", imageDir, "-out", out)
	cmd.Env = append(os.Environ(), "WORMD="+filepath.Join(bin, "wormd"))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("worm compare: %v\nstderr:\n%s\nstdout:\n%s", err, stderr.String(), stdout.String())
	}
	t.Logf("worm compare -quick (%s) took %v\n%s", strings.Join(cfgs, ","), time.Since(start).Round(time.Millisecond), stdout.String())
	if !strings.Contains(stdout.String(), "host-kernel") || !strings.Contains(stderr.String(), "[1/") {
		t.Fatalf("no table or no progress lines:\n%s\n%s", stdout.String(), stderr.String())
	}

	// report.json: every configuration ran and has figures everywhere.
	b, err := os.ReadFile(filepath.Join(out, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rep Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("report.json: %v", err)
	}
	if rep.Env.GoVersion == "" || rep.Env.CPUModel == "" || rep.Env.HostKernel == "" || rep.Env.Accel == "" || len(rep.Env.NetstackKnobs) == 0 {
		t.Errorf("environment incomplete: %+v", rep.Env)
	}
	var knobs struct {
		CC string `json:"congestion_control"`
	}
	if err := json.Unmarshal(rep.Env.NetstackKnobs, &knobs); err != nil || knobs.CC != "cubic" {
		t.Errorf("report's netstack knobs %s (%v): the override is not recorded", rep.Env.NetstackKnobs, err)
	}
	status := map[string]string{}
	for _, c := range rep.Configs {
		status[c.Name] = c.Status
		// Each netstack configuration records the knobs its wormds
		// were started with: the run's, and a variant's on top.
		want := map[string]string{HostNetstack: `"busy_poll_us":0,`, e2eVariant: `"busy_poll_us":20,`}[c.Name]
		if want == "" {
			continue
		}
		cc := `"congestion_control":"cubic"`
		if c.Name == e2eVariant {
			cc = `"congestion_control":"reno"`
		}
		got, _ := json.Marshal(c.Info["netstack_knobs"])
		if !strings.Contains(string(got), want) || !strings.Contains(string(got), cc) {
			t.Errorf("%s: its wormds' knobs %s, want %s and %s", c.Name, got, want, cc)
		}
	}
	for _, c := range append([]string{Spec}, cfgs...) {
		if status[c] != "ok" {
			t.Errorf("configuration %s: status %q", c, status[c])
		}
	}
	type key struct {
		cfg, wl string
		n       int
	}
	rows := map[key]Row{}
	for _, x := range rep.Rows {
		rows[key{x.Config, x.Workload, x.Clients}] = x
	}
	for _, c := range append([]string{Spec}, cfgs...) {
		for _, wl := range workloads {
			for _, n := range clients {
				x, ok := rows[key{c, wl, n}]
				switch {
				case !ok:
					t.Errorf("%s %s c=%d: no row", c, wl, n)
				case len(x.Samples) != 2:
					t.Errorf("%s %s c=%d: %d samples, want 2 reps", c, wl, n, len(x.Samples))
				case x.OpsPerSec.Median <= 0 || x.P50us.Median <= 0 || x.P99us.Median < x.P50us.Median:
					t.Errorf("%s %s c=%d: no figures: %+v", c, wl, n, x)
				case c != Spec && x.ServerCPU.Median <= 0:
					t.Errorf("%s %s c=%d: no server CPU per op", c, wl, n)
				case x.CPUBusy.Median <= 0 || x.CPUBusy.Max > 1.1:
					// A share of the CPUs: above 1 (with room for
					// /proc's 10 ms ticks) it counted something twice.
					t.Errorf("%s %s c=%d: CPUs busy %+v, want a share in (0, 1]", c, wl, n, x.CPUBusy)
				case c == HostKernel && (x.TputRatio != 1 || x.P50Ratio != 1):
					t.Errorf("%s %s c=%d: reference ratios %v %v", c, wl, n, x.TputRatio, x.P50Ratio)
				case c != HostKernel && x.TputRatio <= 0:
					t.Errorf("%s %s c=%d: no ratio to host-kernel", c, wl, n)
				case baseConfig(c) == HostNetstack && x.StackTputRatio <= 0:
					t.Errorf("%s %s c=%d: no netstack/kernel ratio", c, wl, n)
				}
				if ok && x.Errors > 0 {
					t.Errorf("%s %s c=%d: %d errors (%s)", c, wl, n, x.Errors, x.Samples[0].FirstError)
				}
			}
		}
		if x, ok := rows[key{c, OpenLoop, 0}]; !ok || x.Rate != 300 || x.OpsPerSec.Median <= 0 || x.P50us.Median <= 0 {
			t.Errorf("%s: no open-loop row at 300/s: %+v", c, x)
		} else if s := x.Samples[0]; s.PacerLateP50us <= 0 || s.PacerLateP99us < s.PacerLateP50us || s.PacerLateP50us > x.P50us.Median {
			// The pacer's lateness is part of each latency.
			t.Errorf("%s: open loop's pacer lateness p50 %v p99 %v µs (latency p50 %v)", c, s.PacerLateP50us, s.PacerLateP99us, x.P50us.Median)
		}
		if c != Spec {
			if x, ok := rows[key{c, EchoWorkload, 1}]; !ok || x.P50us.Median <= 0 || x.Errors > 0 {
				t.Errorf("%s: no raw echo floor: %+v", c, x)
			}
			// The bulk floor: MB/s through the same echo server, with
			// its ratios like every throughput's.
			x, ok := rows[key{c, StreamWorkload, 1}]
			switch {
			case !ok || len(x.Samples) != 2 || x.OpsPerSec.Median <= 0 || x.P50us.Median <= 0 || x.Errors > 0:
				t.Errorf("%s: no bulk floor: %+v", c, x)
			case c != HostKernel && x.TputRatio <= 0:
				t.Errorf("%s: bulk floor without a ratio to host-kernel: %+v", c, x)
			case c == HostKernel && x.OpsPerSec.Median < 10:
				t.Errorf("%s: bulk floor %.1f MB/s over loopback: not MB/s?", c, x.OpsPerSec.Median)
			}
		}
	}

	// The goal checks: one per host-netstack configuration and load, over
	// every wormd workload; the tables print them.
	goals := map[string]GoalCheck{}
	for _, g := range rep.Goals {
		goals[fmt.Sprintf("%s|%d|%d", g.Config, g.Clients, g.Rate)] = g
	}
	for _, c := range cfgs {
		if baseConfig(c) != HostNetstack {
			continue
		}
		for _, n := range clients {
			g, ok := goals[fmt.Sprintf("%s|%d|0", c, n)]
			if !ok || g.Workloads != len(workloads) || g.ThroughputMin <= 0 || g.ThroughputMax < g.ThroughputMin || g.P50Min <= 0 || g.P50Max < g.P50Min {
				t.Errorf("%s c=%d: goal check %+v", c, n, g)
			}
		}
		if g, ok := goals[c+"|0|300"]; !ok || g.Workloads != 1 || g.P50Min <= 0 || g.ThroughputMin != 0 {
			t.Errorf("%s @300/s: goal check %+v", c, g)
		}
	}
	if len(rep.Goals) != len(goals) {
		t.Errorf("goal checks %+v: duplicates", rep.Goals)
	}

	// results.csv: header and one well-formed line per row.
	f, err := os.Open(filepath.Join(out, "results.csv"))
	if err != nil {
		t.Fatal(err)
	}
	recs, err := csv.NewReader(f).ReadAll()
	f.Close()
	if err != nil {
		t.Fatalf("results.csv: %v", err)
	}
	if len(recs) != len(rep.Rows)+1 || !slices.Equal(recs[0], CSVHeader) {
		t.Fatalf("results.csv: %d records (want %d), header %v", len(recs), len(rep.Rows)+1, recs[0])
	}
	for _, r := range recs[1:] {
		if len(r) != len(CSVHeader) {
			t.Fatalf("csv row %v: %d columns", r, len(r))
		}
		if v, err := strconv.ParseFloat(r[6], 64); err != nil || v <= 0 {
			t.Errorf("csv row %v: throughput %q", r, r[6])
		}
	}

	// Plots: every SVG is XML, every PNG decodes, and both exist per chart.
	var svgs, pngs int
	for _, name := range rep.Files {
		p := filepath.Join(out, name)
		switch filepath.Ext(name) {
		case ".svg":
			svgs++
			checkSVG(t, p)
		case ".png":
			pngs++
			pf, err := os.Open(p)
			if err != nil {
				t.Fatal(err)
			}
			img, err := png.Decode(pf)
			pf.Close()
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if img.Bounds().Dx() < 100 {
				t.Errorf("%s: %v", name, img.Bounds())
			}
		}
	}
	if svgs != len(workloads)+3 || pngs != svgs {
		t.Errorf("%d SVG and %d PNG plots, want %d each", svgs, pngs, len(workloads)+3)
	}
	for _, name := range []string{"table.txt", "table.md"} {
		b, err := os.ReadFile(filepath.Join(out, name))
		if err != nil || len(b) == 0 {
			t.Errorf("%s: %v", name, err)
		}
		if !bytes.Contains(b, []byte("% |")) && !bytes.Contains(b, []byte("%  ")) {
			t.Errorf("%s: no CPUs busy column with a percentage", name)
		}
		if !bytes.Contains(b, []byte("goals, wormd on netstack")) || !bytes.Contains(b, []byte(HostNetstack+", 1 client (")) {
			t.Errorf("%s: no goal checks", name)
		}
	}
}

func checkSVG(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d := xml.NewDecoder(f)
	root := ""
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: not XML: %v", path, err)
		}
		if se, ok := tok.(xml.StartElement); ok && root == "" {
			root = se.Name.Local
		}
	}
	if root != "svg" {
		t.Fatalf("%s: root element %q", path, root)
	}
}

// TestCompareInterruptCleansUp sends SIGINT to `worm compare` in the
// middle of a measurement and checks that it exits saying so and that no
// process it started (wormd, the echo helper) survives; their namespace
// (unnamed) and TAPs go with them.
func TestCompareInterruptCleansUp(t *testing.T) {
	if testing.Short() {
		t.Skip("builds binaries and runs clusters")
	}
	bin := t.TempDir()
	if _, err := localcluster.Build(bin); err != nil {
		t.Fatal(err)
	}
	cfgs := e2eConfigs(t, "/nonexistent")
	cmd := exec.Command(filepath.Join(bin, "worm"), "compare", "-configs", strings.Join(cfgs, ","),
		"-workloads", "write", "-clients", "4", "-duration", "30s", "-warmup", "100ms", "-reps", "1",
		"-out", filepath.Join(t.TempDir(), "report"))
	cmd.Env = append(os.Environ(), "WORMD="+filepath.Join(bin, "wormd"))
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Wait until the last configuration is measuring.
	var log bytes.Buffer
	buf := make([]byte, 4096)
	last := cfgs[len(cfgs)-1]
	for !strings.Contains(log.String(), last+": up") {
		n, err := stderr.Read(buf)
		log.Write(buf[:n])
		if err != nil {
			t.Fatalf("worm compare ended early: %v\n%s", err, log.String())
		}
	}
	time.Sleep(time.Second)
	if n := ourProcs(t, bin); n < 3 {
		t.Fatalf("only %d processes of %s running before the interrupt", n, bin)
	}
	cmd.Process.Signal(os.Interrupt)
	rest, _ := io.ReadAll(stderr)
	log.Write(rest)
	err = cmd.Wait()
	if err == nil || !strings.Contains(log.String(), "interrupted") {
		t.Fatalf("after SIGINT: %v\n%s", err, log.String())
	}
	if n := ourProcs(t, bin); n != 0 {
		t.Fatalf("%d processes of %s left after the interrupt\n%s", n, bin, log.String())
	}
}

// ourProcs counts processes whose executable lies in dir.
func ourProcs(t *testing.T, dir string) int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if strings.HasPrefix(string(b), dir+string(filepath.Separator)) {
			n++
		}
	}
	return n
}

func TestCPULists(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int
	}{{"0", 1}, {"0-1", 2}, {"0-3,8,10-11", 7}, {"", 0}, {"x", 0}, {"3-1", 0}} {
		if got := countCPUList(c.in); got != c.want {
			t.Errorf("countCPUList(%q) = %d, want %d", c.in, got, c.want)
		}
	}
	var m unix.CPUSet
	for _, i := range []int{0, 1, 2, 5, 7, 8} {
		m.Set(i)
	}
	if got := cpuList(&m); got != "0-2,5,7-8" {
		t.Errorf("cpuList = %q, want 0-2,5,7-8", got)
	}
	if n := countCPUList(cpuList(&m)); n != m.Count() {
		t.Errorf("round trip counts %d of %d", n, m.Count())
	}
}

// TestEnvRecordsPinning checks that a run started pinned to one CPU says
// so: captureEnv reads the calling thread's mask, which processes started
// from it inherit.
func TestEnvRecordsPinning(t *testing.T) {
	if runtime.NumCPU() < 2 {
		t.Skip("needs 2 CPUs to pin to a subset")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var old, one unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		t.Fatal(err)
	}
	first := -1
	for i := 0; first < 0 && i < len(old)*64; i++ {
		if old.IsSet(i) {
			first = i
		}
	}
	one.Set(first)
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		t.Fatal(err)
	}
	defer unix.SchedSetaffinity(0, &old)
	e := captureEnv(&Options{Accel: qemu.AccelTCG}, nil)
	if e.Affinity != strconv.Itoa(first) || e.CPUsOnline < 2 {
		t.Fatalf("pinned to CPU %d: env says affinity %q, %d online", first, e.Affinity, e.CPUsOnline)
	}
	line := strings.SplitN(Table(&Report{Env: e}), "\n", 3)[1]
	if !strings.Contains(line, "pinned to CPU "+strconv.Itoa(first)) {
		t.Fatalf("table's env line does not say it was pinned: %q", line)
	}
}

// TestConfigVariants: a netstack configuration with knobs of its own is
// accepted, runs its base with the run's knobs and then its own, sorts
// after its base, and is described with its knobs; variants of other
// configurations, unknown knobs, empty variants and repeats are refused.
func TestConfigVariants(t *testing.T) {
	o := &Options{Out: t.TempDir(), NetstackKnobs: "congestion_control=cubic,go_procs=2",
		Configs: []string{HostNetstack + "@coalesce_acks=false+go_procs=3", HostKernel, HostNetstack, VMNetstack + "@busy_poll_us=50"}}
	if err := o.defaults(); err != nil {
		t.Fatal(err)
	}
	v := o.Configs[0]
	if baseConfig(v) != HostNetstack || variantKnobs(v) != "coalesce_acks=false,go_procs=3" {
		t.Fatalf("variant %q: base %q knobs %q", v, baseConfig(v), variantKnobs(v))
	}
	if got, want := knobsFor(o, v), "coalesce_acks=false,congestion_control=cubic,go_procs=3"; got != want {
		t.Errorf("knobsFor(variant) = %q, want %q", got, want)
	}
	if got := knobsFor(o, HostNetstack); got != o.NetstackKnobs {
		t.Errorf("knobsFor(base) = %q, want the run's %q", got, o.NetstackKnobs)
	}
	sorted := slices.Clone(o.Configs)
	slices.SortStableFunc(sorted, func(a, b string) int { return configRank(o.Configs, a) - configRank(o.Configs, b) })
	want := []string{HostKernel, HostNetstack, v, VMNetstack + "@busy_poll_us=50"}
	if !slices.Equal(sorted, want) {
		t.Errorf("report order %v, want %v", sorted, want)
	}
	if d := Describe(v); !strings.HasPrefix(d, Describe(HostNetstack)) || !strings.Contains(d, "coalesce_acks=false,go_procs=3") {
		t.Errorf("Describe(%q) = %q", v, d)
	}
	for _, bad := range []string{
		HostKernel + "@go_procs=2",                          // not a netstack configuration
		HostNetstack + "@",                                  // no knobs
		HostNetstack + "@nosuch=1",                          // unknown knob
		HostNetstack + "@dispatch=readv+coalesce_acks=true", // invalid together
		"host-netsack@go_procs=2",                           // unknown base
	} {
		o := &Options{Out: t.TempDir(), Configs: []string{bad}}
		if err := o.defaults(); err == nil || !strings.Contains(err.Error(), bad) {
			t.Errorf("configuration %q: %v, want an error naming it", bad, err)
		}
	}
	o = &Options{Out: t.TempDir(), Configs: []string{HostNetstack + "@go_procs=2", HostNetstack + "@go_procs=2"}}
	if err := o.defaults(); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("a repeated configuration: %v", err)
	}
}

// pauseRecorder is a cluster that records pause calls.
type pauseRecorder struct {
	cluster
	cfg   string
	calls *[]string
}

func (p pauseRecorder) pause(_ context.Context, paused bool) error {
	*p.calls = append(*p.calls, fmt.Sprintf("%s=%v", p.cfg, paused))
	return nil
}

// TestQuiesceAllBut checks that the configuration about to be measured
// runs alone: every other cluster paused, its own resumed, and no call
// for a cluster already in the state wanted.
func TestQuiesceAllBut(t *testing.T) {
	var calls []string
	r := &runner{cls: map[string]cluster{}, o: &Options{Progress: io.Discard}}
	for _, n := range []string{VMKernel, VMNetstack, HostKernel} {
		r.cls[n] = pauseRecorder{cfg: n, calls: &calls}
	}
	steps := []struct {
		cfg  string
		want []string
	}{
		{Spec, []string{"host-kernel=true", "vm-kernel=true", "vm-netstack=true"}},
		{VMKernel, []string{"vm-kernel=false"}},
		{VMNetstack, []string{"vm-kernel=true", "vm-netstack=false"}},
		{HostKernel, []string{"host-kernel=false", "vm-netstack=true"}},
		{"", []string{"host-kernel=true"}},
	}
	for _, s := range steps {
		calls = nil
		r.quiesceAllBut(context.Background(), s.cfg)
		if !slices.Equal(calls, s.want) {
			t.Errorf("before %q: calls %v, want %v", s.cfg, calls, s.want)
		}
	}
}
