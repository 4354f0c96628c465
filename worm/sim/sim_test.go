package sim

import (
	"errors"
	"flag"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

var (
	seedFlag   = flag.Uint64("seed", 0, "replay one seed (TestSeed)")
	configFlag = flag.String("config", "", "with -seed: replay only this configuration (or control)")
	seedsFlag  = flag.Int("seeds", 0, "number of seeds per configuration (default 200, or WORM_SIM_SEEDS)")
)

// seeds is the number of seeds TestSimulation runs per configuration.
// The default keeps `go test ./worm/sim` well under a minute on two
// cores; `make sim` runs thousands.
func seeds() int {
	if *seedsFlag > 0 {
		return *seedsFlag
	}
	if v, err := strconv.Atoi(os.Getenv("WORM_SIM_SEEDS")); err == nil && v > 0 {
		return v
	}
	if testing.Short() {
		return 40
	}
	return 200
}

// configs are the configurations TestSimulation runs.
var configs = map[string]func(seed uint64) Config{
	"default": DefaultConfig,
	"lossy5": func(seed uint64) Config {
		c := DefaultConfig(seed)
		c.Acceptors, c.MaxDown, c.Drop, c.Dup, c.Crash = 5, 2, 0.15, 0.1, 0.02
		return c
	},
	"contended": func(seed uint64) Config {
		c := DefaultConfig(seed)
		c.Clients, c.Segments, c.SegSize, c.Ops, c.Trim = 5, 1, 2, 30, false
		return c
	},
	"majority-down": func(seed uint64) Config {
		c := DefaultConfig(seed)
		c.MaxDown, c.Crash = 2, 0.03
		return c
	},
	"partitioned": func(seed uint64) Config {
		c := DefaultConfig(seed)
		c.Partition, c.Crash = 0.02, 0.005
		return c
	},
	"clean": func(seed uint64) Config {
		c := DefaultConfig(seed)
		c.Drop, c.Dup, c.Crash, c.Nudge, c.Expire, c.Trim, c.Compact = 0, 0, 0, 0, 0, false, 0
		return c
	},
	// Storage under stress: frequent crashes, most of them power
	// failures, half of them inside a disk operation; rare group commits
	// (much unsynced state to tear); many trims and compactions.
	"crashy-disk": func(seed uint64) Config {
		c := DefaultConfig(seed)
		c.Segments, c.Crash, c.PowerLoss, c.MidOp, c.Sync, c.Compact = 4, 0.03, 0.8, 0.7, 0.1, 0.02
		return c
	},
	// Values of 800 bytes on disks of 16 KiB: the live state outgrows a
	// preallocation chunk (4 KiB) now and then; storage then refuses
	// requests, and compactions that do not fit beside the old generation,
	// until trims and compactions make room again.
	"full-disk": func(seed uint64) Config {
		c := DefaultConfig(seed)
		c.Segments, c.Ops, c.ValueSize, c.DiskCapacity, c.Compact = 3, 40, 800, 16<<10, 0.02
		return c
	},
	// Every client writes every register unsafely with its own value
	// (against WriteUnsafe's contract), on few registers, with crashes,
	// drops and duplicates: ballot 0 carries several values.
	"unsafe-contention": func(seed uint64) Config {
		c := DefaultConfig(seed)
		c.Clients, c.Segments, c.SegSize, c.Ops, c.Trim, c.UnsafeContention = 4, 2, 4, 40, false, true
		return c
	},
	// Writes and fsyncs fail with EIO now and then: the engine stops,
	// abandons the replies waiting, and its supervisor restarts it.
	"faulty-disk": func(seed uint64) Config {
		c := DefaultConfig(seed)
		c.WriteErr, c.SyncErr = 0.002, 0.01
		return c
	},
}

// controls break durability on purpose; TestControls requires that the
// checks catch each of them within a bounded number of seeds.
var controls = map[string]struct {
	cfg   func(seed uint64) Config
	props []string // acceptable violated properties
}{
	string(ControlVolatile):         {control(ControlVolatile), []string{"durability", "chosen-lost", "agreement", "outcome", "recovery"}},
	string(ControlReplyBeforeSync):  {control(ControlReplyBeforeSync), []string{"durability", "chosen-lost", "agreement", "outcome"}},
	string(ControlOwnRecordsOnly):   {control(ControlOwnRecordsOnly), []string{"durability", "chosen-lost", "agreement", "outcome"}},
	string(ControlUnsyncedRecovery): {control(ControlUnsyncedRecovery), []string{"durability", "chosen-lost", "agreement", "outcome", "recovery"}},
	string(ControlLyingDisk):        {control(ControlLyingDisk), []string{"durability", "chosen-lost", "agreement", "outcome", "recovery"}},
	string(ControlNoDirSync):        {control(ControlNoDirSync), []string{"durability", "chosen-lost", "agreement", "outcome", "recovery"}},
}

// control is the crashy-disk configuration with a control.
func control(c Control) func(uint64) Config {
	return func(seed uint64) Config {
		cfg := configs["crashy-disk"](seed)
		cfg.Name, cfg.Control = string(c), c
		return cfg
	}
}

func named(name string, mk func(uint64) Config) func(uint64) Config {
	return func(seed uint64) Config {
		c := mk(seed)
		c.Name = name
		return c
	}
}

func sortedNames[V any](m map[string]V) []string {
	var names []string
	for n := range m {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// TestSimulation runs many seeds of every configuration; a failure names
// the command that replays its seed.
func TestSimulation(t *testing.T) {
	for _, name := range sortedNames(configs) {
		mk := named(name, configs[name])
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			var total Stats
			n := seeds()
			for seed := uint64(1); seed <= uint64(n); seed++ {
				st, err := Run(mk(seed))
				if err != nil {
					t.Fatal(err)
				}
				total.Add(st)
			}
			t.Logf("%s: %d seeds in %v: %s errors=%v", name, n, time.Since(start).Round(time.Millisecond), total, total.Errors)
			// Each configuration must reach what it is for, or it tests
			// nothing.
			if n < 20 {
				return
			}
			switch name {
			case "partitioned":
				if total.Partitions == 0 || total.Cut == 0 {
					t.Fatalf("the partitioned configuration cut nothing: %s", total)
				}
			case "crashy-disk":
				if total.PowerLosses == 0 || total.Kills == 0 || total.MidOpCrashes == 0 || total.RecoveryCrashes == 0 ||
					total.TornTails == 0 || total.Discarded == 0 || total.Compactions == 0 {
					t.Fatalf("the crashy-disk configuration missed a kind of crash or recovery: %s", total)
				}
			case "full-disk":
				if total.Refused == 0 || total.CompactFailed == 0 || total.Compactions == 0 {
					t.Fatalf("the disk never filled, or never had room: %s", total)
				}
			case "faulty-disk":
				if total.StorageFailures == 0 || total.Restarts == 0 {
					t.Fatalf("no injected fault stopped an engine: %s", total)
				}
			case "clean":
				if total.Crashes != 0 {
					t.Fatalf("the clean configuration crashed: %s", total)
				}
			}
			if name != "clean" && total.Syncs == 0 {
				t.Fatalf("no group commit: %s", total)
			}
		})
	}
}

// TestCleanRunsSucceed: without faults, no operation may end unavailable.
// (Unknown outcomes remain possible without faults: a write preempted after
// reaching some acceptors is ambiguous by the reference, section 1.)
func TestCleanRunsSucceed(t *testing.T) {
	mk := named("clean", configs["clean"])
	for seed := uint64(1); seed <= 50; seed++ {
		st, err := Run(mk(seed))
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"worm: no quorum reachable"} {
			if st.Errors[k] > 0 {
				t.Fatalf("seed %d: %d operations failed with %q in a fault-free run", seed, st.Errors[k], k)
			}
		}
	}
}

// TestControls: each deliberately broken variant of durability is caught
// by some seed, with a violation of the expected kind whose replay
// command names its configuration; and the seed replays to the same
// violation.
func TestControls(t *testing.T) {
	for _, name := range sortedNames(controls) {
		tc := controls[name]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			const maxSeeds = 300
			for seed := uint64(1); seed <= maxSeeds; seed++ {
				_, err := Run(tc.cfg(seed))
				if err == nil {
					continue
				}
				var v *Violation
				if !errors.As(err, &v) {
					t.Fatalf("seed %d: %v is not a Violation", seed, err)
				}
				if !slices.Contains(tc.props, v.Property) {
					t.Fatalf("seed %d: violated %q, want one of %v: %v", seed, v.Property, tc.props, err)
				}
				if want := "-seed " + strconv.FormatUint(seed, 10) + " -config " + name; !strings.Contains(err.Error(), want) {
					t.Fatalf("replay command missing %q: %v", want, err)
				}
				_, again := Run(tc.cfg(seed))
				if again == nil || again.Error() != err.Error() {
					t.Fatalf("seed %d does not replay: %v, then %v", seed, err, again)
				}
				t.Logf("caught after %d seeds: %v", seed, err)
				return
			}
			t.Fatalf("no violation in %d seeds: the checks cannot see this broken durability", maxSeeds)
		})
	}
}

// TestDeterministic: a run is a function of its configuration.
func TestDeterministic(t *testing.T) {
	for _, name := range []string{"crashy-disk", "faulty-disk", "full-disk"} {
		mk := named(name, configs[name])
		for seed := uint64(1); seed <= 5; seed++ {
			var a, b []string
			cfg := mk(seed)
			cfg.Trace = func(l string) { a = append(a, l) }
			_, err1 := Run(cfg)
			cfg.Trace = func(l string) { b = append(b, l) }
			_, err2 := Run(cfg)
			if err1 != nil || err2 != nil {
				t.Fatalf("%s seed %d: %v / %v", name, seed, err1, err2)
			}
			if !slices.Equal(a, b) {
				i := 0
				for i < min(len(a), len(b)) && a[i] == b[i] {
					i++
				}
				t.Fatalf("%s seed %d: two runs differ at trace line %d of %d/%d", name, seed, i, len(a), len(b))
			}
			if len(a) < 100 {
				t.Fatalf("%s seed %d: trace of %d lines", name, seed, len(a))
			}
		}
	}
}

// TestSeed replays one seed with a trace:
// go test ./worm/sim -run TestSeed -seed N [-config NAME] -v
func TestSeed(t *testing.T) {
	if *seedFlag == 0 {
		t.Skip("set -seed N to replay a seed")
	}
	all := map[string]func(uint64) Config{}
	for name, mk := range configs {
		all[name] = named(name, mk)
	}
	for name, tc := range controls {
		if *configFlag == name {
			all[name] = tc.cfg
		}
	}
	for _, name := range sortedNames(all) {
		if *configFlag != "" && name != *configFlag {
			continue
		}
		cfg := all[name](*seedFlag)
		cfg.Trace = func(s string) { t.Log(s) }
		if _, err := Run(cfg); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}
