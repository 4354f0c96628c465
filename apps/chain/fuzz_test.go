package chain

import (
	"bytes"
	"reflect"
	"testing"

	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/wire"
)

// A replica decodes requests from any client that passed the handshake:
// whatever the bytes, decoding returns a request or ErrMalformed, never
// panics, and what it accepts re-encodes to the same payload (a register
// not to be applied travels without its value, so one that came with a
// value re-encodes without it, and decodes the same otherwise).
func FuzzDecodeRequest(f *testing.F) {
	for _, r := range []request{
		{op: opHello, session: 7},
		{op: opSeal, seg: 3, off: 4, tok: worm.Ballot{Round: 2, Node: 9}},
		{op: opWrite, seg: 3, off: 4, tok: worm.Ballot{Round: 2, Node: 9}, session: 7,
			regs: []regIn{{in: WriteIn{Status: StatusOK}, value: []byte("v")}, {in: WriteIn{Status: StatusOK, Stored: true}, value: []byte("w")}}},
	} {
		f.Add(appendRequest(nil, 1, &r)[wire.HeaderSize:])
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		var r request
		if err := decodeRequest(payload, 1<<10, &r); err != nil {
			return
		}
		again := appendRequest(nil, 1, &r)[wire.HeaderSize:]
		var r2 request
		if err := decodeRequest(again, 1<<10, &r2); err != nil {
			t.Fatalf("accepted %x, but its re-encoding %x is refused: %v", payload, again, err)
		}
		valueless := false
		for i := range r.regs {
			if r.regs[i].in.Status != StatusOK && len(r.regs[i].value) > 0 {
				valueless = true
				r.regs[i].value = nil
			}
			if len(r.regs[i].value) == 0 {
				r.regs[i].value = nil
			}
		}
		for i := range r2.regs {
			if len(r2.regs[i].value) == 0 {
				r2.regs[i].value = nil
			}
		}
		if len(r.regs) == 0 {
			r.regs, r2.regs = nil, nil
		}
		if !reflect.DeepEqual(r, r2) {
			t.Fatalf("%x decodes as %+v, its re-encoding as %+v", payload, r, r2)
		}
		if !valueless && !bytes.Equal(again, payload) {
			t.Fatalf("accepted %x but re-encodes as %x", payload, again)
		}
	})
}

// A client decodes responses from replicas: the same contract.
func FuzzDecodeResponse(f *testing.F) {
	for _, r := range []response{
		{op: opHello, status: StatusOK, text: "0 a,b,c"},
		{op: opRead, status: StatusOK, has: true, allocated: true, value: []byte("v"), promised: worm.Ballot{Round: 1, Node: 2}},
		{op: opWrite, status: StatusOK, entries: []entry{{off: 4, status: StatusOK}, {off: 5, status: StatusOK, value: []byte("x")}}, contended: []uint32{9}},
	} {
		f.Add(appendResponse(nil, wire.FrameResponse, 1, &r)[wire.HeaderSize:])
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		var r response
		if err := decodeResponse(payload, 1<<10, &r); err != nil {
			return
		}
		if again := appendResponse(nil, wire.FrameResponse, 1, &r)[wire.HeaderSize:]; !bytes.Equal(again, payload) {
			t.Fatalf("accepted %x but re-encodes as %x", payload, again)
		}
	})
}

// A replica decodes its own log at recovery, checksummed, but a record
// that passes the checksum is still decoded defensively: never a panic,
// and an accepted record re-encodes to the same bytes.
func FuzzDecodeRecord(f *testing.F) {
	for _, r := range []Record{
		{Kind: RecordKind(recInvalid + 1), Seg: 3, Off: 4, Ballot: worm.Ballot{Round: 2, Node: 9}, Value: []byte("v")},
		{Kind: RecordKind(recKindCount - 1), Seg: 1},
	} {
		f.Add(appendRecord(nil, &r)[8:])
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		r, err := decodeRecord(p)
		if err != nil {
			return
		}
		if again := appendRecord(nil, &r)[8:]; !bytes.Equal(again, p) {
			t.Fatalf("accepted %x but re-encodes as %x", p, again)
		}
	})
}
