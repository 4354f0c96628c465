package chain

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/wormspace/wormspace/worm"
)

// BenchmarkWrite measures one write through a chain of three in-process
// replicas (volatile logs, loopback TCP): the path a WormLog append takes
// after its grant. Run with -cpu to vary the writers; allocs/op counts
// the client and all three servers.
func BenchmarkWrite(b *testing.B) {
	tc := startChain(b, 3, 1<<16, true)
	cl := tc.client(b)
	ctx := context.Background()
	var segs atomic.Uint64
	v := make([]byte, 64)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		seg := 1000 + segs.Add(1)
		if _, err := cl.Alloc(ctx, seg, nil); err != nil {
			b.Error(err)
			return
		}
		sc, err := cl.CaptureSegment(ctx, seg)
		if err != nil {
			b.Error(err)
			return
		}
		off := uint32(0)
		for pb.Next() {
			if off == 1<<16 {
				b.Error("segment full")
				return
			}
			if err := cl.Write(ctx, worm.Addr{Seg: seg, Off: off}, sc.Token, v); err != nil {
				b.Error(err)
				return
			}
			off++
		}
	})
}
