package bench_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wormspace/wormspace/worm/bench"
)

// Loop counts only calls made after the warm-up, keeps failed calls out of
// the latency samples, gives every client its own index, and measures
// latency (a 2ms operation cannot have a 1µs median).
func TestLoop(t *testing.T) {
	var calls, during atomic.Int64
	var seen [4]atomic.Bool
	r, err := bench.Loop(context.Background(), bench.LoopConfig{Workload: "sleep", Clients: 4, Duration: 150 * time.Millisecond, Warmup: 50 * time.Millisecond},
		func(ctx context.Context, w int) error {
			seen[w].Store(true)
			n := calls.Add(1)
			time.Sleep(2 * time.Millisecond)
			if n%5 == 0 {
				return errors.New("every fifth call fails")
			}
			during.Add(1)
			return nil
		})
	if err != nil {
		t.Fatal(err)
	}
	for i := range seen {
		if !seen[i].Load() {
			t.Fatalf("client %d never ran", i)
		}
	}
	if r.Workload != "sleep" || r.Clients != 4 || r.Ops == 0 || r.Errors == 0 || r.FirstError == "" {
		t.Fatalf("result %+v", r)
	}
	if r.Ops >= during.Load() {
		t.Fatalf("%d ops counted of %d successful calls: the warm-up was counted", r.Ops, during.Load())
	}
	if r.Latency.P50 < 2*time.Millisecond || r.Latency.P50 > r.Latency.P99 {
		t.Fatalf("latency %+v for a 2ms operation", r.Latency)
	}
	if r.OpsPerSec <= 0 || r.Writes != r.Ops {
		t.Fatalf("result %+v", r)
	}
}

// TestLoopOpTimeout: a call that hangs is cancelled once it overruns
// OpTimeout (and counted as an error); the client's next calls get a live
// context, so one hang does not fail everything after it.
func TestLoopOpTimeout(t *testing.T) {
	var n, afterHang atomic.Int64
	var hung atomic.Bool
	r, err := bench.Loop(context.Background(), bench.LoopConfig{Workload: "hang", Clients: 1, Duration: 400 * time.Millisecond, Warmup: -1, OpTimeout: 40 * time.Millisecond},
		func(ctx context.Context, _ int) error {
			if n.Add(1) == 20 { // well after the measuring starts
				<-ctx.Done() // hangs until the watchdog cancels it
				hung.Store(true)
				return ctx.Err()
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			if hung.Load() {
				afterHang.Add(1)
			}
			time.Sleep(time.Millisecond)
			return nil
		})
	if err != nil {
		t.Fatal(err)
	}
	if !hung.Load() || r.Errors != 1 || afterHang.Load() == 0 {
		t.Fatalf("hung call released: %v; errors %d (want 1); calls after it %d; %+v", hung.Load(), r.Errors, afterHang.Load(), r)
	}
}

// Think pauses each client between its calls without counting the pause
// in the latency: fewer calls, each as long as before.
func TestLoopThink(t *testing.T) {
	const work, think = 2 * time.Millisecond, 20 * time.Millisecond
	op := func(ctx context.Context, _ int) error { time.Sleep(work); return nil }
	r, err := bench.Loop(context.Background(), bench.LoopConfig{Workload: "think", Clients: 1, Duration: 300 * time.Millisecond, Warmup: -1, Think: think}, op)
	if err != nil {
		t.Fatal(err)
	}
	// Back to back, 300ms holds about 100 calls of 2-3ms; with the
	// pause, about 300/(20+2) = 13 (timers may stretch both).
	if r.Ops < 5 || r.Ops > 16 {
		t.Errorf("%d calls in 300ms with a 20ms pause after each 2ms call, want about 13", r.Ops)
	}
	if r.Latency.P50 >= think {
		t.Errorf("p50 %v includes the pause", r.Latency.P50)
	}
}
