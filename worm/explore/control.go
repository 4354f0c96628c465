package explore

import (
	"github.com/wormspace/wormspace/worm/paxos"
)

// The controls below are deliberately broken acceptors. They exist to show
// that the explorer can fail: explored with them, the tiny configurations
// reach a violation (the tests demand it) and the trace shows how.

// ForgetfulAcceptor answers a prepare as the real acceptor would, promise
// included, but then forgets the promise (it never becomes durable nor
// binds later accepts). It breaks Paxos's phase-1 guarantee.
func ForgetfulAcceptor(int) AcceptorModel { return &forgetful{inner: paxos.NewAcceptor(segSize)} }

type forgetful struct{ inner *paxos.Acceptor }

func (f *forgetful) Handle(req *paxos.Request, resp *paxos.Response, recs []paxos.Record) []paxos.Record {
	if req.Kind != paxos.KindPrepare {
		return f.inner.Handle(req, resp, recs)
	}
	before := records(f.inner)
	var r paxos.Response
	f.inner.Handle(req, &r, nil)
	*resp = *r.Clone()
	f.inner = rebuilt(before)
	return recs
}

func (f *forgetful) Apply(rec paxos.Record) error { return f.inner.Apply(rec) }

func (f *forgetful) Snapshot(emit func(paxos.Record) error) error { return f.inner.Snapshot(emit) }

// LaxAcceptor accepts a value below its promise (it still refuses one below
// a ballot it accepted). It breaks Paxos's phase-2 rule.
func LaxAcceptor(int) AcceptorModel { return &lax{inner: paxos.NewAcceptor(segSize)} }

type lax struct{ inner *paxos.Acceptor }

func (l *lax) Handle(req *paxos.Request, resp *paxos.Response, recs []paxos.Record) []paxos.Record {
	if req.Kind != paxos.KindAccept {
		return l.inner.Handle(req, resp, recs)
	}
	// Handle the accept on a copy without promises, then put them back.
	var promises, rest []paxos.Record
	for _, r := range records(l.inner) {
		if r.Kind == paxos.RecordPromise || r.Kind == paxos.RecordSegPromise {
			promises = append(promises, r)
		} else {
			rest = append(rest, r)
		}
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
		r.Value = append([]byte(nil), r.Value...)
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
