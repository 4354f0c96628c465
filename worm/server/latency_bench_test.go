package server

import (
	"testing"

	"github.com/wormspace/wormspace/worm/paxos"
)

// Single-client round trips: one connection, one request in flight (the
// ping-pong of a closed-loop client). ns/op is the round-trip latency over
// loopback TCP, the server's goroutine hand-offs included; allocs/op is
// the server's (the test client does not allocate).
func BenchmarkRoundTrip(b *testing.B) {
	b.Run("read", func(b *testing.B) {
		write := func(c *testClient) { c.roundTrip(1, accept(1, 0, value64)) }
		benchPipelined(b, 1, 1, write, func(i int, req *paxos.Request) {
			*req = paxos.Request{Kind: paxos.KindRead, Seg: 1, Off: 0}
		})
	})
	// Accepts wait for a sync: through the sync goroutine with a Log that
	// is not a CheapSyncer (nopLog), led by the request's own goroutine
	// with one that is (cheapLog, as worm/storage in volatile mode).
	for _, lg := range []struct {
		name string
		log  func() Log
	}{{"accept", func() Log { return &nopLog{} }}, {"accept-cheapsync", func() Log { return &cheapLog{} }}} {
		b.Run(lg.name, func(b *testing.B) {
			vals := [][]byte{value64}
			benchOn(b, lg.log(), 1, 1, func(c *testClient) {
				for seg := uint64(1); seg <= 1+uint64(b.N/testSegSize); seg++ {
					if r := c.roundTrip(seg, &paxos.Request{Kind: paxos.KindPrepareSeg, Seg: seg, Ballot: ballot(1)}); r.Status != paxos.StatusOK {
						b.Fatalf("capture: %+v", r)
					}
				}
			}, func(i int, req *paxos.Request) {
				*req = paxos.Request{Kind: paxos.KindAccept, Seg: 1 + uint64(i/testSegSize), Off: uint32(i % testSegSize), Ballot: ballot(1), Values: vals}
			})
		})
	}
}
