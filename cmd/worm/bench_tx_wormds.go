package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/wormspace/wormspace/apps/wormtx/txbench"
	"github.com/wormspace/wormspace/worm/client"
)

// WormdCounters are what the wormservers did per WormTX commit over a
// run's measured window, averaged over the wormservers: the work behind
// WormTX's latency that 2PC does not have (votes accepted, synced and
// announced by three acceptors).
type WormdCounters struct {
	Syncs float64 `json:"syncs_per_commit"`
	// HeldSyncs are the syncs held for a burst's usual followers
	// (adaptive group commit, worm/server/gather.go).
	HeldSyncs     float64       `json:"held_syncs_per_commit"`
	Accepts       float64       `json:"accepts_per_commit"`
	Notifications float64       `json:"notifications_per_commit"`
	SyncMean      time.Duration `json:"sync_mean_ns"` // a Log.Sync's mean duration (write and fsync)
}

// wormdSnapshot is one wormserver's counters at one moment.
type wormdSnapshot struct {
	syncs, held, accepts, notes uint64
	syncTime                    time.Duration
}

// parseWormdStatus reads the counters out of a wormserver's status
// document (worm/server's statusDoc; the storage section is
// worm/storage.Stats, absent for an in-memory log).
func parseWormdStatus(doc string) (wormdSnapshot, error) {
	var d struct {
		Engine struct {
			Syncs    uint64 `json:"syncs"`
			Gathered uint64 `json:"gathered"`
		} `json:"engine"`
		Requests      map[string]map[string]uint64 `json:"requests"`
		Notifications map[string]uint64            `json:"notifications"`
		Storage       struct {
			SyncTime time.Duration
		} `json:"storage"`
	}
	if err := json.Unmarshal([]byte(doc), &d); err != nil {
		return wormdSnapshot{}, fmt.Errorf("status document: %w", err)
	}
	s := wormdSnapshot{syncs: d.Engine.Syncs, held: d.Engine.Gathered, notes: d.Notifications["sent"], syncTime: d.Storage.SyncTime}
	for _, n := range d.Requests["accept"] {
		s.accepts += n
	}
	return s, nil
}

// wormdWindow takes the wormservers' counters when a WormTX run's
// measured window begins and ends (txbench.Config.Window).
type wormdWindow struct {
	status *client.Client

	mu            sync.Mutex
	before, after []wormdSnapshot
	err           error
}

func (w *wormdWindow) snapshot(ctx context.Context) ([]wormdSnapshot, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var out []wormdSnapshot
	for _, st := range w.status.Status(ctx) {
		if st.Err != nil {
			return nil, fmt.Errorf("wormd %s: %w", st.Addr, st.Err)
		}
		s, err := parseWormdStatus(st.Status)
		if err != nil {
			return nil, fmt.Errorf("wormd %s: %w", st.Addr, err)
		}
		out = append(out, s)
	}
	return out, nil
}

// mark is the Window hook: begins says which end of the window this is.
func (w *wormdWindow) mark(ctx context.Context, begins bool) {
	snap, err := w.snapshot(ctx)
	w.mu.Lock()
	defer w.mu.Unlock()
	if begins {
		w.before, w.after, w.err = snap, nil, err
		return
	}
	w.after = snap
	if w.err == nil {
		w.err = err
	}
}

// perCommit returns the counters of the last window divided by commits.
func (w *wormdWindow) perCommit(commits int64) (*WormdCounters, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return nil, w.err
	}
	if commits <= 0 || len(w.before) == 0 || len(w.before) != len(w.after) {
		return nil, fmt.Errorf("no window to count (%d commits, %d and %d snapshots)", commits, len(w.before), len(w.after))
	}
	var c WormdCounters
	var syncs uint64
	var syncTime time.Duration
	for i, b := range w.before {
		a := w.after[i]
		c.Syncs += float64(a.syncs - b.syncs)
		c.HeldSyncs += float64(a.held - b.held)
		c.Accepts += float64(a.accepts - b.accepts)
		c.Notifications += float64(a.notes - b.notes)
		syncs += a.syncs - b.syncs
		syncTime += a.syncTime - b.syncTime
	}
	per := float64(commits) * float64(len(w.before))
	c.Syncs, c.HeldSyncs, c.Accepts, c.Notifications = c.Syncs/per, c.HeldSyncs/per, c.Accepts/per, c.Notifications/per
	if syncs > 0 {
		c.SyncMean = syncTime / time.Duration(syncs)
	}
	return &c, nil
}

// medianWormdCounters is each field's median over the rounds that have
// counters (nil if none has).
func medianWormdCounters(rounds []TxBenchRound) *WormdCounters {
	var cs []*WormdCounters
	for _, r := range rounds {
		if r.Wormds != nil {
			cs = append(cs, r.Wormds)
		}
	}
	if len(cs) == 0 {
		return nil
	}
	return &WormdCounters{
		Syncs:         medianOf(cs, func(c *WormdCounters) float64 { return c.Syncs }),
		HeldSyncs:     medianOf(cs, func(c *WormdCounters) float64 { return c.HeldSyncs }),
		Accepts:       medianOf(cs, func(c *WormdCounters) float64 { return c.Accepts }),
		Notifications: medianOf(cs, func(c *WormdCounters) float64 { return c.Notifications }),
		SyncMean:      time.Duration(medianOf(cs, func(c *WormdCounters) float64 { return float64(c.SyncMean) })),
	}
}

// medianOf is the median of field over xs.
func medianOf[T any](xs []T, field func(T) float64) float64 {
	vs := make([]float64, len(xs))
	for i, x := range xs {
		vs[i] = field(x)
	}
	return median(vs)
}

// median is the median of xs (0 for none); xs is not modified.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	xs = slices.Clone(xs)
	slices.Sort(xs)
	if len(xs)%2 == 1 {
		return xs[len(xs)/2]
	}
	return (xs[len(xs)/2-1] + xs[len(xs)/2]) / 2
}

// printWormdCounters prints a line per client count with counters.
func printWormdCounters(w io.Writer, rows []TxBenchRow) {
	for _, row := range rows {
		c := row.Wormds
		if c == nil {
			continue
		}
		sync := ""
		if c.SyncMean > 0 {
			sync = fmt.Sprintf(" of %v each", c.SyncMean.Round(time.Microsecond))
		}
		fmt.Fprintf(w, "wormds per WormTX commit at %d client(s) (each wormd, median round): %.2f syncs%s (%.2f held for followers), %.2f accepts, %.1f notifications sent\n",
			row.Clients, c.Syncs, sync, c.HeldSyncs, c.Accepts, c.Notifications)
	}
}

// TwoPCCounters are 2PC's forces per commit over a run's measured window:
// the coordinator's decision log and the participants' vote logs (summed
// over the participants), each force a write and an fdatasync shared by
// the records that group-committed in it.
type TwoPCCounters struct {
	DecisionForces float64       `json:"decision_forces_per_commit"`
	DecisionMean   time.Duration `json:"decision_force_mean_ns"`
	VoteForces     float64       `json:"vote_forces_per_commit"`
	VoteMean       time.Duration `json:"vote_force_mean_ns"`
}

// forcesWindow takes 2PC's force counters when a run's measured window
// begins and ends (txbench.Config.Window).
type forcesWindow struct {
	mu            sync.Mutex
	before, after struct {
		decisions txbench.Forces
		votes     txbench.Forces
	}
	err error
}

func (w *forcesWindow) mark(ctx context.Context, h *txbench.Harness, begins bool) {
	d, p, err := h.Forces(ctx)
	w.mu.Lock()
	defer w.mu.Unlock()
	if begins {
		w.before.decisions, w.before.votes, w.err = d, p.TwoPC, err
		return
	}
	w.after.decisions, w.after.votes = d, p.TwoPC
	if w.err == nil {
		w.err = err
	}
}

func (w *forcesWindow) perCommit(commits int64) (*TwoPCCounters, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return nil, w.err
	}
	if commits <= 0 {
		return nil, fmt.Errorf("no commits to count")
	}
	d, v := w.after.decisions.Sub(w.before.decisions), w.after.votes.Sub(w.before.votes)
	c := &TwoPCCounters{DecisionForces: float64(d.N) / float64(commits), VoteForces: float64(v.N) / float64(commits)}
	if d.N > 0 {
		c.DecisionMean = d.Time / time.Duration(d.N)
	}
	if v.N > 0 {
		c.VoteMean = v.Time / time.Duration(v.N)
	}
	return c, nil
}

// medianTwoPCCounters is each field's median over the rounds that have
// counters (nil if none has).
func medianTwoPCCounters(rounds []TxBenchRound) *TwoPCCounters {
	var cs []*TwoPCCounters
	for _, r := range rounds {
		if r.TwoPCForces != nil {
			cs = append(cs, r.TwoPCForces)
		}
	}
	if len(cs) == 0 {
		return nil
	}
	return &TwoPCCounters{
		DecisionForces: medianOf(cs, func(c *TwoPCCounters) float64 { return c.DecisionForces }),
		DecisionMean:   time.Duration(medianOf(cs, func(c *TwoPCCounters) float64 { return float64(c.DecisionMean) })),
		VoteForces:     medianOf(cs, func(c *TwoPCCounters) float64 { return c.VoteForces }),
		VoteMean:       time.Duration(medianOf(cs, func(c *TwoPCCounters) float64 { return float64(c.VoteMean) })),
	}
}

// printTwoPCCounters prints a line per client count with counters.
func printTwoPCCounters(w io.Writer, rows []TxBenchRow) {
	for _, row := range rows {
		c := row.TwoPCForces
		if c == nil {
			continue
		}
		fmt.Fprintf(w, "2PC forces per commit at %d client(s) (median round): %.2f decision forces of %v each, %.2f vote forces (all participants) of %v each\n",
			row.Clients, c.DecisionForces, c.DecisionMean.Round(time.Microsecond), c.VoteForces, c.VoteMean.Round(time.Microsecond))
	}
}
