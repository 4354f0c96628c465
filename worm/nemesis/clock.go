package nemesis

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wormspace/wormspace/worm/localcluster"
)

// Clock jumps.
//
// A wormd's own clocks can be moved without touching the machine's: a
// time namespace (CLONE_NEWTIME, Linux 5.6) offsets CLOCK_MONOTONIC and
// CLOCK_BOOTTIME for the processes in it. Its offsets are fixed before
// the first process enters it, so a running process cannot be moved; what
// can be done is to restart a wormd into a new namespace whose clocks
// differ from those of its previous life. That is the "clock" fault: kill
// -9 wormd i and start it again, on the same data, with its monotonic and
// boot-time clocks jumped forward (up to years) or backward (up to half
// the machine's uptime: the kernel refuses a negative clock) relative to
// the previous incarnation. CLOCK_REALTIME has no namespace: moving it
// would move the shared machine's clock, so it is never touched.
//
// Why this is safe to expect to pass: wormd's safety does not depend on
// time. Its acceptor state (promises, accepted ballots and values,
// allocation and trim records) holds no timestamp; storage records carry
// none (the identity file's creation time is informational only); the
// handshake is nonce-based, not time-based; timers only bound waiting
// (I/O deadlines, accept backoff, shutdown) and feed metrics and logs. A
// monotonic discontinuity across a restart must therefore change nothing
// clients see but latency. A forward jump of a running process is what
// SIGSTOP/SIGCONT (the "pause" fault) already produces from the process's
// point of view: every timer fires late at once.

// timensWhy says why clock jumps cannot be injected, or "".
func timensWhy() string {
	if os.Geteuid() != 0 {
		return "a time namespace needs root (CAP_SYS_ADMIN)"
	}
	if _, err := os.Stat("/proc/self/ns/time"); err != nil {
		return "this kernel has no time namespaces (CONFIG_TIME_NS, Linux 5.6+)"
	}
	errc := make(chan error, 1)
	go func() {
		// This thread's namespace for children changes: never give it
		// back to the scheduler (a locked goroutine that exits ends its
		// thread).
		runtime.LockOSThread()
		errc <- unix.Unshare(unix.CLONE_NEWTIME)
	}()
	if err := <-errc; err != nil {
		return fmt.Sprintf("unshare(CLONE_NEWTIME): %v", err)
	}
	return ""
}

// clockJump draws a jump: forward between an hour and about three years,
// or backward between a second and half the machine's monotonic uptime.
func clockJump(rng *rand.Rand) (time.Duration, error) {
	if rng.IntN(2) == 0 {
		return time.Hour + time.Duration(rng.Int64N(int64(1000*24*time.Hour))), nil
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0, err
	}
	up := time.Duration(ts.Nano())
	if up < 4*time.Second {
		return time.Hour, nil
	}
	return -(time.Second + time.Duration(rng.Int64N(int64(up/2-time.Second)))), nil
}

// restartInTimens starts wormd i (stopped) again in a new time namespace
// whose CLOCK_MONOTONIC and CLOCK_BOOTTIME are off by jump (whole seconds)
// from the machine's, and checks that the new process is in it.
func restartInTimens(ctx context.Context, lc *localcluster.Cluster, i int, jump time.Duration) error {
	secs := int64(jump / time.Second)
	errc := make(chan error, 1)
	go func() {
		// The unshare changes the namespace this thread's children
		// enter (at exec); the thread is discarded afterwards (locked,
		// never unlocked).
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWTIME); err != nil {
			errc <- fmt.Errorf("unshare(CLONE_NEWTIME): %w", err)
			return
		}
		offs := fmt.Sprintf("monotonic %d 0\nboottime %d 0\n", secs, secs)
		// /proc/<tid>/timens_offsets sets the offsets of that thread's
		// children's namespace, which no process has entered yet.
		p := fmt.Sprintf("/proc/%d/timens_offsets", unix.Gettid())
		if err := os.WriteFile(p, []byte(offs), 0); err != nil {
			errc <- fmt.Errorf("write %s: %w", p, err)
			return
		}
		errc <- lc.Restart(ctx, i) // forks from this thread
	}()
	if err := <-errc; err != nil {
		return fmt.Errorf("restart wormd %d with clocks moved %v: %w", i+1, jump, err)
	}
	pid := lc.Nodes[i].Pid()
	got, err := os.ReadFile(fmt.Sprintf("/proc/%d/timens_offsets", pid))
	if err != nil {
		return err
	}
	// "monotonic   -5458   0\nboottime   -5458   0\n"
	for _, clock := range []string{"monotonic", "boottime"} {
		ok := false
		for _, l := range strings.Split(string(got), "\n") {
			f := strings.Fields(l)
			ok = ok || len(f) == 3 && f[0] == clock && f[1] == strconv.FormatInt(secs, 10) && f[2] == "0"
		}
		if !ok {
			return fmt.Errorf("wormd %d (pid %d) runs with time offsets %q, want %s %d s", i+1, pid, got, clock, secs)
		}
	}
	mine, err1 := os.Readlink("/proc/self/ns/time")
	its, err2 := os.Readlink(fmt.Sprintf("/proc/%d/ns/time", pid))
	if err := errors.Join(err1, err2); err != nil {
		return err
	}
	if mine == its {
		return fmt.Errorf("wormd %d (pid %d) is in the harness's time namespace %s", i+1, pid, its)
	}
	return nil
}
