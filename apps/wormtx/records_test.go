package wormtx

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestVoteRecord(t *testing.T) {
	for _, c := range []struct{ payload, rec string }{{"", ""}, {"transfer 1", ""}, {"", "locks"}, {"p", string(make([]byte, 300))}} {
		v := voteRecord([]byte(c.payload), []byte(c.rec))
		payload, rec, ok := parseVoteRecord(v)
		if !ok || string(payload) != c.payload || string(rec) != c.rec {
			t.Fatalf("voteRecord(%q, %q) parsed back as %q, %q, %v", c.payload, c.rec, payload, rec, ok)
		}
		if got, err := parseVote(v); err != nil || got != VoteYes {
			t.Fatalf("parseVote of a record = %v, %v; want yes", got, err)
		}
	}
	for _, v := range [][]byte{valYes, valNo, valTimedOut, valFenced, {valYesRecord}, {valYesRecord, 5, 'a'}} {
		if _, _, ok := parseVoteRecord(v); ok {
			t.Errorf("parseVoteRecord(%q) accepted it", v)
		}
	}
	if got, err := parseVote(valFenced); err != nil || got != VoteTimedOut {
		t.Fatalf("parseVote(fenced) = %v, %v; want timed-out (a no)", got, err)
	}
}

func TestSetSegmentMeta(t *testing.T) {
	set := []string{"alice", "bob", "carol"}
	got, ok := parseSetSegmentMeta(setSegmentMeta("00ff", set))
	if !ok || !slices.Equal(got, set) {
		t.Fatalf("parsed %q, %v; want %q", got, ok, set)
	}
	for _, meta := range [][]byte{
		[]byte(sharedMagic + "00ff"), // a shared segment of no set
		[]byte(reserveMagic + "00ff"),
		MarshalDescriptor(Descriptor{Participants: set}),
		append([]byte(sharedMagic+"00ff"+setMagic), MarshalDescriptor(Descriptor{Participants: set, Payload: []byte("x")})...),
	} {
		if _, ok := parseSetSegmentMeta(meta); ok {
			t.Errorf("parseSetSegmentMeta(%q) accepted it", meta)
		}
	}
}

func TestSegmentFile(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "segs")
	f, err := OpenSegmentFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, seg := range []uint64{7, 9, 7, 11} {
		if err := f.Add(ctx, seg); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Remove(ctx, 9); err != nil {
		t.Fatal(err)
	}
	if got, err := f.Segments(ctx); err != nil || !slices.Equal(got, []uint64{7, 11}) {
		t.Fatalf("Segments = %v, %v; want [7 11]", got, err)
	}
	f.Close()
	// A crash in the middle of an append leaves a torn record: reopening
	// cuts it, and records added after it stay readable.
	// A magic line and 5 records (length, op and segment, CRC), followed
	// by zeros (written ahead, so that a sync does not change the file's
	// size); the torn record goes where the next record would.
	const frame = 4 + 9 + 4
	b, _ := os.ReadFile(path)
	hdr := bytes.IndexByte(b, '\n') + 1
	end := hdr + 5*frame
	if hdr == 0 || len(b) <= end || !bytes.Equal(b[end:], make([]byte, len(b)-end)) {
		t.Fatalf("file holds %d bytes, want a magic line, 5 records and zeros after them", len(b))
	}
	torn, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	torn.WriteAt([]byte{9, 0, 0, 0, '+', 1, 2, 3}, int64(end))
	torn.Close()
	f, err = OpenSegmentFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Add(ctx, 13); err != nil {
		t.Fatal(err)
	}
	if got, err := f.Segments(ctx); err != nil || !slices.Equal(got, []uint64{7, 11, 13}) {
		t.Fatalf("after a torn record and a reopen: Segments = %v, %v; want [7 11 13]", got, err)
	}
	if b, _ := os.ReadFile(path); len(b) < end+frame || !bytes.Equal(b[end+4:end+4+9], binary.LittleEndian.AppendUint64([]byte{'+'}, 13)) {
		t.Fatalf("file holds %d bytes: want 13's record where the torn one was", len(b))
	}
	// A file of another format is refused, not overwritten.
	other := filepath.Join(t.TempDir(), "other")
	os.WriteFile(other, []byte("not a segment log\n"), 0o644)
	if _, err := OpenSegmentFile(other); err == nil {
		t.Fatal("OpenSegmentFile accepted a file of another format")
	}
}
