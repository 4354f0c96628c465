package nemesis

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/wormspace/wormspace/qemu"
	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/check"
	"github.com/wormspace/wormspace/worm/client"
	"github.com/wormspace/wormspace/worm/wire"
)

// VMFaults are the faults RunVM knows, in report order.
var VMFaults = []string{"kill", "pause", "partition"}

// VMConfig configures RunVM.
type VMConfig struct {
	// Seed fixes the fault schedule and the clients' choices.
	Seed uint64
	// Duration of the randomized phase (default 30s). A VM restart takes
	// a boot (5-10 s per VM under TCG on a 2-core machine) and happens
	// inside it.
	Duration time.Duration
	// Faults to inject (default: all of VMFaults).
	Faults []string
	// ImageDir holds the boot image (default qemu.DefaultImageDir, made
	// by `make image`).
	ImageDir string
	// Dir receives the cluster's state, disks and console logs (default:
	// a new temporary directory, removed unless the run failed).
	Dir string
	// Accel is the accelerator (default qemu.AccelTCG: reproducible
	// wherever QEMU runs; KVM is often missing or unusable nested).
	Accel qemu.Accel
	// Stack is the guests' TCP stack (default qemu.StackNetstack).
	Stack string
	// CheckTimeout bounds the porcupine check (default 2m).
	CheckTimeout time.Duration
	// Logf receives progress lines (default: discarded).
	Logf func(format string, args ...any)
}

// vmOpTimeout bounds one operation: TCG guests are slow, and an fsync in
// the guest goes through an emulated disk.
const vmOpTimeout = 5 * time.Second

// vmHarness is one run of RunVM.
type vmHarness struct {
	cfg  VMConfig
	rep  *Report
	c    *qemu.Cluster
	key  []byte
	logf func(string, ...any)
	rec  *check.Recorder
	cnt  counter
	ipt  string // iptables in the cluster's namespace ("": no partitions)

	clientsMu sync.Mutex
	clients   []*client.Client

	probe    worm.Space
	probeOff atomic.Uint64

	mu       sync.Mutex
	durable  map[worm.Addr][]byte
	faults   map[string]int
	recov    []Recovery
	verdicts []Verdict
	cuts     map[string][]string // rule key -> iptables rule
}

// RunVM runs the VM harness once: boot a 3-VM cluster from the boot image,
// load it with register and durability clients while injecting faults
// (kill -9 of a VM's QEMU and a restart from its disk, SIGSTOP/SIGCONT of
// a QEMU, a partition with iptables in the cluster's network namespace),
// measure availability with one and two VMs down and the recovery times,
// then check the register history (porcupine) and that every
// acknowledged write reads back. The error is for a run that could not be
// carried out; it wraps qemu.ErrNoQEMU or qemu.ErrNoImage when those are
// missing. Check failures are in the Report's verdicts.
func RunVM(ctx context.Context, cfg VMConfig) (*Report, error) {
	if cfg.Duration <= 0 {
		cfg.Duration = 30 * time.Second
	}
	if len(cfg.Faults) == 0 {
		cfg.Faults = slices.Clone(VMFaults)
	}
	for _, f := range cfg.Faults {
		if !slices.Contains(VMFaults, f) {
			return nil, fmt.Errorf("nemesis: unknown VM fault %q (known: %s)", f, strings.Join(VMFaults, ","))
		}
	}
	if cfg.ImageDir == "" {
		cfg.ImageDir = qemu.DefaultImageDir
	}
	if cfg.Accel == "" {
		cfg.Accel = qemu.AccelTCG
	}
	if cfg.Stack == "" {
		cfg.Stack = qemu.StackNetstack
	}
	if cfg.CheckTimeout <= 0 {
		cfg.CheckTimeout = 2 * time.Minute
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	tc := Config{Seed: cfg.Seed, Dir: cfg.Dir}
	dir, temp, err := tempDir(&tc)
	if err != nil {
		return nil, err
	}
	rep := &Report{Seed: cfg.Seed, Dir: dir, Skipped: map[string]string{}, vm: true}
	h := &vmHarness{cfg: cfg, rep: rep, logf: cfg.Logf, rec: check.NewRecorder(),
		durable: map[worm.Addr][]byte{}, faults: map[string]int{}, cuts: map[string][]string{}}
	began := time.Now()
	err = h.run(ctx, dir)
	rep.Duration = time.Since(began)
	rep.Ops = h.cnt.snapshot()
	rep.Faults = h.faults
	rep.Recoveries = h.recov
	rep.Verdicts = h.verdicts
	if err == nil && temp && rep.OK() {
		os.RemoveAll(dir)
	}
	return rep, err
}

func (h *vmHarness) fault(name string) {
	h.mu.Lock()
	h.faults[name]++
	h.mu.Unlock()
}

func (h *vmHarness) recovered(what string, d time.Duration) {
	h.logf("recovery: %s: %v", what, d.Round(time.Millisecond))
	h.mu.Lock()
	h.recov = append(h.recov, Recovery{What: what, Took: d})
	h.mu.Unlock()
}

func (h *vmHarness) verdict(name string, ok bool, format string, args ...any) {
	v := Verdict{Name: name, OK: ok, Detail: fmt.Sprintf(format, args...)}
	h.logf("verdict %s ok=%v: %s", name, ok, v.Detail)
	h.mu.Lock()
	h.verdicts = append(h.verdicts, v)
	h.mu.Unlock()
}

func (h *vmHarness) dial(ctx context.Context, id string) (*client.Client, error) {
	dctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	cl, err := client.Dial(dctx, client.Config{Servers: strings.Split(h.c.Servers(), ","), Key: h.key, ID: id,
		Dialer: h.c, Logger: quiet(), OpTimeout: vmOpTimeout})
	if errors.Is(err, wire.ErrVersion) {
		return nil, fmt.Errorf("the boot image's wormd speaks another protocol version than this client: rebuild the image (make image): %w", err)
	}
	if err != nil {
		return nil, err
	}
	h.clientsMu.Lock()
	h.clients = append(h.clients, cl)
	h.clientsMu.Unlock()
	return cl, nil
}

func (h *vmHarness) run(ctx context.Context, dir string) error {
	cfg := h.cfg
	faults := slices.Clone(cfg.Faults)
	t0 := time.Now()
	c, err := qemu.Up(ctx, qemu.Config{
		N: 3, Stack: cfg.Stack, Accel: cfg.Accel, ImageDir: cfg.ImageDir, StateDir: dir,
		// 32 MiB disks: the run writes little, and mkfs and the sparse
		// files stay small.
		DiskMiB: 32, SegmentSize: segSize,
		Options: qemu.Options{
			ReadyTimeout:   3 * time.Minute,
			StopTimeout:    5 * time.Second,
			KillWithParent: true,
			Progress: func(e qemu.Event) {
				if e.Kind != qemu.EventConsole || strings.Contains(e.Msg, "WORMSPACE") {
					h.logf("%s", e)
				}
			},
			Logger: quiet(),
		},
	})
	if err != nil {
		return err
	}
	h.c = c
	defer c.Close()
	defer func() {
		h.clientsMu.Lock()
		for _, cl := range h.clients {
			cl.Close()
		}
		h.clientsMu.Unlock()
	}()
	h.rep.Network = fmt.Sprintf("3 QEMU VMs (accel %s, net %s, guest stack %s) booted in %v", c.Accel(), c.Net(), c.Stack(), time.Since(t0).Round(time.Millisecond))
	for _, v := range c.VMs() {
		h.recovered(fmt.Sprintf("vm%d first boot: exec to ready", v.ID()), v.Ready().BootToReady)
	}
	if h.key, err = hex.DecodeString(c.Key()); err != nil {
		return err
	}
	if slices.Contains(faults, "partition") {
		if ipt, err := vmIptables(c); err != nil {
			h.rep.Skipped["partition"] = err.Error()
			faults = slices.DeleteFunc(faults, func(f string) bool { return f == "partition" })
		} else {
			h.ipt = ipt
			defer h.heal()
		}
	}
	h.logf("cluster up: WORM_SERVERS=%s (%s); faults %v", c.Servers(), h.rep.Network, faults)

	admin, err := h.dial(ctx, "vm-admin")
	if err != nil {
		return err
	}
	ra := h.rec.Wrap(admin)
	for _, s := range []uint64{regSegs, regSegs + 1, probeSeg, probeSeg + 1, probeSeg + 2, probeSeg + 3} {
		if err := retryUntil(ctx, 30*time.Second, func(c context.Context) error { _, err := ra.Alloc(c, s, nil); return err }); err != nil {
			return fmt.Errorf("alloc %d: %w", s, err)
		}
	}
	pc, err := h.dial(ctx, "vm-probe")
	if err != nil {
		return err
	}
	h.probe = h.rec.Wrap(pc)

	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	var wg sync.WaitGroup
	if err := h.workload(wctx, &wg); err != nil {
		wcancel()
		wg.Wait()
		return err
	}
	stop := func() { wcancel(); wg.Wait() }

	rng := rand.New(rand.NewPCG(cfg.Seed, 0x766d6e65))
	end := time.Now().Add(cfg.Duration)
	var round []int
	for n := 1; time.Now().Before(end) && ctx.Err() == nil && len(faults) > 0; n++ {
		sleep(ctx, between(rng, 500*time.Millisecond, 1500*time.Millisecond))
		if len(round) == 0 {
			round = rng.Perm(len(faults))
		}
		f := faults[round[0]]
		round = round[1:]
		if err := h.inject(ctx, rng, f, n); err != nil {
			stop()
			return err
		}
	}
	if len(faults) == 0 {
		sleep(ctx, cfg.Duration)
	}
	if err := h.availability(ctx); err != nil {
		stop()
		return err
	}
	stop()
	h.heal()
	for _, v := range c.VMs() {
		_ = syscall.Kill(v.Pid(), syscall.SIGCONT)
		if !v.Running() {
			if err := v.Start(ctx); err != nil {
				return err
			}
		}
	}
	h.finalChecks(ctx)
	return nil
}

// workload starts two register clients (capture/write/read on contended
// registers) and a durability writer, all recorded.
func (h *vmHarness) workload(ctx context.Context, wg *sync.WaitGroup) error {
	began := time.Now()
	for i := range 2 {
		cl, err := h.dial(ctx, fmt.Sprintf("vm-reg-%d", i))
		if err != nil {
			return err
		}
		sp := h.rec.Wrap(cl)
		rng := rand.New(rand.NewPCG(h.cfg.Seed, uint64(i)+1))
		wg.Go(func() {
			for n := 0; ctx.Err() == nil; n++ {
				window := int(time.Since(began) / (100 * time.Millisecond))
				a := worm.Addr{Seg: regSegs + uint64(rng.IntN(2)), Off: uint32((window + rng.IntN(4)) % segSize)}
				octx, cancel := context.WithTimeout(ctx, vmOpTimeout)
				var err error
				if rng.IntN(3) == 0 {
					_, err = sp.Read(octx, a)
					h.cnt.add("read", err)
				} else {
					var tok worm.Token
					tok, err = sp.Capture(octx, a)
					h.cnt.add("capture", err)
					if err == nil {
						err = sp.Write(octx, a, tok, fmt.Appendf(nil, "v%d-%d", i, n))
						h.cnt.add("write", err)
					}
				}
				cancel()
				if err != nil {
					sleep(ctx, 50*time.Millisecond) // no quorum: do not spin
				}
			}
		})
	}
	dcl, err := h.dial(ctx, "vm-durable")
	if err != nil {
		return err
	}
	dsp := h.rec.Wrap(dcl)
	wg.Go(func() {
		seg, off, allocated := uint64(durSeg), uint32(0), false
		for ctx.Err() == nil {
			octx, cancel := context.WithTimeout(ctx, vmOpTimeout)
			if !allocated {
				_, err := dsp.Alloc(octx, seg, nil)
				h.cnt.add("durable-alloc", err)
				allocated = err == nil
				cancel()
				if !allocated {
					sleep(ctx, 100*time.Millisecond)
				}
				continue
			}
			a := worm.Addr{Seg: seg, Off: off}
			v := fmt.Appendf(nil, "d%d-%d", seg, off)
			tok, err := dsp.Capture(octx, a)
			h.cnt.add("durable-capture", err)
			if err == nil {
				err = dsp.Write(octx, a, tok, v)
				h.cnt.add("durable-write", err)
				if err == nil {
					h.mu.Lock()
					h.durable[a] = v
					h.mu.Unlock()
				}
				off++
			} else if errors.Is(err, worm.ErrWritten) {
				off++
			}
			cancel()
			if off == segSize {
				seg, off, allocated = seg+1, 0, false
			}
			if err != nil {
				sleep(ctx, 50*time.Millisecond)
			} else {
				sleep(ctx, 10*time.Millisecond)
			}
		}
	})
	return nil
}

// probeWrite captures and writes the next probe register.
func (h *vmHarness) probeWrite(ctx context.Context) error {
	off := h.probeOff.Load()
	if off >= probeSegs*segSize {
		return errors.New("nemesis: out of probe registers")
	}
	a := worm.Addr{Seg: probeSeg + off/segSize, Off: uint32(off % segSize)}
	octx, cancel := context.WithTimeout(ctx, vmOpTimeout)
	defer cancel()
	tok, err := h.probe.Capture(octx, a)
	if err != nil {
		h.cnt.add("probe-capture", err)
		if errors.Is(err, worm.ErrWritten) {
			h.probeOff.Add(1)
		}
		return err
	}
	h.probeOff.Add(1)
	err = h.probe.Write(octx, a, tok, fmt.Appendf(nil, "probe-%d", off))
	h.cnt.add("probe-write", err)
	return err
}

// probeUntil probes until a write succeeds (within a minute: a restart
// under TCG includes a boot).
func (h *vmHarness) probeUntil(ctx context.Context) error {
	end := time.Now().Add(time.Minute)
	for {
		err := h.probeWrite(ctx)
		if err == nil || time.Now().After(end) || ctx.Err() != nil {
			return err
		}
		sleep(ctx, 50*time.Millisecond)
	}
}

func (h *vmHarness) vm(i int) *qemu.VM { return h.c.VMs()[i] }

// inject runs one fault of the randomized phase to its end (healed).
func (h *vmHarness) inject(ctx context.Context, rng *rand.Rand, f string, n int) error {
	i := rng.IntN(3)
	v := h.vm(i)
	switch f {
	case "kill":
		down := between(rng, 0, time.Second)
		h.logf("fault %d: kill -9 the QEMU of vm%d, restart it from its disk after %v", n, i+1, down)
		if err := v.Kill(ctx); err != nil {
			return err
		}
		h.fault("kill")
		sleep(ctx, down)
		t0 := time.Now()
		if err := v.Start(ctx); err != nil {
			return fmt.Errorf("restart vm%d: %w", i+1, err)
		}
		h.recovered(fmt.Sprintf("vm%d killed: restart to ready (boot %v)", i+1, v.Ready().BootToReady.Round(time.Millisecond)), time.Since(t0))
	case "pause":
		d := between(rng, 500*time.Millisecond, 3*time.Second)
		h.logf("fault %d: SIGSTOP the QEMU of vm%d for %v", n, i+1, d)
		if err := stopProcess(v.Pid()); err != nil {
			return fmt.Errorf("pause vm%d: %w", i+1, err)
		}
		h.fault("pause")
		sleep(ctx, d)
		if err := syscall.Kill(v.Pid(), syscall.SIGCONT); err != nil {
			return fmt.Errorf("resume vm%d: %w", i+1, err)
		}
	case "partition":
		d := between(rng, 500*time.Millisecond, 3*time.Second)
		h.logf("fault %d: partition vm%d away for %v", n, i+1, d)
		if err := h.cut(v); err != nil {
			return err
		}
		h.fault("partition")
		sleep(ctx, d)
		return h.heal()
	}
	return nil
}

// availability: one VM down keeps serving; two down (killed, stopped or
// partitioned away) make operations unavailable; healing restores
// service by itself, and the time it takes is recorded.
func (h *vmHarness) availability(ctx context.Context) error {
	h.logf("availability: kill -9 vm1")
	if err := h.vm(0).Kill(ctx); err != nil {
		return err
	}
	h.fault("kill")
	err := retryUntil(ctx, 15*time.Second, h.probeWrite)
	h.verdict("one-down", err == nil, "write with vm1 of 3 killed: %v", kindOrNil(err))
	h.logf("availability: kill -9 vm2 too")
	if err := h.vm(1).Kill(ctx); err != nil {
		return err
	}
	h.fault("kill")
	werr := h.probeWrite(ctx)
	h.verdict("two-down", errors.Is(werr, worm.ErrUnavailable), "write with 2 of 3 VMs killed: %v (want unavailable)", kindOrNil(werr))
	t0 := time.Now()
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i := range 2 {
		wg.Go(func() { errs[i] = h.vm(i).Start(ctx) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("restart vm1 and vm2: %w", err)
	}
	booted := time.Since(t0)
	if err := h.probeUntil(ctx); err != nil {
		h.verdict("heal-kill", false, "no write a minute after restarting 2 killed VMs: %v", err)
	} else {
		d := time.Since(t0)
		h.recovered(fmt.Sprintf("2 of 3 VMs killed: restarts begin to first write (boots %v)", booted.Round(time.Millisecond)), d)
		h.verdict("heal-kill", true, "service resumed %v after the restarts began (both booted after %v)", d.Round(time.Millisecond), booted.Round(time.Millisecond))
	}

	h.logf("availability: SIGSTOP the QEMUs of vm2 and vm3")
	for _, i := range []int{1, 2} {
		if err := stopProcess(h.vm(i).Pid()); err != nil {
			return err
		}
		h.fault("pause")
	}
	perr := h.probeWrite(ctx)
	h.verdict("two-paused", errors.Is(perr, worm.ErrUnavailable), "write with 2 of 3 VMs stopped: %v (want unavailable)", kindOrNil(perr))
	t0 = time.Now()
	for _, i := range []int{1, 2} {
		if err := syscall.Kill(h.vm(i).Pid(), syscall.SIGCONT); err != nil {
			return err
		}
	}
	if err := h.probeUntil(ctx); err != nil {
		h.verdict("heal-pause", false, "no write a minute after SIGCONT: %v", err)
	} else {
		d := time.Since(t0)
		h.recovered("2 of 3 VMs stopped: SIGCONT to first write", d)
		h.verdict("heal-pause", true, "service resumed %v after SIGCONT", d.Round(time.Millisecond))
	}

	if h.ipt != "" {
		h.logf("availability: partition vm2 and vm3 away")
		for _, i := range []int{1, 2} {
			if err := h.cut(h.vm(i)); err != nil {
				return err
			}
			h.fault("partition")
		}
		cerr := h.probeWrite(ctx)
		h.verdict("two-cut", errors.Is(cerr, worm.ErrUnavailable), "write with 2 of 3 VMs partitioned away: %v (want unavailable)", kindOrNil(cerr))
		t0 := time.Now()
		if err := h.heal(); err != nil {
			return err
		}
		if err := h.probeUntil(ctx); err != nil {
			h.verdict("heal-cut", false, "no write a minute after the partition healed: %v", err)
		} else {
			d := time.Since(t0)
			h.recovered("2 of 3 VMs partitioned: heal to first write", d)
			h.verdict("heal-cut", true, "service resumed %v after the partition healed", d.Round(time.Millisecond))
		}
	}
	return nil
}

// finalChecks reads back every acknowledged write and checks the register
// history.
func (h *vmHarness) finalChecks(ctx context.Context) {
	cl, err := h.dial(ctx, "vm-final")
	if err != nil {
		h.verdict("final", false, "cannot dial after healing: %v", err)
		return
	}
	sp := h.rec.Wrap(cl)
	h.mu.Lock()
	durable := make(map[worm.Addr][]byte, len(h.durable))
	for a, v := range h.durable {
		durable[a] = v
	}
	h.mu.Unlock()
	bad := 0
	var first string
	for a, want := range durable {
		var got []byte
		err := retryUntil(ctx, 20*time.Second, func(c context.Context) error {
			var err error
			got, err = sp.Read(c, a)
			if errors.Is(err, worm.ErrEmpty) {
				return nil // a definite (wrong) answer
			}
			return err
		})
		if err != nil || !bytes.Equal(got, want) {
			bad++
			if first == "" {
				first = fmt.Sprintf("%v: read %.20q, %v; acknowledged %.20q", a, got, err, want)
			}
		}
	}
	h.verdict("durability", bad == 0 && len(durable) > 0, "%d acknowledged writes read back after every fault (%d VM kills), %d wrong %s",
		len(durable), h.faults["kill"], bad, first)

	ok, res := check.Check(h.rec.History(), h.cfg.CheckTimeout)
	v := Verdict{Name: "registers", OK: ok && res.Outcome == porcupine.Ok, Detail: res.String(), Visualization: res.Visualization}
	if res.Outcome == porcupine.Unknown {
		v.Detail += " (porcupine timed out: no definite verdict)"
	}
	h.logf("verdict registers ok=%v: %s", v.OK, v.Detail)
	h.mu.Lock()
	h.verdicts = append(h.verdicts, v)
	h.mu.Unlock()
}

// stopProcess sends SIGSTOP to pid and returns once it is stopped (the
// signal is asynchronous).
func stopProcess(pid int) error {
	if pid <= 0 {
		return errors.New("not running")
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		return err
	}
	for deadline := time.Now().Add(5 * time.Second); ; {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return err
		}
		if j := bytes.LastIndexByte(b, ')'); j >= 0 && j+2 < len(b) && (b[j+2] == 'T' || b[j+2] == 't') {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pid %d not stopped 5s after SIGSTOP", pid)
		}
		time.Sleep(time.Millisecond)
	}
}

// vmIptables finds an iptables that works inside the cluster's network
// namespace, or says why partitions cannot be made.
func vmIptables(c *qemu.Cluster) (string, error) {
	if c.Netns() == "" {
		return "", fmt.Errorf("the cluster runs on QEMU user networking (%s): no namespace to filter in (needs root and /dev/net/tun)", c.Net())
	}
	var why []string
	for _, b := range []string{"iptables", "iptables-legacy"} {
		p, err := exec.LookPath(b)
		if err != nil {
			why = append(why, b+": not installed")
			continue
		}
		probe := []string{"INPUT", "-p", "tcp", "--dport", "1", "-j", "DROP"}
		if out, err := nsIptables(c.Netns(), p, "-A", probe); err != nil {
			why = append(why, fmt.Sprintf("%s: %v %s", b, err, out))
			continue
		}
		nsIptables(c.Netns(), p, "-D", probe)
		return p, nil
	}
	return "", fmt.Errorf("no usable iptables in namespace %s (apt package iptables): %s", c.Netns(), strings.Join(why, "; "))
}

// nsIptables runs iptables op rule inside the named network namespace.
func nsIptables(ns, bin, op string, rule []string) (string, error) {
	args := append([]string{"netns", "exec", ns, bin, "-w", op}, rule...)
	out, err := exec.Command("ip", args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// cut drops everything between the host side of the cluster network and
// v, both ways. The host is an endpoint of that network, so its packets
// to v pass OUTPUT and v's to it INPUT; dropped there, connections stall
// (a dropped SYN is retried, not refused).
func (h *vmHarness) cut(v *qemu.VM) error {
	host, _, err := net.SplitHostPort(v.Server())
	if err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, r := range [][]string{{"OUTPUT", "-d", host, "-j", "DROP"}, {"INPUT", "-s", host, "-j", "DROP"}} {
		k := strings.Join(r, " ")
		if _, ok := h.cuts[k]; ok {
			continue
		}
		if out, err := nsIptables(h.c.Netns(), h.ipt, "-A", r); err != nil {
			return fmt.Errorf("iptables -A %s in %s: %v %s", k, h.c.Netns(), err, out)
		}
		h.cuts[k] = r
	}
	return nil
}

// heal removes every partition rule.
func (h *vmHarness) heal() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	var errs []error
	for k, r := range h.cuts {
		if out, err := nsIptables(h.c.Netns(), h.ipt, "-D", r); err != nil {
			errs = append(errs, fmt.Errorf("iptables -D %s: %v %s", k, err, out))
			continue
		}
		delete(h.cuts, k)
	}
	return errors.Join(errs...)
}
