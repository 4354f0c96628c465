package compare

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/wormspace/wormspace/netstack"
	"github.com/wormspace/wormspace/qemu"
	"github.com/wormspace/wormspace/worm/bench"
)

// The configurations, in report order. The first is the reference the
// overhead ratios divide by.
const (
	HostKernel   = "host-kernel"   // 1: wormd processes, kernel TCP over loopback
	HostNetstack = "host-netstack" // 2: wormd processes on gVisor netstack, TAPs in a namespace
	VMKernel     = "vm-kernel"     // 3: VMs from the image, guest kernel TCP
	VMNetstack   = "vm-netstack"   // 4: VMs from the image, netstack in the guest
)

// Configs lists every configuration in report order.
var Configs = []string{HostKernel, HostNetstack, VMKernel, VMNetstack}

// VariantSep separates a netstack configuration from knobs of its own: a
// variant such as "host-netstack@coalesce_acks=false" (several knobs
// joined by "+": "vm-netstack@go_procs=2+busy_poll_us=50") runs its base
// configuration with those knobs on top of the run's (Options.
// NetstackKnobs). A run measures variants beside their base, interleaved
// like any configurations, so that a knob's effect is read as a ratio
// within one run rather than between runs on a noisy machine.
const VariantSep = "@"

// baseConfig is the configuration cfg is a variant of (cfg itself when it
// is not a variant).
func baseConfig(cfg string) string {
	b, _, _ := strings.Cut(cfg, VariantSep)
	return b
}

// variantKnobs is a variant's own knobs in netstack.ParseKnobs's list
// syntax ("" for a plain configuration).
func variantKnobs(cfg string) string {
	_, v, _ := strings.Cut(cfg, VariantSep)
	return strings.ReplaceAll(v, "+", ",")
}

// knobsFor is the netstack knob overrides cfg runs with: the run's, then
// the variant's, in ParseKnobs's syntax (validated by Options.defaults).
func knobsFor(o *Options, cfg string) string {
	if variantKnobs(cfg) == "" {
		return o.NetstackKnobs
	}
	k, _ := layeredKnobs(o, cfg)
	return k.Overrides()
}

// layeredKnobs is the run's knobs with cfg's variant knobs on top.
func layeredKnobs(o *Options, cfg string) (netstack.Knobs, error) {
	k, err := netstack.ParseKnobs(o.NetstackKnobs)
	if err != nil {
		return k, err
	}
	return k.With(variantKnobs(cfg))
}

// checkConfig validates one entry of Options.Configs.
func checkConfig(o *Options, cfg string) error {
	base := baseConfig(cfg)
	if !slices.Contains(Configs, base) {
		return fmt.Errorf("compare: unknown configuration %q (want %s, or a netstack one with knobs: %s%sgo_procs=2)", cfg, strings.Join(Configs, ", "), HostNetstack, VariantSep)
	}
	if base == cfg {
		return nil
	}
	if base != HostNetstack && base != VMNetstack {
		return fmt.Errorf("compare: configuration %q: knobs are for the netstack configurations (%s, %s)", cfg, HostNetstack, VMNetstack)
	}
	if variantKnobs(cfg) == "" {
		return fmt.Errorf("compare: configuration %q: no knobs after %q", cfg, VariantSep)
	}
	if _, err := layeredKnobs(o, cfg); err != nil {
		return fmt.Errorf("compare: configuration %q: %w", cfg, err)
	}
	return nil
}

// configRank orders configurations for reports: by base in Configs
// order, a base before its variants, variants as given.
func configRank(configs []string, cfg string) int {
	base := baseConfig(cfg)
	r := slices.Index(Configs, base) * 1000
	if base != cfg {
		r += 1 + slices.Index(configs, cfg)
	}
	return r
}

// Describe says what a configuration is, for reports.
func Describe(cfg string) string {
	if v := variantKnobs(cfg); v != "" {
		return Describe(baseConfig(cfg)) + "; netstack knobs " + v
	}
	switch cfg {
	case HostKernel:
		return "3 wormd processes, kernel TCP over loopback"
	case HostNetstack:
		return "3 wormd processes on gVisor netstack, each on a TAP bridged in a private namespace; clients on the kernel stack"
	case VMKernel:
		return "3 VMs from the boot image, guest kernel TCP, TAPs on a bridge in a private namespace"
	case VMNetstack:
		return "3 VMs from the boot image, gVisor netstack in the guest (AF_PACKET on virtio-net)"
	}
	return cfg
}

// cluster is a running 3-acceptor cluster of one configuration.
type cluster interface {
	name() string
	servers() []string
	key() []byte
	dialer() bench.Dialer
	// pids are the processes whose CPU time is the cluster's cost (wormd
	// processes, or QEMU processes for VMs).
	pids() []int
	// echoAddr is a raw TCP echo server over the same path ("" if none).
	echoAddr() string
	// pprofURL returns the base URL of acceptor i's /debug/pprof ("" if
	// not served) and the http dialer to reach it.
	pprofBase(i int) string
	info() map[string]any
	// pause stops (true) or restarts (false) the cluster's use of the
	// CPU between its measurements; a no-op where idle costs nothing.
	pause(ctx context.Context, paused bool) error
	close() error
}

// wormdProc is one wormd (or echo helper) process.
type wormdProc struct {
	cmd  *exec.Cmd
	addr string
	log  string
	exit chan struct{}
}

func (p *wormdProc) pid() int { return p.cmd.Process.Pid }

func (p *wormdProc) stop() {
	select {
	case <-p.exit:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exit:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-p.exit
	}
}

// startProc starts bin args with a ready pipe on fd 3 (readyFD) or reads
// the ready line from stdout, and waits for "ready ADDR".
func startProc(ctx context.Context, start func(*exec.Cmd) error, bin string, args []string, logPath string, readyOnStdout bool) (*wormdProc, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer pr.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stderr = logf
	if readyOnStdout {
		cmd.Stdout = pw
	} else {
		cmd.Stdout = logf
		cmd.ExtraFiles = []*os.File{pw}
	}
	cmd.Env = append(os.Environ(), "WORM_KEY=", "WORM_KEY_FILE=")
	// Own process group (a terminal's Ctrl-C reaches only the harness,
	// which stops these itself); die with the starting thread.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := start(cmd); err != nil {
		pw.Close()
		return nil, fmt.Errorf("start %s: %w", filepath.Base(bin), err)
	}
	pw.Close()
	p := &wormdProc{cmd: cmd, log: logPath, exit: make(chan struct{})}
	go func() { cmd.Wait(); close(p.exit) }()
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(pr).ReadString('\n')
		line <- s
	}()
	select {
	case s := <-line:
		if a, ok := strings.CutPrefix(strings.TrimSpace(s), "ready "); ok {
			p.addr = a
			return p, nil
		}
		<-p.exit
		b, _ := os.ReadFile(logPath)
		return nil, fmt.Errorf("%s exited before serving; %s:\n%s", filepath.Base(bin), logPath, lastLines(string(b), 8))
	case <-time.After(30 * time.Second):
		p.cmd.Process.Kill()
		return nil, fmt.Errorf("%s not ready after 30s; log %s", filepath.Base(bin), logPath)
	case <-ctx.Done():
		p.cmd.Process.Kill()
		<-p.exit
		return nil, ctx.Err()
	}
}

func lastLines(s string, n int) string {
	ls := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(ls) > n {
		ls = ls[len(ls)-n:]
	}
	return strings.Join(ls, "\n")
}

func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ps []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ps = append(ps, l.Addr().(*net.TCPAddr).Port)
	}
	return ps, nil
}

func newKey(dir string) ([]byte, string, error) {
	k := make([]byte, 32)
	rand.Read(k)
	p := filepath.Join(dir, "cluster.key")
	return k, p, os.WriteFile(p, []byte(hex.EncodeToString(k)+"\n"), 0o600)
}

// hostCluster is configuration 1 or 2: wormd processes on this machine.
type hostCluster struct {
	cfg     string
	dir     string
	k       []byte
	procs   []*wormdProc
	echo    *wormdProc
	metrics []string
	ns      *nsWorker // HostNetstack only
	boot    time.Duration
}

// hostSubnet is configuration 2's network inside its namespace: the
// bridge (kernel side, where clients dial from) is .1, the echo floor .9,
// wormd i is .(10+i).
var hostSubnet = netip.MustParsePrefix("10.78.0.0/24")

func subnetAddr(last byte) netip.Addr {
	a := hostSubnet.Addr().As4()
	a[3] = last
	return netip.AddrFrom4(a)
}

func startHost(ctx context.Context, o *Options, cfg, dir string) (_ *hostCluster, err error) {
	c := &hostCluster{cfg: cfg, dir: dir}
	defer func() {
		if err != nil {
			c.close()
		}
	}()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	k, keyFile, err := newKey(dir)
	if err != nil {
		return nil, err
	}
	c.k = k
	start := func(cmd *exec.Cmd) error { return cmd.Start() }
	if baseConfig(cfg) == HostNetstack {
		if c.ns, err = newNSWorker(); err != nil {
			return nil, err
		}
		if err := c.ns.setupBridge("wcbr0", netip.PrefixFrom(subnetAddr(1), hostSubnet.Bits())); err != nil {
			return nil, err
		}
		start = c.ns.start
	}
	ports, err := freePorts(6)
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	var mu sync.Mutex
	errs := make([]error, 3)
	c.procs = make([]*wormdProc, 3)
	c.metrics = make([]string, 3)
	var wg sync.WaitGroup
	for i := range 3 {
		id := i + 1
		args := []string{"-id", strconv.Itoa(id), "-data", filepath.Join(dir, fmt.Sprintf("wormd-%d", id)),
			"-key-file", keyFile, "-ready-fd", "3", "-log-level", "warn"}
		if o.Volatile {
			args = append(args, "-volatile")
		}
		metrics := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[3+i]))
		if o.Pprof {
			args = append(args, "-metrics", metrics, "-pprof")
		}
		tap := fmt.Sprintf("wctap%d", id)
		if baseConfig(cfg) == HostNetstack {
			a := subnetAddr(byte(10 + id))
			args = append(args, "-stack", "netstack", "-tap", tap,
				"-addr", netip.PrefixFrom(a, hostSubnet.Bits()).String(),
				"-listen", netip.AddrPortFrom(a, 7070).String())
			if kn := knobsFor(o, cfg); kn != "" {
				args = append(args, "-netstack-knobs", kn)
			}
		} else {
			args = append(args, "-listen", net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[i])))
		}
		wg.Go(func() {
			p, err := startProc(ctx, start, o.Wormd, args, filepath.Join(dir, fmt.Sprintf("wormd-%d.log", id)), false)
			if err == nil && baseConfig(cfg) == HostNetstack {
				// wormd created its TAP; the host side joins it to
				// the bridge.
				err = c.ns.attach(tap, "wcbr0")
			}
			mu.Lock()
			c.procs[i], errs[i] = p, err
			if o.Pprof {
				c.metrics[i] = metrics
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	c.boot = time.Since(t0)
	// The raw floor: an echo in another process over the same path.
	if len(o.EchoCmd) > 0 {
		args := append([]string{}, o.EchoCmd[1:]...)
		if baseConfig(cfg) == HostNetstack {
			a := subnetAddr(9)
			args = append(args, "-stack", "netstack", "-tap", "wcecho", "-addr", netip.PrefixFrom(a, hostSubnet.Bits()).String(),
				"-listen", netip.AddrPortFrom(a, 7000).String())
			if kn := knobsFor(o, cfg); kn != "" {
				args = append(args, "-knobs", kn)
			}
		} else {
			args = append(args, "-listen", "127.0.0.1:0")
		}
		p, err := startProc(ctx, start, o.EchoCmd[0], args, filepath.Join(dir, "echo.log"), true)
		if err != nil {
			return nil, fmt.Errorf("echo floor: %w", err)
		}
		c.echo = p
		if baseConfig(cfg) == HostNetstack {
			if err := c.ns.attach("wcecho", "wcbr0"); err != nil {
				return nil, err
			}
		}
	}
	return c, nil
}

func (c *hostCluster) name() string { return c.cfg }
func (c *hostCluster) servers() []string {
	var s []string
	for _, p := range c.procs {
		s = append(s, p.addr)
	}
	return s
}
func (c *hostCluster) key() []byte { return c.k }
func (c *hostCluster) dialer() bench.Dialer {
	if c.ns != nil {
		return c.ns
	}
	return &net.Dialer{KeepAlive: -1}
}
func (c *hostCluster) pids() []int {
	var p []int
	for _, w := range c.procs {
		p = append(p, w.pid())
	}
	return p
}
func (c *hostCluster) echoAddr() string {
	if c.echo == nil {
		return ""
	}
	return c.echo.addr
}
func (c *hostCluster) pprofBase(i int) string {
	if i >= len(c.metrics) || c.metrics[i] == "" {
		return ""
	}
	return "http://" + c.metrics[i] + "/debug/pprof"
}
func (c *hostCluster) info() map[string]any {
	m := map[string]any{"start_to_ready_ms": float64(c.boot.Microseconds()) / 1e3, "servers": c.servers()}
	if c.ns != nil {
		// The knobs the wormds run with, read from their command
		// lines: what each process was given, not what was meant.
		var args []string
		for _, p := range c.procs {
			args = append(args, flagValue(p.pid(), "-netstack-knobs"))
		}
		if uniq := slices.Compact(slices.Clone(args)); len(uniq) == 1 {
			if k, err := netstack.ParseKnobs(uniq[0]); err == nil {
				m["netstack_knobs"] = json.RawMessage(k.String())
			}
		} else {
			m["netstack_knobs_differ"] = args
		}
	}
	return m
}

// flagValue returns the argument after flag on process pid's command
// line ("" when it has none, or the process is gone).
func flagValue(pid int, flag string) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return ""
	}
	args := strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
	if i := slices.Index(args, flag); i >= 0 && i+1 < len(args) {
		return args[i+1]
	}
	return ""
}

// pause does nothing: idle wormds take no CPU.
func (c *hostCluster) pause(context.Context, bool) error { return nil }

func (c *hostCluster) close() error {
	var wg sync.WaitGroup
	for _, p := range append(c.procs, c.echo) {
		if p != nil {
			wg.Go(p.stop)
		}
	}
	wg.Wait()
	if c.ns != nil {
		c.ns.close() // the namespace, bridge and TAPs go with its last user
	}
	return nil
}

// vmKnobs is the knobs override for a VM cluster on stack: only netstack
// guests take one.
func vmKnobs(stack, knobs string) string {
	if stack != qemu.StackNetstack {
		return ""
	}
	return knobs
}

// vmEchoPort is the guest port of the VMs' echo floor (wormd is on 7070).
const vmEchoPort = 7071

// vmCluster is configuration 3 or 4.
type vmCluster struct {
	cfg string
	c   *qemu.Cluster
	k   []byte
}

func startVM(ctx context.Context, o *Options, accel qemu.Accel, cfg, dir string, progress func(string)) (*vmCluster, error) {
	// A KVM guest is ready in seconds; a KVM that opens but cannot run
	// the guest (seen under nested virtualisation) must not cost the
	// default two minutes before the fallback to TCG.
	ready := time.Duration(0)
	if accel == qemu.AccelKVM {
		ready = 45 * time.Second
	}
	stack := qemu.StackKernel
	if baseConfig(cfg) == VMNetstack {
		stack = qemu.StackNetstack
	}
	qc, err := qemu.Up(ctx, qemu.Config{
		N: 3, Stack: stack, Accel: accel, Net: qemu.NetTAP, ImageDir: o.ImageDir, StateDir: dir,
		Volatile: o.Volatile, NoDisk: o.Volatile,
		// The raw echo floor into a VM: served by each guest's wormd on
		// its own stack (with netstack in the guest, no other process
		// could serve a round trip over the same path).
		EchoPort:      vmEchoPort,
		NetstackKnobs: vmKnobs(stack, knobsFor(o, cfg)),
		Options: qemu.Options{KillWithParent: true, ReadyTimeout: ready, Progress: func(e qemu.Event) {
			if e.Kind == qemu.EventInfo || e.Kind == qemu.EventError {
				progress(fmt.Sprintf("%s: %s", cfg, e.Msg))
			}
		}},
	})
	if err != nil {
		return nil, err
	}
	k, err := hex.DecodeString(qc.Key())
	if err != nil {
		qc.Close()
		return nil, err
	}
	return &vmCluster{cfg: cfg, c: qc, k: k}, nil
}

func (v *vmCluster) name() string         { return v.cfg }
func (v *vmCluster) servers() []string    { return strings.Split(v.c.Servers(), ",") }
func (v *vmCluster) key() []byte          { return v.k }
func (v *vmCluster) dialer() bench.Dialer { return v.c }
func (v *vmCluster) pids() []int {
	var p []int
	for _, m := range v.c.VMs() {
		p = append(p, m.Pid())
	}
	return p
}
func (v *vmCluster) echoAddr() string     { return v.c.VMs()[0].Echo() }
func (v *vmCluster) pprofBase(int) string { return "" }
func (v *vmCluster) info() map[string]any {
	var boot, up []float64
	for _, m := range v.c.VMs() {
		r := m.Ready()
		boot = append(boot, float64(r.BootToReady.Microseconds())/1e3)
		up = append(up, float64(r.Uptime.Microseconds())/1e3)
	}
	m := map[string]any{"accel": string(v.c.Accel()), "net": string(v.c.Net()), "stack": v.c.Stack(),
		"boot_to_ready_ms": boot, "guest_uptime_at_ready_ms": up, "servers": v.servers()}
	if v.c.Stack() == qemu.StackNetstack {
		if k, err := netstack.ParseKnobs(v.c.State().NetstackKnobs); err == nil {
			m["netstack_knobs"] = json.RawMessage(k.String())
		}
	}
	return m
}
func (v *vmCluster) close() error { return v.c.Close() }

func (v *vmCluster) pause(ctx context.Context, paused bool) error {
	if paused {
		return v.c.Pause(ctx)
	}
	if err := v.c.Resume(ctx); err != nil {
		return err
	}
	// One echo round trip into every guest before anything is measured:
	// under TCG the first exchange after a resume has taken longer than
	// a quick run's whole echo floor (cause not pinned down), and it is
	// the guest's catching up, not the stack's cost.
	for _, m := range v.c.VMs() {
		if a := m.Echo(); a != "" {
			if err := echoOnce(ctx, v.c, a, 20*time.Second); err != nil {
				return fmt.Errorf("%s: after resume: %w", v.cfg, err)
			}
		}
	}
	return nil
}

// echoOnce dials addr through d and waits for one byte to come back.
func echoOnce(ctx context.Context, d bench.Dialer, addr string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if _, err := c.Write([]byte{1}); err != nil {
		return err
	}
	_, err = io.ReadFull(c, make([]byte, 1))
	return err
}
