package compare

import (
	"context"
	"slices"
	"testing"
	"time"
)

// TestPacerWakesOnTime checks that the open loop's pacer never wakes
// before a slot (a latency measured from it would come out short) and
// logs how late it woke beside the runtime's timer, which it replaces.
func TestPacerWakesOnTime(t *testing.T) {
	const slots, interval = 200, 2 * time.Millisecond
	run := func(wait func(at time.Time)) []time.Duration {
		var lates []time.Duration
		start := time.Now()
		for i := 1; i <= slots; i++ {
			at := start.Add(time.Duration(i) * interval)
			wait(at)
			late := time.Since(at)
			if late < 0 {
				t.Fatalf("slot %d: woke %v early", i, -late)
			}
			lates = append(lates, late)
		}
		slices.Sort(lates)
		return lates
	}
	ctx := context.Background()
	p, err := newPacer()
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	pacer := run(func(at time.Time) { p.wait(ctx, at) })
	timer := run(func(at time.Time) { sleepCtx(ctx, time.Until(at)) })
	q := func(l []time.Duration, f float64) time.Duration { return l[int(f*float64(len(l)-1))] }
	t.Logf("lateness over %d slots of %v: pacer p50 %v p99 %v; runtime timer p50 %v p99 %v",
		slots, interval, q(pacer, .5), q(pacer, .99), q(timer, .5), q(timer, .99))
}

// TestPacerCancel checks that a wait for a far slot ends with its context.
func TestPacerCancel(t *testing.T) {
	p, err := newPacer()
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	start := time.Now()
	p.wait(ctx, start.Add(time.Hour))
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("wait for a slot an hour away took %v after its context ended at 20ms", d)
	}
	if ctx.Err() == nil {
		t.Fatal("wait returned before its slot or its context's end")
	}
}
