package storage

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/wormspace/wormspace/worm/paxos"
)

func acceptRec(i int, value []byte) paxos.Record {
	return paxos.Record{Kind: paxos.RecordAccept, Seg: uint64(i / testSegSize), Off: uint32(i % testSegSize), Ballot: paxos.Ballot{Round: 7, Node: 42}, Value: value}
}

// keepSmall compacts to an empty generation once the log passes 32 MiB,
// so that long benchmarks do not fill the disk.
func keepSmall(b *testing.B, l *Log) {
	if l.Stats().LogBytes < 32<<20 {
		return
	}
	if err := l.Compact(func(func(paxos.Record) error) error { return nil }); err != nil {
		b.Fatal(err)
	}
	if _, err := l.Sync(); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkAppend measures Append of one typical accept record (64-byte
// value), as the engine calls it: Reserve, then Append. Syncs (volatile)
// run outside the timer every 1024 records.
func BenchmarkAppend(b *testing.B) {
	opts := testOpts()
	opts.Volatile = true
	l, _ := mustOpen(b, b.TempDir(), opts)
	defer l.Close()
	recs := []paxos.Record{acceptRec(0, bytes.Repeat([]byte("v"), 64))}
	b.SetBytes(int64(recordSize(&recs[0])))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		recs[0].Seg, recs[0].Off = uint64(i/testSegSize), uint32(i%testSegSize)
		if err := l.Reserve(64 + 64 + 64); err != nil {
			b.Fatal(err)
		}
		if _, err := l.Append(recs); err != nil {
			b.Fatal(err)
		}
		if i%1024 == 1023 {
			b.StopTimer()
			if _, err := l.Sync(); err != nil {
				b.Fatal(err)
			}
			keepSmall(b, l)
			b.StartTimer()
		}
	}
}

// BenchmarkAppendSync measures one group commit: Append of a batch of
// accept records (64-byte values) and the Sync that makes them durable,
// on the file system under the test's temp dir. durable pays fdatasync;
// volatile only the write.
func BenchmarkAppendSync(b *testing.B) {
	for _, mode := range []string{"volatile", "durable"} {
		for _, batch := range []int{1, 16, 128} {
			b.Run(fmt.Sprintf("%s/batch=%d", mode, batch), func(b *testing.B) {
				opts := testOpts()
				opts.Volatile = mode == "volatile"
				l, _ := mustOpen(b, b.TempDir(), opts)
				defer l.Close()
				v := bytes.Repeat([]byte("v"), 64)
				recs := make([]paxos.Record, batch)
				for i := range recs {
					recs[i] = acceptRec(i, v)
				}
				b.SetBytes(int64(batch * recordSize(&recs[0])))
				b.ReportAllocs()
				start := time.Now()
				n := 0
				for b.Loop() {
					if err := l.Reserve(batch * 192); err != nil {
						b.Fatal(err)
					}
					if _, err := l.Append(recs); err != nil {
						b.Fatal(err)
					}
					if _, err := l.Sync(); err != nil {
						b.Fatal(err)
					}
					n++
					if n%4096 == 0 {
						keepSmall(b, l)
					}
				}
				b.ReportMetric(float64(n*batch)/time.Since(start).Seconds(), "records/s")
				b.ReportMetric(float64(l.Stats().LastSync.Microseconds()), "last-sync-µs")
			})
		}
	}
}

// BenchmarkSyncZeroAhead measures what Options.ZeroAhead saves: two
// durable logs with the default chunk size, one writing zeros ahead (the
// default) and one relying on fallocate alone, take turns appending a
// batch of 64-byte accept records and syncing it, so that a noisy disk
// hits both alike. It reports each one's mean sync in µs and their ratio.
func BenchmarkSyncZeroAhead(b *testing.B) {
	for _, batch := range []int{1, 16, 128} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			var logs [2]*Log
			for i, ahead := range []int64{0, -1} {
				opts := testOpts()
				opts.ChunkSize, opts.ZeroAhead = 0, ahead
				logs[i], _ = mustOpen(b, b.TempDir(), opts)
				defer logs[i].Close()
			}
			v := bytes.Repeat([]byte("v"), 64)
			recs := make([]paxos.Record, batch)
			for i := range recs {
				recs[i] = acceptRec(i, v)
			}
			var took [2]time.Duration
			n := 0
			for b.Loop() {
				for i, l := range logs {
					if _, err := l.Append(recs); err != nil {
						b.Fatal(err)
					}
					start := time.Now()
					if _, err := l.Sync(); err != nil {
						b.Fatal(err)
					}
					took[i] += time.Since(start)
					if n%4096 == 4095 {
						keepSmall(b, l)
					}
				}
				n++
			}
			ahead, fallocated := took[0].Seconds()*1e6/float64(n), took[1].Seconds()*1e6/float64(n)
			b.ReportMetric(ahead, "zero-ahead-µs/sync")
			b.ReportMetric(fallocated, "fallocated-µs/sync")
			b.ReportMetric(fallocated/ahead, "speedup")
		})
	}
}
