package wormtx_test

import (
	"bytes"
	"context"
	"errors"
	"go/build"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wormspace/wormspace/apps/wormtx"
	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/spec"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func fast(d time.Duration) wormtx.Policy {
	return wormtx.Policy{RecoverAfter: d, Poll: 5 * time.Millisecond}
}

func TestDescriptorRoundTrip(t *testing.T) {
	for _, d := range []wormtx.Descriptor{
		{Participants: []string{"a"}},
		{Participants: []string{"alice", "bob", "carol"}, Payload: []byte("x\x00y")},
		{Participants: []string{strings.Repeat("p", 300), "q"}, Payload: bytes.Repeat([]byte{7}, 1000)},
	} {
		got, err := wormtx.UnmarshalDescriptor(wormtx.MarshalDescriptor(d))
		if err != nil {
			t.Fatalf("%+v: %v", d, err)
		}
		if !slices.Equal(got.Participants, d.Participants) || !bytes.Equal(got.Payload, d.Payload) {
			t.Fatalf("round trip %+v -> %+v", d, got)
		}
	}
	for _, bad := range [][]byte{nil, []byte("nope"), []byte("wtx1"), []byte("wtx1\x01\x05ab"), []byte("wtx1\x00\x00"),
		append(wormtx.MarshalDescriptor(wormtx.Descriptor{Participants: []string{"a"}}), 'z'),
		wormtx.MarshalDescriptor(wormtx.Descriptor{Participants: []string{"a", "a"}})} {
		if _, err := wormtx.UnmarshalDescriptor(bad); !errors.Is(err, wormtx.ErrNotTransaction) {
			t.Errorf("UnmarshalDescriptor(%q) = %v, want ErrNotTransaction", bad, err)
		}
	}
}

func FuzzDescriptor(f *testing.F) {
	f.Add(wormtx.MarshalDescriptor(wormtx.Descriptor{Participants: []string{"a", "b"}, Payload: []byte("p")}))
	f.Add([]byte("wtx1\x02\x01a\x01b\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := wormtx.UnmarshalDescriptor(b)
		if err != nil {
			return
		}
		if again := wormtx.MarshalDescriptor(d); !bytes.Equal(again, b) {
			t.Fatalf("accepted %q but re-encodes as %q", b, again)
		}
	})
}

func TestBeginValidates(t *testing.T) {
	ctx := ctxT(t)
	st := spec.New(16) // room for 7 participants
	co := wormtx.NewCoordinator(st.Client("c"), wormtx.CoordinatorConfig{FirstSeg: 10,
		Directory: wormtx.StaticDirectory(map[string]uint64{"a": 1000, "b": 2000})})
	for _, parts := range [][]string{nil, {"a", "a"}, {"a", ""}, {"a", "zed"}, {"1", "2", "3", "4", "5", "6", "7", "8"}} {
		if _, err := co.Begin(ctx, parts, nil); !errors.Is(err, wormtx.ErrInvalid) {
			t.Errorf("Begin(%q) = %v, want ErrInvalid", parts, err)
		}
	}
	if _, err := st.Client("x").Check(ctx, 10); !errors.Is(err, worm.ErrUnallocated) {
		t.Fatalf("an invalid Begin allocated a segment: %v", err)
	}
}

// Two coordinators (distinct identities) sharing a segment range never
// share a transaction: the Alloc loser moves on.
func TestSharedSegmentRange(t *testing.T) {
	ctx := ctxT(t)
	st := spec.New(16)
	a := wormtx.NewCoordinator(st.Client("ca"), wormtx.CoordinatorConfig{FirstSeg: 100})
	b := wormtx.NewCoordinator(st.Client("cb"), wormtx.CoordinatorConfig{FirstSeg: 100})
	seen := map[wormtx.TxID]string{}
	for i := range 10 {
		for name, co := range map[string]*wormtx.Coordinator{"a": a, "b": b} {
			payload := []byte(name + string(rune('0'+i)))
			id, err := co.Begin(ctx, []string{"p"}, payload)
			if err != nil {
				t.Fatal(err)
			}
			if other, dup := seen[id]; dup {
				t.Fatalf("%v given to %s and %s", id, other, name)
			}
			seen[id] = name
			tx, err := wormtx.Open(ctx, st.Client("r"), id)
			if err != nil || !bytes.Equal(tx.Payload, payload) {
				t.Fatalf("Open(%v) = %+v, %v; want payload %q", id, tx, err, payload)
			}
		}
	}
}

// A yes whose WriteUnsafe took effect but reported an unknown outcome, by
// a participant that then died, survives recovery: the transaction
// commits. A dropped one is replaced by no.
func TestRecoveryCarriesAmbiguousYes(t *testing.T) {
	for _, c := range []struct {
		fault spec.Fault
		want  wormtx.Outcome
	}{{spec.FaultUnknownApplied, wormtx.Commit}, {spec.FaultUnknownDropped, wormtx.Abort}} {
		t.Run(c.fault.String(), func(t *testing.T) {
			ctx := ctxT(t)
			st := spec.New(16)
			co := wormtx.NewCoordinator(st.Client("c"), wormtx.CoordinatorConfig{FirstSeg: 1})
			id, err := co.Begin(ctx, []string{"p0", "p1"}, nil)
			if err != nil {
				t.Fatal(err)
			}
			tx := wormtx.Tx{ID: id, Descriptor: wormtx.Descriptor{Participants: []string{"p0", "p1"}}}
			if v, err := wormtx.NewParticipant(st.Client("p0"), "p0", wormtx.ParticipantConfig{}).Vote(ctx, tx, true); err != nil || v != wormtx.VoteYes {
				t.Fatalf("p0 vote %v, %v", v, err)
			}
			p1 := st.Client("p1")
			st.InjectFault("p1", c.fault, 1, spec.OpWriteUnsafe)
			// p1's raw vote (register 1), then p1 "dies".
			if err := p1.WriteUnsafe(ctx, worm.Addr{Seg: uint64(id), Off: 1}, []byte("y")); !errors.Is(err, worm.ErrUnknownOutcome) {
				t.Fatalf("WriteUnsafe: %v, want unknown outcome", err)
			}
			o, err := wormtx.Resolve(ctx, st.Client("observer"), id, fast(0))
			if err != nil || o != c.want {
				t.Fatalf("Resolve = %v, %v; want %v", o, err, c.want)
			}
			st2, err := tx.Status(ctx, st.Client("observer"))
			// On the atomic spec an applied write is chosen, so the
			// observer reads the yes (no capture needed); a dropped
			// one is recovered, and the recovery records the decision.
			// (A yes stranded on a minority of acceptors, carried over
			// by the capture itself, needs a distributed Space: the
			// suite's recoverer races cover that against a cluster.)
			if err != nil || st2.Outcome != c.want || (c.want == wormtx.Abort && st2.Decision != wormtx.Abort) {
				t.Fatalf("status %+v, %v; want outcome %v", st2, err, c.want)
			}
			// p1 comes back and votes yes again: it learns what was chosen.
			want := wormtx.VoteYes
			if c.want == wormtx.Abort {
				want = wormtx.VoteTimedOut
			}
			if v, err := wormtx.NewParticipant(p1, "p1", wormtx.ParticipantConfig{}).Vote(ctx, tx, true); err != nil || v != want {
				t.Fatalf("p1 revote = %v, %v; want %v", v, err, want)
			}
		})
	}
}

func TestErrors(t *testing.T) {
	ctx := ctxT(t)
	st := spec.New(16)
	c := st.Client("c")
	if _, err := wormtx.Resolve(ctx, c, 5, fast(0)); !errors.Is(err, worm.ErrUnallocated) {
		t.Errorf("Resolve of an unallocated segment: %v", err)
	}
	if _, err := c.Alloc(ctx, 6, []byte("something else")); err != nil {
		t.Fatal(err)
	}
	if _, err := wormtx.Open(ctx, c, 6); !errors.Is(err, wormtx.ErrNotTransaction) {
		t.Errorf("Open of a foreign segment: %v", err)
	}
	co := wormtx.NewCoordinator(c, wormtx.CoordinatorConfig{FirstSeg: 7})
	id, err := co.Begin(ctx, []string{"a"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tx, _ := wormtx.Open(ctx, c, id)
	if _, err := wormtx.NewParticipant(c, "zed", wormtx.ParticipantConfig{}).Vote(ctx, tx, true); !errors.Is(err, wormtx.ErrNotParticipant) {
		t.Errorf("Vote by a stranger: %v", err)
	}
	// A space that stays unreachable: Resolve gives up with ctx.
	st.InjectFault("c", spec.FaultUnavailable, 1<<30)
	sctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := tx.Resolve(sctx, c, fast(0)); err == nil {
		t.Error("Resolve over an unreachable space succeeded")
	}
	st.InjectFault("c", spec.FaultNone, 0)
	// After every ack, the segment is collected and the outcome gone.
	p := wormtx.NewParticipant(c, "a", wormtx.ParticipantConfig{AbandonAfter: time.Millisecond})
	if _, err := p.Vote(ctx, tx, true); err != nil {
		t.Fatal(err)
	}
	if o, err := co.Await(ctx, id); err != nil || o != wormtx.Commit {
		t.Fatalf("Await = %v, %v", o, err)
	}
	co.Close()
	if err := p.Ack(ctx, tx, wormtx.Commit); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Status(ctx, c); !errors.Is(err, worm.ErrTrimmed) {
		t.Errorf("Status after collection: %v, want ErrTrimmed", err)
	}
	if _, err := tx.Resolve(ctx, c, fast(0)); !errors.Is(err, worm.ErrTrimmed) {
		t.Errorf("Resolve after collection: %v, want ErrTrimmed", err)
	}
}

// TestImports enforces the package docs: never import the protocol
// internals or the distributed client.
func TestImports(t *testing.T) {
	for _, dir := range []string{".", "wormtxtest", "bank", "twopc", "txbench", "internal/netdelay"} {
		pkg, err := build.ImportDir(dir, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(pkg.Imports) == 0 {
			t.Fatalf("%s: no imports found", dir)
		}
		for _, imp := range pkg.Imports {
			for _, bad := range []string{"/worm/client", "/worm/paxos", "/worm/wire", "/worm/server", "/worm/storage", "/worm/spec", "/worm/check"} {
				if strings.HasSuffix(imp, bad) || strings.Contains(imp, bad+"/") {
					t.Errorf("%s imports %s", pkg.ImportPath, imp)
				}
			}
		}
	}
}

// stranded models a ballot-0 write that reached a minority of acceptors:
// reads do not see it (no majority), but a capture's phase 1 finds it and
// must finish it (reference, "unsafe-write safety").
type stranded struct {
	worm.Space
	st *strandedState
}

type strandedState struct {
	mu   sync.Mutex
	vals map[worm.Addr][]byte
}

func (s stranded) WriteUnsafe(ctx context.Context, a worm.Addr, v []byte) error {
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	if _, ok := s.st.vals[a]; ok {
		return nil
	}
	if a.Off == 1 { // strand participant 1's vote
		s.st.vals[a] = bytes.Clone(v)
		return worm.ErrUnknownOutcome
	}
	return s.Space.WriteUnsafe(ctx, a, v)
}

func (s stranded) Capture(ctx context.Context, a worm.Addr) (worm.Token, error) {
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	if v, ok := s.st.vals[a]; ok {
		delete(s.st.vals, a)
		if err := s.Space.WriteUnsafe(ctx, a, v); err != nil {
			return worm.Token{}, err
		}
		return worm.Token{}, &worm.WrittenError{Addr: a, Value: v}
	}
	return s.Space.Capture(ctx, a)
}

// TestRecoveryCarriesStrandedYes: participant 1's yes reached only a
// minority and it died; reads see the vote as missing, the recoverer's
// capture finds the yes and must keep it, so the transaction commits.
func TestRecoveryCarriesStrandedYes(t *testing.T) {
	ctx := ctxT(t)
	st := spec.New(16)
	ss := &strandedState{vals: map[worm.Addr][]byte{}}
	wrap := func(id string) worm.Space { return stranded{st.Client(id), ss} }
	co := wormtx.NewCoordinator(wrap("c"), wormtx.CoordinatorConfig{FirstSeg: 1})
	id, err := co.Begin(ctx, []string{"p0", "p1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tx := wormtx.Tx{ID: id, Descriptor: wormtx.Descriptor{Participants: []string{"p0", "p1"}}}
	if _, err := wormtx.NewParticipant(wrap("p0"), "p0", wormtx.ParticipantConfig{}).Vote(ctx, tx, true); err != nil {
		t.Fatal(err)
	}
	if err := wrap("p1").WriteUnsafe(ctx, worm.Addr{Seg: uint64(id), Off: 1}, []byte("y")); !errors.Is(err, worm.ErrUnknownOutcome) {
		t.Fatalf("stranded write: %v", err)
	}
	if s, err := tx.Status(ctx, wrap("o")); err != nil || s.Votes[1] != wormtx.VoteMissing {
		t.Fatalf("before recovery: %+v, %v; want vote 1 missing to readers", s, err)
	}
	o, err := wormtx.Resolve(ctx, wrap("o"), id, fast(0))
	if err != nil || o != wormtx.Commit {
		t.Fatalf("Resolve = %v, %v; want commit (the stranded yes carried over)", o, err)
	}
}
