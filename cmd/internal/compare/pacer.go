package compare

import (
	"context"
	"errors"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// pacer wakes the open loop at absolute times. time.Sleep and Go timers
// wait in the runtime's poller, whose timeout on Linux is whole
// milliseconds: on this machine a wait for the next 5 ms slot woke 585 µs
// late at the median and 1.1 ms at p99. An open-loop latency is measured
// from its scheduled start, so that lateness would count as the system's:
// with it, appends at 200/s measured 850 µs p50 on either stack, most of it
// the pacer's. The pacer instead sleeps with clock_nanosleep(TIMER_ABSTIME)
// on CLOCK_MONOTONIC (the clock behind Go's monotonic readings) from a
// thread of its own whose timer slack is 1 ns, so it wakes within the
// kernel's timer and scheduling latency.
//
// A pacer belongs to the goroutine that made it (its thread is locked to
// that goroutine): call wait from there only, and close when done.
type pacer struct {
	base     time.Time
	baseMono int64 // CLOCK_MONOTONIC at base, ns
	locked   bool
}

// maxPacerSleep bounds one clock_nanosleep so that a cancelled context is
// noticed within it at any rate.
const maxPacerSleep = 50 * time.Millisecond

// newPacer locks the calling goroutine to its thread and sets the
// thread's timer slack; close undoes the lock.
func newPacer() (*pacer, error) {
	runtime.LockOSThread()
	p := &pacer{locked: true}
	// The default slack (50 µs) lets the kernel defer a wake-up to batch
	// it with others; a pacer wants its slot.
	if err := unix.Prctl(unix.PR_SET_TIMERSLACK, 1, 0, 0, 0); err != nil {
		p.close()
		return nil, err
	}
	var ts unix.Timespec
	p.base = time.Now()
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		p.close()
		return nil, err
	}
	p.baseMono = ts.Nano()
	return p, nil
}

// wait returns at at (never before it), or when ctx ends.
func (p *pacer) wait(ctx context.Context, at time.Time) {
	for ctx.Err() == nil {
		d := time.Until(at)
		if d <= 0 {
			return
		}
		target := at
		if d > maxPacerSleep {
			target = time.Now().Add(maxPacerSleep)
		}
		ts := unix.NsecToTimespec(p.baseMono + int64(target.Sub(p.base)))
		if err := unix.ClockNanosleep(unix.CLOCK_MONOTONIC, unix.TIMER_ABSTIME, &ts, nil); err != nil && !errors.Is(err, unix.EINTR) {
			// Not expected with a valid clock and timespec; fall
			// back to the runtime's timer rather than spin.
			sleepCtx(ctx, time.Until(target))
		}
	}
}

// close releases the goroutine's thread.
func (p *pacer) close() {
	if p.locked {
		p.locked = false
		// Restore the default slack before the thread goes back to
		// the runtime's pool (prctl takes 0 as "the default").
		unix.Prctl(unix.PR_SET_TIMERSLACK, 0, 0, 0, 0)
		runtime.UnlockOSThread()
	}
}
