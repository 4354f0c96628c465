package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testImageDir returns the boot image for end-to-end tests: $WORM_IMAGE_DIR
// if set, else build/image at the repository root (made by `make image`).
// It skips the test, naming the missing file, only when the image is absent;
// a missing QEMU is installed by CI, so it fails instead.
func testImageDir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("WORM_IMAGE_DIR")
	if dir == "" {
		dir = filepath.Join("..", DefaultImageDir)
	}
	if _, _, err := imageFiles(dir); err != nil {
		t.Skipf("boot image not built: %v", err)
	}
	if _, err := findQEMU(""); err != nil {
		t.Fatalf("%v", err)
	}
	return dir
}

// testStack is the guest stack for end-to-end tests: netstack, or
// $WORM_VM_STACK (a stand-in image without netstack uses "kernel").
func testStack() string {
	if s := os.Getenv("WORM_VM_STACK"); s != "" {
		return s
	}
	return StackNetstack
}

func testConfig(t testing.TB, n int) Config {
	return Config{
		N: n, Stack: testStack(), Accel: AccelTCG,
		ImageDir: testImageDir(t), StateDir: t.TempDir(),
		DiskMiB: 32,
		Options: Options{
			ReadyTimeout:   3 * time.Minute,
			StopTimeout:    5 * time.Second,
			KillWithParent: true,
			Progress: func(e Event) {
				if e.Kind != EventConsole || strings.Contains(e.Msg, "WORMSPACE") {
					t.Log(e)
				}
			},
		},
	}
}

// dialVM connects to v's wormd port from the host side of the cluster.
func dialVM(ctx context.Context, c *Cluster, v *VM, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	conn, err := c.DialContext(ctx, "tcp", v.Server())
	if err != nil {
		return err
	}
	defer conn.Close()
	// QEMU's user networking accepts a forwarded connection before it
	// knows whether the guest listens, then closes it. A live server
	// keeps the connection open (silent, or sending a greeting), so a
	// read that times out or returns data means a server is there.
	conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	n, err := conn.Read(make([]byte, 1))
	var ne net.Error
	if n > 0 || errors.As(err, &ne) && ne.Timeout() {
		return nil
	}
	return fmt.Errorf("connection to %s closed at once (no server behind it): %v", v.Server(), err)
}

// TestClusterEndToEnd boots three VMs under TCG, connects to every wormd
// through the cluster network, crashes one, checks the others still
// accept, restarts the crashed one on the same disk, and tears everything
// down, checking that nothing is left behind.
func TestClusterEndToEnd(t *testing.T) {
	cfg := testConfig(t, 3)
	ctx := context.Background()
	c, err := Up(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	t.Logf("accel %s, net %s, WORM_SERVERS=%s", c.Accel(), c.Net(), c.Servers())
	if c.Accel() != AccelTCG {
		t.Fatalf("accel %s, want tcg", c.Accel())
	}
	if got := strings.Split(c.Servers(), ","); len(got) != 3 {
		t.Fatalf("servers %q", c.Servers())
	}
	for _, v := range c.VMs() {
		r := v.Ready()
		t.Logf("vm%d: pid %d, boot-to-ready %v, guest uptime %v, %s", v.ID(), v.Pid(), r.BootToReady, r.Uptime, r.Line)
		if r.BootToReady <= 0 || r.Uptime <= 0 || r.ID != v.ID() || r.Stack != cfg.Stack {
			t.Errorf("vm%d: bad readiness report %+v", v.ID(), r)
		}
		if err := dialVM(ctx, c, v, 10*time.Second); err != nil {
			t.Fatalf("dial vm%d at %s: %v", v.ID(), v.Server(), err)
		}
	}
	if c.Net() == NetTAP && !namedNSExists(c.Netns()) {
		t.Fatalf("namespace %s missing", c.Netns())
	}

	// Pause: the guest stops answering and QEMU reports it paused;
	// Resume brings it back with its wormd.
	v1 := c.VMs()[0]
	if err := c.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	for _, v := range c.VMs() {
		if st := qmpStatus(t, c, v); st != "paused" {
			t.Fatalf("vm%d after Pause: status %q", v.ID(), st)
		}
	}
	if err := dialVM(ctx, c, v1, 2*time.Second); err == nil {
		t.Fatal("dial of a paused VM succeeded")
	}
	if err := c.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	for _, v := range c.VMs() {
		if st := qmpStatus(t, c, v); st != "running" {
			t.Fatalf("vm%d after Resume: status %q", v.ID(), st)
		}
		if err := dialVM(ctx, c, v, 10*time.Second); err != nil {
			t.Fatalf("dial vm%d after Resume: %v", v.ID(), err)
		}
	}

	// Another process's view: the state file finds the same VMs.
	o, err := Open(cfg.StateDir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range o.VMs() {
		if !v.Running() || v.Pid() != c.VMs()[i].Pid() {
			t.Fatalf("Open: vm%d running=%v pid %d, want pid %d", v.ID(), v.Running(), v.Pid(), c.VMs()[i].Pid())
		}
	}
	if o.net != nil {
		o.net.close()
	}

	// Crash VM 2.
	v2, err := c.VM(2)
	if err != nil {
		t.Fatal(err)
	}
	pid := v2.Pid()
	disk := filepath.Join(c.StateDir(), v2.State().Disk)
	before, err := os.Stat(disk)
	if err != nil {
		t.Fatal(err)
	}
	if err := v2.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	if v2.Running() || isOurQEMU(pid, v2.State().Name) {
		t.Fatalf("vm2 (pid %d) still running after Kill", pid)
	}
	if err := dialVM(ctx, c, v2, 2*time.Second); err == nil {
		t.Fatalf("dial killed vm2 at %s succeeded", v2.Server())
	}
	for _, id := range []int{1, 3} {
		v, _ := c.VM(id)
		if err := dialVM(ctx, c, v, 10*time.Second); err != nil {
			t.Fatalf("vm%d after vm2 crashed: %v", id, err)
		}
	}

	// Restart it on the same disk.
	if err := v2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("vm2 restarted: boot-to-ready %v", v2.Ready().BootToReady)
	after, err := os.Stat(disk)
	if err != nil || !os.SameFile(before, after) {
		t.Fatalf("vm2 disk replaced on restart (%v)", err)
	}
	if err := dialVM(ctx, c, v2, 10*time.Second); err != nil {
		t.Fatalf("dial restarted vm2: %v", err)
	}
	if b, _ := os.ReadFile(v2.ConsolePath()); strings.Count(string(b), "=== worm vm: boot") != 2 {
		t.Fatalf("vm2 console log does not show two boots:\n%s", b)
	}
	if st := v2.State(); st.Boots != 2 || st.Pid == pid || st.Pid == 0 {
		t.Fatalf("vm2 state after restart: %+v", st)
	}

	// A paused VM powers off gracefully: Stop resumes it to press its
	// power button (without, QEMU would only go after the stop timeout,
	// 5 s here, with SIGTERM).
	v3, _ := c.VM(3)
	if err := v3.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	console := v3.ConsolePath()
	stopStart := time.Now()
	if err := v3.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(stopStart); d >= 5*time.Second {
		t.Errorf("Stop of a paused VM took %v: the guest did not see its power button", d)
	}
	if b, _ := os.ReadFile(console); !strings.Contains(string(b), `msg="power off"`) {
		t.Errorf("vm3's console shows no power-off:\n%s", b)
	}

	// Tear down: processes, namespace and state file go; disks stay.
	pids := make([]int, 0, 3)
	names := make([]string, 0, 3)
	for _, v := range c.VMs() {
		pids = append(pids, v.Pid())
		names = append(names, v.State().Name)
	}
	if err := c.Shutdown(ctx, DownOptions{}); err != nil {
		t.Fatal(err)
	}
	for i, p := range pids {
		if isOurQEMU(p, names[i]) {
			t.Errorf("QEMU pid %d survived Shutdown", p)
		}
	}
	if c.Netns() != "" && namedNSExists(c.Netns()) {
		t.Errorf("namespace %s survived Shutdown", c.Netns())
	}
	if _, err := ReadState(cfg.StateDir); !errors.Is(err, ErrNoCluster) {
		t.Errorf("state file after Shutdown: %v", err)
	}
	if _, err := os.Stat(disk); err != nil {
		t.Errorf("disk removed by Shutdown without RemoveDisks: %v", err)
	}
}

// qmpStatus returns v's QMP query-status "status" ("running", "paused").
func qmpStatus(t *testing.T, c *Cluster, v *VM) string {
	t.Helper()
	ret, err := qmpExecute(context.Background(), c.StateDir(), v.State().QMP, "query-status")
	if err != nil {
		t.Fatalf("vm%d: query-status: %v", v.ID(), err)
	}
	var st struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(ret, &st); err != nil {
		t.Fatalf("vm%d: query-status %s: %v", v.ID(), ret, err)
	}
	return st.Status
}

// TestUpCancel checks that cancelling Up mid-boot removes everything.
func TestUpCancel(t *testing.T) {
	cfg := testConfig(t, 1)
	ctx, cancel := context.WithCancel(context.Background())
	var ns string // the namespace Up made, from its progress report
	cfg.Progress = func(e Event) {
		if e.Kind == EventInfo && strings.HasPrefix(e.Msg, "namespace ") {
			ns = strings.TrimSuffix(strings.Fields(e.Msg)[1], ":")
		}
		if e.Kind == EventInfo && strings.Contains(e.Msg, "boot 1:") {
			cancel()
		}
	}
	c, err := Up(ctx, cfg)
	if err == nil {
		c.Close()
		t.Fatal("Up succeeded after cancel")
	}
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Up: %v, want context.Canceled", err)
	}
	if _, err := ReadState(cfg.StateDir); !errors.Is(err, ErrNoCluster) {
		t.Errorf("state file left after cancelled Up: %v", err)
	}
	if ns != "" && namedNSExists(ns) {
		t.Errorf("namespace %s left after cancelled Up", ns)
	}
}

// BenchmarkBoot measures boot-to-ready for a single VM and for three VMs
// booted at once, under TCG.
func BenchmarkBoot(b *testing.B) {
	for _, n := range []int{1, 3} {
		b.Run(map[int]string{1: "1vm", 3: "3vm"}[n], func(b *testing.B) {
			var total, worst, uptime time.Duration
			for b.Loop() {
				cfg := testConfig(b, n)
				cfg.Progress = nil
				c, err := Up(context.Background(), cfg)
				if err != nil {
					b.Fatal(err)
				}
				for _, v := range c.VMs() {
					r := v.Ready()
					total += r.BootToReady
					uptime += r.Uptime
					worst = max(worst, r.BootToReady)
				}
				c.Close()
			}
			runs := float64(b.N * n)
			b.ReportMetric(float64(total.Milliseconds())/runs, "ms-boot-to-ready/vm")
			b.ReportMetric(float64(uptime.Milliseconds())/runs, "ms-guest-uptime/vm")
			b.ReportMetric(float64(worst.Milliseconds()), "ms-worst")
		})
	}
}

// TestClusterUserNet boots one VM with QEMU user networking (the fallback
// without CAP_NET_ADMIN), connects through the 127.0.0.1 forward, and
// stops it with Stop (guest power-off, or SIGTERM after the stop timeout).
func TestClusterUserNet(t *testing.T) {
	cfg := testConfig(t, 1)
	cfg.Net = NetUser
	ctx := context.Background()
	c, err := Up(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	v := c.VMs()[0]
	if c.Net() != NetUser || c.Netns() != "" || !strings.HasPrefix(v.Server(), "127.0.0.1:") {
		t.Fatalf("net %s netns %q server %s", c.Net(), c.Netns(), v.Server())
	}
	t.Logf("server %s, boot-to-ready %v", v.Server(), v.Ready().BootToReady)
	if err := dialVM(ctx, c, v, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := v.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if v.Running() {
		t.Fatal("running after Stop")
	}
}
