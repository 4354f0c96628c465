package wormlog_test

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wormspace/wormspace/apps/wormlog"
	"github.com/wormspace/wormspace/worm/spec"
)

// benchAppend measures Append with k concurrent appenders sharing one
// sequencer reached through transport ("inproc", "pipe": net.Pipe,
// "tcp": loopback). ns/op is the inverse of the aggregate throughput;
// p50-µs and p99-µs are per-append latencies.
func benchAppend(b *testing.B, transport string, k int) {
	ctx := context.Background()
	st := spec.New(4096)
	cfg := testConfig()
	seq := wormlog.NewSequencer(st.Client("seq"), cfg)
	defer seq.Close()
	var src wormlog.TokenSource = seq
	switch transport {
	case "pipe":
		l := newPipeListener()
		src = serveBench(b, seq, l, l.Dial)
	case "tcp":
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Skip(err)
		}
		var d net.Dialer
		src = serveBench(b, seq, l, func(ctx context.Context) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", l.Addr().String())
		})
	}
	if _, err := src.Tail(ctx); err != nil { // recovered
		b.Fatal(err)
	}
	value := make([]byte, 64)
	lat := make([][]time.Duration, k)
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for w := range k {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := wormlog.NewClient(st.Client(fmt.Sprint("a", w)), cfg, src)
			for next.Add(1) <= int64(b.N) {
				t0 := time.Now()
				if _, err := c.Append(ctx, value); err != nil {
					b.Error(err)
					return
				}
				lat[w] = append(lat[w], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	b.StopTimer()
	all := slices.Concat(lat...)
	slices.Sort(all)
	if len(all) > 0 {
		b.ReportMetric(float64(all[len(all)/2].Nanoseconds())/1e3, "p50-µs")
		b.ReportMetric(float64(all[len(all)*99/100].Nanoseconds())/1e3, "p99-µs")
		b.ReportMetric(float64(len(all))/el.Seconds(), "appends/s")
	}
}

func serveBench(b *testing.B, src wormlog.TokenSource, l net.Listener, dial wormlog.Dialer) *wormlog.Remote {
	srv := wormlog.NewServer(src, nil)
	go srv.Serve(l)
	r := wormlog.NewRemote(dial)
	b.Cleanup(func() {
		r.Close()
		srv.Close()
	})
	return r
}

// BenchmarkAppendBatch measures AppendBatch of 16 values (one grant, one
// WriteBatch) in process; ns/op is per value.
func BenchmarkAppendBatch(b *testing.B) {
	for _, k := range []int{1, 16} {
		b.Run(fmt.Sprintf("appenders=%d", k), func(b *testing.B) {
			ctx := context.Background()
			st := spec.New(4096)
			cfg := testConfig()
			seq := wormlog.NewSequencer(st.Client("seq"), cfg)
			defer seq.Close()
			batch := make([][]byte, 16)
			for i := range batch {
				batch[i] = make([]byte, 64)
			}
			var next atomic.Int64
			var wg sync.WaitGroup
			b.ReportAllocs()
			b.ResetTimer()
			for w := range k {
				wg.Add(1)
				go func() {
					defer wg.Done()
					c := wormlog.NewClient(st.Client(fmt.Sprint("a", w)), cfg, seq)
					for next.Add(int64(len(batch))) <= int64(b.N) {
						if _, err := c.AppendBatch(ctx, batch); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
		})
	}
}

func BenchmarkAppend(b *testing.B) {
	for _, tr := range []string{"inproc", "pipe", "tcp"} {
		for _, k := range []int{1, 16} {
			b.Run(fmt.Sprintf("%s/appenders=%d", tr, k), func(b *testing.B) { benchAppend(b, tr, k) })
		}
	}
}

// BenchmarkNext measures the in-process sequencer alone (segment size
// 4096, prefetch 1: the background keeps up).
func BenchmarkNext(b *testing.B) {
	for _, n := range []int{1, 64} {
		b.Run(fmt.Sprint("n=", n), func(b *testing.B) {
			st := spec.New(4096)
			seq := wormlog.NewSequencer(st.Client("seq"), testConfig())
			defer seq.Close()
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := seq.NextN(ctx, n); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
