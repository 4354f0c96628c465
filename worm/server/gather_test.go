package server

import (
	"testing"
	"time"

	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/paxos"
)

// feedBursts runs n bursts through g, each a leader and followers at the
// given offsets, a fixed sync duration, and an idle gap between bursts.
func feedBursts(g *gatherer, t0 time.Time, n int, sync time.Duration, followers ...time.Duration) time.Time {
	for i := 0; i < n; i++ {
		if !g.arrival(t0, true) {
			panic("a burst's first arrival in an idle engine did not lead")
		}
		for _, f := range followers {
			if g.arrival(t0.Add(f), false) {
				panic("a follower led")
			}
		}
		g.synced(sync)
		t0 = t0.Add(10 * sync)
	}
	return t0
}

func TestGatherPlan(t *testing.T) {
	const sync = 400 * time.Microsecond
	t0 := time.Unix(1000, 0)
	cases := []struct {
		name      string
		bursts    int
		followers []time.Duration
		wait      time.Duration // want
		want      int
	}{
		{"no history", 0, nil, 0, 0},
		{"too little history", gatherHistory/2 - 1, []time.Duration{30 * time.Microsecond}, 0, 0},
		// A closed-loop client alone: every burst is one request.
		{"solitary requests", gatherHistory, nil, 0, 0},
		// WormTX votes: three participants a little apart.
		{"two followers", gatherHistory, []time.Duration{20 * time.Microsecond, 40 * time.Microsecond}, 50 * time.Microsecond, 2},
		// Followers later than a sync do not count: they would not
		// have waited for a second sync.
		{"followers too late", gatherHistory, []time.Duration{sync + time.Microsecond}, 0, 0},
		// The wait never exceeds kF/(k+1) for k followers: half a sync
		// for one, two thirds for two.
		{"capped for one", gatherHistory, []time.Duration{190 * time.Microsecond}, sync / 2, 1},
		{"capped for two", gatherHistory, []time.Duration{100 * time.Microsecond, 300 * time.Microsecond}, sync * 2 / 3, 2},
		// Nothing under gatherMinWait: a timer costs more.
		{"too short to wait", gatherHistory, []time.Duration{5 * time.Microsecond}, 0, 0},
		{"two far apart", gatherHistory, []time.Duration{50 * time.Microsecond, 150 * time.Microsecond}, 187500 * time.Nanosecond, 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var g gatherer
			g.synced(sync) // the horizon needs a sync duration
			next := feedBursts(&g, t0, c.bursts, sync, c.followers...)
			if !g.arrival(next, true) {
				t.Fatal("the next burst's first arrival did not lead")
			}
			until, want := g.plan(next)
			if wait := until.Sub(next); wait != c.wait || want != c.want {
				t.Fatalf("plan: wait %v for %d followers, want %v for %d", wait, want, c.wait, c.want)
			}
		})
	}
}

// The wait follows the majority of recent bursts: followers in fewer than
// half of them is no wait; a pattern that changes is forgotten after
// gatherHistory bursts.
func TestGatherLearnsAndForgets(t *testing.T) {
	const sync = 400 * time.Microsecond
	var g gatherer
	g.synced(sync)
	next := time.Unix(1000, 0)
	next = feedBursts(&g, next, gatherHistory/2, sync, 30*time.Microsecond)
	next = feedBursts(&g, next, gatherHistory/2, sync)
	g.arrival(next, true)
	if until, _ := g.plan(next); !until.Equal(next) {
		t.Fatalf("followers in half the bursts: wait %v, want none", until.Sub(next))
	}
	g = gatherer{}
	g.synced(sync)
	next = feedBursts(&g, next, gatherHistory, sync, 30*time.Microsecond)
	g.arrival(next, true)
	if until, want := g.plan(next); until.Sub(next) == 0 || want != 1 {
		t.Fatalf("followers in every burst: wait %v for %d, want a wait for 1", until.Sub(next), want)
	}
	next = feedBursts(&g, next.Add(10*sync), gatherHistory, sync)
	g.arrival(next, true)
	if until, _ := g.plan(next); !until.Equal(next) {
		t.Fatalf("after %d solitary bursts: wait %v, want none", gatherHistory, until.Sub(next))
	}
}

// A reply that starts waiting while a sync runs, or behind another reply,
// does not lead a burst; the smoothed sync duration follows the device.
func TestGatherArrivals(t *testing.T) {
	var g gatherer
	t0 := time.Unix(1000, 0)
	if g.arrival(t0, false) {
		t.Fatal("a reply arriving in a busy engine led a burst")
	}
	g.synced(800 * time.Microsecond)
	// A reply that finds the engine idle again, even within a sync's
	// duration of the last leader, came after that leader's sync: it
	// leads a burst of its own, and the last one had no follower.
	if !g.arrival(t0.Add(time.Millisecond), true) || !g.arrival(t0.Add(1100*time.Microsecond), true) {
		t.Fatal("a reply arriving in an idle engine did not lead")
	}
	if g.n != 1 || g.hist[0].followers != 0 {
		t.Fatalf("history %v, want one burst without followers", g.hist[:g.n])
	}
	for i := 0; i < 100; i++ {
		g.synced(400 * time.Microsecond)
	}
	if d := g.sync - 400*time.Microsecond; d < 0 || d > 5*time.Microsecond {
		t.Fatalf("smoothed sync %v after 100 syncs of 400µs", g.sync)
	}
}

func TestGroupCommitText(t *testing.T) {
	for _, gc := range []GroupCommit{GroupCommitAdaptive, GroupCommitImmediate} {
		b, _ := gc.MarshalText()
		var back GroupCommit
		if err := back.UnmarshalText(b); err != nil || back != gc {
			t.Fatalf("%v: round trip gave %v, %v", gc, back, err)
		}
	}
	var gc GroupCommit
	if err := gc.UnmarshalText([]byte("eager")); err == nil {
		t.Fatal("an unknown group commit parsed")
	}
}

// Bursts of three accepts, the second and third a little after the first
// (less than half a sync): an immediate engine syncs about twice per
// burst; an adaptive one learns the pattern and syncs once.
func TestAdaptiveGroupCommitMergesBursts(t *testing.T) {
	if testing.Short() {
		t.Skip("timing: -short")
	}
	const (
		syncTime = 30 * time.Millisecond
		gap      = 3 * time.Millisecond // follower offsets: gap, 2*gap
		learn    = gatherHistory
		measure  = 10
	)
	run := func(gc GroupCommit) (syncsPerBurst float64) {
		log := newMemLog()
		log.delay = syncTime
		e := NewEngine(paxos.NewAcceptor(1024), log, nil, nil)
		e.SetGroupCommit(gc)
		defer e.Close()
		off := uint32(0)
		burst := func() {
			r := newReplies()
			for k := 0; k < 3; k++ {
				if k > 0 {
					time.Sleep(gap)
				}
				e.Handle(&paxos.Request{Kind: paxos.KindAccept, Seg: 1, Off: off, Ballot: worm.Ballot{}, Values: [][]byte{{'v'}}}, r, 0)
				off++
			}
			r.wait(t, 3)
		}
		for i := 0; i < learn; i++ {
			burst()
		}
		before := log.syncCount()
		for i := 0; i < measure; i++ {
			burst()
		}
		return float64(log.syncCount()-before) / measure
	}
	imm := run(GroupCommitImmediate)
	ada := run(GroupCommitAdaptive)
	t.Logf("syncs per burst of 3: immediate %.1f, adaptive %.1f", imm, ada)
	if imm < 1.8 {
		t.Errorf("immediate: %.1f syncs per burst, want about 2 (the followers arrive during the leader's sync)", imm)
	}
	if ada > 1.3 {
		t.Errorf("adaptive: %.1f syncs per burst, want about 1", ada)
	}
}

// A closed-loop client alone is never held: its requests lead bursts
// without followers.
func TestAdaptiveGroupCommitLeavesSoloClientAlone(t *testing.T) {
	log := newMemLog()
	log.delay = 2 * time.Millisecond
	e := NewEngine(paxos.NewAcceptor(1024), log, nil, nil)
	defer e.Close()
	r := newReplies()
	for i := 0; i < 3*gatherHistory; i++ {
		e.Handle(&paxos.Request{Kind: paxos.KindAccept, Seg: 1, Off: uint32(i), Values: [][]byte{{'v'}}}, r, 0)
		r.wait(t, i+1)
	}
	if g := e.Stats().Gathered; g != 0 {
		t.Fatalf("%d syncs held for followers of a client alone", g)
	}
}
