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
	// Think is a pause each client takes after every call, not measured
	// (default none: back to back). With a pause longer than the work an
	// operation leaves behind (acknowledgements, replies still in flight,
	// notifications), each call runs on a machine its predecessors no
	// longer load: the latency of an operation alone rather than of a
	// saturated pipeline.
	Think time.Duration
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
	// Each client's calls share one context that a watchdog cancels when
	// a call overruns OpTimeout: a context with a deadline per call
	// (an allocation and a timer each) cost the process under test 12%
	// of its CPU at 256 clients (worm bench kv).
	slots := make([]*loopSlot, cfg.Clients)
	for i := range slots {
		slots[i] = newLoopSlot(ctx)
	}
	wdone := make(chan struct{})
	defer close(wdone)
	go watchLoop(slots, cfg.OpTimeout, wdone)
	var wg sync.WaitGroup
	for i := range cfg.Clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sl := slots[i]
			for first := true; !stop.Load() && ctx.Err() == nil; first = false {
				if !first && cfg.Think > 0 {
					if sleep(ctx, cfg.Think); stop.Load() || ctx.Err() != nil {
						break
					}
				}
				counted := measuring.Load()
				t := time.Now()
				octx := sl.begin(t)
				err := op(octx, i)
				d := time.Since(t)
				sl.end()
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

// loopSlot is one closed-loop client's call in progress, for the
// watchdog: the context its calls share, and when the current call
// started (zero between calls).
type loopSlot struct {
	parent  context.Context
	mu      sync.Mutex
	ctx     context.Context
	cancel  context.CancelFunc
	started time.Time
}

func newLoopSlot(parent context.Context) *loopSlot {
	s := &loopSlot{parent: parent}
	s.ctx, s.cancel = context.WithCancel(parent)
	return s
}

// begin marks a call starting at t and returns its context: the shared
// one, or a fresh one if the watchdog cancelled the last.
func (s *loopSlot) begin(t time.Time) context.Context {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ctx.Err() != nil && s.parent.Err() == nil {
		s.ctx, s.cancel = context.WithCancel(s.parent)
	}
	s.started = t
	return s.ctx
}

func (s *loopSlot) end() {
	s.mu.Lock()
	s.started = time.Time{}
	s.mu.Unlock()
}

// expire cancels the call in progress if it started before cutoff.
func (s *loopSlot) expire(cutoff time.Time) {
	s.mu.Lock()
	if !s.started.IsZero() && s.started.Before(cutoff) {
		s.cancel()
	}
	s.mu.Unlock()
}

// watchLoop cancels the calls that overrun limit, checking a few times
// per limit (at most every second), until done is closed.
func watchLoop(slots []*loopSlot, limit time.Duration, done <-chan struct{}) {
	tick := max(min(limit/4, time.Second), time.Millisecond)
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-done:
			for _, s := range slots {
				s.cancel()
			}
			return
		case now := <-t.C:
			for _, s := range slots {
				s.expire(now.Add(-limit))
			}
		}
	}
}
