package compare

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/wormspace/wormspace/apps/wormlog"
	"github.com/wormspace/wormspace/apps/wormpaxos"
	"github.com/wormspace/wormspace/apps/wormpaxos/kv"
	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/bench"
)

// LogAppend is the WormLog append workload: closed-loop appenders sharing
// one in-process sequencer (a grant, then one write to a quorum).
const LogAppend = "log-append"

// KVPut is the WormPaxos key-value put workload: closed-loop kv clients
// proposing through one in-process replica (sticky leader, batching and
// pipelining as configured by default) on the configuration's cluster.
const KVPut = "kv-put"

// Workloads lists every workload, in report order.
var Workloads = []string{string(bench.Write), string(bench.Read), string(bench.CaptureWrite), LogAppend, KVPut}

// runKV measures WormPaxos KV puts with clients closed-loop kv clients.
func runKV(ctx context.Context, sp worm.Space, clients int, warmup, duration time.Duration, valueSize int) (bench.Result, error) {
	logBase := uint64(time.Now().UnixNano()/1000) << 8
	rep, err := wormpaxos.New(sp, kv.NewStore(), wormpaxos.Config{Policy: wormpaxos.Sticky, LogBase: logBase, Logger: discardLogger})
	if err != nil {
		return bench.Result{}, err
	}
	rctx, stop := context.WithCancel(ctx)
	runErr := make(chan error, 1)
	go func() { runErr <- rep.Run(rctx) }()
	defer func() { stop(); <-runErr }()
	value := strings.Repeat("v", valueSize)
	kcs := make([]*kv.Client, clients)
	for i := range kcs {
		kcs[i] = kv.NewClient(fmt.Sprintf("compare-%d-%d", logBase, i), rep)
	}
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = kcs[0].Put(pctx, "first", value)
	cancel()
	if err != nil {
		return bench.Result{}, fmt.Errorf("kv-put: first put: %w", err)
	}
	seq := make([]int, clients)
	return closedLoop(ctx, KVPut, clients, warmup, duration, func(ctx context.Context, i int) error {
		seq[i]++
		return kcs[i].Put(ctx, fmt.Sprintf("k%d-%d", i, seq[i]%1000), value)
	})
}

// clkTck is USER_HZ, the unit of /proc/PID/stat times (100 on every
// Linux architecture Go supports).
const clkTck = 100

// procCPU returns the user+system CPU time of pid so far.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	s := string(b)
	// The command name may hold spaces: fields start after the last ')'.
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("compare: odd /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("compare: short /proc/%d/stat", pid)
	}
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return time.Duration(ut+st) * time.Second / clkTck, nil
}

// cpuOf sums procCPU over pids.
func cpuOf(pids []int) (time.Duration, error) {
	var t time.Duration
	for _, p := range pids {
		d, err := procCPU(p)
		if err != nil {
			return 0, err
		}
		t += d
	}
	return t, nil
}

// selfCPU is this process's CPU time (the clients' side).
func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// runLog measures WormLog appends with clients closed-loop appenders.
func runLog(ctx context.Context, sp worm.Space, clients int, warmup, duration time.Duration, valueSize int) (bench.Result, error) {
	segBase := uint64(time.Now().UnixNano()/1000) << 8
	cfg := wormlog.Config{Name: fmt.Sprintf("compare-%d", segBase), FirstSeg: segBase, Prefetch: 2, HoleTimeout: -1}
	cfg.Logger = discardLogger
	seq := wormlog.NewSequencer(sp, cfg)
	defer seq.Close()
	lg := wormlog.NewClient(sp, cfg, seq)
	defer trimLog(ctx, lg)
	value := make([]byte, valueSize)
	for i := range value {
		value[i] = byte('a' + i%26)
	}
	// One untimed append proves the log works before timing starts.
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	_, err := lg.Append(pctx, value)
	cancel()
	if err != nil {
		return bench.Result{}, fmt.Errorf("log-append: first append: %w", err)
	}
	return closedLoop(ctx, LogAppend, clients, warmup, duration, func(ctx context.Context, _ int) error {
		_, err := lg.Append(ctx, value)
		return err
	})
}

// trimLog trims a measured log below its tail, so that a run leaves
// nothing behind on the cluster (or in the spec's memory) for the next:
// a comparison runs dozens of them, and with large values (-value) the
// untrimmed logs once took the spec floor's process to 8 GiB. Best
// effort: the figures are taken, and a failure costs only space.
func trimLog(ctx context.Context, lg *wormlog.Client) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if tail, err := lg.Tail(ctx); err == nil {
		_ = lg.Trim(ctx, tail)
	}
}

// OpenLoop names the open-loop rows: WormLog appends arriving at a fixed
// rate whatever the latency, so queueing shows in the latency.
const OpenLoop = "open-log-append"

// runOpenLog issues appends at rate per second (evenly spaced, each in its
// own goroutine, at most 4096 outstanding: arrivals beyond that count as
// errors) and measures each from its scheduled start, so a stalled cluster
// is not hidden by a generator that waits (no coordinated omission).
// It also returns how late the pacer issued the measured appends: that
// lateness is part of every latency here, and is the harness's.
func runOpenLog(ctx context.Context, sp worm.Space, rate int, warmup, duration time.Duration, valueSize int) (bench.Result, bench.Latency, error) {
	segBase := uint64(time.Now().UnixNano()/1000) << 8
	cfg := wormlog.Config{Name: fmt.Sprintf("compare-open-%d", segBase), FirstSeg: segBase, Prefetch: 2, HoleTimeout: -1, Logger: discardLogger}
	seq := wormlog.NewSequencer(sp, cfg)
	defer seq.Close()
	lg := wormlog.NewClient(sp, cfg, seq)
	defer trimLog(ctx, lg)
	value := make([]byte, valueSize)
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	_, err := lg.Append(pctx, value)
	cancel()
	if err != nil {
		return bench.Result{}, bench.Latency{}, fmt.Errorf("open-log-append: first append: %w", err)
	}
	pc, err := newPacer()
	if err != nil {
		return bench.Result{}, bench.Latency{}, fmt.Errorf("open-log-append: pacer: %w", err)
	}
	defer pc.close()
	var lates []time.Duration // the pacer's, measured appends only
	interval := time.Second / time.Duration(max(rate, 1))
	var mu sync.Mutex
	var samples []time.Duration
	var nerr, outstanding atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	mStart, mEnd := start.Add(warmup), start.Add(warmup+duration)
	for i := 0; ; i++ {
		at := start.Add(time.Duration(i) * interval)
		if !at.Before(mEnd) || ctx.Err() != nil {
			break
		}
		pc.wait(ctx, at)
		measured := !at.Before(mStart)
		if measured {
			lates = append(lates, time.Since(at))
		}
		if outstanding.Load() >= 4096 {
			if measured {
				nerr.Add(1)
				firstErr.CompareAndSwap(nil, "open loop: 4096 appends outstanding")
			}
			continue
		}
		outstanding.Add(1)
		wg.Go(func() {
			defer outstanding.Add(-1)
			octx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, err := lg.Append(octx, value)
			cancel()
			d := time.Since(at)
			if !measured {
				return
			}
			if err != nil {
				nerr.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
				return
			}
			mu.Lock()
			samples = append(samples, d)
			mu.Unlock()
		})
	}
	wg.Wait()
	if ctx.Err() != nil {
		return bench.Result{}, bench.Latency{}, ctx.Err()
	}
	n := int64(len(samples))
	r := bench.Result{Workload: bench.Workload(OpenLoop), Duration: duration, Ops: n, Writes: n, Errors: nerr.Load(),
		OpsPerSec: float64(n) / duration.Seconds(), Latency: bench.Summarize(samples)}
	if s, ok := firstErr.Load().(string); ok {
		r.FirstError = s
	}
	return r, bench.Summarize(lates), nil
}

// closedLoop runs op from clients goroutines, each issuing the next call
// when the last returns, and measures after warmup for duration.
func closedLoop(ctx context.Context, name string, clients int, warmup, duration time.Duration, op func(ctx context.Context, worker int) error) (bench.Result, error) {
	var measuring, stop atomic.Bool
	var ops, nerr atomic.Int64
	var firstErr atomic.Value
	samples := make([][]time.Duration, clients)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() {
			for !stop.Load() && ctx.Err() == nil {
				octx, cancel := context.WithTimeout(ctx, 10*time.Second)
				t := time.Now()
				err := op(octx, i)
				d := time.Since(t)
				cancel()
				if !measuring.Load() {
					continue
				}
				if err != nil {
					nerr.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				ops.Add(1)
				samples[i] = append(samples[i], d)
			}
		})
	}
	sleepCtx(ctx, warmup)
	measuring.Store(true)
	t0 := time.Now()
	sleepCtx(ctx, duration)
	measuring.Store(false)
	elapsed := time.Since(t0)
	stop.Store(true)
	wg.Wait()
	if ctx.Err() != nil {
		return bench.Result{}, ctx.Err()
	}
	var all []time.Duration
	for _, s := range samples {
		all = append(all, s...)
	}
	r := bench.Result{Workload: bench.Workload(name), Clients: clients, Duration: elapsed, Ops: ops.Load(), Writes: ops.Load(),
		Errors: nerr.Load(), OpsPerSec: float64(ops.Load()) / elapsed.Seconds(), Latency: bench.Summarize(all)}
	if s, ok := firstErr.Load().(string); ok {
		r.FirstError = s
	}
	return r, nil
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
