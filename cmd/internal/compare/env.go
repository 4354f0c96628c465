package compare

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wormspace/wormspace/netstack"
	"github.com/wormspace/wormspace/qemu"
	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/bench"
)

// Env is the environment a run measured.
type Env struct {
	CPUModel string `json:"cpu_model"`
	// CPUs is how many CPUs the run could use (its affinity mask, which
	// every process it starts inherits); CPUsOnline how many the machine
	// has. Affinity lists the usable ones ("0-1"); a run started under
	// `taskset -c 0` has every client and server share one CPU, which
	// takes the placement of the processes out of latency at low
	// concurrency (see README, Performance).
	CPUs       int    `json:"cpus"`
	CPUsOnline int    `json:"cpus_online"`
	Affinity   string `json:"cpu_affinity"`
	// Accel is what VM configurations use (or would use): kvm or tcg.
	Accel         string           `json:"accel"`
	AccelWhy      string           `json:"accel_why"`
	HostKernel    string           `json:"host_kernel"`
	GuestKernel   string           `json:"guest_kernel,omitempty"`
	ImageBytes    map[string]int64 `json:"image_bytes,omitempty"`
	QEMU          string           `json:"qemu,omitempty"`
	NetstackKnobs json.RawMessage  `json:"netstack_knobs"`
	// EchoKnobs is WORM_NETSTACK_KNOBS when set and no -netstack-knobs
	// was given: the host echo floor helper honours it, wormd does not.
	EchoKnobs   string `json:"echo_knobs_override,omitempty"`
	GoVersion   string `json:"go_version"`
	GitRevision string `json:"git_revision"`
	Hostname    string `json:"hostname"`
	LoadAvg     string `json:"loadavg_at_start"`
}

func captureEnv(o *Options, cls map[string]cluster) Env {
	e := Env{CPUs: runtime.NumCPU(), CPUsOnline: runtime.NumCPU(), GoVersion: runtime.Version()}
	var mask unix.CPUSet
	if err := unix.SchedGetaffinity(0, &mask); err == nil {
		e.Affinity, e.CPUs = cpuList(&mask), mask.Count()
	}
	if b, err := os.ReadFile("/sys/devices/system/cpu/online"); err == nil {
		if n := countCPUList(strings.TrimSpace(string(b))); n > 0 {
			e.CPUsOnline = n
		}
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				e.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		e.HostKernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		e.LoadAvg = strings.TrimSpace(string(b))
	}
	e.Hostname, _ = os.Hostname()
	a, why, err := qemu.ResolveAccel(o.Accel)
	if err != nil {
		e.Accel, e.AccelWhy = "none", err.Error()
	} else {
		e.Accel, e.AccelWhy = string(a), why
	}
	// Every netstack of the run (wormds, guests, the echo floor) runs
	// DefaultKnobs with o.NetstackKnobs over them (checked in defaults).
	k, _ := netstack.ParseKnobs(o.NetstackKnobs)
	e.NetstackKnobs = json.RawMessage(k.String())
	if o.NetstackKnobs == "" {
		e.EchoKnobs = os.Getenv("WORM_NETSTACK_KNOBS")
	}
	if out, err := exec.Command("git", "rev-parse", "HEAD").Output(); err == nil {
		e.GitRevision = strings.TrimSpace(string(out))
		if st, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(strings.TrimSpace(string(st))) > 0 {
			e.GitRevision += "-dirty"
		}
	} else {
		e.GitRevision = "unknown (no git checkout)"
	}
	vms := false
	for name := range cls {
		if b := baseConfig(name); b == VMKernel || b == VMNetstack {
			vms = true
		}
	}
	if _, err := os.Stat(filepath.Join(o.ImageDir, "manifest.json")); err == nil {
		var m struct {
			Kernel struct {
				Release string `json:"release"`
				Package string `json:"package"`
				Version string `json:"version"`
			} `json:"kernel"`
		}
		if b, err := os.ReadFile(filepath.Join(o.ImageDir, "manifest.json")); err == nil && json.Unmarshal(b, &m) == nil && vms {
			e.GuestKernel = fmt.Sprintf("%s (%s %s)", m.Kernel.Release, m.Kernel.Package, m.Kernel.Version)
		}
	}
	if vms {
		e.ImageBytes = map[string]int64{}
		for _, f := range []string{qemu.KernelFile, qemu.InitrdFile} {
			if st, err := os.Stat(filepath.Join(o.ImageDir, f)); err == nil {
				e.ImageBytes[f] = st.Size()
			}
		}
		if out, err := exec.Command("qemu-system-x86_64", "--version").Output(); err == nil {
			e.QEMU = strings.SplitN(strings.TrimSpace(string(out)), "\n", 2)[0]
		}
	}
	return e
}

// Profile is a pprof capture of one acceptor under load.
type Profile struct {
	Config   string `json:"config"`
	Workload string `json:"workload"`
	Clients  int    `json:"clients"`
	Kind     string `json:"kind"` // cpu, allocs
	File     string `json:"file"`
	Top      string `json:"top,omitempty"` // `go tool pprof -top` when go is available
	Error    string `json:"error,omitempty"`
}

// profile captures CPU and allocation profiles of acceptor 1 of each host
// configuration while ProfileWorkload runs.
func (r *runner) profile(ctx context.Context) {
	dir := filepath.Join(r.o.Out, "pprof")
	os.MkdirAll(dir, 0o755)
	for _, cfg := range r.o.Configs {
		if b := baseConfig(cfg); b != HostKernel && b != HostNetstack {
			continue
		}
		c, ok := r.cls[cfg]
		if !ok || c.pprofBase(0) == "" {
			continue
		}
		hc := &http.Client{Transport: &http.Transport{DialContext: c.dialer().DialContext}}
		secs := int(r.o.ProfileFor.Seconds())
		if secs < 1 {
			secs = 1
		}
		r.progress("%s: profiling acceptor 1 under %s c=%d for %ds", cfg, r.o.ProfileWorkload, r.o.ProfileClients, secs)
		sp := r.clients[cfg]
		done := make(chan struct{})
		go func() {
			defer close(done)
			d := time.Duration(secs)*time.Second + 2*time.Second
			switch r.o.ProfileWorkload {
			case LogAppend:
				runLog(ctx, sp, r.o.ProfileClients, 0, d, r.o.ValueSize)
			case KVPut:
				runKV(ctx, sp, r.o.ProfileClients, 0, d, r.o.ValueSize)
			default:
				bench.Run(ctx, bench.Config{Spaces: []worm.Space{sp}, Workload: bench.Workload(r.o.ProfileWorkload),
					Clients: r.o.ProfileClients, Duration: d, Warmup: -1, ValueSize: r.o.ValueSize})
			}
		}()
		sleepCtx(ctx, 500*time.Millisecond)
		for _, kind := range []string{"cpu", "allocs"} {
			url := fmt.Sprintf("%s/profile?seconds=%d", c.pprofBase(0), secs)
			if kind == "allocs" {
				url = c.pprofBase(0) + "/allocs"
			}
			p := Profile{Config: cfg, Workload: r.o.ProfileWorkload, Clients: r.o.ProfileClients, Kind: kind,
				File: filepath.Join("pprof", fmt.Sprintf("%s-%s.pb.gz", cfg, kind))}
			if err := fetch(ctx, hc, url, filepath.Join(r.o.Out, p.File)); err != nil {
				p.Error = err.Error()
			} else {
				p.Top = pprofTop(filepath.Join(r.o.Out, p.File), kind)
			}
			r.rep.Profiles = append(r.rep.Profiles, p)
		}
		<-done
	}
}

func fetch(ctx context.Context, hc *http.Client, url, file string) error {
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// pprofTop summarises a profile with `go tool pprof -top` if the go
// command is at hand ("" otherwise).
func pprofTop(file, kind string) string {
	gobin := goCommand()
	if gobin == "" {
		return ""
	}
	args := []string{"tool", "pprof", "-top", "-nodecount=30"}
	if kind == "allocs" {
		args = append(args, "-sample_index=alloc_space")
	}
	out, err := exec.Command(gobin, append(args, file)...).Output()
	if err != nil {
		return ""
	}
	return string(out)
}

// cpuList formats a CPU set as the kernel's list syntax ("0-1,4").
func cpuList(m *unix.CPUSet) string {
	var parts []string
	for i := 0; i < len(m)*64; i++ {
		if !m.IsSet(i) {
			continue
		}
		j := i
		for j+1 < len(m)*64 && m.IsSet(j+1) {
			j++
		}
		if j == i {
			parts = append(parts, strconv.Itoa(i))
		} else {
			parts = append(parts, strconv.Itoa(i)+"-"+strconv.Itoa(j))
		}
		i = j
	}
	return strings.Join(parts, ",")
}

// countCPUList counts the CPUs of a kernel CPU list ("0-1,4": 3); 0 if it
// does not parse.
func countCPUList(s string) int {
	n := 0
	for _, r := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(r, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return 0
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return 0
			}
		}
		n += b - a + 1
	}
	return n
}

// goCommand finds the go command: on PATH, under $GOROOT, or where the
// Makefile's set-up puts it ("" if none). runtime.GOROOT is no help: the
// binaries are built with -trimpath, which leaves it empty.
func goCommand() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	for _, root := range []string{os.Getenv("GOROOT"), "/usr/local/go"} {
		if root == "" {
			continue
		}
		if p := filepath.Join(root, "bin", "go"); isExecutable(p) {
			return p
		}
	}
	return ""
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}
