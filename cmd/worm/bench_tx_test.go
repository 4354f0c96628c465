package main

import (
	"context"
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wormspace/wormspace/apps/wormtx"
	"github.com/wormspace/wormspace/apps/wormtx/txbench"
)

// TestBenchTxStages runs `worm bench tx -stages` on real wormds with the
// participants in their own process: every stage of both protocols comes
// out in the JSON report, the participants' through their reports across
// processes, and the table is printed.
func TestBenchTxStages(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs processes")
	}
	exe := buildWorm(t)
	buildWormd(t, filepath.Dir(exe))
	out := filepath.Join(t.TempDir(), "tx.json")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	args := []string{"bench", "tx", "-quick", "-reps", "2", "-volatile", "-stages", "-clients", "1", "-blocking", "0", "-json", out}
	cmd := exec.CommandContext(ctx, exe, args...)
	cmd.Env = append(os.Environ(), "WORM_SERVERS=", "WORM_KEY=", "WORM_KEY_FILE=")
	stdout, err := cmd.Output()
	t.Logf("worm %s:\n%s", strings.Join(args, " "), stdout)
	if err != nil {
		t.Fatalf("worm bench tx: %v", err)
	}
	if !strings.Contains(string(stdout), "stages at 1 client(s)") {
		t.Error("no stage table printed")
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var rep TxBenchReport
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Rows) != 1 {
		t.Fatalf("%d rows, want 1", len(rep.Rows))
	}
	if row := rep.Rows[0]; len(row.Rounds) != 2 || row.P50Ratio <= 0 || row.P50RatioMin > row.P50Ratio || row.P50Ratio > row.P50RatioMax {
		t.Errorf("rounds and ratios: %d rounds, p50 ratio %v in [%v, %v]; want 2 rounds and the median within the range", len(row.Rounds), row.P50Ratio, row.P50RatioMin, row.P50RatioMax)
	}
	// The wormds' counters over each WormTX window: every wormd accepts
	// each of the 3 votes (and little else on the path), syncs and
	// notifies the listeners.
	if !strings.Contains(string(stdout), "wormds per WormTX commit at 1 client(s)") {
		t.Error("no wormd counters printed")
	}
	for i, r := range append(rep.Rows[0].Rounds, TxBenchRound{Wormds: rep.Rows[0].Wormds}) {
		c := r.Wormds
		if c == nil {
			t.Errorf("round %d: no wormd counters", i)
			continue
		}
		if c.Accepts < 3 || c.Accepts > 6 || c.Syncs <= 0 || c.HeldSyncs > c.Syncs || c.Notifications < 3 {
			t.Errorf("round %d: wormd counters per commit %+v; want 3 to 6 accepts, some syncs, at least 3 notifications", i, *c)
		}
	}
	// 2PC's forces over each window: at one client one decision force
	// per commit, and one vote force per participant.
	if !strings.Contains(string(stdout), "2PC forces per commit at 1 client(s)") {
		t.Error("no 2PC force counters printed")
	}
	for i, r := range append(rep.Rows[0].Rounds, TxBenchRound{TwoPCForces: rep.Rows[0].TwoPCForces}) {
		c := r.TwoPCForces
		if c == nil {
			t.Errorf("round %d: no 2PC force counters", i)
			continue
		}
		if c.DecisionForces < 0.5 || c.DecisionForces > 1.5 || c.VoteForces < 1.5 || c.VoteForces > 4.5 {
			t.Errorf("round %d: 2PC forces per commit %+v; want about 1 decision and 3 vote forces", i, *c)
		}
	}
	for _, name := range []string{"wormtx", "2pc"} {
		res := rep.Rows[0].WormTX
		if name == "2pc" {
			res = rep.Rows[0].TwoPC
		}
		have := map[string]bool{}
		for _, s := range res.Stages {
			if s.Latency.P50 <= 0 {
				t.Errorf("%s: %s %s has no latency", name, s.Who, s.Stage)
			}
			have[s.Who+" "+s.Stage] = true
		}
		want := []string{"coordinator " + wormtx.StagePrepareSent.String(), "coordinator " + wormtx.StageOutcome.String()}
		for _, s := range wormtx.Stages[2:] {
			want = append(want, "first "+s.String(), "last "+s.String())
		}
		for _, w := range want {
			if !have[w] {
				t.Errorf("%s: no %q stage in the report (%d stages)", name, w, len(res.Stages))
			}
		}
	}
}

// A row's summary: each protocol's median round by p50, and the medians
// of the rounds' ratios (not the ratio of the medians).
func TestTxBenchRowSummary(t *testing.T) {
	res := func(p50 time.Duration, ops float64) txbench.Result {
		var r txbench.Result
		r.Ops, r.OpsPerSec = int64(ops), ops
		r.Latency.P50, r.Latency.P99 = p50, 2*p50
		return r
	}
	row := TxBenchRow{Clients: 1}
	for _, x := range []struct{ w, p time.Duration }{{1100, 1000}, {1500, 1200}, {1300, 1000}} {
		r := TxBenchRound{WormTX: res(x.w*time.Microsecond, 500), TwoPC: res(x.p*time.Microsecond, 600)}
		if !r.ratios() {
			t.Fatal("a round with both protocols has no ratios")
		}
		row.Rounds = append(row.Rounds, r)
	}
	row.summarize()
	if row.WormTX.Latency.P50 != 1300*time.Microsecond || row.TwoPC.Latency.P50 != 1000*time.Microsecond {
		t.Errorf("median rounds: wormtx p50 %v, 2pc p50 %v; want 1.3ms and 1ms", row.WormTX.Latency.P50, row.TwoPC.Latency.P50)
	}
	// Ratios 1.10, 1.25, 1.30: the median is 1.25 (the ratio of the
	// median rounds would be 1.30).
	if math.Abs(row.P50Ratio-1.25) > 1e-9 || math.Abs(row.P50RatioMin-1.1) > 1e-9 || math.Abs(row.P50RatioMax-1.3) > 1e-9 {
		t.Errorf("p50 ratio %v [%v-%v], want 1.25 [1.10-1.30]", row.P50Ratio, row.P50RatioMin, row.P50RatioMax)
	}
	var none TxBenchRound
	none.WormTX = res(time.Millisecond, 500)
	if none.ratios() {
		t.Error("a round without 2PC has ratios")
	}
}
