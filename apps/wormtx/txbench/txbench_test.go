package txbench_test

import (
	"context"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/wormspace/wormspace/apps/wormtx"
	"github.com/wormspace/wormspace/apps/wormtx/txbench"
	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/spec"
)

// The harness on the specification: both protocols commit under
// closed-loop clients, and the applied latencies are measured; WormTX
// with its participants' votes carrying their prepare records too, and
// with its participants on one client for their process or on one each.
func TestRunBoth(t *testing.T) {
	for _, records := range []bool{false, true} {
		for _, own := range []bool{false, true} {
			name := map[bool]string{false: "forced-prepares", true: "vote-records"}[records] +
				map[bool]string{false: "/client-per-process", true: "/client-per-participant"}[own]
			t.Run(name, func(t *testing.T) { runBoth(t, records, own) })
		}
	}
}

func runBoth(t *testing.T, records, clientPerParticipant bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	st := spec.New(1024)
	dir := t.TempDir()
	var mu sync.Mutex
	var dialed []string
	h, err := txbench.Start(ctx, txbench.Config{Dir: dir, Volatile: true, Stages: true, Records: records, ClientPerParticipant: clientPerParticipant,
		Dial: func(_ context.Context, id string) (worm.Space, error) {
			mu.Lock()
			dialed = append(dialed, id)
			mu.Unlock()
			return st.Client(id), nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	mu.Lock()
	slices.Sort(dialed)
	want := []string{"wtx-coordinator", "wtx-participants"}
	if clientPerParticipant {
		want = []string{"wtx-coordinator", "wtx-p0", "wtx-p1", "wtx-p2"}
	}
	if !slices.Equal(dialed, want) {
		t.Errorf("clients dialed: %q; want %q", dialed, want)
	}
	mu.Unlock()
	if records {
		defer func() {
			// Each participant recorded the set segments it voted in.
			for _, p := range []string{"p0", "p1", "p2"} {
				f, err := wormtx.OpenSegmentFile(filepath.Join(dir, "participants", "wtx-"+p+".segments"))
				if err != nil {
					t.Fatal(err)
				}
				segs, err := f.Segments(ctx)
				f.Close()
				if err != nil || len(segs) == 0 {
					t.Errorf("%s's segment log: %v, %v; want the segments it voted in", p, segs, err)
				}
			}
		}()
	}
	for _, p := range []txbench.Protocol{txbench.WormTX, txbench.TwoPC} {
		for _, c := range []int{1, 4} {
			r, err := h.Run(ctx, p, c, 50*time.Millisecond, 300*time.Millisecond)
			if err != nil {
				t.Fatalf("%s c=%d: %v", p, c, err)
			}
			t.Logf("%s c=%d: %v; applied p50 %v", p, c, r.Result, r.Applied.P50)
			if r.Ops == 0 || r.Errors > 0 {
				t.Fatalf("%s c=%d: %d committed, %d errors (%s)", p, c, r.Ops, r.Errors, r.FirstError)
			}
			if r.Applied.P50 == 0 {
				t.Fatalf("%s c=%d: no applied latency measured", p, c)
			}
			checkStages(t, r.Stages)
		}
	}
}

// The critical paths: 3 delays for WormTX's direct mode (to its
// coordinator and its participants), 2 to 2PC's coordinator and 3 to its
// participants.
func TestDelays(t *testing.T) {
	if testing.Short() {
		t.Skip("delays take a few hundred milliseconds")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	newSpace := func() func(string) worm.Space {
		st := spec.New(1024)
		return func(id string) worm.Space { return st.Client(id) }
	}
	d, err := txbench.Delays(ctx, newSpace, 3, 4*time.Millisecond, 5)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", d)
	// Scheduling adds to a count, never removes from it: the lower
	// bounds are the protocols' structure; the medians are reported.
	if d.WormTXCoordinator < 2.9 || d.WormTXApplied < 2.9 || d.TwoPCCoordinator < 1.9 || d.TwoPCApplied < 2.9 {
		t.Fatalf("delays %+v; want at least 3, 3, 2, 3", d)
	}
}

// A coordinator crash after the prepares: 2PC's participants are in doubt
// until their coordinator comes back; WormTX's apply without theirs.
func TestBlocking(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	st := spec.New(1024)
	h, err := txbench.Start(ctx, txbench.Config{Dir: t.TempDir(), Volatile: true,
		Dial: func(_ context.Context, id string) (worm.Space, error) { return st.Client(id), nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	r, err := h.Blocking(ctx, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", r)
	if r.TwoPCInDoubt != 3 || r.TwoPCOutcome != wormtx.Abort {
		t.Errorf("2PC: %d in doubt, then %v; want 3 in doubt, then abort", r.TwoPCInDoubt, r.TwoPCOutcome)
	}
	if r.WormTXOutcome != wormtx.Commit || r.WormTXApplied > 10*time.Second {
		t.Errorf("WormTX, coordinator dead after the prepares: %v after %v; want commit", r.WormTXOutcome, r.WormTXApplied)
	}
	if r.WormTXTold1 != wormtx.Abort {
		t.Errorf("WormTX, coordinator dead after one prepare: %v; want abort", r.WormTXTold1)
	}
}

// checkStages asserts that the stage table has the coordinator's and the
// first and last participant's stages, and that along each series the
// median never goes back (per transaction each participant's stages are
// in order, so are the earliest and the latest across participants, and
// so are medians of ordered sequences).
func checkStages(t *testing.T, st []txbench.StageStat) {
	t.Helper()
	got := map[string]time.Duration{}
	for _, s := range st {
		got[s.Who+" "+s.Stage] = s.Latency.P50
	}
	for _, k := range []string{"coordinator prepare-sent", "coordinator outcome"} {
		if _, ok := got[k]; !ok {
			t.Fatalf("no %q in the stage table %+v", k, st)
		}
	}
	for _, who := range []string{"first", "last"} {
		prev := time.Duration(0)
		for _, s := range wormtx.Stages[2:] {
			d, ok := got[who+" "+s.String()]
			if !ok {
				t.Fatalf("no %s participant's %v in the stage table %+v", who, s, st)
			}
			if d < prev {
				t.Fatalf("%s participant's %v at %v, before the stage before it (%v)", who, s, d, prev)
			}
			prev = d
		}
	}
}
