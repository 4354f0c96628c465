package server

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/wormspace/wormspace/worm/paxos"
	"github.com/wormspace/wormspace/worm/wire"
)

// benchPipelined drives b.N requests through a Server on loopback TCP
// with a no-op Log, over conns connections, each keeping up to window
// requests in flight. The test client is allocation-free (reused
// Request, Response and wire buffers), so allocs/op is the server's
// (plus what the acceptor keeps as state).
func benchPipelined(b *testing.B, conns, window int, setup func(c *testClient), mk func(i int, req *paxos.Request)) {
	benchOn(b, &nopLog{}, conns, window, setup, mk)
}

// benchOn is benchPipelined over the given Log.
func benchOn(b *testing.B, log Log, conns, window int, setup func(c *testClient), mk func(i int, req *paxos.Request)) {
	ts := startServer(b, log, false, nil)
	clients := make([]*testClient, conns)
	for i := range clients {
		clients[i] = ts.dial()
	}
	if setup != nil {
		setup(clients[0])
	}
	b.ReportAllocs()
	b.ResetTimer()
	var wg sync.WaitGroup
	errs := make(chan error, 2*conns)
	for k, c := range clients {
		n := b.N / conns
		if k == 0 {
			n += b.N % conns
		}
		first := k * (b.N / conns)
		if k > 0 {
			first += b.N % conns
		}
		sem := make(chan struct{}, window)
		wg.Add(2)
		go func() {
			defer wg.Done()
			var req paxos.Request
			for i := range n {
				mk(first+i, &req)
				select {
				case sem <- struct{}{}:
				default:
					if err := c.w.Flush(); err != nil {
						errs <- err
						return
					}
					sem <- struct{}{}
				}
				if err := c.w.WriteRequest(uint64(first+i), &req); err != nil {
					errs <- err
					return
				}
			}
			if err := c.w.Flush(); err != nil {
				errs <- err
			}
		}()
		go func() {
			defer wg.Done()
			var resp paxos.Response
			c.nc.SetReadDeadline(time.Now().Add(time.Minute))
			for range n {
				f, err := c.r.Next()
				if err == nil {
					err = wire.DecodeResponse(f.Payload, 0, &resp)
				}
				if err == nil && (resp.Status != paxos.StatusOK || len(resp.Results) > 0 && resp.Results[0].Status != paxos.StatusOK) {
					err = fmt.Errorf("request %d: %+v", f.ID, resp)
				}
				if err != nil {
					errs <- err
					return
				}
				<-sem
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
}

var value64 = make([]byte, 64)

// Accepts of 64-byte values to distinct registers of captured segments
// (the WormLog / WormPaxos steady state: one round trip per write): each
// one stores a new value in the acceptor (one allocation there, the state
// itself).
func BenchmarkPipelinedAccept(b *testing.B) {
	for _, conns := range []int{1, 4} {
		b.Run(fmt.Sprintf("conns=%d", conns), func(b *testing.B) {
			vals := [][]byte{value64}
			capture := func(c *testClient) {
				for seg := uint64(1); seg <= 1+uint64(b.N/testSegSize); seg++ {
					if r := c.roundTrip(seg, &paxos.Request{Kind: paxos.KindPrepareSeg, Seg: seg, Ballot: ballot(1)}); r.Status != paxos.StatusOK {
						b.Fatalf("capture: %+v", r)
					}
				}
			}
			benchPipelined(b, conns, 256, capture, func(i int, req *paxos.Request) {
				*req = paxos.Request{Kind: paxos.KindAccept, Seg: 1 + uint64(i/testSegSize), Off: uint32(i % testSegSize), Ballot: ballot(1), Values: vals}
			})
		})
	}
}

// Reads of a 64-byte value: the server path alone (decode, engine,
// encode, write), which should not allocate.
func BenchmarkPipelinedRead(b *testing.B) {
	for _, conns := range []int{1, 4} {
		b.Run(fmt.Sprintf("conns=%d", conns), func(b *testing.B) {
			write := func(c *testClient) { c.roundTrip(1, accept(1, 0, value64)) }
			benchPipelined(b, conns, 256, write, func(i int, req *paxos.Request) {
				*req = paxos.Request{Kind: paxos.KindRead, Seg: 1, Off: 0}
			})
		})
	}
}
