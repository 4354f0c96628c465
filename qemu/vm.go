package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// VM is one QEMU process of a Cluster, identified by its acceptor id
// (1..N). Its data disk, MAC address and server address are fixed for the
// cluster's life, so Restart boots the same acceptor with the same state.
// Methods are safe for concurrent use.
type VM struct {
	c  *Cluster
	id int

	mu    sync.Mutex
	st    VMState
	ready Ready
	// done is closed when the current QEMU process ends; nil before the
	// first start in this process and when nothing runs.
	done chan struct{}
	// exitErr is cmd.Wait's result for children of this process.
	exitErr error
}

// ID returns the VM's acceptor id.
func (v *VM) ID() int { return v.id }

// Server returns the address clients use for this VM's wormd, as seen
// from the host (inside the cluster namespace with NetTAP, on 127.0.0.1
// with NetUser).
func (v *VM) Server() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.st.Server
}

// Echo returns the address of the guest's raw TCP echo floor ("" unless
// the cluster was made with Config.EchoPort), reachable like Server.
func (v *VM) Echo() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.st.Echo
}

// Pid returns the QEMU process id, or 0 when the VM is not running.
func (v *VM) Pid() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	if !v.runningLocked() {
		return 0
	}
	return v.st.Pid
}

// Running reports whether the VM's QEMU process is alive.
func (v *VM) Running() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.runningLocked()
}

func (v *VM) runningLocked() bool {
	if v.done == nil {
		return false
	}
	select {
	case <-v.done:
		return false
	default:
		return true
	}
}

// Ready returns the readiness report of the last boot (zero if the VM has
// not become ready in this process or Open could not see it).
func (v *VM) Ready() Ready {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.ready
}

// State returns a copy of the VM's state entry.
func (v *VM) State() VMState {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.st
}

// ConsolePath returns the serial console log (all boots, separated by
// "=== worm vm: boot N ..." lines).
func (v *VM) ConsolePath() string { return filepath.Join(v.c.dir, v.State().Console) }

// Done returns a channel closed when the current QEMU process ends (an
// already closed channel if none runs).
func (v *VM) Done() <-chan struct{} {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.done == nil {
		d := make(chan struct{})
		close(d)
		return d
	}
	return v.done
}

// Start boots the VM if it is not running and waits for WORMSPACE-READY.
// If ctx ends or the guest does not become ready within the ready timeout,
// the QEMU process is killed.
func (v *VM) Start(ctx context.Context) error {
	if v.Running() {
		return nil
	}
	return v.boot(ctx)
}

// Restart stops the VM gracefully if it runs (see Stop) and boots it
// again with the same disk, MAC and address.
func (v *VM) Restart(ctx context.Context) error {
	if err := v.Stop(ctx); err != nil {
		return err
	}
	return v.boot(ctx)
}

// Kill ends the VM with SIGKILL to QEMU, simulating a crash: the guest
// gets no chance to flush. It waits until the process is gone.
func (v *VM) Kill(ctx context.Context) error {
	v.mu.Lock()
	pid, name, done := v.st.Pid, v.st.Name, v.done
	running := v.runningLocked()
	v.mu.Unlock()
	if !running {
		return nil
	}
	v.c.event(v.id, EventInfo, "kill (SIGKILL)")
	if err := signalPid(pid, name, syscall.SIGKILL); err != nil {
		return fmt.Errorf("qemu: kill VM %d (pid %d): %w", v.id, pid, err)
	}
	if err := v.waitDone(ctx, done, killWait); err != nil {
		return err
	}
	return v.stopped()
}

// Pause stops the VM's virtual CPUs (QMP "stop"). The guest keeps its
// memory, devices and connections; its clock stands still, it uses no CPU
// and it answers nothing until Resume. Benchmarks pause the VMs they are
// not measuring: an idle guest under TCG still takes CPU for its timer
// ticks (six idle guests, about 15% of one CPU here). Stop resumes a
// paused VM before powering it off.
func (v *VM) Pause(ctx context.Context) error { return v.qmp(ctx, "stop") }

// Resume restarts a VM's virtual CPUs after Pause (QMP "cont"); a running
// VM is left as it is.
func (v *VM) Resume(ctx context.Context) error { return v.qmp(ctx, "cont") }

func (v *VM) qmp(ctx context.Context, command string) error {
	v.mu.Lock()
	st, running := v.st, v.runningLocked()
	v.mu.Unlock()
	if !running {
		return fmt.Errorf("qemu: %s VM %d: %w", command, v.id, ErrNotRunning)
	}
	if err := qmpCommand(ctx, v.c.dir, st.QMP, command); err != nil {
		return fmt.Errorf("qemu: %s VM %d: %w", command, v.id, err)
	}
	return nil
}

// killWait bounds the wait for a process after SIGKILL.
const killWait = 10 * time.Second

// Stop powers the VM off gracefully: an ACPI power-button press through
// QMP (system_powerdown), after which the guest init stops wormd, syncs,
// unmounts /data and powers off, and QEMU (-no-reboot) exits 0. If the VM
// is still running after the stop timeout, QEMU gets SIGTERM, then SIGKILL.
func (v *VM) Stop(ctx context.Context) error {
	v.mu.Lock()
	st, done := v.st, v.done
	running := v.runningLocked()
	v.mu.Unlock()
	if !running {
		return nil
	}
	v.c.event(v.id, EventInfo, "stop: system_powerdown via QMP")
	// "cont" first: a paused guest (Pause) could not act on the button.
	if err := qmpCommand(ctx, v.c.dir, st.QMP, "cont", "system_powerdown"); err != nil {
		v.c.event(v.id, EventError, "QMP system_powerdown: "+err.Error())
	} else if v.waitDone(ctx, done, v.c.opts.StopTimeout) == nil {
		return v.stopped()
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	v.c.event(v.id, EventInfo, fmt.Sprintf("still running after %v: SIGTERM to QEMU", v.c.opts.StopTimeout))
	if err := signalPid(st.Pid, st.Name, syscall.SIGTERM); err != nil {
		return fmt.Errorf("qemu: stop VM %d: %w", v.id, err)
	}
	if v.waitDone(ctx, done, 5*time.Second) == nil {
		return v.stopped()
	}
	return v.Kill(ctx)
}

// waitDone waits for done, at most d.
func (v *VM) waitDone(ctx context.Context, done <-chan struct{}, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return fmt.Errorf("qemu: VM %d still running after %v", v.id, d)
	}
}

// stopped records that the VM no longer runs.
func (v *VM) stopped() error {
	v.mu.Lock()
	v.st.Pid = 0
	v.mu.Unlock()
	return v.c.saveVM(v)
}

// boot starts QEMU and waits for readiness.
func (v *VM) boot(ctx context.Context) (err error) {
	c := v.c
	v.mu.Lock()
	st := v.st
	v.mu.Unlock()
	st.Boots++

	spec := c.spec(st)
	if st.Disk != "" {
		formatted, err := ensureDisk(ctx, filepath.Join(c.dir, st.Disk), c.st.DiskMiB)
		if err != nil {
			return err
		}
		if formatted {
			c.event(v.id, EventInfo, fmt.Sprintf("disk %s: new, %d MiB, formatted ext4", st.Disk, c.st.DiskMiB))
		}
	}
	var extra []*os.File
	defer func() {
		for _, f := range extra {
			f.Close()
		}
	}()
	if c.st.Net == NetTAP {
		tap, err := c.net.addTAP(st.TAP)
		if err != nil {
			return err
		}
		extra = append(extra, tap)
		spec.TAPFD = 3 // ExtraFiles[0]
	}
	args, err := spec.Args()
	if err != nil {
		return err
	}
	consolePath := filepath.Join(c.dir, st.Console)
	off, err := markConsole(consolePath, st.Boots, c.st.Accel)
	if err != nil {
		return fmt.Errorf("qemu: console file: %w", err)
	}
	qlog, err := os.OpenFile(filepath.Join(c.dir, st.QEMULog), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(qlog, "=== boot %d: %s %s\n", st.Boots, c.st.QEMU, strings.Join(args, " "))
	os.Remove(filepath.Join(c.dir, st.QMP)) // a stale socket from a killed QEMU

	cmd := exec.Command(c.st.QEMU, args...)
	// Relative file names (console, QMP socket, disk) resolve in the
	// state directory; this keeps the QMP socket path short.
	cmd.Dir = c.dir
	cmd.Stdout, cmd.Stderr = qlog, qlog
	cmd.ExtraFiles = extra
	// Own session: a Ctrl-C on the terminal reaches the launcher only,
	// which then cleans up in order; and detached VMs outlive it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if c.opts.KillWithParent {
		// Tests and foreground runs: a launcher killed outright takes
		// its VMs with it instead of leaking them.
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	c.event(v.id, EventInfo, fmt.Sprintf("boot %d: accel %s, net %s, guest %s, server %s", st.Boots, c.st.Accel, c.st.Net, st.GuestAddr, st.Server))
	t0 := time.Now()
	err = cmd.Start()
	qlog.Close()
	if err != nil {
		return fmt.Errorf("qemu: start VM %d: %w", v.id, err)
	}
	for _, f := range extra { // QEMU holds its own copy now
		f.Close()
	}
	extra = nil
	done := make(chan struct{})
	go func() {
		werr := cmd.Wait()
		v.mu.Lock()
		v.exitErr = werr
		v.mu.Unlock()
		close(done)
	}()
	st.Pid = cmd.Process.Pid
	st.StartedAt = t0
	st.BootToReadyMS, st.GuestUptimeMS = 0, 0
	v.mu.Lock()
	v.st, v.done, v.exitErr, v.ready = st, done, nil, Ready{}
	v.mu.Unlock()
	if err := c.saveVM(v); err != nil {
		cmd.Process.Kill()
		return err
	}
	defer func() {
		if err != nil {
			cmd.Process.Kill()
			<-done
			v.stopped()
		}
	}()

	rctx, cancel := context.WithTimeout(ctx, c.opts.ReadyTimeout)
	defer cancel()
	// A KVM guest that prints nothing for KVMSilence is not slow but
	// stuck (KVM that cannot run guests); say so early instead of
	// waiting for the ready timeout.
	var heard atomic.Bool
	silent := func() bool { return false }
	if c.st.Accel == AccelKVM && c.opts.KVMSilence > 0 {
		kctx, kcancel := context.WithCancelCause(rctx)
		defer kcancel(nil)
		rctx = kctx
		timer := time.AfterFunc(c.opts.KVMSilence, func() {
			if !heard.Load() {
				kcancel(ErrKVMSilent)
			}
		})
		defer timer.Stop()
		silent = func() bool { return errors.Is(context.Cause(kctx), ErrKVMSilent) }
	}
	var ready Ready
	var perr error
	_, ferr := followConsole(rctx, consolePath, off, done, func(line string) bool {
		heard.Store(true)
		c.event(v.id, EventConsole, line)
		if strings.Contains(line, errorMarker) {
			c.event(v.id, EventError, line)
		}
		r, ok, err := parseReady(line)
		if !ok {
			return false
		}
		if err != nil {
			perr = err
			return true
		}
		r.BootToReady = time.Since(t0)
		ready = r
		return true
	})
	switch {
	case perr != nil:
		return perr
	case ferr != nil && silent():
		return fmt.Errorf("%w: VM %d under KVM within %v; qemu log tail:\n%s", ErrKVMSilent, v.id, c.opts.KVMSilence, tailFile(filepath.Join(c.dir, st.QEMULog), 5))
	case errors.Is(ferr, ErrExited):
		v.mu.Lock()
		werr := v.exitErr
		v.mu.Unlock()
		return fmt.Errorf("%w: VM %d before WORMSPACE-READY (%v); console tail:\n%s\nqemu log tail:\n%s",
			ErrExited, v.id, werr, tailFile(consolePath, 15), tailFile(filepath.Join(c.dir, st.QEMULog), 5))
	case errors.Is(ferr, context.DeadlineExceeded) && ctx.Err() == nil:
		return fmt.Errorf("%w: VM %d after %v; console tail:\n%s", ErrNotReady, v.id, c.opts.ReadyTimeout, tailFile(consolePath, 15))
	case ferr != nil:
		return ferr
	}
	if ready.ID != 0 && ready.ID != v.id {
		return fmt.Errorf("qemu: VM %d reported id=%d on its READY line", v.id, ready.ID)
	}
	v.mu.Lock()
	v.ready = ready
	v.st.BootToReadyMS = float64(ready.BootToReady.Microseconds()) / 1000
	v.st.GuestUptimeMS = float64(ready.Uptime.Microseconds()) / 1000
	v.mu.Unlock()
	c.event(v.id, EventReady, fmt.Sprintf("ready: boot-to-ready %v, guest uptime %v, accel %s, server %s",
		ready.BootToReady.Round(time.Millisecond), ready.Uptime.Round(time.Millisecond), c.st.Accel, st.Server))
	return c.saveVM(v)
}

// qmpCommand connects to a QMP socket (name relative to dir), negotiates
// capabilities and executes argument-less commands in order, stopping at
// the first that fails.
func qmpCommand(ctx context.Context, dir, name string, commands ...string) error {
	_, err := qmpExecute(ctx, dir, name, commands...)
	return err
}

// qmpExecute is qmpCommand returning the last command's "return" value.
func qmpExecute(ctx context.Context, dir, name string, commands ...string) (json.RawMessage, error) {
	path := filepath.Join(dir, name)
	if len(path) >= 100 {
		// sun_path holds 108 bytes; reach a deep socket through an open
		// directory descriptor instead.
		d, err := os.Open(dir)
		if err != nil {
			return nil, err
		}
		defer d.Close()
		path = fmt.Sprintf("/proc/self/fd/%d/%s", d.Fd(), name)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	r := bufio.NewReader(conn)
	// read returns the next reply that is not an asynchronous event.
	read := func() (map[string]json.RawMessage, error) {
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return nil, err
			}
			var m map[string]json.RawMessage
			if err := json.Unmarshal(line, &m); err != nil {
				return nil, fmt.Errorf("qemu: QMP: %w", err)
			}
			if _, ev := m["event"]; !ev {
				return m, nil
			}
		}
	}
	if _, err := read(); err != nil { // greeting
		return nil, err
	}
	var ret json.RawMessage
	for _, cmd := range append([]string{"qmp_capabilities"}, commands...) {
		if _, err := fmt.Fprintf(conn, "{\"execute\":%q}\n", cmd); err != nil {
			return nil, err
		}
		m, err := read()
		if err != nil {
			return nil, err
		}
		if e, bad := m["error"]; bad {
			return nil, fmt.Errorf("qemu: QMP %s: %s", cmd, e)
		}
		ret = m["return"]
	}
	return ret, nil
}

// ensureDisk creates and formats path (ext4, sizeMiB, sparse) unless it
// exists; an existing disk is kept untouched so acceptor state survives
// restarts. It reports whether it formatted a new disk.
func ensureDisk(ctx context.Context, path string, sizeMiB int) (bool, error) {
	if _, err := os.Stat(path); err == nil {
		return false, nil
	}
	mkfs, err := findTool("mkfs.ext4")
	if err != nil {
		return false, err
	}
	tmp := path + ".new"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return false, err
	}
	err = f.Truncate(int64(sizeMiB) << 20)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return false, err
	}
	// -F: the target is a regular file, not a block device; -q: quiet.
	if out, err := exec.CommandContext(ctx, mkfs, "-F", "-q", tmp).CombinedOutput(); err != nil {
		os.Remove(tmp)
		return false, fmt.Errorf("qemu: mkfs.ext4 %s: %w: %s", tmp, err, strings.TrimSpace(string(out)))
	}
	// Rename last, so an interrupted format never leaves a disk that
	// looks ready.
	return true, os.Rename(tmp, path)
}

// findTool looks a program up in PATH and then in the sbin directories,
// which a non-login root shell may lack.
func findTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/bin"} {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("qemu: %s not found (apt-get install e2fsprogs / qemu-system-x86)", name)
}
