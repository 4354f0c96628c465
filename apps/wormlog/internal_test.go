package wormlog

import (
	"bytes"
	"errors"
	"testing"

	"github.com/wormspace/wormspace/worm"
)

func TestEncoding(t *testing.T) {
	for _, v := range [][]byte{nil, {}, {0}, {1}, bytes.Repeat([]byte{1}, 20)} {
		raw := encodeRecord(42, v)
		rec, err := decode(7, raw)
		if err != nil || rec.Hole || rec.Pos != 7 || !bytes.Equal(rec.Value, v) {
			t.Fatalf("decode(encode(%q)) = %+v, %v", v, rec, err)
		}
	}
	if a, b := encodeRecord(1, []byte("x")), encodeRecord(2, []byte("x")); bytes.Equal(a, b) {
		t.Fatal("two appends of one value encode identically")
	}
	if rec, err := decode(3, holeMarker); err != nil || !rec.Hole || rec.Value != nil {
		t.Fatalf("hole marker decodes as %+v, %v", rec, err)
	}
	for _, raw := range [][]byte{nil, {0, 0}, {1, 2, 3}, {2}} {
		if _, err := decode(0, raw); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("decode(%x): %v, want ErrCorrupt", raw, err)
		}
	}
}

func TestLayout(t *testing.T) {
	l := layout{size: 16, first: 5}
	for pos := uint64(0); pos < 100; pos++ {
		a := l.addr(pos)
		if a != worm.FlatAddr(pos+5*16, 16) || l.pos(a.Seg, a.Off) != pos || l.seg(pos) != a.Seg {
			t.Fatalf("position %d: addr %v", pos, a)
		}
	}
}

// TestSegGrantSkipsContended: offsets a higher capture holds (possible on
// a Paxos space, never on the spec) are not handed out, and runs stop
// before them.
func TestSegGrantSkipsContended(t *testing.T) {
	g := newSegGrant(9, worm.SegmentCapture{
		Token:     worm.Token{Round: 3, Node: 1},
		Written:   []worm.Entry{{Off: 0}, {Off: 2}},
		Contended: []uint32{1, 3, 4, 7},
	})
	var got []uint32
	var runs []int
	for {
		off, k, ok := g.take(3, 10)
		if !ok {
			break
		}
		runs = append(runs, k)
		for i := range k {
			got = append(got, off+uint32(i))
		}
	}
	want := []uint32{5, 6, 8, 9}
	if len(got) != len(want) {
		t.Fatalf("handed out %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("handed out %v, want %v", got, want)
		}
	}
	if len(runs) != 2 || runs[0] != 2 || runs[1] != 2 {
		t.Fatalf("runs %v, want [2 2]", runs)
	}
}
