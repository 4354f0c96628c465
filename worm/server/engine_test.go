package server

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/paxos"
)

// gateLog is a Log whose Sync blocks until the test opens the gate.
type gateLog struct {
	mu      sync.Mutex
	recs    []paxos.Record
	durable uint64
	syncs   int
	gate    chan struct{}
	full    bool
	syncErr error
	entered chan struct{}
}

func newGateLog() *gateLog {
	return &gateLog{gate: make(chan struct{}), entered: make(chan struct{}, 100)}
}

func (l *gateLog) Reserve(n int) error {
	if l.full {
		return errors.New("no space left on device")
	}
	return nil
}

func (l *gateLog) Append(recs []paxos.Record) (uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recs = append(l.recs, recs...)
	return uint64(len(l.recs)), nil
}

// Sync makes durable what was appended when it started (a real log swaps
// its buffer at that moment); appends during the sync wait for the next.
func (l *gateLog) Sync() (uint64, error) {
	l.mu.Lock()
	n := uint64(len(l.recs))
	l.mu.Unlock()
	l.entered <- struct{}{}
	<-l.gate
	l.mu.Lock()
	defer l.mu.Unlock()
	l.syncs++
	if l.syncErr != nil {
		return 0, l.syncErr
	}
	l.durable = n
	return l.durable, nil
}

// replies is a Replier that records what it is given, in order, with
// the tags.
type replies struct {
	mu        sync.Mutex
	got       []paxos.Response
	tags      []uint64
	abandoned []uint64
	ch        chan struct{}
}

func newReplies() *replies { return &replies{ch: make(chan struct{}, 100)} }

func (r *replies) Reply(tag uint64, resp *paxos.Response) {
	r.mu.Lock()
	r.got = append(r.got, *resp.Clone())
	r.tags = append(r.tags, tag)
	r.mu.Unlock()
	r.ch <- struct{}{}
}

func (r *replies) Abandon(tag uint64) {
	r.mu.Lock()
	r.abandoned = append(r.abandoned, tag)
	r.mu.Unlock()
}

func (r *replies) n() int { r.mu.Lock(); defer r.mu.Unlock(); return len(r.got) }

func (r *replies) wait(t *testing.T, n int) {
	t.Helper()
	for r.n() < n {
		select {
		case <-r.ch:
		case <-time.After(5 * time.Second):
			t.Fatalf("got %d replies, want %d", r.n(), n)
		}
	}
}

func prepare(off uint32, round uint64) *paxos.Request {
	return &paxos.Request{Kind: paxos.KindPrepare, Seg: 1, Off: off, Ballot: worm.Ballot{Round: round, Node: 1}}
}

// No reply leaves before the sync covering its records; requests that
// arrive while a sync runs share the next one.
func TestRepliesWaitForDurability(t *testing.T) {
	log := newGateLog()
	e := NewEngine(paxos.NewAcceptor(8), log, nil, nil)
	defer func() { close(log.gate); e.Close() }()
	r := newReplies()
	e.Handle(prepare(0, 1), r, 0)
	<-log.entered // the first sync is running
	for i := uint32(1); i <= 5; i++ {
		e.Handle(prepare(i, 1), r, 0)
	}
	time.Sleep(20 * time.Millisecond)
	if r.n() != 0 {
		t.Fatalf("%d replies left before any sync finished", r.n())
	}
	log.gate <- struct{}{} // finish sync 1: covers request 0 only
	r.wait(t, 1)
	<-log.entered
	log.gate <- struct{}{} // sync 2 covers the five that waited
	r.wait(t, 6)
	if log.syncs != 2 {
		t.Fatalf("%d syncs for 6 requests, want 2 (group commit)", log.syncs)
	}
	for _, g := range r.got {
		if g.Status != paxos.StatusOK {
			t.Fatalf("reply %+v", g)
		}
	}
}

// A read that changes nothing still waits for earlier changes it may
// reveal.
func TestReadWaitsForEarlierChanges(t *testing.T) {
	log := newGateLog()
	e := NewEngine(paxos.NewAcceptor(8), log, nil, nil)
	defer func() { close(log.gate); e.Close() }()
	r := newReplies()
	e.Handle(&paxos.Request{Kind: paxos.KindAccept, Seg: 1, Off: 0, Ballot: worm.Ballot{Round: 1, Node: 1}, Values: [][]byte{[]byte("v")}}, r, 0)
	<-log.entered
	e.Handle(&paxos.Request{Kind: paxos.KindRead, Seg: 1, Off: 0}, r, 0)
	time.Sleep(20 * time.Millisecond)
	if r.n() != 0 {
		t.Fatal("a read revealed a value before it was durable")
	}
	log.gate <- struct{}{}
	r.wait(t, 2)
	if string(r.got[1].Reg.Value) != "v" {
		t.Fatalf("read %+v", r.got[1])
	}
}

// A full disk is answered with an error and leaves the state unchanged.
func TestFullDiskChangesNothing(t *testing.T) {
	log := newGateLog()
	log.full = true
	acc := paxos.NewAcceptor(8)
	e := NewEngine(acc, log, nil, nil)
	defer func() { close(log.gate); e.Close() }()
	r := newReplies()
	e.Handle(&paxos.Request{Kind: paxos.KindAccept, Seg: 1, Off: 0, Ballot: worm.Ballot{Round: 1, Node: 1}, Values: [][]byte{[]byte("v")}}, r, 0)
	r.wait(t, 1)
	if r.got[0].Status != paxos.StatusError {
		t.Fatalf("accept on a full disk: %+v", r.got[0])
	}
	if live, _ := acc.Segments(); live != 0 || len(log.recs) != 0 {
		t.Fatalf("state changed on a full disk: %d segments, %d records", live, len(log.recs))
	}
	// Space comes back: the same request succeeds.
	log.full = false
	e.Handle(&paxos.Request{Kind: paxos.KindAccept, Seg: 1, Off: 0, Ballot: worm.Ballot{Round: 1, Node: 1}, Values: [][]byte{[]byte("v")}}, r, 0)
	<-log.entered
	log.gate <- struct{}{}
	r.wait(t, 2)
	if r.got[1].Status != paxos.StatusOK {
		t.Fatalf("accept after space returned: %+v", r.got[1])
	}
}

// After a failed sync nothing waiting is acknowledged, and later requests
// are refused.
func TestSyncFailureStopsAcknowledging(t *testing.T) {
	log := newGateLog()
	log.syncErr = errors.New("input/output error")
	e := NewEngine(paxos.NewAcceptor(8), log, nil, nil)
	defer func() { close(log.gate); e.Close() }()
	r := newReplies()
	e.Handle(prepare(0, 1), r, 0)
	<-log.entered
	log.gate <- struct{}{}
	time.Sleep(20 * time.Millisecond)
	if r.n() != 0 {
		t.Fatal("a reply was acknowledged although its sync failed")
	}
	e.Handle(prepare(1, 1), r, 0)
	r.wait(t, 1)
	if r.got[0].Status != paxos.StatusError {
		t.Fatalf("request after sync failure: %+v", r.got[0])
	}
}
