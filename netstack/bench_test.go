package netstack_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/wormspace/wormspace/netstack"
	"github.com/wormspace/wormspace/netstack/netperf"
)

// benchPath sets up a server and returns the client-side Network and the
// address to dial.
type benchPath struct {
	name  string
	setup func(b *testing.B) (client netstack.Network, addr string)
}

var benchPaths = []benchPath{
	{"kernel-loopback", func(b *testing.B) (netstack.Network, string) {
		return netstack.Kernel(), startServer(b, netstack.Kernel(), "127.0.0.1:0")
	}},
	{"netstack-pipe", func(b *testing.B) (netstack.Network, string) {
		a, c := pipePair(b)
		return c, startServer(b, a, "192.168.77.1:7300")
	}},
	{"netstack-tap", func(b *testing.B) (netstack.Network, string) {
		e, st := tapEnv(b)
		return nsKernel{e}, startServer(b, st, fmt.Sprintf("%v:7300", tapStack.Addr()))
	}},
	{"netstack-afpacket", func(b *testing.B) (netstack.Network, string) {
		e, st := vethEnv(b)
		return nsKernel{e}, startServer(b, st, fmt.Sprintf("%v:7300", vethStack.Addr()))
	}},
}

// BenchmarkEcho64 measures sequential 64-byte round trips, kernel client
// to server, reporting the p50/p99 latency next to ns/op.
func BenchmarkEcho64(b *testing.B) {
	for _, p := range benchPaths {
		b.Run(p.name, func(b *testing.B) {
			client, addr := p.setup(b)
			c := dial(b, client, addr)
			rt, err := netperf.Echo(c, 64)
			if err != nil {
				b.Fatal(err)
			}
			for i := 0; i < 100; i++ { // warm up: ARP, windows
				if err := rt(); err != nil {
					b.Fatal(err)
				}
			}
			lat := make([]time.Duration, b.N)
			b.ReportAllocs()
			b.ResetTimer()
			for i := range lat {
				t := time.Now()
				if err := rt(); err != nil {
					b.Fatal(err)
				}
				lat[i] = time.Since(t)
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
			b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
		})
	}
}

// BenchmarkBulk measures one bulk transfer of b.N MiB per direction
// ("send": client to server, "recv": server to client).
func BenchmarkBulk(b *testing.B) {
	for _, p := range benchPaths {
		for _, dir := range []string{"send", "recv"} {
			b.Run(p.name+"/"+dir, func(b *testing.B) {
				client, addr := p.setup(b)
				c := dial(b, client, addr)
				n := int64(b.N) << 20
				b.SetBytes(1 << 20)
				b.ReportAllocs()
				b.ResetTimer()
				var err error
				if dir == "send" {
					_, err = netperf.BulkSend(context.Background(), c, n, netperf.Config{})
				} else {
					_, err = netperf.BulkRecv(context.Background(), c, n, netperf.Config{})
				}
				if err != nil {
					b.Fatal(err)
				}
			})
		}
	}
}
