package netstack_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wormspace/wormspace/netstack/netperf"
)

// soakDuration is 20 s unless WORM_SOAK (a Go duration, e.g. 5m) says
// otherwise; -short makes it 5 s.
func soakDuration(t *testing.T) time.Duration {
	if v := os.Getenv("WORM_SOAK"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("WORM_SOAK: %v", err)
		}
		return d
	}
	if testing.Short() {
		return 5 * time.Second
	}
	return 20 * time.Second
}

// TestSoakTAP runs, at the same time and for the soak duration, a stream
// of small request/response pairs and back-to-back bulk transfers in both
// directions between a kernel client and a netstack server on a TAP.
// A feasibility run once saw bulk transfers into netstack stall until the
// reader timed out: every transfer here must complete, each byte moving
// within netperf's stall timeout (5 s), and both streams must make
// progress throughout.
func TestSoakTAP(t *testing.T) {
	e, st := tapEnv(t)
	dur := soakDuration(t)
	startServer(t, st, ":7200")
	addr := fmt.Sprintf("%v:7200", tapStack.Addr())
	kern := nsKernel{e}
	cfg := netperf.Config{StallTimeout: 5 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), dur)
	defer cancel()

	var wg sync.WaitGroup
	var echoes int
	var transfers, bytes atomic.Int64
	wg.Add(2)
	go func() {
		defer wg.Done()
		c := dial(t, kern, addr)
		rt, err := netperf.Echo(c, 64)
		if err != nil {
			t.Error(err)
			return
		}
		last := time.Now()
		for ctx.Err() == nil {
			c.SetDeadline(time.Now().Add(cfg.StallTimeout))
			if err := rt(); err != nil {
				t.Errorf("echo %d: %v", echoes, err)
				return
			}
			echoes++
			if time.Since(last) > 5*time.Second {
				t.Logf("soak: %d round trips, %d bulk transfers (%d MiB)", echoes, transfers.Load(), bytes.Load()>>20)
				last = time.Now()
			}
		}
	}()
	go func() {
		defer wg.Done()
		const n = 32 << 20
		for i := 0; ctx.Err() == nil; i++ {
			c := dial(t, kern, addr)
			var err error
			var r netperf.BulkResult
			if i%2 == 0 {
				r, err = netperf.BulkSend(context.Background(), c, n, cfg)
			} else {
				r, err = netperf.BulkRecv(context.Background(), c, n, cfg)
			}
			c.Close()
			if err != nil {
				t.Errorf("bulk transfer %d (%s): %v\nnetstack stats: %+v", i, r.Direction, err, st.Stats().TCP)
				return
			}
			transfers.Add(1)
			bytes.Add(r.Bytes)
		}
	}()
	wg.Wait()
	t.Logf("soak %v: %d round trips, %d bulk transfers (%d MiB)", dur, echoes, transfers.Load(), bytes.Load()>>20)
	// Progress: a few hundred round trips per second and at least one
	// transfer in each direction are far below what a healthy stack does
	// (thousands per second, >50 MB/s) yet fail on a stall.
	if min := int(dur.Seconds() * 200); echoes < min {
		t.Errorf("only %d round trips in %v (want >= %d)", echoes, dur, min)
	}
	if n := transfers.Load(); n < 2 {
		t.Errorf("only %d bulk transfers completed in %v", n, dur)
	}
}
