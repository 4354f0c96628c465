package wormpaxos_test

import (
	"context"
	"errors"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/wormspace/wormspace/apps/wormpaxos"
	"github.com/wormspace/wormspace/apps/wormpaxos/kv"
	"github.com/wormspace/wormspace/worm/spec"
)

// TestRunReleasesGoroutines: when Run returns, the replica's workers,
// listeners and snapshot writers are gone, and Propose fails fast.
func TestRunReleasesGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	st := spec.New(8)
	sp := st.Client("leak")
	defer sp.Close()
	for _, p := range []wormpaxos.Policy{wormpaxos.Sticky, wormpaxos.Rotating, wormpaxos.Leaderless} {
		r, err := wormpaxos.New(sp, kv.NewStore(), wormpaxos.Config{Policy: p, LogBase: uint64(100 * p), SnapshotEvery: 4, Pipeline: 3})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- r.Run(ctx) }()
		for i := range 20 {
			op := kv.Op{Kind: kv.OpPut, Key: "k", Value: strconv.Itoa(i)}.Encode()
			if _, err := r.Propose(ctx, wormpaxos.Command{Client: "c", Seq: uint64(i + 1), Op: op}); err != nil {
				t.Fatal(err)
			}
		}
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("%v: Run = %v; want context.Canceled", p, err)
		}
		if _, err := r.Propose(context.Background(), wormpaxos.Command{Client: "c", Seq: 99}); !errors.Is(err, wormpaxos.ErrStopped) {
			t.Fatalf("%v: Propose after Run = %v; want ErrStopped", p, err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines before, %d after:\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}
