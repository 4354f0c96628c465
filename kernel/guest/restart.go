package guest

import "time"

// RestartPolicy decides how long init waits before restarting wormd after
// it exits, and when to give up.
type RestartPolicy struct {
	// Initial is the delay after the first failure; it doubles with each
	// further quick failure up to Max.
	Initial, Max time.Duration
	// StableAfter: a run at least this long resets the failure count (the
	// exit was not part of a crash loop).
	StableAfter time.Duration
	// MaxFailures is how many consecutive quick failures are tolerated;
	// one more and init gives up (powers off, or a shell with worm.debug).
	MaxFailures int
}

// DefaultRestartPolicy: 200 ms, 400 ms, ... 6.4 s (the seventh restart
// waits 10 s); a run of 30 s counts as healthy; the eighth quick failure
// in a row gives up (about 25 s of retrying, long enough to ride out a
// transient fault, short enough that a broken image does not hang a
// test run).
var DefaultRestartPolicy = RestartPolicy{
	Initial:     200 * time.Millisecond,
	Max:         10 * time.Second,
	StableAfter: 30 * time.Second,
	MaxFailures: 7,
}

// Restarter applies a RestartPolicy to a sequence of exits. The zero value
// is not usable; use NewRestarter.
type Restarter struct {
	p        RestartPolicy
	failures int
}

// NewRestarter returns a Restarter with no failures recorded.
func NewRestarter(p RestartPolicy) *Restarter { return &Restarter{p: p} }

// Failures is the current count of consecutive quick failures.
func (r *Restarter) Failures() int { return r.failures }

// Exited records that wormd exited after running for ranFor and returns
// how long to wait before starting it again, or giveUp.
func (r *Restarter) Exited(ranFor time.Duration) (delay time.Duration, giveUp bool) {
	if ranFor >= r.p.StableAfter {
		r.failures = 0
	}
	r.failures++
	if r.failures > r.p.MaxFailures {
		return 0, true
	}
	delay = r.p.Initial
	for i := 1; i < r.failures && delay < r.p.Max; i++ {
		delay *= 2
	}
	return min(delay, r.p.Max), false
}
