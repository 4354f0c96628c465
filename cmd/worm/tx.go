package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/wormspace/wormspace/apps/wormtx"
	"github.com/wormspace/wormspace/apps/wormtx/bank"
	"github.com/wormspace/wormspace/worm"
)

func init() {
	register(&command{
		name:    "tx",
		summary: "WormTX demo: bank transfers by non-blocking atomic commit, with crash points",
		run:     cmdTx,
	})
}

const txUsage = `usage: worm tx [flags]

Runs bank transfers between accounts held by different participants, each
with its own WormSpace client identity, committed by WormTX: each
participant writes its vote with an unsafe write into the transaction's
segment; the outcome is commit iff every vote is yes; a vote missing after
-recovery is captured and written "no" by whoever waits for it, so a
crashed coordinator blocks nobody. -crash-coordinator and
-crash-participant stop a process at a chosen point of the first transfer;
the report shows every transfer still resolved and the invariants held
(money conserved, no lock left, every participant applied one outcome).

crash points: ` + "coordinator-after-alloc, coordinator-after-post, coordinator-before-await; participant-before-vote, participant-after-vote"

func parseCrash(s string) (wormtx.CrashPoint, error) {
	if s == "" {
		return 0, nil
	}
	for c := wormtx.CoordinatorAfterAlloc; c <= wormtx.ParticipantAfterVote; c++ {
		if c.String() == s {
			return c, nil
		}
	}
	return 0, fmt.Errorf("unknown crash point %q", s)
}

func cmdTx(args []string) error {
	var sf spaceFlags
	fs := flag.NewFlagSet("tx", flag.ContinueOnError)
	sf.add(fs)
	parts := fs.Int("participants", 3, "participant processes (each holds two accounts of 100)")
	transfers := fs.Int("transfers", 10, "transfers to run")
	conc := fs.Int("concurrency", 1, "transfers in flight at once")
	seed := fs.Uint64("seed", uint64(time.Now().UnixNano()), "picks the transfers")
	recovery := fs.Duration("recovery", 200*time.Millisecond, "how long a missing vote is waited for before it is captured and written no")
	crashC := fs.String("crash-coordinator", "", "crash the first transfer's coordinator at this point")
	crashP := fs.String("crash-participant", "", "crash participant p0 at this point of its first transfer (it restarts)")
	afterPosts := fs.Int("crash-after-posts", 1, "with coordinator-after-post: how many participants were told")
	quiet := fs.Bool("q", false, "only the summary")
	fs.Usage = func() { fmt.Fprintln(fs.Output(), txUsage); fs.PrintDefaults() }
	if _, err := parseArgs(fs, args, 0, "tx [flags]"); err != nil {
		return err
	}
	cc, err := parseCrash(*crashC)
	if err != nil || (cc != 0 && !strings.HasPrefix(cc.String(), "coordinator")) {
		return &exitError{code: exitFailure, msg: fmt.Sprintf("-crash-coordinator %q: want a coordinator-... point", *crashC)}
	}
	pc, err := parseCrash(*crashP)
	if err != nil || (pc != 0 && !strings.HasPrefix(pc.String(), "participant")) {
		return &exitError{code: exitFailure, msg: fmt.Sprintf("-crash-participant %q: want a participant-... point", *crashP)}
	}
	if sf.timeout < time.Minute {
		sf.timeout = time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), sf.timeout)
	defer cancel()
	var opened []worm.Space
	defer func() {
		for _, s := range opened {
			s.Close()
		}
	}()
	var openErr error
	open := func(id string) worm.Space {
		f := sf
		f.id = id
		cl, err := f.dial(ctx)
		if err != nil {
			openErr = err
			return nil
		}
		opened = append(opened, cl)
		return cl
	}
	var narration *os.File
	if !*quiet {
		narration = os.Stdout
	}
	o := bank.DemoOptions{Participants: *parts, Transfers: *transfers, Concurrency: *conc, Seed: *seed,
		Recovery: *recovery, CoordinatorCrash: cc, CrashAfterPosts: *afterPosts, ParticipantCrash: pc,
		Base: 1<<40 + (*seed%(1<<20))<<12}
	if narration != nil {
		o.Log = narration
	}
	rep, err := bank.Demo(ctx, open, o)
	if openErr != nil {
		return openErr
	}
	if err != nil {
		return classify(err)
	}
	fmt.Printf("%d committed, %d aborted, %d coordinator crash(es), %d participant crash(es) in %v; money %d of %d; ",
		rep.Committed, rep.Aborted, rep.CoordinatorCrashes, rep.ParticipantCrashes, rep.Elapsed.Round(time.Millisecond), rep.Total, rep.WantTotal)
	if !rep.OK() {
		fmt.Println("INVARIANTS VIOLATED")
		for _, c := range rep.Conflicts {
			fmt.Println("  conflict:", c)
		}
		for _, l := range rep.Locked {
			fmt.Println("  still locked:", l)
		}
		return &exitError{code: exitFailure, msg: "invariants violated"}
	}
	fmt.Println("invariants held")
	return nil
}
