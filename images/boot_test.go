package images

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/client"
)

// bootImage is built once for all boot tests and benchmarks.
var (
	bootOnce sync.Once
	bootDir  string
	bootErr  error
)

func sharedImage(tb testing.TB) string {
	tb.Helper()
	bootOnce.Do(func() {
		bootDir, bootErr = os.MkdirTemp("", "images-boot-")
		if bootErr != nil {
			return
		}
		_, bootErr = Build(context.Background(), Options{
			Root: filepath.Join(mustAbs(tb, "..")), OutDir: bootDir, // the real wormd (./cmd/wormd)
			Progress: func(s string) { tb.Log(s) },
		})
	})
	if bootErr != nil {
		tb.Fatal(bootErr)
	}
	return bootDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if bootDir != "" {
		os.RemoveAll(bootDir)
	}
	os.Exit(code)
}

func mustAbs(tb testing.TB, p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		tb.Fatal(err)
	}
	return a
}

// needQEMU skips where QEMU or mkfs.ext4 is truly missing.
func needQEMU(tb testing.TB) {
	tb.Helper()
	for _, tool := range []string{"qemu-system-x86_64", "mkfs.ext4", "dpkg-deb", "apt-get"} {
		if _, err := exec.LookPath(tool); err != nil {
			tb.Skipf("%s not installed (make deps-image installs qemu-system-x86 qemu-utils e2fsprogs dpkg-dev): %v", tool, err)
		}
	}
}

// vm is one QEMU process booting the image under TCG with user networking.
type vm struct {
	cmd     *exec.Cmd
	qmp     string
	port    int
	stdin   io.WriteCloser // the serial console's input
	mu      sync.Mutex
	console strings.Builder
	ready   chan string // the WORMSPACE-READY line
	failed  chan string // a WORMSPACE-ERROR line
	exited  chan error
	started time.Time
}

func freePort(tb testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func newDisk(tb testing.TB) string {
	disk := filepath.Join(tb.TempDir(), "data.img")
	if err := os.WriteFile(disk, nil, 0o644); err != nil {
		tb.Fatal(err)
	}
	if err := os.Truncate(disk, 64<<20); err != nil {
		tb.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-F", "-q", disk).CombinedOutput(); err != nil {
		tb.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	return disk
}

// bootVM starts QEMU (the guest contract's baseline invocation) with the
// guest's port 7070 forwarded to a free port on 127.0.0.1.
func bootVM(tb testing.TB, image, disk, stack string) *vm {
	tb.Helper()
	return startQEMU(tb, image, disk, "worm.id=1 worm.addr=10.0.2.15/24 worm.gw=10.0.2.2 worm.stack="+stack+" worm.data=/dev/vda worm.key="+testKeyHex)
}

// testKeyHex is the cluster key of the single-VM boot tests (wormd
// refuses a non-loopback address without one).
var testKeyHex = strings.Repeat("5a", 32)

// startQEMU boots with the given worm.* parameters; disk may be empty.
func startQEMU(tb testing.TB, image, disk, params string) *vm {
	tb.Helper()
	v := &vm{
		port:   freePort(tb),
		qmp:    filepath.Join(tb.TempDir(), "qmp.sock"),
		ready:  make(chan string, 1),
		failed: make(chan string, 1),
		exited: make(chan error, 1),
	}
	args := []string{
		"-machine", "q35", "-accel", "tcg", "-cpu", "max", "-m", "256", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot",
		"-qmp", "unix:" + v.qmp + ",server=on,wait=off",
		"-kernel", filepath.Join(image, "vmlinuz"), "-initrd", filepath.Join(image, "initramfs.cpio"),
		"-append", "console=ttyS0 panic=-1 quiet cryptomgr.notests no_timer_check " + params,
		"-netdev", fmt.Sprintf("user,id=n0,hostfwd=tcp:127.0.0.1:%d-10.0.2.15:7070", v.port),
		"-device", "virtio-net-pci,netdev=n0",
		"-device", "virtio-rng-pci",
	}
	if disk != "" {
		args = append(args, "-drive", "file="+disk+",format=raw,if=none,id=d0", "-device", "virtio-blk-pci,drive=d0")
	}
	v.cmd = exec.Command("qemu-system-x86_64", args...)
	stdin, err := v.cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	v.stdin = stdin
	out, err := v.cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	v.cmd.Stderr = v.cmd.Stdout
	v.started = time.Now()
	if err := v.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			l := strings.TrimRight(sc.Text(), "\r")
			v.mu.Lock()
			v.console.WriteString(l + "\n")
			v.mu.Unlock()
			if i := strings.Index(l, "WORMSPACE-READY"); i >= 0 {
				select {
				case v.ready <- l[i:]:
				default:
				}
			}
			if i := strings.Index(l, "WORMSPACE-ERROR"); i >= 0 {
				select {
				case v.failed <- l[i:]:
				default:
				}
			}
		}
		v.exited <- v.cmd.Wait()
	}()
	tb.Cleanup(func() {
		if v.cmd.ProcessState == nil {
			v.cmd.Process.Kill()
		}
	})
	return v
}

func (v *vm) log() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.console.String()
}

// waitReady returns the READY line and the time from exec to it.
func (v *vm) waitReady(tb testing.TB, limit time.Duration) (string, time.Duration) {
	tb.Helper()
	select {
	case l := <-v.ready:
		return l, time.Since(v.started)
	case l := <-v.failed:
		tb.Fatalf("guest failed: %s\nconsole:\n%s", l, v.log())
	case err := <-v.exited:
		tb.Fatalf("QEMU exited before ready: %v\nconsole:\n%s", err, v.log())
	case <-time.After(limit):
		tb.Fatalf("no WORMSPACE-READY within %v\nconsole:\n%s", limit, v.log())
	}
	return "", 0
}

// powerdown sends system_powerdown over QMP (the ACPI power button) and
// waits for QEMU to exit; the guest init must shut down cleanly (exit 0).
func (v *vm) powerdown(tb testing.TB, limit time.Duration) {
	tb.Helper()
	if err := qmp(v.qmp, "system_powerdown"); err != nil {
		tb.Fatalf("qmp: %v", err)
	}
	select {
	case err := <-v.exited:
		if err != nil {
			tb.Fatalf("QEMU exit: %v\nconsole:\n%s", err, v.log())
		}
	case <-time.After(limit):
		tb.Fatalf("guest did not power off within %v\nconsole:\n%s", limit, v.log())
	}
}

func qmp(sock, command string) error {
	c, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	if _, err := r.ReadString('\n'); err != nil { // greeting
		return err
	}
	for _, cmd := range []string{"qmp_capabilities", command} {
		if err := json.NewEncoder(c).Encode(map[string]string{"execute": cmd}); err != nil {
			return err
		}
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				return err
			}
			var resp map[string]any
			if json.Unmarshal([]byte(l), &resp) != nil {
				continue
			}
			if e, ok := resp["error"]; ok {
				return fmt.Errorf("%s: %v", cmd, e)
			}
			if _, ok := resp["return"]; ok {
				break
			}
		}
	}
	return nil
}

// talk connects the real client to the wormd behind the forwarded port
// (a one-acceptor cluster) and writes register 1/off unless it is
// already written, then reads it back: the value must be want.
func talk(tb testing.TB, port int, off uint32, want string) {
	tb.Helper()
	key, _ := hex.DecodeString(testKeyHex)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cl, err := client.Dial(ctx, client.Config{Servers: []string{fmt.Sprintf("127.0.0.1:%d", port)}, Key: key, OpTimeout: 20 * time.Second})
	if err != nil {
		tb.Fatalf("dial forwarded port: %v", err)
	}
	defer cl.Close()
	if _, err := cl.Alloc(ctx, 1, nil); err != nil {
		tb.Fatalf("alloc: %v", err)
	}
	a := worm.Addr{Seg: 1, Off: off}
	tok, err := cl.Capture(ctx, a)
	var we *worm.WrittenError
	switch {
	case errors.As(err, &we):
	case err != nil:
		tb.Fatalf("capture %v: %v", a, err)
	default:
		if err := cl.Write(ctx, a, tok, []byte(want)); err != nil {
			tb.Fatalf("write %v: %v", a, err)
		}
	}
	got, err := cl.Read(ctx, a)
	if err != nil || string(got) != want {
		tb.Fatalf("read %v = %q, %v; want %q", a, got, err, want)
	}
}

func uptimeOf(ready string) int {
	for _, f := range strings.Fields(ready) {
		if v, ok := strings.CutPrefix(f, "uptime_ms="); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return -1
}

// TestBoot boots the image under TCG for each stack with QEMU user
// networking, writes and reads a register with the real client through the
// forwarded port, and powers the VM off over QMP. The kernel stack also
// boots a second time on the same disk, whose wormd must still hold the
// register written in the first boot.
func TestBoot(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	needQEMU(t)
	image := sharedImage(t)
	for _, stack := range []string{"kernel", "netstack"} {
		t.Run(stack, func(t *testing.T) {
			disk := newDisk(t)
			v := bootVM(t, image, disk, stack)
			ready, d := v.waitReady(t, 90*time.Second)
			t.Logf("%s: exec to READY %v, guest uptime %d ms: %s", stack, d.Round(time.Millisecond), uptimeOf(ready), ready)
			want := "WORMSPACE-READY id=1 addr=10.0.2.15:7070 stack=" + stack + " uptime_ms="
			if !strings.HasPrefix(ready, want) {
				t.Errorf("ready line %q, want prefix %q", ready, want)
			}
			talk(t, v.port, 0, "first boot "+stack)
			v.powerdown(t, 60*time.Second)
			if log := v.log(); !strings.Contains(log, "init: ") || !strings.Contains(log, "power off") {
				t.Errorf("no clean shutdown on the console:\n%s", log)
			}
			if os.Getenv("WORM_IMAGES_CONSOLE") != "" { // debugging aid: show the guest's console
				t.Logf("console:\n%s", v.log())
			}
			if stack != "kernel" {
				return
			}
			// Second boot on the same disk: the register written in the
			// first boot is still there (wormd recovered from ext4).
			v = bootVM(t, image, disk, stack)
			v.waitReady(t, 90*time.Second)
			talk(t, v.port, 0, "first boot "+stack)
			talk(t, v.port, 1, "second boot "+stack)
			v.powerdown(t, 60*time.Second)
		})
	}
}

// BenchmarkBootToReady measures exec-to-READY under TCG; the guest's own
// uptime at READY is reported as uptime_ms.
//
//	go test -run XXX -bench BootToReady -benchtime 3x ./images
func BenchmarkBootToReady(b *testing.B) {
	needQEMU(b)
	image := sharedImage(b)
	for _, stack := range []string{"kernel", "netstack"} {
		b.Run(stack, func(b *testing.B) {
			var up int
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				disk := newDisk(b)
				b.StartTimer()
				v := bootVM(b, image, disk, stack)
				ready, _ := v.waitReady(b, 90*time.Second)
				b.StopTimer()
				up += uptimeOf(ready)
				v.powerdown(b, 60*time.Second)
				b.StartTimer()
			}
			b.ReportMetric(float64(up)/float64(b.N), "uptime_ms")
		})
	}
}

// TestBootDebugShell boots without worm.addr but with worm.debug=1: init
// reports the error, then runs the image's u-root shell on the serial
// console; the commands work and exiting the shell powers the VM off.
func TestBootDebugShell(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM")
	}
	needQEMU(t)
	v := startQEMU(t, sharedImage(t), "", "worm.debug=1")
	select {
	case l := <-v.failed:
		if !strings.Contains(l, "worm.addr is required") {
			t.Errorf("error line %q", l)
		}
	case <-time.After(90 * time.Second):
		t.Fatalf("no WORMSPACE-ERROR\n%s", v.log())
	}
	// The prompt has no newline, so wait for init's line announcing the
	// shell; input typed earlier waits in the console's tty buffer.
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(v.log(), "starting a shell on the console") {
		if time.Now().After(deadline) {
			t.Fatalf("no shell prompt\n%s", v.log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	io.WriteString(v.stdin, "cat /proc/cmdline\nip link\nexit\n")
	select {
	case err := <-v.exited:
		if err != nil {
			t.Fatalf("QEMU: %v\n%s", err, v.log())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("shell exit did not power off\n%s", v.log())
	}
	log := v.log()
	for _, want := range []string{"cryptomgr.notests no_timer_check worm.debug=1", "1: lo: <LOOPBACK>", "eth0"} {
		if !strings.Contains(log, want) {
			t.Errorf("console lacks %q:\n%s", want, log)
		}
	}
}
