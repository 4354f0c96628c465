package wormtxtest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/wormspace/wormspace/apps/wormtx"
)

// behaviour of one participant in one randomized transaction.
type behaviour uint8

const (
	voteYes     behaviour = iota // vote yes, then resolve
	voteNo                       // vote no, then resolve
	crashBefore                  // prepare, crash before voting: never votes
	crashAfter                   // vote (yes or no), crash before learning
	lateYes                      // vote yes after a random delay (maybe after recovery)
)

var behaviourNames = [...]string{"yes", "no", "crash-before-vote", "crash-after-vote", "late-yes"}

func (b behaviour) String() string { return behaviourNames[b] }

func (b behaviour) intendsYes(rng bool) bool {
	return b == voteYes || b == lateYes || (b == crashAfter && rng)
}

// seeds returns the seeds to run: WORMTX_SEED replays one.
func seeds(t *testing.T, n int) []uint64 {
	if s := os.Getenv("WORMTX_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("WORMTX_SEED=%q: %v", s, err)
		}
		return []uint64{v}
	}
	base := uint64(time.Now().UnixNano())
	out := make([]uint64, n)
	for i := range out {
		out[i] = base + uint64(i)
	}
	return out
}

// testRandomized runs many concurrent transactions with random votes,
// crashes of coordinators and participants at random points, concurrent
// recoverers and the nemesis, and checks the invariants on each.
func testRandomized(t *testing.T, open Open, opts Options) {
	for _, seed := range seeds(t, opts.Seeds) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			t.Logf("seed %d (replay: WORMTX_SEED=%d go test -run 'Randomized/%d')", seed, seed, seed)
			e := setup(t, open, opts)
			randomizedSeed(e, seed, opts)
		})
	}
}

type txRun struct {
	tx        wormtx.Tx
	behave    []behaviour
	intent    []bool
	voted     []bool        // Vote was called (the vote may be ambiguous)
	chosen    []wormtx.Vote // what Vote returned (when it returned)
	observed  []wormtx.Outcome
	coordDead bool
}

func randomizedSeed(e *env, seed uint64, opts Options) {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	pool := names(5)
	ids := make([]string, len(e.c))
	for i, c := range e.c {
		ids[i] = c.ID()
	}
	ctx, cancel := context.WithTimeout(e.ctx, 30*time.Second)
	defer cancel()

	// Plan everything up front from the seed; timing is still up to the
	// scheduler, so a replay reproduces the plan, not the interleaving.
	runs := make([]*txRun, opts.TxPerSeed)
	type plan struct {
		parts      []string
		behave     []behaviour
		coin       []bool
		delays     []time.Duration
		recover    []time.Duration
		coordCrash bool
		observers  []time.Duration
	}
	plans := make([]plan, len(runs))
	for k := range plans {
		n := 1 + rng.IntN(3)
		perm := rng.Perm(len(pool))
		var p plan
		for i := range n {
			p.parts = append(p.parts, pool[perm[i]])
			x := rng.IntN(100)
			b := voteYes
			switch {
			case x < 55:
			case x < 70:
				b = voteNo
			case x < 80:
				b = crashBefore
			case x < 90:
				b = crashAfter
			default:
				b = lateYes
			}
			p.behave = append(p.behave, b)
			p.coin = append(p.coin, rng.IntN(2) == 0)
			p.delays = append(p.delays, time.Duration(rng.IntN(15))*time.Millisecond)
			p.recover = append(p.recover, time.Duration(rng.IntN(10))*time.Millisecond)
		}
		p.coordCrash = rng.IntN(3) == 0
		for range rng.IntN(3) {
			p.observers = append(p.observers, time.Duration(rng.IntN(8))*time.Millisecond)
		}
		plans[k] = p
	}

	stop := make(chan struct{})
	calm := disturb(opts, seed, ids, stop)

	var mu sync.Mutex
	var failures []string
	fail := func(format string, args ...any) {
		mu.Lock()
		failures = append(failures, fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	var wg sync.WaitGroup
	for k, p := range plans {
		r := &txRun{behave: p.behave, intent: make([]bool, len(p.parts)), voted: make([]bool, len(p.parts)),
			chosen: make([]wormtx.Vote, len(p.parts)), coordDead: p.coordCrash}
		runs[k] = r
		co := wormtx.NewCoordinator(e.client(k), wormtx.CoordinatorConfig{FirstSeg: e.base + 1 + uint64(k)*16, Policy: fast(e.recovery)})
		id, err := co.Begin(ctx, p.parts, []byte(strconv.Itoa(k)))
		if err != nil {
			e.t.Fatalf("seed %d: Begin %d: %v", seed, k, err)
		}
		r.tx = wormtx.Tx{ID: id, Descriptor: wormtx.Descriptor{Participants: p.parts, Payload: []byte(strconv.Itoa(k))}}
		record := func(o wormtx.Outcome, err error, who string) {
			if err != nil {
				fail("%v: %s: %v", id, who, err)
				return
			}
			mu.Lock()
			r.observed = append(r.observed, o)
			mu.Unlock()
		}
		if !p.coordCrash {
			wg.Go(func() {
				o, err := co.Await(ctx, id)
				record(o, err, "coordinator")
			})
		}
		for i, b := range p.behave {
			r.intent[i] = b.intendsYes(p.coin[i])
			if b == crashBefore {
				continue
			}
			r.voted[i] = true
			wg.Go(func() {
				if b == lateYes {
					time.Sleep(p.delays[i])
				}
				part := wormtx.NewParticipant(e.client(k+i+1), p.parts[i], wormtx.ParticipantConfig{Policy: fast(p.recover[i])})
				v, err := part.Vote(ctx, r.tx, r.intent[i])
				if err != nil {
					fail("%v: %s vote: %v", id, p.parts[i], err)
					return
				}
				r.chosen[i] = v
				if b == crashAfter {
					return
				}
				o, err := r.tx.Resolve(ctx, e.client(k+i+1), fast(p.recover[i]))
				record(o, err, p.parts[i])
			})
		}
		for j, d := range p.observers {
			wg.Go(func() {
				time.Sleep(d)
				o, err := wormtx.Resolve(ctx, e.client(k+j), id, fast(d))
				record(o, err, "observer")
			})
		}
	}
	wg.Wait()
	close(stop)
	calm()
	for _, f := range failures {
		e.t.Error(f)
	}

	// Final check by a fresh observer that recovers at once: progress
	// with every coordinator and participant crash in the plan.
	for _, r := range runs {
		o, err := r.tx.Resolve(ctx, e.c[0], fast(0))
		if err != nil {
			e.t.Fatalf("seed %d: final Resolve %v: %v", seed, r.tx.ID, err)
		}
		st, err := r.tx.Status(ctx, e.c[0])
		if err != nil {
			e.t.Fatalf("seed %d: Status %v: %v", seed, r.tx.ID, err)
		}
		desc := fmt.Sprintf("seed %d %v behaviours %v intents %v votes %v", seed, r.tx.ID, r.behave, r.intent, st.Votes)
		// Agreement.
		for _, ob := range r.observed {
			if ob != o {
				e.t.Errorf("%s: an observer saw %v, the final resolve %v", desc, ob, o)
			}
		}
		if st.Outcome != o || wormtx.OutcomeOf(st.Votes) != o {
			e.t.Errorf("%s: status outcome %v / votes %v, resolve %v", desc, st.Outcome, wormtx.OutcomeOf(st.Votes), o)
		}
		if st.Decision != wormtx.Pending && st.Decision != o {
			e.t.Errorf("%s: decision register %v, outcome %v", desc, st.Decision, o)
		}
		for i := range r.behave {
			v := st.Votes[i]
			// Validity: a yes register comes from a participant that
			// voted yes; a participant that said no is never yes.
			if v == wormtx.VoteYes && (!r.voted[i] || !r.intent[i]) {
				e.t.Errorf("%s: participant %d has a yes it never cast", desc, i)
			}
			if v == wormtx.VoteNo && (!r.voted[i] || r.intent[i]) {
				e.t.Errorf("%s: participant %d has a no it never cast", desc, i)
			}
			// Missing is fine only when a no decided without recovery.
			if v == wormtx.VoteMissing && o != wormtx.Abort {
				e.t.Errorf("%s: vote %d still missing after recovery", desc, i)
			}
			if r.chosen[i] != wormtx.VoteMissing && r.chosen[i] != v {
				e.t.Errorf("%s: participant %d was told %v, register holds %v", desc, i, r.chosen[i], v)
			}
		}
		if o == wormtx.Commit {
			for i := range r.behave {
				if !r.voted[i] || !r.intent[i] {
					e.t.Errorf("%s: commit although participant %d did not vote yes", desc, i)
				}
			}
		}
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		e.t.Errorf("seed %d: ran out of time", seed)
	}
}

// disturb runs opts.Nemesis, if any, on the clients ids for the nemesis
// window or until stop is closed, whichever comes first, then calms it
// (progress is only promised once a quorum is reachable again). The
// returned function waits for the calm.
func disturb(opts Options, seed uint64, ids []string, stop <-chan struct{}) (wait func()) {
	if opts.Nemesis == nil {
		return func() {}
	}
	nrng := rand.New(rand.NewPCG(seed, 7))
	window := time.After(opts.nemesisWindow())
	var wg sync.WaitGroup
	wg.Go(func() {
		defer opts.Nemesis.Calm(ids)
		for {
			select {
			case <-stop:
				return
			case <-window:
				return
			case <-time.After(time.Millisecond):
				opts.Nemesis.Disturb(nrng, ids)
			}
		}
	})
	return wg.Wait
}
