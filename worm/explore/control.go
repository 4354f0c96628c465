package explore

import (
	"github.com/wormspace/wormspace/worm/paxos"
)

// The controls below are deliberately broken acceptors. They exist to show
// that the explorer can fail: explored with them, the tiny configurations
// reach a violation (the tests demand it) and the trace shows how.

// AmnesiacAcceptor answers a prepare as if it had never accepted anything
// (it keeps what it accepted, and still reports it to reads). It breaks
// Paxos's phase-1 guarantee: a capture can miss a chosen value.
func AmnesiacAcceptor(int) AcceptorModel { return &amnesiac{inner: paxos.NewAcceptor(segSize)} }

type amnesiac struct{ inner *paxos.Acceptor }

func (a *amnesiac) Handle(req *paxos.Request, resp *paxos.Response, recs []paxos.Record) []paxos.Record {
	recs = a.inner.Handle(req, resp, recs)
	if req.Kind == paxos.KindPrepare {
		resp.Reg = paxos.RegState{Off: req.Off}
	}
	return recs
}

func (a *amnesiac) Apply(rec paxos.Record) error { return a.inner.Apply(rec) }

func (a *amnesiac) Snapshot(emit func(paxos.Record) error) error { return a.inner.Snapshot(emit) }

// LaxAcceptor accepts a value below its promise when it holds no value for
// the register (the real acceptor accepts only at its exact promise). It
// breaks Paxos's phase-2 rule.
func LaxAcceptor(int) AcceptorModel { return &lax{inner: paxos.NewAcceptor(segSize)} }

type lax struct{ inner *paxos.Acceptor }

func (l *lax) Handle(req *paxos.Request, resp *paxos.Response, recs []paxos.Record) []paxos.Record {
	if req.Kind != paxos.KindAccept || len(req.Values) != 1 {
		return l.inner.Handle(req, resp, recs)
	}
	// Forget the register's promises, promise exactly the request's
	// ballot, accept, and put the promises back (they only grow).
	var promises, rest []paxos.Record
	for _, r := range records(l.inner) {
		switch {
		case r.Seg == req.Seg && r.Off == req.Off && r.Kind != paxos.RecordPromise:
			return l.inner.Handle(req, resp, recs) // it holds a value: behave
		case r.Kind == paxos.RecordPromise || r.Kind == paxos.RecordSegPromise:
			promises = append(promises, r)
		default:
			rest = append(rest, r)
		}
	}
	if !req.Ballot.IsZero() {
		rest = append(rest, paxos.Record{Kind: paxos.RecordPromise, Seg: req.Seg, Off: req.Off, Ballot: req.Ballot})
	}
	l.inner = rebuilt(rest)
	var r paxos.Response
	n := len(recs)
	recs = l.inner.Handle(req, &r, recs)
	*resp = *r.Clone()
	for i := n; i < len(recs); i++ {
		recs[i].Value = append([]byte(nil), recs[i].Value...)
	}
	for _, p := range promises {
		if err := l.inner.Apply(p); err != nil {
			panic(err) // records of a paxos.Acceptor always apply
		}
	}
	return recs
}

func (l *lax) Apply(rec paxos.Record) error { return l.inner.Apply(rec) }

func (l *lax) Snapshot(emit func(paxos.Record) error) error { return l.inner.Snapshot(emit) }

func records(a *paxos.Acceptor) []paxos.Record {
	var recs []paxos.Record
	_ = a.Snapshot(func(r paxos.Record) error {
		if r.Value != nil {
			r.Value = append([]byte(nil), r.Value...)
		}
		recs = append(recs, r)
		return nil
	})
	return recs
}

func rebuilt(recs []paxos.Record) *paxos.Acceptor {
	a := paxos.NewAcceptor(segSize)
	for _, r := range recs {
		if err := a.Apply(r); err != nil {
			panic(err) // records of a paxos.Acceptor always apply
		}
	}
	return a
}

// UndurableAcceptor keeps its promises in memory but never emits their
// records: a restart would forget them. It breaks the durability contract
// (records before answers), which the explorer checks on every request.
func UndurableAcceptor(int) AcceptorModel { return &undurable{inner: paxos.NewAcceptor(segSize)} }

type undurable struct{ inner *paxos.Acceptor }

func (u *undurable) Handle(req *paxos.Request, resp *paxos.Response, recs []paxos.Record) []paxos.Record {
	n := len(recs)
	recs = u.inner.Handle(req, resp, recs)
	kept := recs[:n]
	for _, r := range recs[n:] {
		if r.Kind != paxos.RecordPromise {
			kept = append(kept, r)
		}
	}
	return kept
}

func (u *undurable) Apply(rec paxos.Record) error { return u.inner.Apply(rec) }

func (u *undurable) Snapshot(emit func(paxos.Record) error) error { return u.inner.Snapshot(emit) }
