package nemesis

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/wormspace/wormspace/apps/wormlog"
	"github.com/wormspace/wormspace/apps/wormpaxos"
	"github.com/wormspace/wormspace/apps/wormpaxos/wormpaxostest"
	"github.com/wormspace/wormspace/netstack"
	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/check"
	"github.com/wormspace/wormspace/worm/client"
	"github.com/wormspace/wormspace/worm/localcluster"
)

// Segment layout of a run (SegmentSize 256).
const (
	segSize    = 256
	regSegs    = 10   // 10, 11: contended registers
	probeSeg   = 50   // 50..53: availability probes
	probeSegs  = 4    //
	bigSeg     = 60   // 60..: large values for the disk fault
	durSeg     = 100  // 100..: the durability writer
	logSeg     = 1000 // WormLog
	kvSeg      = 2000 // WormPaxos
	bigValue   = 256 << 10
	opTimeout  = 3 * time.Second
	healWithin = 30 * time.Second
)

type harness struct {
	cfg  Config
	rep  *Report
	lc   *localcluster.Cluster
	key  []byte
	disk *smallDisk
	net  *netFaults // iptables partitions of kernel-TCP wormds
	tap  *tapNet    // netstack wormds on TAP devices: packet faults, partitions at the link
	logf func(string, ...any)

	rec    *check.Recorder
	cnt    counter
	kvHist *wormpaxostest.KVHistory

	clientsMu sync.Mutex
	clients   []*client.Client
	nclients  int

	probe    worm.Space // recorded
	probeOff atomic.Uint64
	bigOff   atomic.Uint64
	// bigAllocated is the big area's allocated segment (0: none yet).
	bigAllocated uint64
	bigSpace     worm.Space // recorded

	mu         sync.Mutex
	violations []string
	durable    map[worm.Addr][]byte
	logAcked   map[uint64][]byte
	faults     map[string]int
	recov      []Recovery
	verdicts   []Verdict
}

func (h *harness) violation(format string, args ...any) {
	h.mu.Lock()
	h.violations = append(h.violations, fmt.Sprintf(format, args...))
	h.mu.Unlock()
}

func (h *harness) fault(name string) {
	h.mu.Lock()
	h.faults[name]++
	h.mu.Unlock()
}

func (h *harness) recovered(what string, d time.Duration) {
	h.logf("recovery: %s: %v", what, d.Round(time.Millisecond))
	h.mu.Lock()
	h.recov = append(h.recov, Recovery{What: what, Took: d})
	h.mu.Unlock()
}

func (h *harness) verdict(name string, ok bool, format string, args ...any) {
	v := Verdict{Name: name, OK: ok, Detail: fmt.Sprintf(format, args...)}
	h.logf("verdict %s ok=%v: %s", name, ok, v.Detail)
	h.mu.Lock()
	h.verdicts = append(h.verdicts, v)
	h.mu.Unlock()
}

// dial opens a client of the cluster (closed at the end of the run).
func (h *harness) dial(ctx context.Context, name string) (*client.Client, error) {
	h.clientsMu.Lock()
	h.nclients++
	id := fmt.Sprintf("%s-%d", name, h.nclients)
	h.clientsMu.Unlock()
	dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	cl, err := client.Dial(dctx, client.Config{Servers: h.lc.Servers(), Key: h.key, ID: id, Logger: quiet(), OpTimeout: opTimeout})
	if err != nil {
		return nil, err
	}
	h.clientsMu.Lock()
	h.clients = append(h.clients, cl)
	h.clientsMu.Unlock()
	return cl, nil
}

// retryUntil calls f until it succeeds or within has passed.
func retryUntil(ctx context.Context, within time.Duration, f func(context.Context) error) error {
	end := time.Now().Add(within)
	for {
		octx, cancel := context.WithTimeout(ctx, opTimeout)
		err := f(octx)
		cancel()
		if err == nil || time.Now().After(end) || ctx.Err() != nil {
			return err
		}
		sleep(ctx, 20*time.Millisecond)
	}
}

// Run runs the harness once: start a cluster, load it while injecting
// faults, measure availability, heal, check. The error is for a run that
// could not be carried out (no wormd, a wormd that would not restart);
// check failures are in the Report's verdicts.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	dir, temp, err := tempDir(&cfg)
	if err != nil {
		return nil, err
	}
	rep := &Report{Seed: cfg.Seed, Dir: dir, Skipped: map[string]string{}}
	h := &harness{cfg: cfg, rep: rep, logf: cfg.Logf, rec: check.NewRecorder(), kvHist: wormpaxostest.NewKVHistory(),
		durable: map[worm.Addr][]byte{}, logAcked: map[uint64][]byte{}, faults: map[string]int{}}
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

func (h *harness) run(ctx context.Context, dir string) (err error) {
	cfg := h.cfg
	faults := slices.Clone(cfg.Faults)
	if slices.Contains(faults, "disk") {
		d, derr := mountSmallDisk(filepath.Join(dir, "disk-1"), filepath.Join(dir, "wormd-1"))
		if derr != nil {
			h.rep.Skipped["disk"] = derr.Error()
			faults = slices.DeleteFunc(faults, func(f string) bool { return f == "disk" })
		} else {
			h.disk = d
			defer d.unmount()
		}
	}
	if slices.ContainsFunc(faults, isPacketFault) {
		tn, terr := newTapNet(3, cfg.Wormd)
		if terr != nil {
			for _, f := range packetFaults {
				if slices.Contains(faults, f) {
					h.rep.Skipped[f] = terr.Error()
				}
			}
			faults = slices.DeleteFunc(faults, isPacketFault)
		} else {
			h.tap = tn
			defer tn.close()
		}
	}
	if slices.Contains(faults, "clock") {
		if why := timensWhy(); why != "" {
			h.rep.Skipped["clock"] = why
			faults = slices.DeleteFunc(faults, func(f string) bool { return f == "clock" })
		}
	}
	if h.tap == nil && (slices.Contains(faults, "partition") || slices.Contains(faults, "oneway")) {
		nf, nerr := newNetFaults()
		if nerr != nil {
			for _, f := range []string{"partition", "oneway"} {
				if slices.Contains(faults, f) {
					h.rep.Skipped[f] = nerr.Error()
				}
			}
			faults = slices.DeleteFunc(faults, func(f string) bool { return f == "partition" || f == "oneway" })
		} else {
			h.net = nf
			defer nf.heal()
		}
	}
	lcfg := localcluster.Config{N: 3, Dir: dir, Wormd: cfg.Wormd, SegmentSize: segSize}
	h.rep.Network = "kernel TCP on 127.0.0.1"
	if h.tap != nil {
		lcfg.Hosts, lcfg.NodeArgs = h.tap.hosts(), h.tap.nodeArgs(cfg.Seed)
		h.rep.Network = "netstack: each wormd on a TAP device (10.78.N.2), packet faults and partitions at its link endpoint (wormd -net-faults), clients on kernel TCP"
	}
	if InPrivateNetns() {
		h.rep.Network += ", in a private network namespace"
	}
	sctx, scancel := context.WithTimeout(ctx, 60*time.Second)
	lc, err := localcluster.Start(sctx, lcfg)
	scancel()
	if err != nil {
		return err
	}
	h.lc = lc
	defer func() {
		h.clientsMu.Lock()
		for _, c := range h.clients {
			c.Close()
		}
		h.clientsMu.Unlock()
		lc.Stop()
	}()
	if h.key, err = lc.Key(); err != nil {
		return err
	}
	h.logf("cluster up in %s: %s; faults %v", dir, lc.ServersEnv(), faults)

	// Setup: allocate the register segments.
	admin, err := h.dial(ctx, "admin")
	if err != nil {
		return err
	}
	ra := h.rec.Wrap(admin)
	for _, s := range []uint64{regSegs, regSegs + 1, probeSeg, probeSeg + 1, probeSeg + 2, probeSeg + 3} {
		if err := retryUntil(ctx, 10*time.Second, func(c context.Context) error { _, err := ra.Alloc(c, s, nil); return err }); err != nil {
			return fmt.Errorf("alloc %d: %w", s, err)
		}
	}
	pc, err := h.dial(ctx, "probe")
	if err != nil {
		return err
	}
	h.probe = h.rec.Wrap(pc)
	bc, err := h.dial(ctx, "big")
	if err != nil {
		return err
	}
	h.bigSpace = h.rec.Wrap(bc)

	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	var wg sync.WaitGroup
	if err := h.startWorkload(wctx, &wg); err != nil {
		wcancel()
		wg.Wait()
		return err
	}

	// Randomized phase.
	// Rounds: every fault once per round, in an order the seed shuffles,
	// so that a run long enough for one round injects each kind.
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x6e656d65))
	end := time.Now().Add(cfg.Duration)
	n := 0
	var round []int
	for time.Now().Before(end) && ctx.Err() == nil && len(faults) > 0 {
		sleep(ctx, between(rng, 100*time.Millisecond, 400*time.Millisecond))
		if len(round) == 0 {
			round = rng.Perm(len(faults))
		}
		f := faults[round[0]]
		round = round[1:]
		n++
		if err := h.inject(ctx, rng, f, n); err != nil {
			wcancel()
			wg.Wait()
			return err
		}
	}
	if len(faults) == 0 {
		sleep(ctx, cfg.Duration)
	}

	// Deterministic phases, under the same load.
	if err := h.availability(ctx); err != nil {
		wcancel()
		wg.Wait()
		return err
	}
	if h.disk != nil {
		if err := h.diskPhase(ctx); err != nil {
			wcancel()
			wg.Wait()
			return err
		}
	}
	wcancel()
	wg.Wait()

	// Heal everything, then check.
	if err := h.healAll(ctx); err != nil {
		return err
	}
	h.finalChecks(ctx)
	return nil
}

// inject runs one fault of the randomized phase to its end (healed).
func (h *harness) inject(ctx context.Context, rng *rand.Rand, f string, n int) error {
	lc := h.lc
	switch f {
	case "kill":
		i := rng.IntN(3)
		down := between(rng, 50*time.Millisecond, 600*time.Millisecond)
		h.logf("fault %d: kill -9 wormd %d for %v", n, i+1, down)
		if err := lc.Kill(i); err != nil {
			return err
		}
		h.fault("kill")
		sleep(ctx, down)
		return h.restart(ctx, i)
	case "pause":
		i := rng.IntN(3)
		d := between(rng, 100*time.Millisecond, time.Second)
		h.logf("fault %d: SIGSTOP wormd %d for %v", n, i+1, d)
		if err := lc.Pause(i); err != nil {
			return err
		}
		h.fault("pause")
		sleep(ctx, d)
		return lc.Resume(i)
	case "disk":
		k := 2 + rng.IntN(10)
		d := between(rng, 100*time.Millisecond, 600*time.Millisecond)
		filled, err := h.disk.fill()
		if err != nil {
			return err
		}
		h.logf("fault %d: disk of wormd 1 full (filler %d bytes), %d writes of %d KiB, for %v", n, filled, k, bigValue>>10, d)
		h.fault("disk")
		for j := 0; j < k && h.bigOff.Load()*bigValue < bigBudget; j++ {
			h.bigWrite(ctx)
		}
		sleep(ctx, d)
		return h.disk.free()
	case "partition", "oneway":
		i := rng.IntN(3)
		d := between(rng, 200*time.Millisecond, 1500*time.Millisecond)
		h.logf("fault %d: %s of wormd %d for %v", n, f, i+1, d)
		if err := h.cut(ctx, i, f == "oneway"); err != nil {
			return err
		}
		h.fault(f)
		sleep(ctx, d)
		return h.healCuts(ctx)
	case "loss", "delay", "dup", "reorder":
		r := packetRates(rng, f)
		targets, who := []int{rng.IntN(3)}, ""
		if rng.IntN(3) == 0 {
			targets = []int{0, 1, 2}
		}
		for _, i := range targets {
			who += fmt.Sprintf(",%d", i+1)
		}
		who = "wormd " + who[1:]
		d := between(rng, 300*time.Millisecond, 1500*time.Millisecond)
		h.logf("fault %d: %s on the link of %s (%s both ways) for %v", n, f, who, r, d)
		for _, i := range targets {
			if _, err := h.tap.set(ctx, i, netstack.BothWays(r)); err != nil {
				return err
			}
		}
		h.fault(f)
		sleep(ctx, d)
		var st netstack.FaultStats
		for _, i := range targets {
			fs, err := h.tap.set(ctx, i, netstack.FaultConfig{})
			if err != nil {
				return err
			}
			st = addStats(st, fs.Stats)
		}
		t0 := time.Now()
		if err := h.probeUntil(ctx); err != nil {
			h.verdict(f, false, "no write succeeded %v after clearing %s on %s: %v", healWithin, f, who, err)
			return nil
		}
		h.recovered(fmt.Sprintf("%s on %s: cleared to first write", f, who), time.Since(t0))
		h.logf("fault %d: link counters of %s so far: %s", n, who, statsLine(st))
	case "clock":
		i := rng.IntN(3)
		jump, err := clockJump(rng)
		if err != nil {
			return err
		}
		h.logf("fault %d: clock: kill -9 wormd %d, restart it with CLOCK_MONOTONIC/BOOTTIME moved %v (time namespace)", n, i+1, jump)
		if err := lc.Kill(i); err != nil {
			return err
		}
		h.fault("clock")
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := restartInTimens(rctx, lc, i, jump); err != nil {
			return err
		}
		h.restarted(i)
	case "powerloss":
		d := between(rng, 20*time.Millisecond, 300*time.Millisecond)
		h.logf("fault %d: power loss: kill -9 of every wormd at once, down %v", n, d)
		var wg sync.WaitGroup
		errs := make([]error, 3)
		for i := range 3 {
			wg.Go(func() { errs[i] = lc.Kill(i) })
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return err
		}
		h.fault("powerloss")
		sleep(ctx, d)
		t0 := time.Now()
		for i := range 3 {
			wg.Go(func() { errs[i] = h.restart(ctx, i) })
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return err
		}
		if err := h.probeUntil(ctx); err != nil {
			h.verdict("powerloss", false, "no write succeeded %v after restarting every wormd: %v", healWithin, err)
			return nil
		}
		h.recovered(fmt.Sprintf("power loss #%d: restart of all 3 to first write", h.faults["powerloss"]), time.Since(t0))
	}
	return nil
}

func (h *harness) restart(ctx context.Context, i int) error {
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	h.restarted(i) // entries made while it was down
	if err := h.lc.Restart(rctx, i); err != nil {
		return fmt.Errorf("restart wormd %d: %w", i+1, err)
	}
	h.restarted(i)
	return nil
}

// restarted forgets the kernel's ARP entry for a netstack wormd that
// started again with a new MAC address.
func (h *harness) restarted(i int) {
	if h.tap != nil {
		if err := h.tap.flushNeighbors(i); err != nil {
			h.logf("wormd %d: %v", i+1, err)
		}
	}
}

// cut cuts wormd i off the network (oneway: only its replies are lost):
// at its link for netstack wormds, with iptables on loopback otherwise.
func (h *harness) cut(ctx context.Context, i int, oneway bool) error {
	if h.tap != nil {
		c := netstack.BothWays(netstack.FaultRates{Loss: 1})
		if oneway {
			c = netstack.FaultConfig{Egress: netstack.FaultRates{Loss: 1}}
		}
		_, err := h.tap.set(ctx, i, c)
		return err
	}
	return h.net.cut(h.lc.Nodes[i].Addr, oneway)
}

// canCut reports whether partitions can be made.
func (h *harness) canCut() bool { return h.tap != nil || h.net != nil }

// healCuts ends partitions (and every other link fault).
func (h *harness) healCuts(ctx context.Context) error {
	if h.tap != nil {
		return h.clearLinks(ctx)
	}
	if h.net != nil {
		return h.net.heal()
	}
	return nil
}

// clearLinks removes the link faults of every running wormd.
func (h *harness) clearLinks(ctx context.Context) error {
	var errs []error
	for i, n := range h.lc.Nodes {
		if n.Running() {
			if _, err := h.tap.set(ctx, i, netstack.FaultConfig{}); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func addStats(a, b netstack.FaultStats) netstack.FaultStats {
	add := func(x, y netstack.FaultCounters) netstack.FaultCounters {
		return netstack.FaultCounters{Packets: x.Packets + y.Packets, Emitted: x.Emitted + y.Emitted, Dropped: x.Dropped + y.Dropped,
			Duplicated: x.Duplicated + y.Duplicated, Delayed: x.Delayed + y.Delayed, Reordered: x.Reordered + y.Reordered, Pending: x.Pending + y.Pending}
	}
	return netstack.FaultStats{Egress: add(a.Egress, b.Egress), Ingress: add(a.Ingress, b.Ingress)}
}

func statsLine(s netstack.FaultStats) string {
	c := addStats(netstack.FaultStats{Egress: s.Egress}, netstack.FaultStats{Egress: s.Ingress}).Egress
	return fmt.Sprintf("%d packets, %d dropped, %d duplicated, %d delayed, %d reordered", c.Packets, c.Dropped, c.Duplicated, c.Delayed, c.Reordered)
}

// probeWrite captures and writes the next probe register.
func (h *harness) probeWrite(ctx context.Context) error {
	off := h.probeOff.Load()
	if off >= probeSegs*segSize {
		return errors.New("nemesis: out of probe registers")
	}
	a := worm.Addr{Seg: probeSeg + off/segSize, Off: uint32(off % segSize)}
	octx, cancel := context.WithTimeout(ctx, opTimeout)
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
	err = h.probe.Write(octx, a, tok, []byte("probe-"+strconv.FormatUint(off, 10)))
	h.cnt.add("probe-write", err)
	return err
}

// probeUntil probes until a write succeeds (within healWithin).
func (h *harness) probeUntil(ctx context.Context) error {
	end := time.Now().Add(healWithin)
	for {
		err := h.probeWrite(ctx)
		if err == nil {
			return nil
		}
		if time.Now().After(end) || ctx.Err() != nil {
			return err
		}
		sleep(ctx, 20*time.Millisecond)
	}
}

// bigWrite writes one large value to the next register of the big area
// (called from the nemesis goroutine only).
func (h *harness) bigWrite(ctx context.Context) error {
	off := h.bigOff.Load()
	a := worm.Addr{Seg: bigSeg + off/segSize, Off: uint32(off % segSize)}
	octx, cancel := context.WithTimeout(ctx, 2*opTimeout)
	defer cancel()
	if h.bigAllocated != a.Seg {
		if _, err := h.bigSpace.Alloc(octx, a.Seg, nil); err != nil {
			h.cnt.add("big-alloc", err)
			return err
		}
		h.cnt.add("big-alloc", nil)
		h.bigAllocated = a.Seg
	}
	tok, err := h.bigSpace.Capture(octx, a)
	if err != nil {
		h.cnt.add("big-capture", err)
		if errors.Is(err, worm.ErrWritten) {
			h.bigOff.Add(1)
		}
		return err
	}
	h.bigOff.Add(1)
	v := bytes.Repeat([]byte{byte(off)}, bigValue)
	copy(v, fmt.Sprintf("big-%d-", off))
	err = h.bigSpace.Write(octx, a, tok, v)
	h.cnt.add("big-write", err)
	return err
}

// availability: one of three down keeps serving; two down fail with
// ErrUnavailable; healing (restart, SIGCONT) restores service by itself.
func (h *harness) availability(ctx context.Context) error {
	lc := h.lc
	h.logf("availability: kill -9 wormd 1")
	if err := lc.Kill(0); err != nil {
		return err
	}
	h.fault("kill")
	err := retryUntil(ctx, 5*time.Second, h.probeWrite)
	h.verdict("one-down", err == nil, "write with wormd 1 of 3 killed: %v", kindOrNil(err))
	h.logf("availability: kill -9 wormd 2 too")
	if err := lc.Kill(1); err != nil {
		return err
	}
	h.fault("kill")
	werr := h.probeWrite(ctx)
	// A read needs a majority too, except for a register the surviving
	// acceptor holds marked decided: one such report is enough (the value
	// is chosen), so the read may succeed, but only with the acknowledged
	// value.
	readOK, readWhat := true, "not tried (nothing acknowledged yet)"
	if a, want, ok := h.someDurable(); ok {
		octx, cancel := context.WithTimeout(ctx, opTimeout)
		got, rerr := h.probe.Read(octx, a)
		cancel()
		h.cnt.add("probe-read", rerr)
		switch {
		case errors.Is(rerr, worm.ErrUnavailable):
			readWhat = kindOrNil(rerr)
		case rerr == nil && bytes.Equal(got, want):
			readWhat = "the acknowledged value (the register is marked decided at the survivor)"
		default:
			readOK = false
			readWhat = fmt.Sprintf("%s, %.20q (acknowledged %.20q)", kindOrNil(rerr), got, want)
		}
	}
	h.verdict("two-down", errors.Is(werr, worm.ErrUnavailable) && readOK,
		"with 2 of 3 killed: write %v (want unavailable), read %s (want unavailable, or the acknowledged value of a register decided at the survivor)", kindOrNil(werr), readWhat)
	t0 := time.Now()
	if err := h.restart(ctx, 0); err != nil {
		return err
	}
	if err := h.restart(ctx, 1); err != nil {
		return err
	}
	if err := h.probeUntil(ctx); err != nil {
		h.verdict("heal-kill", false, "no write %v after restarting 2 killed wormds: %v", healWithin, err)
	} else {
		d := time.Since(t0)
		h.recovered("2 of 3 killed: restarts begin to first write", d)
		h.verdict("heal-kill", true, "service resumed %v after the restarts began", d.Round(time.Millisecond))
	}

	if h.canCut() {
		h.logf("availability: partition wormd 3 away, then wormd 2 too")
		if err := h.cut(ctx, 2, false); err != nil {
			return err
		}
		h.fault("partition")
		err := retryUntil(ctx, 5*time.Second, h.probeWrite)
		h.verdict("one-cut", err == nil, "write with wormd 3 of 3 partitioned away: %v", kindOrNil(err))
		if err := h.cut(ctx, 1, false); err != nil {
			return err
		}
		h.fault("partition")
		cerr := h.probeWrite(ctx)
		h.verdict("two-cut", errors.Is(cerr, worm.ErrUnavailable), "write with 2 of 3 partitioned away: %v (want unavailable)", kindOrNil(cerr))
		t0 := time.Now()
		if err := h.healCuts(ctx); err != nil {
			return err
		}
		if err := h.probeUntil(ctx); err != nil {
			h.verdict("heal-cut", false, "no write %v after the partition healed: %v", healWithin, err)
		} else {
			d := time.Since(t0)
			h.recovered("2 of 3 partitioned: heal to first write", d)
			h.verdict("heal-cut", true, "service resumed %v after the partition healed", d.Round(time.Millisecond))
		}
	}

	if h.tap != nil {
		if err := h.lossyPhase(ctx); err != nil {
			return err
		}
	}

	h.logf("availability: SIGSTOP wormds 2 and 3")
	if err := lc.Pause(1); err != nil {
		return err
	}
	if err := lc.Pause(2); err != nil {
		return err
	}
	h.fault("pause")
	h.fault("pause")
	perr := h.probeWrite(ctx)
	h.verdict("two-paused", errors.Is(perr, worm.ErrUnavailable), "write with 2 of 3 stopped: %v (want unavailable)", kindOrNil(perr))
	t0 = time.Now()
	if err := lc.Resume(1); err != nil {
		return err
	}
	if err := lc.Resume(2); err != nil {
		return err
	}
	if err := h.probeUntil(ctx); err != nil {
		h.verdict("heal-pause", false, "no write %v after SIGCONT: %v", healWithin, err)
	} else {
		d := time.Since(t0)
		h.recovered("2 of 3 stopped: SIGCONT to first write", d)
		h.verdict("heal-pause", true, "service resumed %v after SIGCONT", d.Round(time.Millisecond))
	}
	return nil
}

func kindOrNil(err error) string {
	if err == nil {
		return "ok"
	}
	return ErrKind(err) + " (" + err.Error() + ")"
}

// someDurable returns an acknowledged durable write, if any.
func (h *harness) someDurable() (worm.Addr, []byte, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for a, v := range h.durable {
		return a, v, true
	}
	return worm.Addr{}, nil, false
}

// diskPhase: wormd 1's disk full and wormd 2 down, so wormd 1 is needed
// for every quorum: writes must be refused (no wrong answer), reads of
// what is stored must still be served, and once the filler is removed
// writes must succeed again without a restart.
func (h *harness) diskPhase(ctx context.Context) error {
	lc := h.lc
	filled, err := h.disk.fill()
	if err != nil {
		return err
	}
	h.fault("disk")
	h.logf("disk phase: wormd 1's tmpfs full (filler %d bytes, %d free), kill -9 wormd 2", filled, h.disk.avail())
	if err := lc.Kill(1); err != nil {
		return err
	}
	h.fault("kill")
	ok, refused := 0, error(nil)
	for j := 0; j < 3*(4<<20)/bigValue && ctx.Err() == nil; j++ {
		if err := h.bigWrite(ctx); err != nil {
			refused = err
			break
		}
		ok++
	}
	logged := strings.Contains(readFile(lc.Nodes[0].Log), "no space")
	alive := lc.Nodes[0].Running()
	h.verdict("disk-refuse", refused != nil && !errors.Is(refused, worm.ErrWritten) && alive,
		"full wormd 1 (+ wormd 2 down): %d large writes fit its preallocated log, then the write failed: %v; wormd 1 still running: %v; its log mentions no space: %v",
		ok, kindOrNil(refused), alive, logged)
	// Reads are still served, with the right values.
	reads, bad, failed := 0, 0, 0
	var firstFail error
	h.mu.Lock()
	var addrs []worm.Addr
	for a := range h.durable {
		addrs = append(addrs, a)
		if len(addrs) == 50 {
			break
		}
	}
	h.mu.Unlock()
	for _, a := range addrs {
		h.mu.Lock()
		want := h.durable[a]
		h.mu.Unlock()
		octx, cancel := context.WithTimeout(ctx, opTimeout)
		v, err := h.probe.Read(octx, a)
		cancel()
		h.cnt.add("disk-read", err)
		reads++
		if err != nil {
			failed++
			if firstFail == nil {
				firstFail = err
			}
		} else if !bytes.Equal(v, want) {
			bad++
		}
	}
	// A read of a register wormd 1 does not hold yet (it was down or full
	// when the value was written) must write the value back to it to be
	// sure it is chosen, which a full disk refuses: such reads fail (never
	// with a wrong value). Reads of what it stores are served.
	h.verdict("disk-reads", bad == 0 && reads > failed,
		"reads through the full wormd 1 (+ wormd 2 down): %d, %d served, %d failed (first: %v; a read needing write-back to the full disk fails), %d wrong",
		reads, reads-failed, failed, kindOrNil(firstFail), bad)
	t0 := time.Now()
	if err := h.disk.free(); err != nil {
		return err
	}
	err = func() error {
		end := time.Now().Add(healWithin)
		for {
			err := h.bigWrite(ctx)
			if err == nil || time.Now().After(end) || ctx.Err() != nil {
				return err
			}
			sleep(ctx, 20*time.Millisecond)
		}
	}()
	if err != nil {
		h.verdict("disk-heal", false, "no large write %v after the filler was removed: %v", healWithin, err)
	} else {
		d := time.Since(t0)
		h.recovered("disk full (+1 down): filler removed to first write", d)
		h.verdict("disk-heal", true, "writes accepted %v after space was freed, no restart", d.Round(time.Millisecond))
	}
	return h.restart(ctx, 1)
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}

// healAll resumes paused wormds, restarts dead ones, frees the disk.
func (h *harness) healAll(ctx context.Context) error {
	if h.disk != nil {
		if err := h.disk.free(); err != nil {
			return err
		}
	}
	if h.net != nil {
		if err := h.net.heal(); err != nil {
			return err
		}
	}
	for i, n := range h.lc.Nodes {
		if n.Running() {
			_ = h.lc.Resume(i)
		} else if err := h.restart(ctx, i); err != nil {
			return err
		}
	}
	if h.tap != nil {
		return h.clearLinks(ctx)
	}
	return nil
}

// finalChecks checks every history after healing.
func (h *harness) finalChecks(ctx context.Context) {
	cl, err := h.dial(ctx, "final")
	if err != nil {
		h.verdict("final", false, "cannot dial after healing: %v", err)
		return
	}
	sp := h.rec.Wrap(cl)

	// Durability: every acknowledged write of the durability writer.
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
		err := retryUntil(ctx, 10*time.Second, func(c context.Context) error {
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
	h.verdict("durability", bad == 0 && len(durable) > 0, "%d acknowledged writes read back after every fault (%d power losses), %d wrong %s",
		len(durable), h.faults["powerloss"], bad, first)

	// Log: positions unique (checked as appends returned), and never
	// changed.
	lcl, err := h.dial(ctx, "final-log")
	if err == nil {
		lg := wormlog.NewClient(lcl, logConfig(), noSource{})
		h.mu.Lock()
		acked := make(map[uint64][]byte, len(h.logAcked))
		for p, v := range h.logAcked {
			acked[p] = v
		}
		h.mu.Unlock()
		changed := 0
		var first string
		for p, want := range acked {
			var rec wormlog.Record
			err := retryUntil(ctx, 10*time.Second, func(c context.Context) error {
				var err error
				rec, err = lg.Read(c, p)
				return err
			})
			if err != nil || !bytes.Equal(rec.Value, want) || rec.Hole {
				changed++
				if first == "" {
					first = fmt.Sprintf("position %d: %q (hole %v), %v; acknowledged %q", p, rec.Value, rec.Hole, err, want)
				}
			}
		}
		h.mu.Lock()
		vs := slices.Clone(h.violations)
		h.mu.Unlock()
		h.verdict("log", changed == 0 && len(vs) == 0 && len(acked) > 0,
			"%d acknowledged appends at distinct positions, %d changed %s; violations during the run: %d %s",
			len(acked), changed, first, len(vs), strings.Join(first3(vs), "; "))
	} else {
		h.verdict("log", false, "cannot dial: %v", err)
	}

	// Registers.
	ok, res := check.Check(h.rec.History(), h.cfg.CheckTimeout)
	v := Verdict{Name: "registers", OK: ok && res.Outcome == porcupine.Ok, Detail: res.String(), Visualization: res.Visualization}
	if res.Outcome == porcupine.Unknown {
		v.Detail += " (porcupine timed out: no definite verdict)"
	}
	h.logf("verdict registers ok=%v: %s", v.OK, v.Detail)
	h.mu.Lock()
	h.verdicts = append(h.verdicts, v)
	h.mu.Unlock()

	// Key-value store.
	ops := h.kvHist.Ops()
	known := 0
	for _, o := range ops {
		if !o.Unknown {
			known++
		}
	}
	kres, info := wormpaxostest.CheckKV(ops, h.cfg.CheckTimeout)
	kv := Verdict{Name: "kv", OK: kres == porcupine.Ok && known > 0,
		Detail: fmt.Sprintf("KV linearizability %v: %d operations (%d with unknown outcome)", kres, len(ops), len(ops)-known)}
	if kres == porcupine.Illegal {
		path := filepath.Join(check.VisualizationDir(), fmt.Sprintf("worm-nemesis-kv-%d.html", h.cfg.Seed))
		if f, err := os.Create(path); err == nil {
			_ = porcupine.Visualize(wormpaxostest.KVModel, info, f)
			f.Close()
			kv.Visualization = path
		}
	}
	h.logf("verdict kv ok=%v: %s", kv.OK, kv.Detail)
	h.mu.Lock()
	h.verdicts = append(h.verdicts, kv)
	h.mu.Unlock()
}

func first3(s []string) []string {
	if len(s) > 3 {
		return s[:3]
	}
	return s
}

// noSource is a TokenSource for a reader that never appends.
type noSource struct{}

func (noSource) NextN(context.Context, int) (wormlog.Grant, error) {
	return wormlog.Grant{}, errors.New("nemesis: read-only log client")
}
func (noSource) Tail(context.Context) (uint64, error) {
	return 0, errors.New("nemesis: read-only log client")
}
func (noSource) Fenced(context.Context, wormlog.Grant, uint64) error { return nil }

func logConfig() wormlog.Config {
	return wormlog.Config{Name: "nemesis", FirstSeg: logSeg, Logger: quiet()}
}

// kvConfig is the WormPaxos configuration of the key-value replicas.
func kvConfig(i int) wormpaxos.Config {
	return wormpaxos.Config{Policy: wormpaxos.Sticky, LogBase: kvSeg, Replicas: 3, Index: i, Logger: quiet()}
}
