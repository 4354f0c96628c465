package paxos

import (
	"testing"
)

func TestZeroVotesChoose(t *testing.T) {
	for _, tc := range []struct {
		name      string
		votes     []string // ballot-0 values shown by the promises
		n, q, pro int      // acceptors, quorum, promises received
		want      string
		ok        bool
	}{
		{"one value", []string{"a"}, 3, 2, 2, "a", true},
		{"all answered, a on two", []string{"a", "b", "a"}, 3, 2, 3, "a", true},
		{"all answered, one each, none chosen", []string{"a", "b"}, 3, 2, 3, "a", true},
		{"a tie goes to the least value, whatever came first", []string{"b", "a"}, 3, 2, 3, "a", true},
		{"one silent, one each: either may be chosen", []string{"a", "b"}, 3, 2, 2, "", false},
		{"five, two silent, a twice b once", []string{"a", "a", "b"}, 5, 3, 3, "", false},
		{"five, one silent, a twice b twice", []string{"a", "b", "a", "b"}, 5, 3, 4, "", false},
		{"five, one silent, a three times", []string{"a", "b", "a", "a"}, 5, 3, 4, "a", true},
		{"five, all answered, none on a quorum: most shown", []string{"b", "a", "a", "c"}, 5, 3, 5, "a", true},
		{"five, one silent, b can still reach a quorum, a cannot", []string{"a", "b", "b", "c"}, 5, 3, 4, "b", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var z zeroVotes
			for _, v := range tc.votes {
				z.add([]byte(v))
			}
			if got := z.conflict(); got != (len(z.values) > 1) {
				t.Fatalf("conflict() = %v with %d values", got, len(z.values))
			}
			v, ok := z.choose(tc.n, tc.q, tc.pro)
			if ok != tc.ok || string(v) != tc.want {
				t.Fatalf("choose(%d, %d, %d) = %q, %v; want %q, %v", tc.n, tc.q, tc.pro, v, ok, tc.want, tc.ok)
			}
			z.reset()
			if z.conflict() || len(z.values) != 0 {
				t.Fatalf("reset left %d values", len(z.values))
			}
		})
	}
}

// TestDecideAtBallotZeroNamesTheValue: a decide at ballot 0 marks only the
// value it names; one without values is refused as invalid.
func TestDecideAtBallotZeroNamesTheValue(t *testing.T) {
	a := NewAcceptor(4)
	var resp Response
	recs := a.Handle(&Request{Kind: KindAccept, Seg: 1, Off: 0, Values: [][]byte{[]byte("no")}}, &resp, nil)
	if len(recs) != 1 || resp.Results[0].Status != StatusOK {
		t.Fatalf("unsafe accept: %v, %+v", recs, resp)
	}
	read := func() RegState {
		var r Response
		a.Handle(&Request{Kind: KindRead, Seg: 1, Off: 0}, &r, nil)
		return r.Reg
	}
	if recs := a.Handle(&Request{Kind: KindDecide, Seg: 1, Off: 0, Count: 1}, &resp, nil); len(recs) != 0 || resp.Status != StatusInvalid {
		t.Fatalf("decide at ballot 0 without values: %d records, status %v", len(recs), resp.Status)
	}
	if recs := a.Handle(&Request{Kind: KindDecide, Seg: 1, Off: 0, Count: 1, Values: [][]byte{[]byte("yes")}}, &resp, nil); len(recs) != 0 || read().Decided {
		t.Fatalf("decide of another ballot-0 value marked the register: %d records, %+v", len(recs), read())
	}
	if recs := a.Handle(&Request{Kind: KindDecide, Seg: 1, Off: 0, Count: 1, Values: [][]byte{[]byte("no")}}, &resp, nil); len(recs) != 1 || !read().Decided {
		t.Fatalf("decide of the held value: %d records, %+v", len(recs), read())
	}

	// Install: a transferred decide at ballot 0 names its value too.
	b := NewAcceptor(4)
	if _, err := b.Install(Record{Kind: RecordAccept, Seg: 1, Off: 0, Value: []byte("yes")}, nil); err != nil {
		t.Fatal(err)
	}
	for _, rec := range []Record{
		{Kind: RecordDecide, Seg: 1, Off: 0, Value: []byte("no")},
		{Kind: RecordDecide, Seg: 1, Off: 0},
	} {
		if recs, err := b.Install(rec, nil); err != nil || len(recs) != 0 {
			t.Fatalf("install of a decide of %q onto %q: %v, %d records", rec.Value, "yes", err, len(recs))
		}
	}
	if recs, err := b.Install(Record{Kind: RecordDecide, Seg: 1, Off: 0, Value: []byte("yes")}, nil); err != nil || len(recs) != 1 {
		t.Fatalf("install of the matching decide: %v, %d records", err, len(recs))
	}
	// Its snapshot names the value, so that an export installs elsewhere.
	var dec *Record
	_ = b.Snapshot(func(r Record) error {
		if r.Kind == RecordDecide {
			dec = &r
		}
		return nil
	})
	if dec == nil || string(dec.Value) != "yes" {
		t.Fatalf("snapshot decide record: %+v", dec)
	}
}
