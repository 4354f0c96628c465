package txbench

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/wormspace/wormspace/apps/wormtx"
	"github.com/wormspace/wormspace/apps/wormtx/twopc"
)

// BlockingReport shows what a coordinator crash right after the prepares
// does to each protocol, on the harness's participants and network.
type BlockingReport struct {
	// Wait is how long 2PC's participants were watched.
	Wait time.Duration `json:"wait_ns"`
	// TwoPCInDoubt: 2PC's participants that had not applied an outcome
	// after Wait (they voted yes: they are in doubt, resources held). TwoPCResolved: how long after
	// its coordinator came back (same log) they learned the outcome,
	// TwoPCOutcome (abort: presumed, nothing was logged).
	TwoPCInDoubt  int            `json:"twopc_in_doubt"`
	TwoPCResolved time.Duration  `json:"twopc_resolved_after_restart_ns"`
	TwoPCOutcome  wormtx.Outcome `json:"twopc_outcome"`
	// WormTX with its coordinator dead after sending every prepare: the
	// participants vote and learn the outcome from the votes, the
	// coordinator never needed: WormTXApplied after Begin, every
	// participant applied WormTXOutcome (commit).
	WormTXApplied time.Duration  `json:"wormtx_applied_ns"`
	WormTXOutcome wormtx.Outcome `json:"wormtx_outcome"`
	// WormTX with its coordinator dead after telling one participant: that
	// one recovers the missing votes after RecoverAfter (no), tells the
	// others through their inboxes, and everyone applies WormTXTold1
	// (abort) after WormTXTold1Applied.
	WormTXTold1Applied time.Duration  `json:"wormtx_told1_applied_ns"`
	WormTXTold1        wormtx.Outcome `json:"wormtx_told1_outcome"`
}

// Blocking runs three transactions whose coordinators crash: a 2PC one
// after its prepares (its participants are watched for wait, then its
// coordinator restarts on its log), a WormTX one after its prepares, and a
// WormTX one after its first prepare.
func (h *Harness) Blocking(ctx context.Context, wait time.Duration) (BlockingReport, error) {
	rep := BlockingReport{Wait: wait}

	// 2PC: a coordinator of its own (name and log), on the same
	// participants and network, that dies after sending its prepares.
	log, err := twopc.OpenFileLog(filepath.Join(h.cfg.Dir, "2pc-crashy-decisions"), h.cfg.Volatile)
	if err != nil {
		return rep, err
	}
	defer log.Close()
	const crashy = "2pc-crashy-coordinator"
	cfg := twopc.CoordinatorConfig{Name: crashy, Decisions: log, FirstTx: 1 << 40, VoteTimeout: time.Minute, Logger: h.cfg.Logger,
		Crash: func(p twopc.CrashPoint, _ int) bool { return p == twopc.CoordinatorAfterPrepare }}
	co := twopc.NewCoordinator(h.net, cfg)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	dead, bury := context.WithCancel(ctx)
	defer bury()
	go co.Run(dead)
	id, err := co.Begin(ctx, h.names, nil)
	if err == nil {
		return rep, fmt.Errorf("txbench: the 2PC coordinator did not crash")
	}
	time.Sleep(wait)
	h.mu.Lock()
	rep.TwoPCInDoubt = len(h.names) - len(h.reported[txKey{TwoPC, id}])
	h.mu.Unlock()
	// The coordinator comes back on its log: presumed abort.
	bury()
	h.net.Restart(crashy)
	cfg.Crash, cfg.FirstTx = nil, 1<<41
	t0 := time.Now()
	co2 := twopc.NewCoordinator(h.net, cfg)
	go co2.Run(cctx)
	if rep.TwoPCOutcome, err = h.waitApplied(ctx, TwoPC, id); err != nil {
		return rep, err
	}
	rep.TwoPCResolved = time.Since(t0)

	// WormTX: coordinators of their own, on the same participants.
	for _, c := range []struct {
		point wormtx.CrashPoint
		told  int
		dur   *time.Duration
		out   *wormtx.Outcome
		seg   uint64
	}{
		{wormtx.CoordinatorBeforeAwait, 0, &rep.WormTXApplied, &rep.WormTXOutcome, 1 << 31},
		{wormtx.CoordinatorAfterPost, 1, &rep.WormTXTold1Applied, &rep.WormTXTold1, 1<<31 + 1<<30},
	} {
		sp, err := h.cfg.Dial(ctx, fmt.Sprintf("wtx-crashy-coordinator-%d", c.point))
		if err != nil {
			return rep, err
		}
		h.spaces = append(h.spaces, sp)
		co := wormtx.NewCoordinator(sp, wormtx.CoordinatorConfig{FirstSeg: h.cfg.SegBase + c.seg, Messenger: messenger{h.net},
			Directory: directory(h.cfg.SegBase, h.names), Reserve: 1, Logger: h.cfg.Logger,
			Crash: func(p wormtx.CrashPoint, n int) bool { return p == c.point && (c.told == 0 || n == c.told) }})
		t0 := time.Now()
		id, err := co.Begin(ctx, h.names, nil)
		if c.told == 0 {
			if err != nil {
				co.Close()
				return rep, err
			}
			if _, err := co.Await(ctx, id); err == nil {
				co.Close()
				return rep, fmt.Errorf("txbench: the WormTX coordinator did not crash")
			}
		} else if err == nil {
			co.Close()
			return rep, fmt.Errorf("txbench: the WormTX coordinator did not crash")
		}
		o, err := h.waitApplied(ctx, WormTX, id)
		co.Close()
		if err != nil {
			return rep, err
		}
		*c.dur, *c.out = time.Since(t0), o
	}
	return rep, nil
}

// waitApplied waits until every participant of the protocol reported
// applying tx and returns the outcome (ErrInconsistent if they differ).
func (h *Harness) waitApplied(ctx context.Context, p Protocol, tx wormtx.TxID) (wormtx.Outcome, error) {
	for {
		h.mu.Lock()
		outs := append([]wormtx.Outcome(nil), h.reported[txKey{p, tx}]...)
		changed := h.changed
		h.mu.Unlock()
		if len(outs) >= len(h.names) {
			for _, o := range outs {
				if o != outs[0] {
					return wormtx.Pending, fmt.Errorf("%w: %v applied as %v", wormtx.ErrInconsistent, tx, outs)
				}
			}
			return outs[0], nil
		}
		select {
		case <-ctx.Done():
			return wormtx.Pending, fmt.Errorf("txbench: %v: %d of %d participants applied it: %w", tx, len(outs), len(h.names), ctx.Err())
		case <-changed:
		}
	}
}
