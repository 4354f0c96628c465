// Package bank is WormTX's demonstration: a bank whose accounts are spread
// over participant processes, and transfers between accounts held by
// different participants committed atomically.
//
// # Usage
//
// Every process agrees on a Layout (a base segment and the participant
// names; it places inboxes and coordinator ranges). A participant process
// holds a Ledger and serves its inbox:
//
//	layout := bank.Layout{Base: 1 << 40, Participants: []string{"p0", "p1"}}
//	ledger := bank.NewLedger("p0", map[string]int64{"a00": 100})
//	err := bank.RunParticipant(ctx, space, bank.Config{Name: "p0", Layout: layout}, ledger)
//
// A client moves money with a transaction manager, WormTX's coordinator or
// the 2PC baseline:
//
//	co := wormtx.NewCoordinator(space, wormtx.CoordinatorConfig{
//		FirstSeg: layout.CoordinatorSeg(0), Directory: layout.Directory()})
//	b := bank.Bank{Owner: map[string]string{"a00": "p0", "a10": "p1"}, TM: co}
//	tx, outcome, err := b.Transfer(ctx, "a00", "a10", 30)
//
// Participants discover transactions through their inboxes (see package
// wormtx): they coordinate over WormSpace only. Prepare locks the
// accounts a transfer touches (no-wait: an account locked by another
// transaction, or an overdraft, votes no, so there are no deadlocks);
// Apply changes the balances on commit and releases the locks.
//
// Crash points are options: Config.CrashAt crashes a participant before
// or after voting (RunParticipant returns wormtx.ErrCrashed, after
// calling Config.OnCrash, where a participant process exits; run it again
// with the same Ledger to restart: the ledger stands for durable state),
// and CrashOnce builds the coordinator hook (after Alloc, after telling k
// participants, before learning the outcome).
//
// A participant that is a process of its own keeps its ledger in a file
// (OpenLedgerFile: the whole ledger is synced to disk before every
// Prepare and Apply returns, so a process killed at any point restarts on
// what it voted); LoadLedgerFile reads one back for inspection.
// DemoAccounts and PlanTransfers are the demonstration's bank and its
// transfers, computed alike by every process from a seed: `worm tx` runs
// them with a process per participant and a coordinator process. Demo
// runs the same demonstration within one process.
//
// This package imports the standard library, package worm and
// apps/wormtx. It must never import worm/paxos, worm/wire, worm/server,
// worm/client or worm/storage.
package bank
