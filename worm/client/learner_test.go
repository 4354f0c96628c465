package client

import (
	"testing"

	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/paxos"
)

func newTestListener(quorum int) *listener {
	return &listener{quorum: quorum, wake: make(chan struct{}, 1), tallies: map[uint32]*tally{}, chosen: map[uint32]struct{}{}}
}

func (l *listener) drain() []worm.Notification {
	l.mu.Lock()
	defer l.mu.Unlock()
	q := append([]worm.Notification(nil), l.queue...)
	l.queue = l.queue[:0]
	return q
}

func acc(b paxos.Ballot, v string) *paxos.RegState {
	return &paxos.RegState{Accepted: b, HasValue: true, Value: []byte(v)}
}

// The learner's rule: a value is chosen when a quorum of distinct servers
// reported it at one ballot. Each step feeds one server's report and says
// what the listener must announce.
func TestLearnerRule(t *testing.T) {
	b1 := paxos.Ballot{Round: 1, Node: 7}
	b2 := paxos.Ballot{Round: 2, Node: 3}
	type step struct {
		from int
		g    *paxos.RegState // nil: announced without value
		want string          // "": nothing, "hint", or the chosen value
	}
	cases := map[string][]step{
		// Two writers wrote different values at the unsafe ballot 0 (a
		// misuse of WriteUnsafe, but notifications must stay honest):
		// nothing is chosen until a quorum holds one of them.
		"ballot 0, two writers": {
			{0, acc(paxos.Ballot{}, "yes"), "hint"},
			{1, acc(paxos.Ballot{}, "no"), ""},
			{1, acc(paxos.Ballot{}, "no"), ""}, // the same server again
			{3, acc(paxos.Ballot{}, "yes"), ""},
			{4, acc(paxos.Ballot{}, "no"), ""},
			{2, acc(paxos.Ballot{}, "no"), "no"},
			{0, acc(paxos.Ballot{}, "yes"), ""}, // announced already
		},
		// A value reported at two ballots by two servers is not known
		// chosen: each ballot needs its own quorum.
		"one value, different ballots": {
			{0, acc(b1, "v"), "hint"},
			{1, acc(b2, "v"), ""},
			{2, acc(b2, "v"), ""},
			{3, acc(b1, "v"), ""},
			{4, acc(b2, "v"), "v"},
		},
		// One ballot, two values (a broken proposer): never mixed.
		"one ballot, different values": {
			{0, acc(b1, "a"), "hint"},
			{1, acc(b1, "b"), ""},
			{2, acc(b1, "a"), ""},
			{3, acc(b1, "b"), ""},
			{4, acc(b1, "a"), "a"},
		},
		// Hints without value count for nothing, and hint only once.
		"valueless": {
			{0, nil, "hint"},
			{1, nil, ""},
			{2, acc(b1, "x"), ""},
			{3, acc(b1, "x"), ""},
			{4, acc(b1, "x"), "x"},
		},
		// A decided register is chosen on one report.
		"decided": {
			{3, &paxos.RegState{Accepted: b2, HasValue: true, Decided: true, Value: []byte("d")}, "d"},
		},
		// The empty value is a value.
		"empty": {
			{0, acc(b1, ""), "hint"},
			{1, acc(b1, ""), ""},
			{2, acc(b1, ""), "\x00empty"},
		},
	}
	for name, steps := range cases {
		l := newTestListener(3) // five servers
		for i, s := range steps {
			l.report(s.from, 9, s.g)
			got := l.drain()
			switch {
			case s.want == "":
				if len(got) != 0 {
					t.Fatalf("%s step %d: announced %+v, want nothing", name, i, got)
				}
			case s.want == "hint":
				if len(got) != 1 || got[0].Chosen || got[0].Value != nil || got[0].Off != 9 {
					t.Fatalf("%s step %d: announced %+v, want one hint", name, i, got)
				}
			default:
				want := s.want
				if want == "\x00empty" {
					want = ""
				}
				if len(got) != 1 || !got[0].Chosen || got[0].Value == nil || string(got[0].Value) != want || got[0].Off != 9 {
					t.Fatalf("%s step %d: announced %+v, want %q chosen", name, i, got, want)
				}
			}
		}
	}
}

// The chosen value is the listener's own copy: the wire buffer a report
// aliases is reused as soon as report returns.
func TestLearnerCopiesValues(t *testing.T) {
	l := newTestListener(2)
	buf := []byte("yes")
	l.report(0, 1, &paxos.RegState{HasValue: true, Value: buf})
	copy(buf, "XXX")
	buf2 := []byte("yes")
	l.report(1, 1, &paxos.RegState{HasValue: true, Value: buf2})
	copy(buf2, "ZZZ")
	got := l.drain()
	if len(got) != 2 || !got[1].Chosen || string(got[1].Value) != "yes" {
		t.Fatalf("announced %+v, want a hint then \"yes\" chosen", got)
	}
}

// The learner's memory is bounded: past maxTallies registers it forgets
// tallies (costing hints, never a wrong value).
func TestLearnerBounded(t *testing.T) {
	l := newTestListener(2)
	for off := range uint32(3 * maxTallies) {
		l.report(0, off, acc(paxos.Ballot{}, "v"))
		l.drain()
		if len(l.tallies) > maxTallies {
			t.Fatalf("%d tallies", len(l.tallies))
		}
	}
	for off := range uint32(3 * maxChosen) {
		l.report(0, off, &paxos.RegState{HasValue: true, Decided: true, Value: []byte("v")})
		l.drain()
		if len(l.chosen) > maxChosen {
			t.Fatalf("%d remembered", len(l.chosen))
		}
	}
}
