package paxos

import (
	"testing"

	"github.com/wormspace/wormspace/worm"
)

// BenchmarkAcceptorAccept: one acceptor handling a 64-byte accept under a
// segment promise (the wormserver's per-write work, without I/O).
func BenchmarkAcceptorAccept(b *testing.B) {
	a := NewAcceptor(1 << 16)
	var resp Response
	var recs []Record
	tok := Ballot{Round: 1, Node: 1}
	recs = a.Handle(&Request{Kind: KindPrepareSeg, Seg: 1, Ballot: tok}, &resp, recs[:0])
	req := Request{Kind: KindAccept, Seg: 1, Ballot: tok, Values: [][]byte{make([]byte, 64)}}
	b.ReportAllocs()
	seg := uint64(1)
	for i := 0; b.Loop(); i++ {
		if i%(1<<16) == 0 && i > 0 {
			seg++
			recs = a.Handle(&Request{Kind: KindPrepareSeg, Seg: seg, Ballot: tok}, &resp, recs[:0])
		}
		req.Seg, req.Off = seg, uint32(i%(1<<16))
		recs = a.Handle(&req, &resp, recs[:0])
		if resp.Results[0].Status != StatusOK {
			b.Fatal(resp.Results[0])
		}
	}
}

// BenchmarkAcceptorRead: an acceptor answering a read of a written
// register.
func BenchmarkAcceptorRead(b *testing.B) {
	a := NewAcceptor(64)
	var resp Response
	tok := Ballot{Round: 1, Node: 1}
	a.Handle(&Request{Kind: KindPrepare, Seg: 1, Off: 3, Ballot: tok}, &resp, nil)
	a.Handle(&Request{Kind: KindAccept, Seg: 1, Off: 3, Ballot: tok, Values: [][]byte{make([]byte, 64)}}, &resp, nil)
	req := Request{Kind: KindRead, Seg: 1, Off: 3}
	b.ReportAllocs()
	for b.Loop() {
		a.Handle(&req, &resp, nil)
	}
}

// BenchmarkProposerWrite: a proposer's whole write operation (create the
// Op, broadcast, step two acceptors' acks, decide), with the acceptors'
// answers precomputed: the client library's per-write CPU work in the core.
func BenchmarkProposerWrite(b *testing.B) {
	p := NewProposer(7, "bench", 3, 1<<16)
	tok := Ballot{Round: 1, Node: 7}
	ok := Response{Kind: KindAccept, Results: []RegResult{{Status: StatusOK}}}
	vals := [][]byte{make([]byte, 64)}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		op := p.Write(1, uint32(i%(1<<16)), tok, vals)
		outs := op.TakeOutbox()
		tag := outs[0].Tag
		op.Step(0, tag, &ok)
		op.Step(1, tag, &ok)
		if !op.Done() || op.Result().Err != nil {
			b.Fatal(op.Result().Err)
		}
		op.TakeOutbox() // the decide
	}
}

// BenchmarkProposerRead: a read that two acceptors answer with the same
// decided value (the fast path).
func BenchmarkProposerRead(b *testing.B) {
	p := NewProposer(7, "bench", 3, 64)
	p.markAllocated(1)
	resp := Response{Kind: KindRead, Reg: RegState{Off: 3, HasValue: true, Decided: true, Accepted: Ballot{Round: 1, Node: 7}, Value: make([]byte, 64)}}
	b.ReportAllocs()
	for b.Loop() {
		op := p.Read(worm.Addr{Seg: 1, Off: 3})
		tag := op.TakeOutbox()[0].Tag
		op.Step(0, tag, &resp)
		if !op.Done() || op.Result().Err != nil {
			b.Fatal(op.Result().Err)
		}
	}
}
