package server

import (
	"fmt"
	"slices"
	"time"
)

// Adaptive group commit.
//
// The engine's sync goroutine starts a Log.Sync as soon as a reply waits
// for one. A request that arrives while that sync runs waits for it to end
// and then for a sync of its own: nearly two syncs. When requests come in
// bursts whose members arrive a little apart (the votes of a WormTX
// transaction's participants, prepared one after the other; closed-loop
// clients whose previous replies left together), the second sync is the
// larger part of the later members' latency, and on a shared device every
// extra fsync slows everyone's.
//
// The gatherer watches bursts: a burst starts when a reply starts waiting
// while nothing else waits and no sync runs (its leader), and its
// followers are the replies that start waiting within one sync duration
// F of the leader while it or its sync is still pending: the ones that
// would otherwise pay for a second sync.
// When most recent bursts had followers, the sync goroutine holds the
// next leader's sync until the usual number k of followers (the median)
// has arrived, or until the usual span of a burst has passed (the upper
// quartile of the recent spans, plus a quarter), whichever comes first;
// then one sync covers the burst.
//
// The economics bound the wait. Without it, the leader is done after F
// and a follower arriving during the leader's sync after about 2F; with a
// wait w that the followers beat, all are done after w+F. The leader
// loses w and each of k followers gains F-w, a net gain while
// w < kF/(k+1): the wait never exceeds that (F/2 for one follower, 2F/3
// for two). It is used only when followers came in most of the last
// gatherHistory bursts, so a closed-loop client alone (one request per
// burst) never waits; with nothing in the history, or syncs that are
// cheap (a volatile Log), there is no wait.

// gatherHistory is the number of recent bursts the gatherer learns from.
const gatherHistory = 16

// gatherMinWait: a shorter wait is not worth arming a timer for (a
// sync that cheap, on tmpfs or a fast device, gains little from merging).
const gatherMinWait = 10 * time.Microsecond

// gatherMaxFollowers bounds the followers a burst records (their count is
// what the wait is cut short at).
const gatherMaxFollowers = 64

// GroupCommit selects how the engine schedules syncs.
type GroupCommit int

const (
	// GroupCommitAdaptive (the default) holds a sync that starts a burst
	// for its usual followers, as learnt from recent bursts (see above).
	GroupCommitAdaptive GroupCommit = iota
	// GroupCommitImmediate starts every sync as soon as a reply waits.
	GroupCommitImmediate
)

func (g GroupCommit) String() string {
	switch g {
	case GroupCommitAdaptive:
		return "adaptive"
	case GroupCommitImmediate:
		return "immediate"
	}
	return "invalid"
}

// MarshalText implements encoding.TextMarshaler (flags, JSON).
func (g GroupCommit) MarshalText() ([]byte, error) { return []byte(g.String()), nil }

// UnmarshalText parses "adaptive" or "immediate".
func (g *GroupCommit) UnmarshalText(b []byte) error {
	switch string(b) {
	case "adaptive":
		*g = GroupCommitAdaptive
	case "immediate":
		*g = GroupCommitImmediate
	default:
		return fmt.Errorf("group commit %q: want adaptive or immediate", b)
	}
	return nil
}

// burstStat is what a closed burst leaves in the history.
type burstStat struct {
	followers int           // replies that started waiting within the horizon (one sync duration)
	span      time.Duration // the last follower's offset from the leader (0: none)
}

// gatherer is the adaptive group commit's estimator. It is pure: callers
// pass the time in. The engine calls it with e.mu held.
type gatherer struct {
	// sync is the smoothed duration of Log.Sync (0 until the first).
	sync time.Duration

	// The open burst: its leader's arrival, and its followers so far.
	open      bool
	start     time.Time
	followers int
	span      time.Duration
	horizon   time.Duration // the smoothed sync duration when the burst opened

	hist [gatherHistory]burstStat
	n    int // bursts in hist (at most gatherHistory)
	next int // slot the next closed burst takes
}

// synced records the duration of a completed Log.Sync.
func (g *gatherer) synced(d time.Duration) {
	if g.sync == 0 {
		g.sync = d
		return
	}
	// An exponentially weighted mean over about eight syncs: recent
	// enough to follow a device that slows down under load, smooth enough
	// that one slow fsync does not double the next wait.
	g.sync += (d - g.sync) / 8
}

// arrival records a reply that starts waiting for a sync at now; idle
// says that nothing else was waiting and no sync was running. It reports
// whether the reply leads a new burst.
func (g *gatherer) arrival(now time.Time, idle bool) (leader bool) {
	// A reply that finds the engine idle came after the burst's syncs:
	// it would not have waited for a second one.
	if g.open && (idle || now.Sub(g.start) > g.horizon) {
		g.close()
	}
	if g.open {
		if g.followers < gatherMaxFollowers {
			g.followers++
		}
		g.span = now.Sub(g.start)
		return false
	}
	if !idle {
		return false
	}
	g.open, g.start, g.followers, g.span, g.horizon = true, now, 0, 0, g.sync
	return true
}

// close moves the open burst into the history.
func (g *gatherer) close() {
	g.hist[g.next] = burstStat{followers: g.followers, span: g.span}
	g.next = (g.next + 1) % gatherHistory
	if g.n < gatherHistory {
		g.n++
	}
	g.open = false
}

// plan says how long the sync of the burst led at leader may wait: until
// until at most, or until followers followers have arrived. until is
// leader itself when waiting is not worth it. It does not allocate.
func (g *gatherer) plan(leader time.Time) (until time.Time, followers int) {
	if g.n < gatherHistory/2 || g.sync <= 0 {
		return leader, 0
	}
	var spanBuf [gatherHistory]time.Duration
	var countBuf [gatherHistory]int
	spans, counts := spanBuf[:g.n], countBuf[:g.n]
	with := 0
	for i, b := range g.hist[:g.n] {
		spans[i], counts[i] = b.span, b.followers
		if b.followers > 0 {
			with++
		}
	}
	// Followers in most bursts, or no wait: the wait is paid by every
	// leader and repaid only in the bursts that have followers.
	if 2*with <= g.n {
		return leader, 0
	}
	slices.Sort(spans)
	slices.Sort(counts)
	k := counts[g.n/2]
	// The upper quartile of the spans, so that the wait covers the
	// followers of most bursts (it ends early once k have come), with a
	// quarter more for the jitter of their arrivals.
	q := spans[g.n*3/4]
	wait := q + q/4
	if max := time.Duration(int64(g.sync) * int64(k) / int64(k+1)); wait > max {
		wait = max
	}
	if wait < gatherMinWait {
		return leader, 0
	}
	return leader.Add(wait), k
}
