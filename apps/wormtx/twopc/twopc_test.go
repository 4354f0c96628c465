package twopc_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/wormspace/wormspace/apps/wormtx"
	"github.com/wormspace/wormspace/apps/wormtx/twopc"
	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/spec"
)

// voteRes votes as told and records applied outcomes.
type voteRes struct {
	yes     bool
	mu      sync.Mutex
	applied map[wormtx.TxID]wormtx.Outcome
}

func (r *voteRes) Prepare(context.Context, wormtx.TxID, wormtx.Descriptor) (bool, error) {
	return r.yes, nil
}

func (r *voteRes) Apply(_ context.Context, tx wormtx.TxID, o wormtx.Outcome) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.applied == nil {
		r.applied = map[wormtx.TxID]wormtx.Outcome{}
	}
	r.applied[tx] = o
	return nil
}

type setup struct {
	ctx   context.Context
	net   *twopc.Network
	log   worm.Space
	co    *twopc.Coordinator
	parts map[string]*twopc.Participant
	res   map[string]*voteRes
}

func newSetup(t *testing.T, votes map[string]bool, cfg twopc.CoordinatorConfig, pcrash func(twopc.CrashPoint, wormtx.TxID) bool) *setup {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	s := &setup{ctx: ctx, net: twopc.NewNetwork(0), log: spec.New(16).Client("coord"),
		parts: map[string]*twopc.Participant{}, res: map[string]*voteRes{}}
	for name, yes := range votes {
		s.res[name] = &voteRes{yes: yes}
		pc := twopc.ParticipantConfig{Name: name, QueryEvery: 5 * time.Millisecond}
		if name == "crashy" {
			pc.Crash = pcrash
		}
		s.parts[name] = twopc.NewParticipant(s.net, s.res[name], pc)
		go s.parts[name].Run(ctx)
	}
	cfg.Name, cfg.Log, cfg.LogSeg = "coord", s.log, 1
	s.co = twopc.NewCoordinator(s.net, cfg)
	if err := s.co.EnsureLog(ctx, 1); err != nil {
		t.Fatal(err)
	}
	go s.co.Run(ctx)
	return s
}

func (s *setup) run(t *testing.T, parts ...string) (wormtx.TxID, wormtx.Outcome, error) {
	id, err := s.co.Begin(s.ctx, parts, nil)
	if err != nil {
		return id, wormtx.Pending, err
	}
	o, err := s.co.Await(s.ctx, id)
	return id, o, err
}

func TestCommitAndAbort(t *testing.T) {
	s := newSetup(t, map[string]bool{"a": true, "b": true, "c": false}, twopc.CoordinatorConfig{}, nil)
	id, o, err := s.run(t, "a", "b")
	if err != nil || o != wormtx.Commit {
		t.Fatalf("all yes: %v, %v", o, err)
	}
	for _, p := range []string{"a", "b"} {
		if got, err := s.parts[p].Await(s.ctx, id); err != nil || got != wormtx.Commit {
			t.Fatalf("%s: %v, %v", p, got, err)
		}
	}
	// The decision was forced to the log before anyone learned it.
	if v, err := s.log.Read(s.ctx, worm.Addr{Seg: 1, Off: uint32(id)}); err != nil || string(v) != "C" {
		t.Fatalf("log = %q, %v", v, err)
	}
	id, o, err = s.run(t, "a", "c")
	if err != nil || o != wormtx.Abort {
		t.Fatalf("one no: %v, %v", o, err)
	}
	if got, err := s.parts["a"].Await(s.ctx, id); err != nil || got != wormtx.Abort {
		t.Fatalf("a: %v, %v", got, err)
	}
}

func TestVoteTimeoutAborts(t *testing.T) {
	s := newSetup(t, map[string]bool{"a": true, "crashy": true}, twopc.CoordinatorConfig{VoteTimeout: 30 * time.Millisecond},
		func(p twopc.CrashPoint, _ wormtx.TxID) bool { return p == twopc.ParticipantBeforeVote })
	id, o, err := s.run(t, "a", "crashy")
	if err != nil || o != wormtx.Abort {
		t.Fatalf("%v, %v; want abort after the vote timeout", o, err)
	}
	if got, err := s.parts["a"].Await(s.ctx, id); err != nil || got != wormtx.Abort {
		t.Fatalf("a: %v, %v", got, err)
	}
}

// A coordinator that crashes after some votes leaves the yes voters in
// doubt; a recovered coordinator presumes abort.
func TestCrashAfterVotesBlocks(t *testing.T) {
	s := newSetup(t, map[string]bool{"a": true, "b": true}, twopc.CoordinatorConfig{
		Crash: func(p twopc.CrashPoint, n int) bool { return p == twopc.CoordinatorAfterVotes && n == 1 }}, nil)
	id, err := s.co.Begin(s.ctx, []string{"a", "b"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"a", "b"} {
		wctx, cancel := context.WithTimeout(s.ctx, 100*time.Millisecond)
		_, err := s.parts[p].Await(wctx, id)
		cancel()
		if !errors.Is(err, twopc.ErrInDoubt) {
			t.Fatalf("%s: %v, want in doubt", p, err)
		}
	}
	if got := s.parts["a"].InDoubt(); len(got) != 1 || got[0] != id {
		t.Fatalf("InDoubt = %v", got)
	}
	s.net.Restart("coord")
	co2 := twopc.NewCoordinator(s.net, twopc.CoordinatorConfig{Name: "coord", Log: s.log, LogSeg: 1, FirstTx: 100})
	go co2.Run(s.ctx)
	for _, p := range []string{"a", "b"} {
		if o, err := s.parts[p].Await(s.ctx, id); err != nil || o != wormtx.Abort {
			t.Fatalf("%s after recovery: %v, %v", p, o, err)
		}
	}
}
