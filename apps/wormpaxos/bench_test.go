package wormpaxos_test

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wormspace/wormspace/apps/wormpaxos"
	"github.com/wormspace/wormspace/apps/wormpaxos/kv"
	"github.com/wormspace/wormspace/worm/spec"
)

// BenchmarkPropose measures commands/s on the specification (no network:
// this is the replication layer's own cost) with three running replicas
// and all proposers at replica 0, per policy, unbatched (MaxBatch 1) and
// batched (MaxBatch 64), with 1 and 64 concurrent proposers.
func BenchmarkPropose(b *testing.B) {
	for _, p := range []wormpaxos.Policy{wormpaxos.Sticky, wormpaxos.Rotating, wormpaxos.Leaderless} {
		for _, batch := range []int{1, 64} {
			for _, procs := range []int{1, 64} {
				name := fmt.Sprintf("%v/batch=%d/proposers=%d", p, batch, procs)
				b.Run(name, func(b *testing.B) { benchPropose(b, p, batch, procs) })
			}
		}
	}
}

func benchPropose(b *testing.B, p wormpaxos.Policy, batch, procs int) {
	ctx, cancel := context.WithCancel(context.Background())
	st := spec.New(1024)
	var wg sync.WaitGroup
	var reps []*wormpaxos.Replica
	for i := range 3 {
		sp := st.Client("r" + strconv.Itoa(i))
		r, err := wormpaxos.New(sp, kv.NewStore(), wormpaxos.Config{Policy: p, LogBase: 1, Replicas: 3, Index: i,
			MaxBatch: batch, Pipeline: 4, HoleTimeout: 50 * time.Millisecond, PollInterval: 5 * time.Millisecond})
		if err != nil {
			b.Fatal(err)
		}
		reps = append(reps, r)
		wg.Go(func() { _ = r.Run(ctx) })
	}
	defer func() {
		cancel()
		wg.Wait()
	}()
	op := kv.Op{Kind: kv.OpPut, Key: "k", Value: "v"}.Encode()
	var next atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	var pw sync.WaitGroup
	for c := range procs {
		pw.Go(func() {
			id := "p" + strconv.Itoa(c)
			for seq := uint64(1); next.Add(1) <= int64(b.N); seq++ {
				if _, err := reps[0].Propose(ctx, wormpaxos.Command{Client: id, Seq: seq, Op: op}); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	pw.Wait()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "cmds/s")
}

// BenchmarkRead measures the read barrier (no log entry).
func BenchmarkRead(b *testing.B) {
	ctx, cancel := context.WithCancel(context.Background())
	st := spec.New(1024)
	r, err := wormpaxos.New(st.Client("r"), kv.NewStore(), wormpaxos.Config{Policy: wormpaxos.Sticky, LogBase: 1})
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { _ = r.Run(ctx) })
	defer func() {
		cancel()
		wg.Wait()
	}()
	q := kv.Op{Kind: kv.OpGet, Key: "k"}.Encode()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Read(ctx, q); err != nil {
			b.Fatal(err)
		}
	}
}
