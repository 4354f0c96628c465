package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wormspace/wormspace/apps/wormtx/bank"
)

// buildWormd compiles wormd into dir, next to a worm built there, where
// localcluster finds it.
func buildWormd(t *testing.T, dir string) {
	t.Helper()
	cmd := exec.Command("go", "build", "-o", dir+string(filepath.Separator), "../wormd")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building wormd: %v\n%s", err, out)
	}
}

// TestTxProcesses runs `worm tx` end to end on three real wormd processes:
// each participant is a process of its own and the coordinator another;
// a participant process dies at a crash point (exit, then SIGKILL) and is
// restarted on its ledger file, the coordinator process dies after telling
// one participant. Every run must report the invariants held, and the
// ledger files left behind are checked here again: money conserved, no
// account locked, both participants of every transfer applied it.
func TestTxProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs processes")
	}
	exe := buildWorm(t)
	buildWormd(t, filepath.Dir(exe))
	for _, c := range []struct {
		name  string
		args  []string
		wants []string
	}{
		{"participant-after-vote", []string{"-crash-participant", "participant-after-vote", "-crash-index", "1"},
			[]string{"1 participant crash(es)", "p1 crashes at participant-after-vote", "p1 restarted on its ledger"}},
		{"participant-before-vote-kill9", []string{"-crash-participant", "participant-before-vote", "-kill"},
			[]string{"1 participant crash(es)", "p0 is down (signal: killed)"}},
		{"coordinator-after-post", []string{"-crash-coordinator", "coordinator-after-post", "-concurrency", "2"},
			[]string{"1 coordinator crash(es)", "the coordinator process exits at coordinator-after-post", "completed without it"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			args := append([]string{"tx", "-local", "3", "-transfers", "6", "-participants", "3", "-seed", "7", "-dir", dir}, c.args...)
			cmd := exec.CommandContext(ctx, exe, args...)
			cmd.Env = append(os.Environ(), "WORM_SERVERS=", "WORM_KEY=", "WORM_KEY_FILE=")
			out, err := cmd.CombinedOutput()
			t.Logf("worm %s:\n%s", strings.Join(args, " "), out)
			if err != nil {
				t.Fatalf("worm tx: %v", err)
			}
			for _, w := range append(c.wants, "money 600 of 600; invariants held") {
				if !strings.Contains(string(out), w) {
					t.Errorf("output lacks %q", w)
				}
			}
			// The ledgers, read back independently of the command.
			var total int64
			applied := 0
			ledgers := make([]*bank.Ledger, 3)
			for i := range 3 {
				l, err := bank.LoadLedgerFile(filepath.Join(dir, "ledger-p"+string(rune('0'+i))+".json"))
				if err != nil {
					t.Fatal(err)
				}
				ledgers[i] = l
				total += l.Total()
				if locked := l.Locked(); len(locked) > 0 {
					t.Errorf("p%d: accounts still locked: %v", i, locked)
				}
				if cs := l.Conflicts(); len(cs) > 0 {
					t.Errorf("p%d: conflicts %v", i, cs)
				}
			}
			if total != 600 {
				t.Errorf("money %d, want 600", total)
			}
			for _, line := range strings.Split(string(out), "\n") {
				// "txN: from -> to amount: outcome ..."
				f := strings.Fields(line)
				if len(f) < 6 || f[2] != "->" || !strings.HasPrefix(f[0], "tx") || (f[5] != "commit" && f[5] != "abort") {
					continue
				}
				applied++
			}
			if applied != 6 {
				t.Errorf("%d transfers reported decided, want 6", applied)
			}
		})
	}
}
