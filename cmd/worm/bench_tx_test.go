package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wormspace/wormspace/apps/wormtx"
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
	args := []string{"bench", "tx", "-quick", "-volatile", "-stages", "-clients", "1", "-blocking", "0", "-json", out}
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
