package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/wormspace/wormspace/apps/wormtx"
	"github.com/wormspace/wormspace/apps/wormtx/bank"
)

// The child processes of `worm tx`. They print what the driver needs on
// standard output, one line each, and log to standard error.

// cmdTxParticipant is `worm tx participant`: participant -index of the
// demonstration's bank, serving its inbox over WormSpace with its ledger
// in -ledger (created with its two accounts of 100 when missing). It
// prints "ready" once it serves, and stops when its standard input
// closes. With -crash, it prints "crashing POINT TX" and exits with status
// 3 the first time a transaction reaches that point (a process crash:
// nothing after it runs; the ledger file holds what was recorded).
func cmdTxParticipant(args []string) error {
	var sf spaceFlags
	fs := flag.NewFlagSet("tx participant", flag.ContinueOnError)
	sf.add(fs)
	index := fs.Int("index", -1, "this participant's index (name pINDEX)")
	parts := fs.Int("participants", 0, "participants of the bank")
	base := fs.Uint64("base", 0, "the bank layout's base segment")
	ledger := fs.String("ledger", "", "the ledger file")
	recovery := fs.Duration("recovery", 200*time.Millisecond, "missing votes are recovered after this")
	crashF := fs.String("crash", "", "exit at this participant crash point of the first transaction")
	if _, err := parseArgs(fs, args, 0, "tx participant [flags] (started by worm tx)"); err != nil {
		return err
	}
	crash, err := parseCrash(*crashF)
	if err != nil || *index < 0 || *index >= *parts || *base == 0 || *ledger == "" {
		return &exitError{code: exitFailure, msg: "worm tx participant is started by worm tx"}
	}
	names, _, owner := bank.DemoAccounts(*parts)
	name := names[*index]
	balances := map[string]int64{}
	for a, p := range owner {
		if p == name {
			balances[a] = 100
		}
	}
	l, err := bank.OpenLedgerFile(*ledger, name, balances)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sf.id = "tx-" + name
	dctx, dcancel := context.WithTimeout(ctx, 20*time.Second)
	sp, err := sf.dial(dctx)
	dcancel()
	if err != nil {
		return err
	}
	defer sp.Close()
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin) // the driver closes it to stop us
		cancel()
	}()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).With("participant", name)
	pol := wormtx.Policy{RecoverAfter: *recovery, Poll: 20 * time.Millisecond, Logger: logger}
	cfg := bank.Config{Name: name, Layout: bank.Layout{Base: *base, Participants: names}, Policy: &pol,
		AbandonAfter: 4 * *recovery, Logger: logger, CrashAt: crash,
		OnCrash: func(p wormtx.CrashPoint, tx wormtx.TxID) {
			fmt.Printf("crashing %v %v\n", p, tx)
			// With -kill the driver sends SIGKILL now; else exit.
			time.Sleep(100 * time.Millisecond)
			os.Exit(txCrashExit)
		}}
	fmt.Println("ready")
	err = bank.RunParticipant(ctx, sp, cfg, l)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// cmdTxCoordinator is `worm tx coordinator`: it runs transfers -jobs of
// the demonstration's plan (-seed, -transfers), -concurrency at a time,
// each with a WormTX coordinator of its own segment range, and prints
// "begun K TX" when transfer K's transaction is begun, "done K TX OUTCOME"
// when its coordinator learned the outcome. With -crash, the first
// transfer to reach that point prints "crashed K TX POINT" and the
// process exits with status 3 at once.
func cmdTxCoordinator(args []string) error {
	var sf spaceFlags
	fs := flag.NewFlagSet("tx coordinator", flag.ContinueOnError)
	sf.add(fs)
	incarnation := fs.Int("incarnation", 0, "distinguishes this process's client identity from earlier ones")
	parts := fs.Int("participants", 0, "participants of the bank")
	base := fs.Uint64("base", 0, "the bank layout's base segment")
	seed := fs.Uint64("seed", 0, "the plan's seed")
	transfers := fs.Int("transfers", 0, "transfers in the plan")
	jobsF := fs.String("jobs", "", "the plan's transfers to run (indexes, comma separated)")
	conc := fs.Int("concurrency", 1, "transfers in flight at once")
	recovery := fs.Duration("recovery", 200*time.Millisecond, "missing votes are recovered after this")
	crashF := fs.String("crash", "", "exit at this coordinator crash point of the first transfer")
	afterPosts := fs.Int("crash-after-posts", 1, "with coordinator-after-post: how many participants were told")
	if _, err := parseArgs(fs, args, 0, "tx coordinator [flags] (started by worm tx)"); err != nil {
		return err
	}
	crash, err := parseCrash(*crashF)
	if err != nil || *parts < 2 || *base == 0 || *transfers < 1 || *jobsF == "" {
		return &exitError{code: exitFailure, msg: "worm tx coordinator is started by worm tx"}
	}
	names, accounts, owner := bank.DemoAccounts(*parts)
	plan := bank.PlanTransfers(*seed, accounts, *transfers)
	var jobs []bank.PlannedTransfer
	for _, k := range strings.Split(*jobsF, ",") {
		i, err := strconv.Atoi(k)
		if err != nil || i < 0 || i >= len(plan) {
			return &exitError{code: exitFailure, msg: fmt.Sprintf("-jobs: bad index %q", k)}
		}
		jobs = append(jobs, plan[i])
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sf.id = "tx-coordinator-" + strconv.Itoa(*incarnation)
	sp, err := sf.dial(ctx)
	if err != nil {
		return err
	}
	defer sp.Close()
	layout := bank.Layout{Base: *base, Participants: names}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).With("process", "coordinator")
	pol := wormtx.Policy{RecoverAfter: *recovery, Poll: 20 * time.Millisecond, Logger: logger}
	var outMu sync.Mutex
	say := func(format string, args ...any) {
		outMu.Lock()
		defer outMu.Unlock()
		fmt.Printf(format+"\n", args...)
	}
	var hook func(wormtx.CrashPoint, int) bool
	if crash != 0 {
		n := 0 // the count at the other points: participants told
		if crash == wormtx.CoordinatorAfterPost {
			n = *afterPosts
		} else if crash == wormtx.CoordinatorBeforeAwait {
			n = *parts
		}
		hook = bank.CrashOnce(crash, min(n, 2))
	}
	sem := make(chan struct{}, max(1, *conc))
	var wg sync.WaitGroup
	errs := make([]error, len(jobs))
	for i, jb := range jobs {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			// A coordinator per transfer, each with its own segment range
			// (they share this process's client identity).
			co := wormtx.NewCoordinator(sp, wormtx.CoordinatorConfig{FirstSeg: layout.CoordinatorSeg(jb.K) + uint64(*incarnation)<<24,
				Directory: layout.Directory(), Policy: pol, Crash: hook, AckTimeout: 5 * time.Second, Logger: logger})
			t := bank.Transfer{From: jb.From, To: jb.To, Amount: jb.Amount}
			id, err := co.Begin(ctx, []string{owner[jb.From], owner[jb.To]}, t.Marshal())
			if errors.Is(err, wormtx.ErrCrashed) {
				say("crashed %d %d %v", jb.K, uint64(id), crash)
				os.Exit(txCrashExit)
			}
			if err != nil {
				errs[i] = fmt.Errorf("transfer %d: %w", jb.K, err)
				return
			}
			say("begun %d %d", jb.K, uint64(id))
			o, err := co.Await(ctx, id)
			if errors.Is(err, wormtx.ErrCrashed) {
				say("crashed %d %d %v", jb.K, uint64(id), crash)
				os.Exit(txCrashExit)
			}
			if err != nil {
				errs[i] = fmt.Errorf("transfer %d (%v): %w", jb.K, id, err)
				return
			}
			say("done %d %d %v", jb.K, uint64(id), o)
			co.Close()
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}
