package bench

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// LoopConfig describes a closed-loop run of an arbitrary operation (an
// application's append, put or transaction), for benchmarks of what is
// built on a Space.
type LoopConfig struct {
	// Workload names the operation in the Result.
	Workload Workload
	// Clients is the number of closed-loop clients (default 1).
	Clients int
	// Duration of the measured part (default 5s); Warmup before it
	// (default 1s; negative: none).
	Duration, Warmup time.Duration
	// OpTimeout bounds one operation (default 10s).
	OpTimeout time.Duration
}

// Loop runs op from cfg.Clients goroutines, each issuing its next call
// when the last returns, and measures the calls that start after the
// warm-up and return before the end: throughput and latency percentiles,
// as Run does for the register workloads. worker is the client's index
// (0..Clients-1). A failed call counts as an error, not as a sample.
func Loop(ctx context.Context, cfg LoopConfig, op func(ctx context.Context, worker int) error) (Result, error) {
	if cfg.Clients <= 0 {
		cfg.Clients = 1
	}
	if cfg.Duration <= 0 {
		cfg.Duration = 5 * time.Second
	}
	if cfg.Warmup < 0 {
		cfg.Warmup = 0
	} else if cfg.Warmup == 0 {
		cfg.Warmup = time.Second
	}
	if cfg.OpTimeout <= 0 {
		cfg.OpTimeout = 10 * time.Second
	}
	var measuring, stop atomic.Bool
	var ops, nerr atomic.Int64
	var firstErr atomic.Value
	samples := make([][]time.Duration, cfg.Clients)
	var wg sync.WaitGroup
	for i := range cfg.Clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() && ctx.Err() == nil {
				counted := measuring.Load()
				octx, cancel := context.WithTimeout(ctx, cfg.OpTimeout)
				t := time.Now()
				err := op(octx, i)
				d := time.Since(t)
				cancel()
				if !counted || !measuring.Load() {
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
		}()
	}
	sleep(ctx, cfg.Warmup)
	measuring.Store(true)
	t0 := time.Now()
	sleep(ctx, cfg.Duration)
	measuring.Store(false)
	elapsed := time.Since(t0)
	stop.Store(true)
	wg.Wait()
	if ctx.Err() != nil {
		return Result{}, ctx.Err()
	}
	var all []time.Duration
	for _, s := range samples {
		all = append(all, s...)
	}
	n := ops.Load()
	r := Result{Workload: cfg.Workload, Clients: cfg.Clients, Duration: elapsed, Ops: n, Writes: n, Errors: nerr.Load(),
		OpsPerSec: float64(n) / elapsed.Seconds(), Latency: Summarize(all)}
	if s, ok := firstErr.Load().(string); ok {
		r.FirstError = s
	}
	return r, nil
}
