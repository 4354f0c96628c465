package wire

import (
	"bytes"
	"encoding/binary"
	"io"
	"testing"

	"github.com/wormspace/wormspace/worm/paxos"
)

// The hot-path messages: what a proposer sends and an acceptor answers
// for one write, one capture and one read.
func hotRequests() map[string]*paxos.Request {
	return map[string]*paxos.Request{
		"Accept64":    {Kind: paxos.KindAccept, Seg: 12, Off: 345, Ballot: bal, Values: [][]byte{val(64, 1)}},
		"Accept4K":    {Kind: paxos.KindAccept, Seg: 12, Off: 345, Ballot: bal, Values: [][]byte{val(4096, 1)}},
		"AcceptBatch": {Kind: paxos.KindAccept, Seg: 12, Off: 345, Ballot: bal, Values: [][]byte{val(64, 1), val(64, 2), val(64, 3), val(64, 4), val(64, 5), val(64, 6), val(64, 7), val(64, 8)}},
		"Prepare":     {Kind: paxos.KindPrepare, Seg: 12, Off: 345, Ballot: bal},
		"Read":        {Kind: paxos.KindRead, Seg: 12, Off: 345},
	}
}

func hotResponses() map[string]*paxos.Response {
	return map[string]*paxos.Response{
		"Accepted":    {Kind: paxos.KindAccept, Results: []paxos.RegResult{{Status: paxos.StatusOK}}},
		"AcceptNack":  {Kind: paxos.KindAccept, Results: []paxos.RegResult{{Status: paxos.StatusNack, Promised: high, Accepted: bal, HasValue: true}}},
		"Promise":     {Kind: paxos.KindPrepare, Promised: bal, Reg: paxos.RegState{Off: 345}},
		"ReadValue64": {Kind: paxos.KindRead, Reg: paxos.RegState{Off: 345, Accepted: bal, HasValue: true, Decided: true, Value: val(64, 3)}},
	}
}

// BenchmarkRequest encodes a request frame into a reused buffer and
// decodes it into a reused Request.
func BenchmarkRequest(b *testing.B) {
	for name, req := range hotRequests() {
		b.Run(name, func(b *testing.B) {
			var buf []byte
			var got paxos.Request
			b.ReportAllocs()
			b.SetBytes(int64(RequestSize(req)))
			for b.Loop() {
				buf = AppendRequest(buf[:0], 7, req)
				if err := DecodeRequest(buf[HeaderSize:], 0, &got); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkResponse(b *testing.B) {
	for name, resp := range hotResponses() {
		b.Run(name, func(b *testing.B) {
			var buf []byte
			var got paxos.Response
			b.ReportAllocs()
			for b.Loop() {
				buf = AppendResponse(buf[:0], 7, resp)
				if err := DecodeResponse(buf[HeaderSize:], 0, &got); err != nil {
					b.Fatal(err)
				}
			}
			b.SetBytes(int64(len(buf)))
		})
	}
}

// loopReader replays one buffer forever.
type loopReader struct {
	b   []byte
	off int
}

func (l *loopReader) Read(p []byte) (int, error) {
	n := copy(p, l.b[l.off:])
	l.off = (l.off + n) % len(l.b)
	return n, nil
}

// BenchmarkPipeline is the full path of a pipelined stream: Writer batches
// 64 Accept frames per Flush; Reader.Next and DecodeRequest consume them.
func BenchmarkPipeline(b *testing.B) {
	req := hotRequests()["Accept64"]
	w := NewWriter(io.Discard, 0, 0)
	var stream []byte
	for i := range 64 {
		stream = AppendRequest(stream, uint64(i), req)
	}
	r := NewReader(&loopReader{b: stream}, 0)
	var got paxos.Request
	b.ReportAllocs()
	b.SetBytes(int64(RequestSize(req)))
	i := 0
	for b.Loop() {
		if err := w.WriteRequest(uint64(i), req); err != nil {
			b.Fatal(err)
		}
		if i++; i%64 == 0 {
			w.Flush()
		}
		f, err := r.Next()
		if err != nil {
			b.Fatal(err)
		}
		if err := DecodeRequest(f.Payload, 0, &got); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkIntEncoding backs the choice of fixed-width integers over
// uvarints for the request header (seg, off, ballot round and node).
func BenchmarkIntEncoding(b *testing.B) {
	vals := [4]uint64{12, 345, 7, 0xfeedfacecafebeef}
	buf := make([]byte, 0, 64)
	b.Run("fixed", func(b *testing.B) {
		var sum uint64
		for b.Loop() {
			buf = buf[:0]
			for _, v := range vals {
				buf = binary.LittleEndian.AppendUint64(buf, v)
			}
			for i := range vals {
				sum += binary.LittleEndian.Uint64(buf[i*8:])
			}
		}
		b.ReportMetric(float64(len(buf)), "bytes")
		_ = sum
	})
	b.Run("uvarint", func(b *testing.B) {
		var sum uint64
		for b.Loop() {
			buf = buf[:0]
			for _, v := range vals {
				buf = binary.AppendUvarint(buf, v)
			}
			p := buf
			for range vals {
				v, n := binary.Uvarint(p)
				sum += v
				p = p[n:]
			}
		}
		b.ReportMetric(float64(len(buf)), "bytes")
		_ = sum
	})
}

// TestZeroAlloc pins the benchmark claim as a test: steady-state encode
// and decode of the hot messages allocate nothing.
func TestZeroAlloc(t *testing.T) {
	for name, req := range hotRequests() {
		var buf []byte
		var got paxos.Request
		f := func() {
			buf = AppendRequest(buf[:0], 7, req)
			if err := DecodeRequest(buf[HeaderSize:], 0, &got); err != nil {
				t.Fatal(err)
			}
		}
		f()
		if a := testing.AllocsPerRun(100, f); a != 0 {
			t.Errorf("%s: %v allocs", name, a)
		}
	}
	for name, resp := range hotResponses() {
		var buf []byte
		var got paxos.Response
		f := func() {
			buf = AppendResponse(buf[:0], 7, resp)
			if err := DecodeResponse(buf[HeaderSize:], 0, &got); err != nil {
				t.Fatal(err)
			}
		}
		f()
		if a := testing.AllocsPerRun(100, f); a != 0 {
			t.Errorf("%s: %v allocs", name, a)
		}
	}
	// Reader and Writer in steady state.
	var stream []byte
	for i := range 8 {
		stream = AppendRequest(stream, uint64(i), hotRequests()["Accept4K"])
	}
	r := NewReader(bytes.NewReader(nil), 0)
	w := NewWriter(io.Discard, 0, 0)
	var got paxos.Request
	f := func() {
		r.br.Reset(bytes.NewReader(stream))
		r.discard = 0
		for range 8 {
			fr, err := r.Next()
			if err != nil {
				t.Fatal(err)
			}
			if err := DecodeRequest(fr.Payload, 0, &got); err != nil {
				t.Fatal(err)
			}
			if err := w.WriteRequest(fr.ID, &got); err != nil {
				t.Fatal(err)
			}
		}
		w.Flush()
	}
	f()
	if a := testing.AllocsPerRun(20, f); a > 1 { // bytes.NewReader
		t.Errorf("Reader/Writer: %v allocs", a)
	}
}
