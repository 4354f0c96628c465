// Package clustertest runs the applications' invariant suites (wormlogtest,
// wormtxtest, ...) against real clusters: three wormd processes on
// loopback, reached through the distributed client, while a nemesis kills
// wormds with SIGKILL and restarts them. The suites themselves run on the
// atomic spec in each application's own package; here the same checks
// hold over the real protocol, storage and network.
//
// This package has only tests. It is the one place where applications
// meet worm/client: the applications never import it.
package clustertest

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/wormspace/wormspace/apps/wormlog/wormlogtest"
	"github.com/wormspace/wormspace/apps/wormpaxos/wormpaxostest"
	"github.com/wormspace/wormspace/apps/wormtx/wormtxtest"
	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/client"
	"github.com/wormspace/wormspace/worm/localcluster"
)

var wormd string

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
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// cluster is a running local cluster and a way to open clients on it.
type cluster struct {
	lc  *localcluster.Cluster
	key []byte
	n   int
}

func startCluster(t *testing.T) *cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lc, err := localcluster.Start(ctx, localcluster.Config{N: 3, Dir: t.TempDir(), Wormd: wormd, SegmentSize: 256})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lc.Stop() })
	key, err := lc.Key()
	if err != nil {
		t.Fatal(err)
	}
	return &cluster{lc: lc, key: key}
}

// open returns three fresh clients of the cluster.
func (c *cluster) open(t *testing.T) []worm.Space {
	var out []worm.Space
	for i := 0; i < 3; i++ {
		c.n++
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		cl, err := client.Dial(ctx, client.Config{Servers: c.lc.Servers(), Key: c.key, ID: fmt.Sprintf("app-%d", c.n),
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), OpTimeout: 5 * time.Second})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cl.Close() })
		out = append(out, cl)
	}
	return out
}

// killer is the process nemesis: now and then it kills one wormd with
// SIGKILL (never more than one at a time, so a quorum stays up) and
// restarts it a little later.
type killer struct {
	c     *cluster
	mu    sync.Mutex
	down  int // index of the killed wormd, or -1
	since time.Time
	kills int
}

func newKiller(c *cluster) *killer { return &killer{c: c, down: -1} }

func (k *killer) step(rng *rand.Rand) {
	k.mu.Lock()
	defer k.mu.Unlock()
	switch {
	case k.down < 0 && rng.IntN(20) == 0:
		i := rng.IntN(3)
		if k.c.lc.Kill(i) == nil {
			k.down, k.since = i, time.Now()
			k.kills++
			// The restart comes on its own timer, so that a wormd killed
			// at the end of a run does not stay down into the next.
			time.AfterFunc(time.Duration(20+rng.IntN(80))*time.Millisecond, k.heal)
		}
	}
}

func (k *killer) restartLocked() {
	if k.down < 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := k.c.lc.Restart(ctx, k.down); err != nil {
		panic(fmt.Sprintf("restarting wormd %d: %v", k.down, err))
	}
	k.down = -1
}

func (k *killer) heal() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.restartLocked()
}

// logNemesis adapts the killer to wormlogtest.Nemesis.
type logNemesis struct{ *killer }

func (n logNemesis) Inject(rng *rand.Rand, _ worm.Space) { n.step(rng) }
func (n logNemesis) Heal()                               { n.heal() }

// txNemesis adapts the killer to wormtxtest.Nemesis.
type txNemesis struct{ *killer }

func (n txNemesis) Disturb(rng *rand.Rand, _ []string) { n.step(rng) }
func (n txNemesis) Calm([]string)                      { n.heal() }

// TestWormLog: the shared log's invariants (no two acknowledged appends
// share a position, positions never change, followers see every record
// once, ...) over real wormds with kill -9.
func TestWormLog(t *testing.T) {
	c := startCluster(t)
	k := newKiller(c)
	wormlogtest.RunWith(t, c.open, wormlogtest.Options{Nemesis: logNemesis{k}, Seeds: 4, Duration: 400 * time.Millisecond})
	t.Logf("%d wormd kills", k.kills)
}

// TestWormTX: atomic commit's invariants (one outcome for every observer,
// commit implies every vote yes, progress with the coordinator crashed)
// over real wormds with kill -9.
func TestWormTX(t *testing.T) {
	c := startCluster(t)
	k := newKiller(c)
	wormtxtest.RunWith(t, c.open, wormtxtest.Options{Nemesis: txNemesis{k}, Seeds: 4, Recovery: 200 * time.Millisecond, LossyListen: true})
	t.Logf("%d wormd kills", k.kills)
}

// TestWormPaxos: replicated state machine invariants (identical applied
// prefixes, no acknowledged command lost or applied twice) and KV
// linearizability, under every leader policy, over real wormds with
// kill -9.
func TestWormPaxos(t *testing.T) {
	c := startCluster(t)
	k := newKiller(c)
	wormpaxostest.RunOptions(t, c.open, wormpaxostest.Options{Seeds: 1, Duration: 700 * time.Millisecond,
		Nemesis: func(rng *rand.Rand, _ worm.Space) { k.step(rng) }})
	k.heal()
	t.Logf("%d wormd kills", k.kills)
}
