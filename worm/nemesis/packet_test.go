package nemesis_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/wormspace/wormspace/worm/nemesis"
)

// TestPacketFaults runs the harness with packet loss, delay, duplication
// and reordering at the wormds' netstack links (each wormd on a TAP
// device of a private network namespace: the test re-executes itself
// there), partitions and one-way drops at the same links, kill -9, and
// clock jumps (restarts into time namespaces), then checks every history
// and the availability verdicts under loss. Skipped, with the reason,
// only without root or /dev/net/tun.
func TestPacketFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("packet fault run takes ~30s")
	}
	if !nemesis.InPrivateNetns() {
		if os.Geteuid() != 0 {
			t.Skip("needs root for a network namespace and TAP devices")
		}
		if _, err := os.Stat("/dev/net/tun"); err != nil {
			t.Skipf("no TAP devices: %v", err)
		}
		code, err := nemesis.Reexec([]string{"-test.run=^TestPacketFaults$", "-test.v", "-test.count=1"})
		if err != nil {
			t.Fatal(err)
		}
		if code != 0 {
			t.Fatalf("the run in its own network namespace failed (exit %d; its output is above)", code)
		}
		return
	}
	if err := nemesis.SetupNetns(); err != nil {
		t.Fatal(err)
	}
	s := seed(t)
	t.Logf("seed %d in a private network namespace (replay: WORM_SEED=%d go test -run TestPacketFaults ./worm/nemesis)", s, s)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	want := []string{"loss", "delay", "dup", "reorder", "partition", "oneway", "kill", "clock"}
	rep, err := nemesis.Run(ctx, nemesis.Config{Seed: s, Duration: 14 * time.Second, Faults: want,
		Wormd: wormd, Dir: t.TempDir(), Logf: t.Logf})
	if err != nil {
		t.Fatalf("seed %d: %v", s, err)
	}
	t.Logf("\n%s", rep)
	for _, v := range rep.Failures() {
		t.Errorf("seed %d: %s: %s %s", s, v.Name, v.Detail, v.Visualization)
	}
	if !strings.Contains(rep.Network, "netstack") {
		t.Errorf("cluster not on netstack: %s", rep.Network)
	}
	for _, f := range want {
		if rep.Faults[f] == 0 {
			t.Errorf("seed %d: no %s fault injected (%s)", s, f, rep.Skipped[f])
		}
	}
	names := map[string]bool{}
	for _, v := range rep.Verdicts {
		names[v.Name] = true
	}
	for _, v := range []string{"lossy", "two-lost", "heal-loss", "two-cut", "registers", "kv", "log", "durability"} {
		if !names[v] {
			t.Errorf("seed %d: no %s verdict", s, v)
		}
	}
	cleared := 0
	for _, r := range rep.Recoveries {
		if strings.Contains(r.What, "cleared to first write") {
			cleared++
		}
	}
	if cleared == 0 {
		t.Errorf("seed %d: no recovery time recorded after a packet fault", s)
	}
}
