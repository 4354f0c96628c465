package bank

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/wormspace/wormspace/apps/wormtx"
	"github.com/wormspace/wormspace/worm"
)

// DemoOptions configures Demo.
type DemoOptions struct {
	// Participants is the number of participant processes (default 3),
	// each holding two accounts of 100.
	Participants int
	// Transfers is the number of transfers (default 10), run Concurrency
	// at a time (default 1), each by its own coordinator.
	Transfers   int
	Concurrency int
	// Seed picks the transfers.
	Seed uint64
	// Base is the layout's base segment (default 1<<40).
	Base uint64
	// Recovery is RecoverAfter for participants and coordinators
	// (default 200ms).
	Recovery time.Duration
	// CoordinatorCrash crashes the first transfer's coordinator at that
	// point (for CoordinatorAfterPost, after CrashAfterPosts posts).
	CoordinatorCrash wormtx.CrashPoint
	CrashAfterPosts  int
	// ParticipantCrash crashes participant p0 at that point of the first
	// transfer it takes part in; it restarts after 2×Recovery.
	ParticipantCrash wormtx.CrashPoint
	// Log receives the narration; nil discards it.
	Log io.Writer
}

// DemoReport is what Demo observed.
type DemoReport struct {
	Committed, Aborted, CoordinatorCrashes int
	ParticipantCrashes                     int
	Total, WantTotal                       int64
	Conflicts                              []string // invariant violations (want none)
	Locked                                 []string // accounts still locked (want none)
	Elapsed                                time.Duration
}

// OK reports whether the invariants held: no conflicting outcome, money
// conserved, no lock left.
func (r DemoReport) OK() bool {
	return len(r.Conflicts) == 0 && r.Total == r.WantTotal && len(r.Locked) == 0
}

// Demo runs the bank in one process over the Space handles open returns
// (one per identity: "p0".., "coord0".., "observer"): participant
// processes serve their inboxes, coordinators run transfers between
// accounts of different participants, crash options kill a coordinator or
// a participant midway; then it waits until every participant of every
// transfer applied it and checks the invariants. The returned error is
// about running the demo (ctx, Space); invariant violations are in the
// report.
func Demo(ctx context.Context, open func(id string) worm.Space, o DemoOptions) (DemoReport, error) {
	if o.Participants <= 0 {
		o.Participants = 3
	}
	if o.Participants < 2 {
		return DemoReport{}, fmt.Errorf("%w: the demo needs two participants", wormtx.ErrInvalid)
	}
	if o.Transfers <= 0 {
		o.Transfers = 10
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 1
	}
	if o.Base == 0 {
		o.Base = 1 << 40
	}
	if o.Recovery <= 0 {
		o.Recovery = 200 * time.Millisecond
	}
	out := o.Log
	if out == nil {
		out = io.Discard
	}
	var outMu sync.Mutex
	say := func(format string, args ...any) {
		outMu.Lock()
		fmt.Fprintf(out, format+"\n", args...)
		outMu.Unlock()
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	start := time.Now()
	rep := DemoReport{}

	layout := Layout{Base: o.Base}
	ledgers := map[string]*Ledger{}
	owner := map[string]string{}
	var accounts []string
	for i := range o.Participants {
		name := "p" + strconv.Itoa(i)
		layout.Participants = append(layout.Participants, name)
		bal := map[string]int64{}
		for j := range 2 {
			a := fmt.Sprintf("%s.acct%d", name, j)
			bal[a], owner[a] = 100, name
			accounts = append(accounts, a)
			rep.WantTotal += 100
		}
		ledgers[name] = NewLedger(name, bal)
	}
	pol := wormtx.Policy{RecoverAfter: o.Recovery, Poll: 20 * time.Millisecond, Logger: quiet}

	pctx, stopParts := context.WithCancel(ctx)
	var pwg sync.WaitGroup
	var crashes sync.Mutex
	for _, name := range layout.Participants {
		sp := open(name)
		defer sp.Close()
		cfg := Config{Name: name, Layout: layout, Policy: &pol, AbandonAfter: 4 * o.Recovery, Logger: quiet}
		if name == "p0" {
			cfg.CrashAt = o.ParticipantCrash
		}
		pwg.Go(func() {
			for {
				err := RunParticipant(pctx, sp, cfg, ledgers[name])
				if !errors.Is(err, wormtx.ErrCrashed) {
					return
				}
				crashes.Lock()
				rep.ParticipantCrashes++
				crashes.Unlock()
				say("%s crashed (%v); restarting in %v", name, cfg.CrashAt, 2*o.Recovery)
				cfg.CrashAt = 0
				select {
				case <-time.After(2 * o.Recovery):
				case <-pctx.Done():
					return
				}
				say("%s restarted", name)
			}
		})
	}
	defer func() { stopParts(); pwg.Wait() }()

	jobs := PlanTransfers(o.Seed, accounts, o.Transfers)
	type done struct {
		tx    wormtx.TxID
		parts []string
		crash wormtx.CrashPoint
	}
	results := make([]done, len(jobs))
	var mu sync.Mutex
	sem := make(chan struct{}, o.Concurrency)
	var wg sync.WaitGroup
	var firstErr error
	for _, jb := range jobs {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			sp := open("coord" + strconv.Itoa(jb.K))
			defer sp.Close()
			cfg := wormtx.CoordinatorConfig{FirstSeg: layout.CoordinatorSeg(jb.K), Directory: layout.Directory(), Policy: pol, Logger: quiet}
			if jb.K == 0 && o.CoordinatorCrash != 0 {
				cfg.Crash = CrashOnce(o.CoordinatorCrash, o.CrashAfterPosts)
			}
			co := wormtx.NewCoordinator(sp, cfg)
			defer co.Close()
			tx, outcome, err := Bank{Owner: owner, TM: co}.Transfer(ctx, jb.From, jb.To, jb.Amount)
			parts := []string{owner[jb.From], owner[jb.To]}
			mu.Lock()
			defer mu.Unlock()
			switch {
			case errors.Is(err, wormtx.ErrCrashed):
				rep.CoordinatorCrashes++
				results[jb.K] = done{tx, parts, o.CoordinatorCrash}
				say("%v: %s -> %s %d: coordinator crashed (%v)", tx, jb.From, jb.To, jb.Amount, o.CoordinatorCrash)
			case err != nil:
				if firstErr == nil {
					firstErr = err
				}
			default:
				results[jb.K] = done{tx, parts, 0}
				if outcome == wormtx.Commit {
					rep.Committed++
				} else {
					rep.Aborted++
				}
				say("%v: %s -> %s %d: %v", tx, jb.From, jb.To, jb.Amount, outcome)
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return rep, firstErr
	}

	// A coordinator that died right after Alloc told nobody: an observer
	// resolves it (recovery posts it to the participants' inboxes).
	obs := open("observer")
	defer obs.Close()
	for _, r := range results {
		if r.crash == wormtx.CoordinatorAfterAlloc {
			opol := pol
			opol.RecoverAfter, opol.Notify = 0, layout.Directory()
			oc, err := wormtx.Resolve(ctx, obs, r.tx, opol)
			if err != nil && !errors.Is(err, worm.ErrTrimmed) {
				return rep, err
			}
			say("%v: resolved by an observer: %v", r.tx, oc)
		}
	}
	// Wait until every participant applied every transfer.
	for _, r := range results {
		for _, p := range r.parts {
			for {
				if _, ok := ledgers[p].Applied(r.tx); ok {
					break
				}
				select {
				case <-ctx.Done():
					return rep, fmt.Errorf("bank demo: %v not applied by %s: %w", r.tx, p, ctx.Err())
				case <-time.After(5 * time.Millisecond):
				}
			}
		}
		if r.crash != 0 {
			oc, _ := ledgers[r.parts[0]].Applied(r.tx)
			say("%v: completed without its coordinator: %v", r.tx, oc)
			if oc == wormtx.Commit {
				rep.Committed++
			} else {
				rep.Aborted++
			}
		}
	}
	for _, name := range layout.Participants {
		l := ledgers[name]
		rep.Total += l.Total()
		rep.Conflicts = append(rep.Conflicts, l.Conflicts()...)
		for _, a := range l.Locked() {
			rep.Locked = append(rep.Locked, name+":"+a)
		}
		for _, a := range accounts {
			if b, ok := l.Balance(a); ok {
				say("%s %s = %d", name, a, b)
			}
		}
	}
	rep.Elapsed = time.Since(start)
	say("committed %d, aborted %d, total %d (want %d), invariants ok: %v", rep.Committed, rep.Aborted, rep.Total, rep.WantTotal, rep.OK())
	return rep, nil
}

// PlannedTransfer is transfer K of a demonstration: Amount from account
// From to account To, held by different participants.
type PlannedTransfer struct {
	K        int
	From, To string
	Amount   int64
}

// DemoAccounts is the demonstration's bank: n participants p0, p1, ...,
// each holding two accounts of 100 (pI.acct0, pI.acct1). accounts lists
// them in that order; owner maps each to its participant.
func DemoAccounts(n int) (names, accounts []string, owner map[string]string) {
	owner = map[string]string{}
	for i := range n {
		name := "p" + strconv.Itoa(i)
		names = append(names, name)
		for j := range 2 {
			a := fmt.Sprintf("%s.acct%d", name, j)
			accounts = append(accounts, a)
			owner[a] = name
		}
	}
	return names, accounts, owner
}

// PlanTransfers picks n transfers between accounts (as DemoAccounts lists
// them: two per participant) of different participants, from seed: every
// process of a demonstration computes the same plan.
func PlanTransfers(seed uint64, accounts []string, n int) []PlannedTransfer {
	rng := rand.New(rand.NewPCG(seed, 1))
	jobs := make([]PlannedTransfer, n)
	for k := range jobs {
		i := rng.IntN(len(accounts))
		j := rng.IntN(len(accounts) - 2)
		// Any account of another participant: skip i's participant's two.
		pi := i / 2
		if j >= 2*pi {
			j += 2
		}
		jobs[k] = PlannedTransfer{k, accounts[i], accounts[j], int64(1 + rng.IntN(50))}
	}
	return jobs
}
