package wormpaxos

import (
	"bytes"
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/spec"
)

func TestEntryCodec(t *testing.T) {
	cmds := []Command{{Client: "a", Seq: 1, Op: []byte("x")}, {Client: "", Seq: 1 << 60, Op: []byte{}}, {Client: "ccc", Seq: 7, Op: bytes.Repeat([]byte{9}, 300)}}
	got, err := decodeEntry(encodeBatch(cmds))
	if err != nil || !reflect.DeepEqual(got, cmds) {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	if got, err := decodeEntry(noop); err != nil || got != nil {
		t.Fatalf("noop: %+v, %v", got, err)
	}
	enc := encodeBatch(cmds)
	for _, bad := range [][]byte{nil, {magic}, {magic, version, 7}, {'X', version, kindNoop}, enc[:len(enc)-1], append(enc, 0)} {
		if _, err := decodeEntry(bad); !errors.Is(err, ErrCorrupt) {
			t.Errorf("decodeEntry(%q) = %v; want ErrCorrupt", bad, err)
		}
	}
}

func TestSnapshotCodec(t *testing.T) {
	s := snapshot{Index: 42, Sessions: map[string]session{"b": {Seq: 3, Result: []byte("r")}, "a": {Seq: 1, Result: []byte{}}}, State: []byte("state")}
	enc := encodeSnapshot(s)
	got, err := decodeSnapshot(enc)
	if err != nil || got.Index != 42 || string(got.State) != "state" || len(got.Sessions) != 2 || got.Sessions["b"].Seq != 3 || string(got.Sessions["b"].Result) != "r" {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	if !bytes.Equal(enc, encodeSnapshot(got)) {
		t.Fatal("snapshot encoding is not deterministic")
	}
	if _, err := decodeSnapshot(enc[:len(enc)-2]); err == nil {
		t.Fatal("truncated snapshot decoded")
	}
	h := snapHeader{Index: 9, Chunks: 3, Size: 100, CRC: 0xdeadbeef}
	if got, err := decodeSnapHeader(encodeSnapHeader(h)); err != nil || got != h {
		t.Fatalf("header round trip: %+v, %v", got, err)
	}
}

func FuzzDecodeEntry(f *testing.F) {
	f.Add(encodeBatch([]Command{{Client: "a", Seq: 1, Op: []byte("x")}}))
	f.Add(noop)
	f.Fuzz(func(t *testing.T, b []byte) {
		cmds, err := decodeEntry(b)
		if err != nil {
			return
		}
		if cmds == nil {
			return
		}
		again, err := decodeEntry(encodeBatch(cmds))
		if err != nil || len(again) != len(cmds) {
			t.Fatalf("re-encoding changed the entry: %v", err)
		}
	})
}

type nopSM struct{}

func (nopSM) Apply(op []byte) []byte        { return op }
func (nopSM) Query(q []byte) []byte         { return q }
func (nopSM) Snapshot() ([]byte, error)     { return nil, nil }
func (nopSM) Restore(snapshot []byte) error { return nil }

// TestRunCorrupt: a register of the log that this package did not write
// stops the replica with ErrCorrupt instead of being applied or skipped.
func TestRunCorrupt(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st := spec.New(8)
	sp := st.Client("x")
	defer sp.Close()
	if _, err := sp.Alloc(ctx, 5, nil); err != nil {
		t.Fatal(err)
	}
	tok, err := sp.Capture(ctx, worm.Addr{Seg: 5, Off: 0})
	if err != nil {
		t.Fatal(err)
	}
	if err := sp.Write(ctx, worm.Addr{Seg: 5, Off: 0}, tok, []byte("garbage")); err != nil {
		t.Fatal(err)
	}
	r, err := New(sp, nopSM{}, Config{Policy: Leaderless, LogBase: 5})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Run(ctx); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Run = %v; want ErrCorrupt", err)
	}
	if _, err := r.Propose(ctx, Command{Client: "c", Seq: 1}); !errors.Is(err, ErrStopped) {
		t.Fatalf("Propose after Run = %v; want ErrStopped", err)
	}
	if err := r.Run(ctx); !errors.Is(err, ErrRunning) {
		t.Fatalf("second Run = %v; want ErrRunning", err)
	}
}

func TestConfig(t *testing.T) {
	sp := spec.New(8).Client("x")
	defer sp.Close()
	for _, c := range []Config{{}, {Policy: 9}, {Policy: Rotating, Replicas: 3, Index: 3}, {Policy: Sticky, Index: -1}} {
		if _, err := New(sp, nopSM{}, c); !errors.Is(err, ErrConfig) {
			t.Errorf("New(%+v) = %v; want ErrConfig", c, err)
		}
	}
	r, err := New(sp, nopSM{}, Config{Policy: Sticky})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Propose(context.Background(), Command{Client: "", Seq: 1}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Propose without client = %v; want ErrInvalid", err)
	}
	for _, p := range []Policy{Sticky, Rotating, Leaderless} {
		if q, err := ParsePolicy(p.String()); err != nil || q != p {
			t.Fatalf("ParsePolicy(%v) = %v, %v", p, q, err)
		}
	}
	if _, err := ParsePolicy("paxos"); err == nil {
		t.Fatal("ParsePolicy accepted an unknown name")
	}
}
