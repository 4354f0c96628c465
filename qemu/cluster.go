package qemu

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Config describes a cluster for Up. Zero values take the defaults noted.
type Config struct {
	// N is the number of VMs (acceptors 1..N), at most 200.
	N int
	// Stack is the guest's TCP stack: StackNetstack (default) or
	// StackKernel.
	Stack string
	// Accel is AccelAuto (default), AccelKVM or AccelTCG.
	Accel Accel
	// Net is NetAuto (default), NetTAP or NetUser.
	Net NetMode
	// ImageDir holds vmlinuz and initramfs.cpio (default build/image,
	// made by `make image`).
	ImageDir string
	// StateDir receives the state file, disks, console logs and QMP
	// sockets (default build/vm). One cluster per state directory.
	StateDir string
	// Volatile passes worm.volatile=1: wormd skips fsync (benchmarks).
	Volatile bool
	// Key is the cluster key in hex (worm.key, at least 32 bytes). When
	// empty, Up reuses StateDir/cluster.key if a previous cluster left one
	// (so clients keep their key file across down and up) and otherwise
	// generates 32 random bytes. wormd refuses non-loopback addresses
	// without a key, so every cluster has one. It is recorded in the state
	// file and written to StateDir/cluster.key (Cluster.KeyFile).
	Key string
	// SegmentSize is passed as worm.segsize when positive.
	SegmentSize int
	// NetstackKnobs, when set, overrides the guests' netstack knobs
	// (worm.knobs → wormd -netstack-knobs; netstack.ParseKnobs syntax,
	// name=value pairs). Only with the netstack stack.
	NetstackKnobs string
	// Debug passes worm.debug=1 (a shell on the console instead of
	// powering off when wormd cannot be restarted).
	Debug bool
	// Port is wormd's port in the guest (default 7070).
	Port int
	// EchoPort, when positive, has each guest's wormd also serve a raw TCP
	// echo on this port over its own stack (worm.echo; wormd
	// -echo-listen): the round-trip floor `worm compare` measures the VMs
	// against. With user networking a second host port is forwarded to
	// it. VM.Echo gives the address.
	EchoPort int
	// Subnet is the TAP network (default 10.77.0.0/24): the host side is
	// .1 and VM i is .(10+i). Each cluster has its own namespace, so
	// clusters may use the same subnet.
	Subnet netip.Prefix
	// MemoryMiB and CPUs size each VM (defaults 256 and 1: an idle TCG
	// guest uses about 250 MiB, and the machine has 2 cores).
	MemoryMiB, CPUs int
	// DiskMiB is the size of each sparse data disk (default 128). Disks
	// are named vmID.img in StateDir and reused when they exist.
	DiskMiB int
	// NoDisk boots without data disks (the guest keeps data on tmpfs).
	NoDisk bool
	// QEMU is the emulator binary (default qemu-system-x86_64 in PATH).
	QEMU string

	Options
}

// Options are the launcher's behaviour knobs, shared by Up and Open.
type Options struct {
	// ReadyTimeout bounds each boot's wait for WORMSPACE-READY (default
	// 2 minutes: TCG on a loaded 2-core CI machine is slow).
	ReadyTimeout time.Duration
	// KVMSilence is how long a KVM guest may stay silent on its console
	// before its boot fails with ErrKVMSilent (default 30 s; a working
	// KVM guest prints init's first line in about a second). Negative
	// disables the check.
	KVMSilence time.Duration
	// StopTimeout is how long Stop waits for a guest power-off before
	// signalling QEMU (default 10 s).
	StopTimeout time.Duration
	// KillWithParent makes every QEMU die with the launching thread's
	// process (PR_SET_PDEATHSIG). Set it for tests and foreground runs;
	// leave it off when VMs must outlive the launcher (`worm vm up`).
	KillWithParent bool
	// Progress receives progress and console events; nil discards them.
	// It is called from several goroutines at once.
	Progress func(Event)
	// Logger receives debug logs (default slog.Default()).
	Logger *slog.Logger
}

func (o *Options) defaults() {
	if o.ReadyTimeout <= 0 {
		o.ReadyTimeout = 2 * time.Minute
	}
	if o.StopTimeout <= 0 {
		o.StopTimeout = 10 * time.Second
	}
	if o.KVMSilence == 0 {
		o.KVMSilence = 30 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// Event kinds.
const (
	EventInfo    = "info"    // a step: network made, VM booting, stopping
	EventConsole = "console" // one serial console line
	EventReady   = "ready"   // a VM printed WORMSPACE-READY
	EventError   = "error"   // WORMSPACE-ERROR or a failed step
)

// Event is one progress report. VM is 0 for cluster-wide events.
type Event struct {
	Time time.Time
	VM   int
	Kind string
	Msg  string
}

func (e Event) String() string {
	who := "cluster"
	if e.VM > 0 {
		who = "vm" + strconv.Itoa(e.VM)
	}
	return fmt.Sprintf("%s %s: %s", e.Time.Format("15:04:05.000"), who, e.Msg)
}

// Default paths, relative to the working directory (the repository root
// for `worm vm` and `make`).
const (
	DefaultImageDir = "build/image"
	DefaultStateDir = "build/vm"
)

// Image file names inside ImageDir (guest contract).
const (
	KernelFile = "vmlinuz"
	InitrdFile = "initramfs.cpio"
)

// Cluster is a set of VMs booted from one image, with their network. Use
// Up to create one, Open to attach to one started by another process, and
// Shutdown (or Close) to remove it.
type Cluster struct {
	dir  string // absolute state directory
	opts Options
	net  *bridgeNet // nil with NetUser

	mu     sync.Mutex
	closed bool
	st     State // VMs entries are kept in the VM values; st.VMs is refreshed on save
	vms    []*VM
}

// Up boots cfg.N VMs in parallel and returns once all printed
// WORMSPACE-READY. On any failure, or if ctx ends first, everything made
// so far (processes, namespace, state file) is removed before Up returns;
// disks are kept.
func Up(ctx context.Context, cfg Config) (*Cluster, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	kernel, initrd, err := imageFiles(cfg.ImageDir)
	if err != nil {
		return nil, err
	}
	qemuBin, err := findQEMU(cfg.QEMU)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	c := &Cluster{dir: dir, opts: cfg.Options}
	accel, why, err := ResolveAccel(cfg.Accel)
	if err != nil {
		return nil, err
	}
	c.event(0, EventInfo, "accel "+why)
	mode, why, err := resolveNet(cfg.Net)
	if err != nil {
		return nil, err
	}
	c.event(0, EventInfo, "network "+why)

	unlock, err := lockState(dir)
	if err != nil {
		return nil, err
	}
	if err := checkNoLiveCluster(dir); err != nil {
		unlock()
		return nil, err
	}
	key, why, err := clusterKey(dir, cfg.Key)
	if err != nil {
		unlock()
		return nil, err
	}
	cfg.Key = key
	c.event(0, EventInfo, "cluster key "+why+": "+filepath.Join(dir, KeyFile))
	suffix := randomHex(3)
	c.st = State{
		Version: stateVersion, Name: "worm-" + suffix, Created: time.Now(),
		Accel: accel, Net: mode,
		QEMU: qemuBin, Kernel: kernel, Initrd: initrd,
		Stack: cfg.Stack, Port: cfg.Port, EchoPort: cfg.EchoPort, MemoryMiB: cfg.MemoryMiB, CPUs: cfg.CPUs, DiskMiB: cfg.DiskMiB,
		Volatile: cfg.Volatile, Key: cfg.Key, SegmentSize: cfg.SegmentSize, Debug: cfg.Debug,
		NetstackKnobs: cfg.NetstackKnobs,
	}
	if mode == NetTAP {
		host := netip.PrefixFrom(cfg.Subnet.Addr().Next(), cfg.Subnet.Bits())
		c.st.Netns, c.st.Bridge, c.st.HostAddr = c.st.Name, "wbr-"+suffix, host.String()
		t := time.Now()
		c.net, err = createBridgeNet(c.st.Netns, c.st.Bridge, host)
		if err != nil {
			unlock()
			return nil, err
		}
		c.event(0, EventInfo, fmt.Sprintf("namespace %s: bridge %s %s (%v); host side: ip netns exec %s ...",
			c.st.Netns, c.st.Bridge, host, time.Since(t).Round(time.Microsecond), c.st.Netns))
	}
	for i := 1; i <= cfg.N; i++ {
		vs, err := c.newVMState(cfg, i, suffix)
		if err != nil {
			unlock()
			c.Shutdown(context.Background(), DownOptions{})
			return nil, err
		}
		c.vms = append(c.vms, &VM{c: c, id: i, st: vs})
	}
	c.st.VMs = c.vmStates()
	err = writeState(dir, &c.st)
	unlock()
	if err != nil {
		c.Shutdown(context.Background(), DownOptions{})
		return nil, err
	}

	t := time.Now()
	err = c.bootAll(ctx)
	if err != nil && (cfg.Accel == "" || cfg.Accel == AccelAuto) && accel == AccelKVM && ctx.Err() == nil && (errors.Is(err, ErrKVMSilent) || errors.Is(err, ErrExited)) {
		// /dev/kvm answered the probe but runs no guest (nested
		// virtualisation without support: silence, or QEMU aborting as
		// it sets up the vCPU): what auto means is "the fastest
		// accelerator that works", so boot again under TCG. A guest
		// that fails for reasons of its own fails again there, with
		// its own console in the error.
		why := fmt.Sprintf("KVM guests printed nothing within %v (KVM present but unable to run a guest?)", c.opts.KVMSilence)
		if !errors.Is(err, ErrKVMSilent) {
			why = "a KVM guest's QEMU exited before it was ready (" + firstLine(err.Error()) + ")"
		}
		c.event(0, EventError, why+": falling back to TCG")
		accel = AccelTCG
		c.mu.Lock()
		c.st.Accel = accel
		c.mu.Unlock()
		if err = updateState(dir, func(s *State) error { s.Accel = accel; return nil }); err == nil {
			err = c.bootAll(ctx)
		}
	}
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		c.Shutdown(context.Background(), DownOptions{})
		return nil, err
	}
	c.event(0, EventInfo, fmt.Sprintf("%d VMs ready in %v (accel %s): WORM_SERVERS=%s",
		cfg.N, time.Since(t).Round(time.Millisecond), accel, c.Servers()))
	return c, nil
}

// bootAll boots every VM in parallel; one failure aborts the others.
func (c *Cluster) bootAll(ctx context.Context) error {
	c.event(0, EventInfo, fmt.Sprintf("booting %d VMs (stack %s, accel %s, net %s)", len(c.vms), c.st.Stack, c.st.Accel, c.st.Net))
	bctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make([]error, len(c.vms))
	var wg sync.WaitGroup
	for i, v := range c.vms {
		wg.Go(func() {
			if errs[i] = v.boot(bctx); errs[i] != nil {
				cancel()
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (cfg *Config) defaults() error {
	cfg.Options.defaults()
	if cfg.N <= 0 || cfg.N > 200 {
		return fmt.Errorf("%w: N=%d (want 1..200)", ErrConfig, cfg.N)
	}
	if cfg.Stack == "" {
		cfg.Stack = StackNetstack
	}
	if cfg.Stack != StackNetstack && cfg.Stack != StackKernel {
		return fmt.Errorf("%w: stack %q (want netstack or kernel)", ErrConfig, cfg.Stack)
	}
	if cfg.NetstackKnobs != "" && cfg.Stack != StackNetstack {
		return fmt.Errorf("%w: netstack knobs %q on the %s stack", ErrConfig, cfg.NetstackKnobs, cfg.Stack)
	}
	if strings.ContainsAny(cfg.NetstackKnobs, " \t\n\"") {
		// One kernel parameter: the guest validates its shape, wormd
		// its names and values.
		return fmt.Errorf("%w: netstack knobs %q: no spaces or quotes", ErrConfig, cfg.NetstackKnobs)
	}
	if cfg.ImageDir == "" {
		cfg.ImageDir = DefaultImageDir
	}
	if cfg.StateDir == "" {
		cfg.StateDir = DefaultStateDir
	}
	if cfg.Port == 0 {
		cfg.Port = 7070
	}
	if !cfg.Subnet.IsValid() {
		cfg.Subnet = netip.MustParsePrefix("10.77.0.0/24")
	}
	cfg.Subnet = cfg.Subnet.Masked()
	if !cfg.Subnet.Addr().Is4() || cfg.Subnet.Bits() > 24 {
		return fmt.Errorf("%w: subnet %v (want IPv4, /24 or larger)", ErrConfig, cfg.Subnet)
	}
	if cfg.MemoryMiB == 0 {
		cfg.MemoryMiB = 256
	}
	if cfg.CPUs == 0 {
		cfg.CPUs = 1
	}
	if cfg.DiskMiB == 0 {
		cfg.DiskMiB = 128
	}
	if cfg.Key != "" {
		if err := checkKey(cfg.Key); err != nil {
			return err
		}
	}
	return nil
}

// KeyFile is the cluster key file in the state directory: the key in hex
// and a newline, mode 0600, readable by `worm -key-file` and wormd
// -key-file ($WORM_KEY_FILE).
const KeyFile = "cluster.key"

// KeyBytes is the size of a generated cluster key.
const KeyBytes = 32

func checkKey(k string) error {
	b, err := hex.DecodeString(k)
	if err != nil {
		return fmt.Errorf("%w: key is not hex", ErrConfig)
	}
	if len(b) < KeyBytes {
		return fmt.Errorf("%w: key of %d bytes (wormd wants at least %d)", ErrConfig, len(b), KeyBytes)
	}
	return nil
}

// clusterKey decides the cluster key: the one given, else the key file a
// previous cluster left in dir, else a new random one. It writes the key
// file and says where the key came from.
func clusterKey(dir, given string) (key, why string, err error) {
	path := filepath.Join(dir, KeyFile)
	switch {
	case given != "":
		key, why = strings.ToLower(given), "given"
	default:
		if b, err := os.ReadFile(path); err == nil {
			k := strings.ToLower(strings.TrimSpace(string(b)))
			if checkKey(k) == nil {
				return k, "reused", nil
			}
			return "", "", fmt.Errorf("%w: %s holds no usable key (want %d+ bytes in hex); delete it to generate a new one", ErrConfig, path, KeyBytes)
		}
		b := make([]byte, KeyBytes)
		if _, err := rand.Read(b); err != nil {
			return "", "", err
		}
		key, why = hex.EncodeToString(b), "generated"
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(key+"\n"), 0o600); err != nil {
		return "", "", err
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", "", err
	}
	return key, why, nil
}

// newVMState lays out VM id's addresses and files.
func (c *Cluster) newVMState(cfg Config, id int, suffix string) (VMState, error) {
	vs := VMState{
		ID:      id,
		Name:    fmt.Sprintf("%s-vm%d", c.st.Name, id),
		MAC:     fmt.Sprintf("52:54:00:77:%02x:%02x", id>>8, id&0xff),
		Console: fmt.Sprintf("vm%d.console", id),
		QMP:     fmt.Sprintf("vm%d.qmp", id),
		QEMULog: fmt.Sprintf("vm%d.qemu.log", id),
	}
	if !cfg.NoDisk {
		vs.Disk = fmt.Sprintf("vm%d.img", id)
	}
	switch c.st.Net {
	case NetTAP:
		a := cfg.Subnet.Addr().As4()
		a[3] += byte(10 + id)
		ip := netip.AddrFrom4(a)
		vs.GuestAddr = netip.PrefixFrom(ip, cfg.Subnet.Bits()).String()
		vs.Server = netip.AddrPortFrom(ip, uint16(cfg.Port)).String()
		if cfg.EchoPort > 0 {
			vs.Echo = netip.AddrPortFrom(ip, uint16(cfg.EchoPort)).String()
		}
		vs.TAP = fmt.Sprintf("wt%d-%s", id, suffix)
	case NetUser:
		// QEMU's slirp defaults: guest 10.0.2.15, host/gateway 10.0.2.2.
		vs.GuestAddr = "10.0.2.15/24"
		vs.Gateway = "10.0.2.2"
		p, err := freePort()
		if err != nil {
			return vs, err
		}
		vs.HostFwd = p
		vs.Server = net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
		if cfg.EchoPort > 0 {
			if vs.EchoFwd, err = freePort(); err != nil {
				return vs, err
			}
			vs.Echo = net.JoinHostPort("127.0.0.1", strconv.Itoa(vs.EchoFwd))
		}
	}
	return vs, nil
}

// freePort asks the kernel for an unused 127.0.0.1 TCP port. Another
// program could take it before QEMU binds it; QEMU then fails to start
// and the error says so.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// spec builds the Spec for one VM from the cluster state.
func (c *Cluster) spec(vs VMState) Spec {
	s := Spec{
		Name: vs.Name, Binary: c.st.QEMU, Accel: c.st.Accel,
		Kernel: c.st.Kernel, Initrd: c.st.Initrd,
		MemoryMiB: c.st.MemoryMiB, CPUs: c.st.CPUs,
		ID: vs.ID, Stack: c.st.Stack, Port: c.st.Port,
		Volatile: c.st.Volatile, SegmentSize: c.st.SegmentSize, Debug: c.st.Debug, NetstackKnobs: c.st.NetstackKnobs,
		Disk: vs.Disk, Net: c.st.Net, HostFwd: vs.HostFwd,
		EchoPort: c.st.EchoPort, EchoFwd: vs.EchoFwd,
		Console: vs.Console, QMP: vs.QMP,
	}
	if c.st.Key != "" {
		s.KeyFile = c.KeyFile()
	}
	s.Addr, _ = netip.ParsePrefix(vs.GuestAddr)
	s.Gateway, _ = netip.ParseAddr(vs.Gateway)
	s.MAC, _ = net.ParseMAC(vs.MAC)
	return s
}

// imageFiles checks the boot image and returns absolute file names.
func imageFiles(dir string) (kernel, initrd string, err error) {
	dir, err = filepath.Abs(dir)
	if err != nil {
		return "", "", err
	}
	kernel, initrd = filepath.Join(dir, KernelFile), filepath.Join(dir, InitrdFile)
	for _, f := range []string{kernel, initrd} {
		if _, err := os.Stat(f); err != nil {
			return "", "", fmt.Errorf("%w: %v (build it with `make image`)", ErrNoImage, err)
		}
	}
	return kernel, initrd, nil
}

// findQEMU resolves the emulator binary.
func findQEMU(bin string) (string, error) {
	if bin == "" {
		bin = "qemu-system-x86_64"
	}
	p, err := exec.LookPath(bin)
	if err != nil {
		return "", fmt.Errorf("%w: %v (apt-get install qemu-system-x86)", ErrNoQEMU, err)
	}
	return p, nil
}

// resolveNet turns NetAuto into a concrete mode.
func resolveNet(want NetMode) (NetMode, string, error) {
	switch want {
	case "", NetAuto:
		if err := CanUseTAP(); err != nil {
			return NetUser, fmt.Sprintf("user (auto: %v; VMs reachable on 127.0.0.1 only, not from each other)", err), nil
		}
		return NetTAP, "tap (auto: namespace + bridge + TAP)", nil
	case NetTAP:
		if err := CanUseTAP(); err != nil {
			return "", "", err
		}
		return NetTAP, "tap (requested)", nil
	case NetUser:
		return NetUser, "user (requested)", nil
	}
	return "", "", fmt.Errorf("%w: network mode %q (want auto, tap or user)", ErrConfig, want)
}

// checkNoLiveCluster fails if dir's state file lists a running VM, and
// removes the leftovers of a dead cluster (its namespace name). Disks stay.
func checkNoLiveCluster(dir string) error {
	s, err := ReadState(dir)
	if errors.Is(err, ErrNoCluster) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, v := range s.VMs {
		if isOurQEMU(v.Pid, v.Name) {
			return fmt.Errorf("%w: %s (VM %d pid %d); run `worm vm down -state %s`", ErrClusterExists, s.Name, v.ID, v.Pid, dir)
		}
	}
	if s.Netns != "" {
		if err := deleteNamedNS(s.Netns); err != nil {
			return err
		}
	}
	return os.Remove(filepath.Join(dir, stateFile))
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Open attaches to the cluster described by dir's state file, started by
// this or another process. VMs whose recorded QEMU is alive count as
// running; Kill, Stop, Restart and Shutdown work on them as on VMs
// started here.
func Open(dir string, opts Options) (*Cluster, error) {
	opts.defaults()
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	s, err := ReadState(dir)
	if err != nil {
		return nil, err
	}
	c := &Cluster{dir: dir, opts: opts, st: *s}
	if s.Net == NetTAP && namedNSExists(s.Netns) {
		host, err := netip.ParsePrefix(s.HostAddr)
		if err != nil {
			return nil, fmt.Errorf("qemu: state host address: %w", err)
		}
		if c.net, err = openBridgeNet(s.Netns, s.Bridge, host); err != nil {
			return nil, err
		}
	}
	for _, vs := range s.VMs {
		v := &VM{c: c, id: vs.ID, st: vs}
		if isOurQEMU(vs.Pid, vs.Name) {
			v.done = make(chan struct{})
			go watchPid(vs.Pid, vs.Name, v.done)
			v.ready = Ready{
				ID: vs.ID, Stack: s.Stack,
				BootToReady: time.Duration(vs.BootToReadyMS * float64(time.Millisecond)),
				Uptime:      time.Duration(vs.GuestUptimeMS * float64(time.Millisecond)),
			}
		}
		c.vms = append(c.vms, v)
	}
	return c, nil
}

// DownOptions control Shutdown.
type DownOptions struct {
	// Graceful powers VMs off through the guest (Stop) instead of
	// SIGKILL.
	Graceful bool
	// RemoveDisks deletes the data disks too (acceptor state is lost).
	RemoveDisks bool
}

// Down removes the cluster described by dir: it ends every QEMU, deletes
// the network namespace (and with it the bridge and TAPs) and the state
// file, and, with RemoveDisks, the disks. Console logs stay for post
// mortems. A directory without a cluster is not an error.
func Down(ctx context.Context, dir string, opts DownOptions, o Options) error {
	c, err := Open(dir, o)
	if errors.Is(err, ErrNoCluster) {
		return nil
	}
	if err != nil {
		return err
	}
	return c.Shutdown(ctx, opts)
}

// Shutdown ends all VMs and removes the cluster (see Down).
func (c *Cluster) Shutdown(ctx context.Context, opts DownOptions) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	var errs []error
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, v := range c.vms {
		wg.Go(func() {
			var err error
			if opts.Graceful {
				err = v.Stop(ctx)
			} else {
				err = v.Kill(ctx)
			}
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		})
	}
	wg.Wait()
	if c.net != nil {
		c.net.close()
	}
	if c.st.Netns != "" {
		errs = append(errs, deleteNamedNS(c.st.Netns))
		c.event(0, EventInfo, "deleted namespace "+c.st.Netns)
	}
	for _, v := range c.vms {
		st := v.State()
		os.Remove(filepath.Join(c.dir, st.QMP))
		if opts.RemoveDisks && st.Disk != "" {
			if err := os.Remove(filepath.Join(c.dir, st.Disk)); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	if unlock, err := lockState(c.dir); err == nil {
		if err := os.Remove(filepath.Join(c.dir, stateFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
		unlock()
	}
	return errors.Join(errs...)
}

// Close is Shutdown with default options (kill, keep disks).
func (c *Cluster) Close() error { return c.Shutdown(context.Background(), DownOptions{}) }

// Pause pauses every running VM (VM.Pause), Resume resumes them; both
// try every VM and return the first error.
func (c *Cluster) Pause(ctx context.Context) error { return c.eachRunning(ctx, (*VM).Pause) }

// Resume resumes every running VM (VM.Resume).
func (c *Cluster) Resume(ctx context.Context) error { return c.eachRunning(ctx, (*VM).Resume) }

func (c *Cluster) eachRunning(ctx context.Context, f func(*VM, context.Context) error) error {
	var first error
	for _, v := range c.vms {
		if !v.Running() {
			continue
		}
		if err := f(v, ctx); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// VMs returns the cluster's VMs in id order.
func (c *Cluster) VMs() []*VM { return c.vms }

// VM returns the VM with acceptor id.
func (c *Cluster) VM(id int) (*VM, error) {
	for _, v := range c.vms {
		if v.id == id {
			return v, nil
		}
	}
	return nil, fmt.Errorf("%w: %d (cluster %s has %d VMs)", ErrUnknownVM, id, c.st.Name, len(c.vms))
}

// Servers returns the WORM_SERVERS value: every VM's server address,
// comma-separated, in id order.
func (c *Cluster) Servers() string {
	s := make([]string, len(c.vms))
	for i, v := range c.vms {
		s[i] = v.Server()
	}
	return strings.Join(s, ",")
}

// Name returns the cluster name.
func (c *Cluster) Name() string { return c.st.Name }

// Netns returns the network namespace name (empty with NetUser). The CLI
// reaches the servers with `ip netns exec NAME worm ...`.
func (c *Cluster) Netns() string { return c.st.Netns }

// Key returns the cluster key in hex (every cluster has one; see
// Config.Key).
func (c *Cluster) Key() string { return c.st.Key }

// KeyFile returns the path of the key file (StateDir/cluster.key): pass
// it as WORM_KEY_FILE to the worm CLI.
func (c *Cluster) KeyFile() string { return filepath.Join(c.dir, KeyFile) }

// Accel returns the accelerator in use.
func (c *Cluster) Accel() Accel { return c.st.Accel }

// Net returns the network mode in use.
func (c *Cluster) Net() NetMode { return c.st.Net }

// Stack returns the guest TCP stack.
func (c *Cluster) Stack() string { return c.st.Stack }

// StateDir returns the absolute state directory.
func (c *Cluster) StateDir() string { return c.dir }

// State returns a snapshot of the cluster state.
func (c *Cluster) State() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.st
	s.VMs = c.vmStates()
	return s
}

// DialContext connects to addr (normally a VM's Server address) from the
// host side of the cluster network: from inside the cluster namespace with
// NetTAP, directly with NetUser. The connection is usable from any
// goroutine.
func (c *Cluster) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if c.st.Net == NetTAP {
		if c.net == nil {
			return nil, fmt.Errorf("qemu: namespace %s is gone", c.st.Netns)
		}
		return c.net.dial(ctx, network, addr)
	}
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

func (c *Cluster) vmStates() []VMState {
	out := make([]VMState, len(c.vms))
	for i, v := range c.vms {
		out[i] = v.State()
	}
	return out
}

// saveVM writes v's entry into the state file.
func (c *Cluster) saveVM(v *VM) error {
	vs := v.State()
	return updateState(c.dir, func(s *State) error {
		e, err := s.vm(vs.ID)
		if err != nil {
			return err
		}
		*e = vs
		return nil
	})
}

func (c *Cluster) event(vm int, kind, msg string) {
	if kind == EventConsole {
		c.opts.Logger.Debug("console", "vm", vm, "line", msg)
	}
	if c.opts.Progress != nil {
		c.opts.Progress(Event{Time: time.Now(), VM: vm, Kind: kind, Msg: msg})
	}
}

// firstLine is s up to its first newline (a boot error carries the
// console and QEMU log tails after it).
func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}
