package nemesis_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/wormspace/wormspace/worm/localcluster"
	"github.com/wormspace/wormspace/worm/nemesis"
)

// bin holds the wormd and worm binaries built for these tests.
var (
	bin   string
	wormd string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "worm-bin-")
	if err != nil {
		panic(err)
	}
	wormd, err = localcluster.Build(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// seed returns $WORM_SEED or a fresh seed.
func seed(t *testing.T) uint64 {
	s := uint64(time.Now().UnixNano())
	if e := os.Getenv("WORM_SEED"); e != "" {
		v, err := strconv.ParseUint(e, 10, 64)
		if err != nil {
			t.Fatalf("WORM_SEED=%q: %v", e, err)
		}
		s = v
	}
	return s
}

// TestNemesis runs the harness with every fault that needs no network
// namespace: kill -9, SIGSTOP, a full disk, power loss and (as root)
// restarts with the clocks jumped, under register, log and KV load; then
// availability with one and two wormds down, healing, and every history's
// check. (The network and packet faults are skipped here, with the reason:
// TestNetworkFaults and TestPacketFaults run them in a namespace.)
// WORM_SEED replays a seed's fault schedule.
func TestNemesis(t *testing.T) {
	s := seed(t)
	t.Logf("seed %d (replay: WORM_SEED=%d go test -run TestNemesis ./worm/nemesis)", s, s)
	d := 12 * time.Second
	if testing.Short() {
		d = 3 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	rep, err := nemesis.Run(ctx, nemesis.Config{Seed: s, Duration: d, Wormd: wormd, Dir: t.TempDir(), Logf: t.Logf})
	if err != nil {
		t.Fatalf("seed %d: %v", s, err)
	}
	t.Logf("\n%s", rep)
	if !rep.OK() {
		for _, v := range rep.Failures() {
			t.Errorf("seed %d: %s: %s %s", s, v.Name, v.Detail, v.Visualization)
		}
	}
	want := []string{"kill", "pause", "powerloss"}
	if os.Geteuid() == 0 && !testing.Short() { // a full round of five faults takes ~5s
		want = append(want, "disk", "clock")
	}
	for _, f := range want {
		if rep.Faults[f] == 0 {
			t.Errorf("seed %d: no %s fault injected (%s)", s, f, rep.Skipped[f])
		}
	}
}
