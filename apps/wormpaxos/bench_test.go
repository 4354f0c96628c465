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
	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/spec"
)

// BenchmarkPropose measures commands/s on the specification with three
// running replicas and all proposers at replica 0, per policy, unbatched
// (MaxBatch 1) and batched (MaxBatch 64), with 1 and 64 concurrent
// proposers. rtt=0 is the replication layer's own CPU cost; rtt=1ms
// delays every Space call of every replica by 1ms (time.Sleep; finer
// sleeps round up to about that on a loaded machine), standing in for a
// quorum round trip, to show what batching and pipelining buy.
func BenchmarkPropose(b *testing.B) {
	for _, rtt := range []time.Duration{0, time.Millisecond} {
		for _, p := range []wormpaxos.Policy{wormpaxos.Sticky, wormpaxos.Rotating, wormpaxos.Leaderless} {
			for _, batch := range []int{1, 64} {
				for _, procs := range []int{1, 64} {
					name := fmt.Sprintf("rtt=%v/%v/batch=%d/proposers=%d", rtt, p, batch, procs)
					b.Run(name, func(b *testing.B) { benchPropose(b, p, batch, procs, rtt) })
				}
			}
		}
	}
}

// delayed adds a fixed delay to every call, like a network round trip.
type delayed struct {
	worm.Space
	d time.Duration
}

func (s delayed) Write(ctx context.Context, a worm.Addr, tok worm.Token, v []byte) error {
	time.Sleep(s.d)
	return s.Space.Write(ctx, a, tok, v)
}

func (s delayed) WriteBatch(ctx context.Context, seg uint64, off uint32, tok worm.Token, vs [][]byte) error {
	time.Sleep(s.d)
	return s.Space.WriteBatch(ctx, seg, off, tok, vs)
}

func (s delayed) Read(ctx context.Context, a worm.Addr) ([]byte, error) {
	time.Sleep(s.d)
	return s.Space.Read(ctx, a)
}

func (s delayed) Capture(ctx context.Context, a worm.Addr) (worm.Token, error) {
	time.Sleep(s.d)
	return s.Space.Capture(ctx, a)
}

func (s delayed) CaptureSegment(ctx context.Context, seg uint64) (worm.SegmentCapture, error) {
	time.Sleep(s.d)
	return s.Space.CaptureSegment(ctx, seg)
}

func (s delayed) Alloc(ctx context.Context, seg uint64, meta []byte) (worm.SegmentInfo, error) {
	time.Sleep(s.d)
	return s.Space.Alloc(ctx, seg, meta)
}

func benchPropose(b *testing.B, p wormpaxos.Policy, batch, procs int, rtt time.Duration) {
	ctx, cancel := context.WithCancel(context.Background())
	st := spec.New(1024)
	var wg sync.WaitGroup
	var reps []*wormpaxos.Replica
	for i := range 3 {
		var sp worm.Space = st.Client("r" + strconv.Itoa(i))
		if rtt > 0 {
			sp = delayed{Space: sp, d: rtt}
		}
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
