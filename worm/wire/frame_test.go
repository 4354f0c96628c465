package wire

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"

	"github.com/wormspace/wormspace/worm/paxos"
)

// countingWriter records each Write call.
type countingWriter struct {
	writes int
	buf    bytes.Buffer
	fail   error
}

func (c *countingWriter) Write(p []byte) (int, error) {
	if c.fail != nil {
		return 0, c.fail
	}
	c.writes++
	return c.buf.Write(p)
}

func TestReaderSequence(t *testing.T) {
	reqs := sampleRequests()
	names := []string{"prepare", "accept-batch", "accept-4max", "read", "accept-max", "trim"}
	var stream []byte
	for i, n := range names {
		stream = AppendRequest(stream, uint64(i+1), reqs[n])
	}
	stream = AppendPush(stream, sampleResponses()["notify"])
	stream = AppendErrorFrame(stream, CodeShutdown, "bye")
	// iotest-style one-byte reads exercise partial reads everywhere.
	r := NewReader(&oneByteReader{b: stream}, 0)
	var got paxos.Request
	for i, n := range names {
		f, err := r.Next()
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if f.Type != FrameRequest || f.ID != uint64(i+1) {
			t.Fatalf("frame %d header %v %d", i, f.Type, f.ID)
		}
		if err := DecodeRequest(f.Payload, 0, &got); err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if !equalRequest(&got, reqs[n]) {
			t.Fatalf("frame %d (%s) differs", i, n)
		}
	}
	f, err := r.Next()
	if err != nil || f.Type != FramePush {
		t.Fatalf("push: %v %v", f.Type, err)
	}
	f, err = r.Next()
	if err != nil || f.Type != FrameErr {
		t.Fatalf("error frame: %v %v", f.Type, err)
	}
	if re, _ := DecodeError(f.Payload); !errors.Is(re, ErrShutdown) || re.Text != "bye" {
		t.Fatalf("error frame: %v", re)
	}
	if _, err := r.Next(); err != io.EOF {
		t.Fatalf("end: %v, want io.EOF", err)
	}
}

type oneByteReader struct{ b []byte }

func (o *oneByteReader) Read(p []byte) (int, error) {
	if len(o.b) == 0 {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	p[0] = o.b[0]
	o.b = o.b[1:]
	return 1, nil
}

func TestReaderRejects(t *testing.T) {
	hdr := func(length uint32, typ FrameType, id uint64) []byte {
		b := le.AppendUint32(nil, length)
		b = append(b, byte(typ))
		b = le.AppendUint64(b, id)
		return append(b, make([]byte, 64)...)
	}
	cases := []struct {
		name string
		b    []byte
		max  int
		want error
	}{
		{"length 4 GiB", hdr(0xffffffff, FrameRequest, 1), 0, ErrFrameTooLarge},
		{"length one over", hdr(DefaultMaxFrame+1, FrameRequest, 1), 0, ErrFrameTooLarge},
		{"length over a small limit", hdr(60, FrameRequest, 1), 50, ErrFrameTooLarge},
		{"length below header", hdr(8, FrameRequest, 1), 0, ErrMalformed},
		{"type 0", hdr(9, 0, 1), 0, ErrMalformed},
		{"type unknown", hdr(9, 77, 1), 0, ErrMalformed},
		{"push with id", hdr(9, FramePush, 5), 0, ErrMalformed},
		{"error with id", hdr(10, FrameErr, 5), 0, ErrMalformed},
		{"handshake bytes as a frame", encodeHSError(CodeOther, "x"), 0, ErrFrameTooLarge},
	}
	for _, c := range cases {
		_, err := NewReader(bytes.NewReader(c.b), c.max).Next()
		if !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	// An oversize length is refused without allocating its size (the
	// Reader itself is allocated outside the measurement).
	b := hdr(0xfffffff0, FrameRequest, 1)
	r := NewReader(bytes.NewReader(nil), 0)
	allocs := testing.AllocsPerRun(50, func() {
		r.br.Reset(bytes.NewReader(b))
		if _, err := r.Next(); !errors.Is(err, ErrFrameTooLarge) {
			t.Fatal(err)
		}
	})
	if allocs > 6 {
		t.Errorf("%v allocations refusing an oversize frame", allocs)
	}
	if cap(r.big) != 0 {
		t.Errorf("the Reader grew its buffer to %d for a refused frame", cap(r.big))
	}
}

func TestWriterBatchesIntoOneWrite(t *testing.T) {
	cw := &countingWriter{}
	w := NewWriter(cw, 0, 0)
	reqs := sampleRequests()
	n := 0
	for _, name := range []string{"prepare", "accept", "read", "accept-batch", "decide"} {
		if err := w.WriteRequest(uint64(n), reqs[name]); err != nil {
			t.Fatal(err)
		}
		n++
	}
	if cw.writes != 0 {
		t.Fatal("wrote before Flush")
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if cw.writes != 1 {
		t.Fatalf("%d writes for one flush", cw.writes)
	}
	if err := w.Flush(); err != nil || cw.writes != 1 {
		t.Fatalf("empty flush wrote: %v %d", err, cw.writes)
	}
	r := NewReader(&cw.buf, 0)
	for i := range n {
		f, err := r.Next()
		if err != nil || f.ID != uint64(i) {
			t.Fatalf("frame %d: %v %v", i, f.ID, err)
		}
	}
}

func TestWriterThreshold(t *testing.T) {
	cw := &countingWriter{}
	w := NewWriter(cw, 0, 0)
	req := &paxos.Request{Kind: paxos.KindAccept, Ballot: bal, Values: [][]byte{val(32<<10, 1)}}
	for i := range 9 {
		if err := w.WriteRequest(uint64(i), req); err != nil {
			t.Fatal(err)
		}
	}
	if cw.writes != 1 || w.Buffered() == 0 {
		t.Fatalf("after 9 frames of 32 KiB: %d writes, %d buffered; want one automatic write at 256 KiB", cw.writes, w.Buffered())
	}
}

func TestWriterLimits(t *testing.T) {
	cw := &countingWriter{}
	w := NewWriter(cw, 1000, 100)
	ok := &paxos.Request{Kind: paxos.KindRead}
	if err := w.WriteRequest(1, ok); err != nil {
		t.Fatal(err)
	}
	before := w.Buffered()
	if err := w.WriteRequest(2, &paxos.Request{Kind: paxos.KindAccept, Values: [][]byte{val(101, 0)}}); !errors.Is(err, ErrValueTooLarge) {
		t.Fatalf("value over limit: %v", err)
	}
	batch := make([][]byte, 20)
	for i := range batch {
		batch[i] = val(100, 0)
	}
	if err := w.WriteRequest(3, &paxos.Request{Kind: paxos.KindAccept, Values: batch}); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("frame over limit: %v", err)
	}
	big := &paxos.Response{Kind: paxos.KindPrepareSeg, Regs: make([]paxos.RegState, 200)}
	if err := w.WriteResponse(4, big); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("response over limit: %v", err)
	}
	if w.Buffered() != before {
		t.Fatalf("refused frames left %d bytes", w.Buffered()-before)
	}
	if err := w.WritePush(&paxos.Response{Kind: paxos.KindNotify, Seg: 1, Count: 1}); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	r := NewReader(&cw.buf, 0)
	if f, err := r.Next(); err != nil || f.ID != 1 {
		t.Fatalf("first frame: %v", err)
	}
	if f, err := r.Next(); err != nil || f.Type != FramePush {
		t.Fatalf("push: %v %v", f.Type, err)
	}
	if _, err := r.Next(); err != io.EOF {
		t.Fatalf("extra frames: %v", err)
	}
}

func TestWriterStickyError(t *testing.T) {
	boom := errors.New("boom")
	cw := &countingWriter{fail: boom}
	w := NewWriter(cw, 0, 0)
	if err := w.WriteRequest(1, &paxos.Request{Kind: paxos.KindRead}); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != boom {
		t.Fatalf("flush: %v", err)
	}
	cw.fail = nil
	if err := w.WriteRequest(2, &paxos.Request{Kind: paxos.KindRead}); err != boom {
		t.Fatalf("after failure: %v", err)
	}
}

// TestOverConn runs a pipelined exchange over a real connection: the
// client writes a burst, the server answers out of order.
func TestOverConn(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const n = 200
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		r, w := NewReader(c, 0), NewWriter(c, 0, 0)
		var req paxos.Request
		var ids []uint64
		for len(ids) < n {
			f, err := r.Next()
			if err != nil {
				t.Error(err)
				return
			}
			if err := DecodeRequest(f.Payload, 0, &req); err != nil {
				t.Error(err)
				return
			}
			ids = append(ids, f.ID)
		}
		for i := len(ids) - 1; i >= 0; i-- { // reverse order
			w.WriteResponse(ids[i], &paxos.Response{Kind: paxos.KindAccept, Results: []paxos.RegResult{{Status: paxos.StatusOK}}, Seg: ids[i]})
		}
		w.WriteError(ErrShutdown)
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r, w := NewReader(c, 0), NewWriter(c, 0, 0)
	for i := range n {
		w.WriteRequest(uint64(i+1), &paxos.Request{Kind: paxos.KindAccept, Seg: uint64(i), Ballot: bal, Values: [][]byte{val(i, 0)}})
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	seen := map[uint64]bool{}
	var resp paxos.Response
	for {
		f, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		if f.Type == FrameErr {
			re, _ := DecodeError(f.Payload)
			if !errors.Is(re, ErrShutdown) {
				t.Fatalf("error frame %v", re)
			}
			break
		}
		if err := DecodeResponse(f.Payload, 0, &resp); err != nil {
			t.Fatal(err)
		}
		if resp.Seg != f.ID || seen[f.ID] {
			t.Fatalf("response %d carries %d (dup %v)", f.ID, resp.Seg, seen[f.ID])
		}
		seen[f.ID] = true
	}
	if len(seen) != n {
		t.Fatalf("%d responses, want %d", len(seen), n)
	}
}
