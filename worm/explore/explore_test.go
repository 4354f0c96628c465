package explore

import (
	"errors"
	"flag"
	"os"
	"strings"
	"testing"
)

var (
	bigFlag   = flag.Bool("explore.big", false, "run the big configurations (TestBig); also WORM_EXPLORE_BIG=1")
	maxStates = flag.Int("explore.maxstates", 0, "TestBig: give up (and skip) a configuration after this many states (default: Config's)")
)

func capWrite(v string) []Action { return []Action{{Op: Capture}, {Op: Write, Value: v}} }

var (
	unsafeA = []Action{{Op: WriteUnsafe, Value: "a"}}
	capOnly = []Action{{Op: Capture}}
)

type tiny struct {
	name string
	cfg  Config
	// want lists outcomes (Result.Outcomes keys) the exploration must
	// reach, and chosen the values some terminal state must have chosen:
	// proof that the interesting races were explored.
	want   []string
	chosen []string
}

var tinies = []tiny{
	{
		name: "two-writers",
		cfg:  Config{SkipDecides: true, Clients: []Client{{Script: capWrite("a")}, {Script: capWrite("b")}}},
		want: []string{
			`A step 2 write("a"): ok`,
			`A step 2 write("a"): preempted`,
			`A step 2 write("a"): written("b")`,
			`A step 2 write("a"): unknown-outcome`,
			`B step 1 capture: written("a")`,
			`B step 2 write("b"): preempted`,
			`B step 2 write("b"): written("a")`,
			`B step 2 write("b"): ok`,
		},
		chosen: []string{"a", "b"},
	},
	{
		name: "unsafe-vs-capture-write",
		cfg:  Config{Clients: []Client{{Script: unsafeA}, {Script: capWrite("b")}}},
		want: []string{
			`A step 1 write-unsafe("a"): ok`,
			`A step 1 write-unsafe("a"): written("b")`,
			`B step 1 capture: written("a")`,
			`B step 2 write("b"): ok`,
		},
		chosen: []string{"a", "b"},
	},
	{
		name:   "unsafe-vs-capture-drop",
		cfg:    Config{SkipDecides: true, Drops: 1, Clients: []Client{{Script: unsafeA}, {Script: capOnly}}},
		want:   []string{`A step 1 write-unsafe("a"): ok`, `B step 1 capture: ok`, `B step 1 capture: written("a")`},
		chosen: []string{"", "a"},
	},
	{
		name:   "unsafe-vs-capture-expire",
		cfg:    Config{SkipDecides: true, Expires: 1, Clients: []Client{{Script: unsafeA}, {Script: capOnly}}},
		want:   []string{`A step 1 write-unsafe("a"): unknown-outcome`, `B step 1 capture: unavailable`},
		chosen: []string{"", "a"},
	},
}

// Two unsafe writers of one register, against WriteUnsafe's contract (one
// designated writer): the register must stay write-once all the same.
// Before decides and reads told ballot-0 values apart by value (see
// worm/paxos/zero.go) each of these found a violation within 30 events.
var (
	unsafeB       = []Action{{Op: WriteUnsafe, Value: "b"}}
	unsafeThenRd  = func(v string) []Action { return []Action{{Op: WriteUnsafe, Value: v}, {Op: Read}} }
	unsafeThenCap = []Action{{Op: WriteUnsafe, Value: "a"}, {Op: Capture}}
)

func init() {
	tinies = append(tinies,
		tiny{
			name: "two-unsafe-writers",
			cfg:  Config{Clients: []Client{{Script: unsafeA}, {Script: unsafeB}}},
			want: []string{`A step 1 write-unsafe("a"): ok`, `A step 1 write-unsafe("a"): written("b")`,
				`B step 1 write-unsafe("b"): ok`, `B step 1 write-unsafe("b"): written("a")`},
			chosen: []string{"a", "b"},
		},
		tiny{
			name:   "two-unsafe-writers-read",
			cfg:    Config{SkipDecides: true, Clients: []Client{{Script: unsafeThenRd("a")}, {Script: unsafeThenRd("b")}}},
			want:   []string{`A step 2 read: value("b")`, `B step 2 read: value("a")`, `A step 2 read: value("a")`},
			chosen: []string{"a", "b"},
		},
		tiny{
			name:   "two-unsafe-writers-capture",
			cfg:    Config{SkipDecides: true, Clients: []Client{{Script: unsafeThenCap}, {Script: unsafeB}}},
			want:   []string{`A step 2 capture: written("a")`, `A step 2 capture: written("b")`},
			chosen: []string{"a", "b"},
		})
	tinies = append(tinies,
		tiny{
			name:   "unsafe-vs-read",
			cfg:    Config{SkipDecides: true, Clients: []Client{{Script: unsafeA}, {Script: []Action{{Op: Read}}}}},
			want:   []string{`B step 1 read: value("a")`, `B step 1 read: empty`, `A step 1 write-unsafe("a"): ok`},
			chosen: []string{"a"},
		})
}

func TestTiny(t *testing.T) {
	for _, tc := range tinies {
		t.Run(tc.name, func(t *testing.T) {
			res, err := Explore(tc.cfg)
			if err != nil {
				var v *Violation
				if errors.As(err, &v) {
					t.Fatalf("%v\n%s", err, v.TraceString())
				}
				t.Fatal(err)
			}
			t.Logf("%s: %v", tc.name, res)
			if res.States < 1000 || res.Transitions <= res.States || res.Terminal == 0 {
				t.Errorf("implausibly small exploration: %v", res)
			}
			for _, w := range tc.want {
				if res.Outcomes[w] == 0 {
					t.Errorf("outcome %q never reached; reached:\n%s", w, res.OutcomeList())
				}
			}
			for _, c := range tc.chosen {
				if res.Chosen[c] == 0 {
					t.Errorf("no terminal state with %q chosen: %v", c, res.Chosen)
				}
			}
		})
	}
}

// controls: broken variants the explorer must catch.
var controls = []struct {
	name  string
	cfg   Config
	props []string // acceptable violated properties
}{
	{"amnesiac-acceptor", Config{SkipDecides: true, NewAcceptor: AmnesiacAcceptor,
		Clients: []Client{{Script: capWrite("a")}, {Script: capWrite("b")}}}, []string{"agreement", "p2b", "outcome", "stability"}},
	{"lax-acceptor", Config{SkipDecides: true, NewAcceptor: LaxAcceptor,
		Clients: []Client{{Script: capWrite("a")}, {Script: capWrite("b")}}}, []string{"agreement", "p2b", "outcome", "stability", "durability"}},
	{"undurable-acceptor", Config{SkipDecides: true, NewAcceptor: UndurableAcceptor,
		Clients: []Client{{Script: capOnly}}}, []string{"durability"}},
	{"same-node", Config{SkipDecides: true,
		Clients: []Client{{Node: 7, Script: capWrite("a")}, {Node: 7, Script: capWrite("b")}}}, []string{"one-value-per-ballot", "agreement", "p2b"}},
}

func TestControls(t *testing.T) {
	for _, tc := range controls {
		t.Run(tc.name, func(t *testing.T) {
			res, err := Explore(tc.cfg)
			var v *Violation
			if !errors.As(err, &v) {
				t.Fatalf("no violation found (err %v, %v): the checker cannot fail", err, res)
			}
			t.Logf("%s after %d states: %v\n%s", tc.name, res.States, err, v.TraceString())
			ok := false
			for _, p := range tc.props {
				ok = ok || v.Property == p
			}
			if !ok {
				t.Errorf("violated %q, want one of %v", v.Property, tc.props)
			}
			if len(v.Trace) == 0 || !strings.Contains(v.TraceString(), "deliver") {
				t.Fatalf("trace missing or unreadable:\n%s", v.TraceString())
			}
			testReplay(t, tc.cfg, v)
		})
	}
}

// testReplay: the trace reaches the same violation again; its prefix
// reaches none; a trace that names a message not in flight is refused.
func testReplay(t *testing.T, cfg Config, v *Violation) {
	t.Helper()
	err := Replay(cfg, v.Trace)
	var again *Violation
	if !errors.As(err, &again) || again.Property != v.Property || again.What != v.What {
		t.Fatalf("replay: %v, want %v", err, v)
	}
	if again.TraceString() != v.TraceString() {
		t.Errorf("replayed trace differs:\n%s\nwant:\n%s", again.TraceString(), v.TraceString())
	}
	if err := Replay(cfg, v.Trace[:len(v.Trace)-1]); err != nil {
		t.Errorf("the trace's prefix: %v, want no violation", err)
	}
	bad := append([]Event(nil), v.Trace...)
	bad[len(bad)-1] = Event{Kind: Deliver, Msg: "no such message"}
	var re *ReplayError
	if err := Replay(cfg, bad); !errors.As(err, &re) || re.At != len(bad)-1 {
		t.Errorf("replay of a broken trace: %v, want a ReplayError at %d", err, len(bad)-1)
	}
}

// TestExactCrossCheck explores small configurations with and without the
// reductions: same verdict, same outcomes and chosen values reached, and
// the reductions only ever merge states.
func TestExactCrossCheck(t *testing.T) {
	cfgs := []Config{
		{Clients: []Client{{Script: capOnly}, {Script: capOnly}}},
		// One writer under every kind of fault: exact 16,573 and 178,004 states.
		{Drops: 1, Expires: 1, Nudges: 1, Clients: []Client{{Script: capWrite("a")}}},
		{Dups: 1, Reorders: 1, Crashes: 1, Clients: []Client{{Script: capWrite("a")}}},
		// Two values at ballot 0: no phase may break their tie by arrival.
		{Clients: []Client{{Script: unsafeA}, {Script: unsafeB}}},
	}
	if big() { // exact: about 1M and 4M states
		cfgs = append(cfgs,
			Config{SkipDecides: true, Clients: []Client{{Script: unsafeA}, {Script: capOnly}}},
			Config{SkipDecides: true, Clients: []Client{{Script: unsafeA}, {Script: []Action{{Op: Read}}}}})
	}
	for _, cfg := range cfgs {
		red, err := Explore(cfg)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Exact = true
		ex, err := Explore(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("reduced: %v\nexact:   %v", red, ex)
		if red.States > ex.States {
			t.Errorf("the reductions grew the state space: %d > %d", red.States, ex.States)
		}
		if got, want := keys(red.Outcomes), keys(ex.Outcomes); got != want {
			t.Errorf("outcomes differ:\nreduced: %s\nexact:   %s", got, want)
		}
		if got, want := keys(red.Chosen), keys(ex.Chosen); got != want {
			t.Errorf("chosen values differ: %s vs %s", got, want)
		}
	}
}

func keys[V any](m map[string]V) string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sortStrings(ks)
	return strings.Join(ks, " | ")
}

// TestRealTraceReplays: a path of the real configuration replays to no
// violation, and the replay follows the events exactly.
func TestRealTraceReplays(t *testing.T) {
	cfg := Config{Clients: []Client{{Script: capWrite("a")}, {Script: []Action{{Op: Read}}}}}
	// A path found by a broken acceptor is not a path of the real one
	// in general; build one by always taking the first enabled event.
	e, err := newExplorer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	n, err := e.initial()
	if err != nil {
		t.Fatal(err)
	}
	var trace []Event
	for {
		if err := e.materialize(n); err != nil {
			t.Fatal(err)
		}
		en := e.enabled(n)
		if len(en) == 0 {
			break
		}
		child, v := e.step(n, en[0])
		if v != nil {
			t.Fatal(v)
		}
		trace = append(trace, child.ev)
		n = child
	}
	if n.mon.chosen != "a" || len(trace) < 10 {
		t.Fatalf("first-event path: %d events, chosen %q", len(trace), n.mon.chosen)
	}
	if err := Replay(cfg, trace); err != nil {
		t.Fatal(err)
	}
}

func TestConfigErrors(t *testing.T) {
	var ce *ConfigError
	for _, cfg := range []Config{
		{},
		{Acceptors: 9, Clients: []Client{{Script: capOnly}}},
		{Clients: []Client{{Script: []Action{{Op: Write}}}}},
		{Drops: -1, Clients: []Client{{Script: capOnly}}},
		{Clients: []Client{{Name: "X", Script: capOnly}, {Name: "X", Script: capOnly}}},
	} {
		if _, err := Explore(cfg); !errors.As(err, &ce) {
			t.Errorf("%+v: %v, want a ConfigError", cfg, err)
		}
	}
	_, err := Explore(Config{MaxStates: 50, Clients: []Client{{Script: capOnly}, {Script: capOnly}}})
	if !errors.Is(err, ErrStateLimit) {
		t.Errorf("MaxStates: %v, want ErrStateLimit", err)
	}
}

func big() bool { return *bigFlag || os.Getenv("WORM_EXPLORE_BIG") == "1" }

// TestBig explores the bigger configurations (minutes each).
func TestBig(t *testing.T) {
	if !big() {
		t.Skip("big configurations: -explore.big or WORM_EXPLORE_BIG=1")
	}
	retry := []Action{{Op: Capture}, {Op: Write, Value: "a", Retries: 1}}
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"two-writers-decides", Config{Clients: []Client{{Script: capWrite("a")}, {Script: capWrite("b")}}}},
		{"two-writers-drop", Config{SkipDecides: true, Drops: 1, Clients: []Client{{Script: capWrite("a")}, {Script: capWrite("b")}}}},
		{"two-writers-expire-nudge", Config{SkipDecides: true, Expires: 1, Nudges: 1, Clients: []Client{{Script: capWrite("a")}, {Script: capWrite("b")}}}},
		{"two-writers-reader", Config{SkipDecides: true, Clients: []Client{{Script: capWrite("a")}, {Script: capWrite("b")}, {Script: []Action{{Op: Read}}}}}},
		{"retry-after-unknown", Config{SkipDecides: true, Drops: 1, Expires: 1, Clients: []Client{{Script: retry}, {Script: capWrite("b")}}}},
		{"unsafe-retry-after-expire", Config{SkipDecides: true, Expires: 1, Clients: []Client{ // 2,638,021 states
			{Script: []Action{{Op: WriteUnsafe, Value: "a", Retries: 1}}}, {Script: capOnly}}}},
		{"crash", Config{SkipDecides: true, Crashes: 1, Clients: []Client{{Script: unsafeA}, {Script: capOnly}}}},
		{"dup-reorder", Config{Dups: 1, Reorders: 1, Clients: []Client{{Script: capWrite("a")}, {Script: capOnly}}}},
		{"break", Config{Breaks: 1, Clients: []Client{{Script: capWrite("a")}, {Script: capOnly}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Progress = func(r Result) { t.Logf("... %v", r) }
			tc.cfg.MaxStates = *maxStates
			res, err := Explore(tc.cfg)
			t.Logf("%s: %v", tc.name, res)
			if errors.Is(err, ErrStateLimit) {
				t.Skipf("incomplete: %v", err)
			}
			if err != nil {
				var v *Violation
				if errors.As(err, &v) {
					t.Fatalf("%v\n%s", err, v.TraceString())
				}
				t.Fatal(err)
			}
		})
	}
}

func BenchmarkExplore(b *testing.B) {
	cfg := Config{SkipDecides: true, Clients: []Client{{Script: unsafeA}, {Script: capOnly}}}
	states := 0
	for b.Loop() {
		res, err := Explore(cfg)
		if err != nil {
			b.Fatal(err)
		}
		states += res.States
	}
	b.ReportMetric(float64(states)/b.Elapsed().Seconds(), "states/s")
}
