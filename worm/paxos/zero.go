package paxos

import "bytes"

// Ballot 0 and its several writers
//
// WriteUnsafe runs phase 2 at ballot 0 without phase 1. Its contract names
// one designated writer per register (a WormTX participant's vote), and
// then ballot 0 carries one value like every other ballot. Nothing stops
// two clients from writing different values there, though, and the
// register must stay write-once when they do: acceptors keep the first
// ballot-0 value they accept and refuse any other, so different acceptors
// may hold different values at ballot 0, at most one of which reached a
// quorum (was chosen). Three places tell them apart by value, not by
// ballot alone:
//   - a read counts answers per (ballot, value) (readM);
//   - KindDecide at ballot 0 carries the values it decides, and an
//     acceptor marks its register decided only when it holds that value
//     (decideReq, Acceptor.Handle), as a transferred decide record does
//     (Acceptor.Install);
//   - a capture whose promises show only ballot-0 values, and more than
//     one of them, finishes the one that may have been chosen (zeroVotes).
//
// One place cannot: replacing a member (transfer.go). When the donors of
// a register hold different ballot-0 values and the member that left held
// the copy that made one of them a quorum, that knowledge left with it;
// the new member keeps the first value it installs (ConflictError for the
// others), which may be the loser. Several unsafe writers and a membership
// change together are thus outside what the register guarantees; with
// WriteUnsafe's contract kept (one writer, one value) ballot 0 carries one
// value and replacement is exact.

// zeroVotes tallies the ballot-0 values that one register's promises
// (phase-1 answers at the capture's ballot) reported. The zero value is
// empty and ready to use.
type zeroVotes struct {
	values [][]byte
	counts []int
}

func (z *zeroVotes) reset() {
	clear(z.values)
	z.values, z.counts = z.values[:0], z.counts[:0]
}

// add counts one promise holding v at ballot 0. v is copied if kept.
func (z *zeroVotes) add(v []byte) {
	for i, w := range z.values {
		if bytes.Equal(w, v) {
			z.counts[i]++
			return
		}
	}
	z.values = append(z.values, bytes.Clone(v))
	z.counts = append(z.counts, 1)
}

// conflict reports whether the promises showed more than one ballot-0
// value.
func (z *zeroVotes) conflict() bool { return len(z.values) > 1 }

// choose picks the ballot-0 value a capture must finish, given that
// promised of the n acceptors (quorum q) answered its phase 1 with a
// promise, every one of them holding at most a ballot-0 value.
//
// A value v may have been chosen only if the acceptors that hold it at
// ballot 0 can make up a quorum: those that showed it, plus those that
// did not answer. An acceptor that promised and showed no value or
// another ballot-0 value never held v at ballot 0 (it keeps its first
// ballot-0 value, and an acceptor moves only to higher ballots), and
// having promised it will not accept v at ballot 0 from now on. So:
//   - exactly one value may have been chosen: that one (ok);
//   - none may have been: any is safe; the one most promises show, the
//     least value on a tie (ok). The choice depends only on the answers,
//     not on their order, as worm/explore's reductions assume;
//   - several may have been (the non-answering acceptors would decide):
//     ok = false, and the capture asks again rather than guess.
//
// With every acceptor answering, at most one value can be possible, so a
// conflict costs liveness only while acceptors are silent.
func (z *zeroVotes) choose(n, q, promised int) (v []byte, ok bool) {
	silent := n - promised
	possible, most := -1, -1
	for i, c := range z.counts {
		if c+silent >= q {
			if possible >= 0 {
				return nil, false
			}
			possible = i
		}
		if most < 0 || c > z.counts[most] || (c == z.counts[most] && bytes.Compare(z.values[i], z.values[most]) < 0) {
			most = i
		}
	}
	switch {
	case possible >= 0:
		return z.values[possible], true
	case most >= 0:
		return z.values[most], true
	}
	return nil, false
}
