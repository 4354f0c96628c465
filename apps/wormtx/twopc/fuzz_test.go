package twopc

import (
	"bytes"
	"errors"
	"reflect"
	"testing"

	"github.com/wormspace/wormspace/apps/wormtx"
)

// Every 2PC process decodes the messages its peers send: any bytes decode
// to a message or errBadMessage, never a panic, and an accepted message
// re-encodes to the same bytes.
func FuzzDecodeMessage(f *testing.F) {
	for _, m := range []Message{
		{Kind: 1, From: "c", Tx: 7},
		{Kind: 2, From: "p1", Yes: true, Outcome: 1, Tx: 1 << 40, Hint: 1<<41 | 5, Desc: wormtx.Descriptor{Participants: []string{"p1", "p2"}, Payload: []byte("x")}},
	} {
		f.Add(encodeMessage("p2", m)[4:])
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		to, m, err := decodeMessage(b)
		if err != nil {
			return
		}
		if again := encodeMessage(to, m)[4:]; !bytes.Equal(again, b) {
			t.Fatalf("accepted %x (to %q, %+v) but re-encodes as %x", b, to, m, again)
		}
	})
}

// Each field has one encoding: a vote byte other than 0 or 1, an outcome
// past Abort, kind 0 or a decision without an outcome is refused.
func TestDecodeMessageStrict(t *testing.T) {
	good := encodeMessage("p", Message{Kind: MsgDecision, From: "c", Tx: 3, Outcome: wormtx.Commit})[4:]
	if _, _, err := decodeMessage(good); err != nil {
		t.Fatalf("a good decision refused: %v", err)
	}
	at := 2 + len("p") // kind, vote, outcome follow the destination
	for _, c := range []struct {
		name string
		i    int
		b    byte
	}{{"kind 0", at, 0}, {"vote byte 2", at + 1, 2}, {"outcome 3", at + 2, 3}, {"decision pending", at + 2, byte(wormtx.Pending)}} {
		b := bytes.Clone(good)
		b[c.i] = c.b
		if _, _, err := decodeMessage(b); !errors.Is(err, errBadMessage) {
			t.Errorf("%s: %v, want errBadMessage", c.name, err)
		}
	}
}

// Every field of a message survives the wire, the hint a harness attaches
// to WormTX's prepares included.
func TestMessageRoundTrip(t *testing.T) {
	m := Message{Kind: MsgPrepare, From: "wtx-coordinator", Tx: 1<<63 | 42, Hint: 1<<40 | 7,
		Desc: wormtx.Descriptor{Participants: []string{"p0", "p1"}, Payload: []byte("transfer")}}
	to, got, err := decodeMessage(encodeMessage("wtx-p1", m)[4:])
	if err != nil || to != "wtx-p1" || !reflect.DeepEqual(got, m) {
		t.Fatalf("decoded %q %+v, %v; want %q %+v", to, got, err, "wtx-p1", m)
	}
}
