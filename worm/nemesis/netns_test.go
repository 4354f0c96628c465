package nemesis_test

import (
	"context"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/wormspace/wormspace/worm/nemesis"
)

// TestNetworkFaults runs the harness with partitions and one-way drops
// (iptables on the loopback of a network namespace of its own: the test
// re-executes itself there), besides kill -9 and SIGSTOP. Skipped, with
// the reason, without root or iptables.
func TestNetworkFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("network fault run takes ~25s")
	}
	if !nemesis.InPrivateNetns() {
		if os.Geteuid() != 0 {
			t.Skip("needs root for a network namespace")
		}
		if _, err := exec.LookPath("iptables"); err != nil {
			t.Skip("needs iptables (apt package iptables) for partitions and one-way drops")
		}
		args := []string{"-test.run=^TestNetworkFaults$", "-test.v", "-test.count=1"}
		if s := os.Getenv("WORM_SEED"); s != "" {
			t.Logf("WORM_SEED=%s", s)
		}
		code, err := nemesis.Reexec(args)
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
	t.Logf("seed %d in a private network namespace (replay: WORM_SEED=%d go test -run TestNetworkFaults ./worm/nemesis)", s, s)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	rep, err := nemesis.Run(ctx, nemesis.Config{Seed: s, Duration: 10 * time.Second, Faults: []string{"kill", "pause", "partition", "oneway"},
		Wormd: wormd, Dir: t.TempDir(), Logf: t.Logf})
	if err != nil {
		t.Fatalf("seed %d: %v", s, err)
	}
	t.Logf("\n%s", rep)
	for _, v := range rep.Failures() {
		t.Errorf("seed %d: %s: %s %s", s, v.Name, v.Detail, v.Visualization)
	}
	for _, f := range []string{"partition", "oneway"} {
		if rep.Faults[f] == 0 {
			t.Errorf("seed %d: no %s fault injected (%s)", s, f, rep.Skipped[f])
		}
	}
}
