// Package nemesis is WormSpace's fault harness over real processes: it
// runs a cluster of three wormd processes (worm/localcluster), drives
// concurrent clients against it — register capture/write/read recorded
// with worm/check, WormLog appends, WormPaxos key-value operations —
// while a nemesis driven by a seed injects faults, then heals everything
// and checks every history:
//
//   - registers: linearizable against the write-once register model
//     (porcupine, worm/check);
//   - key-value store: linearizable against wormpaxostest.KVModel;
//   - log: no two acknowledged appends share a position, and a position's
//     record never changes (read back during the run and after healing);
//   - durability: every acknowledged write of the durability writer reads
//     back with its value after all faults (kill -9 of every wormd at once
//     included).
//
// It also measures availability: with one of three wormds down a write
// succeeds; with two down (killed, or paused with SIGSTOP) operations
// fail with worm.ErrUnavailable and never give a wrong answer; after
// healing, service resumes without operator action, and the time it takes
// is recorded.
//
// Faults (Config.Faults; the seed fixes their order, targets and
// durations):
//
//	kill       SIGKILL one wormd, restart it on the same data directory
//	pause      SIGSTOP one wormd, SIGCONT it later
//	disk       wormd 1's data directory is a small tmpfs mounted by the
//	           harness; a filler file takes its free space, large writes
//	           make wormd need more, and it must refuse them cleanly, keep
//	           serving reads, and accept writes again once the filler is
//	           removed (needs root and mount(2))
//	powerloss  SIGKILL every wormd at once, restart them all
//	partition  cut one wormd off the network (its requests and replies
//	           dropped; connections stall, not reset)
//	oneway     drop only one wormd's replies: it receives and acts on
//	           requests, nobody hears the answers
//	loss       drop 5-30% of the packets of one wormd's link, or of all three
//	delay      delay every packet of one or three links by 2-40 ms ± jitter
//	dup        duplicate 10-50% of the packets of one or three links
//	reorder    hold back 10-50% of the packets of one or three links behind
//	           the next one
//	clock      kill -9 one wormd and restart it with its monotonic and
//	           boot-time clocks jumped (see below)
//
// The network faults need the harness in a network namespace of its own
// (InPrivateNetns; `worm nemesis` and the tests re-execute themselves in
// one with Reexec); without one they are skipped with the reason in
// Report.Skipped. When any packet fault (loss, delay, dup, reorder) is
// asked for, the wormds run `-stack netstack` on TAP devices of that
// namespace and start with -net-faults: the faults are injected by
// netstack's fault link (netstack.Faults) inside each wormd, set at run
// time through its control endpoint, because the kernel's netem (sch_netem)
// is missing on the machines this runs on; partitions and one-way drops
// are then made at the same link (every packet, or every reply, dropped).
// Otherwise the wormds use kernel TCP on loopback and partitions are
// iptables rules on the namespace's loopback. Report.Network says which.
// After a packet fault is cleared the time to the next successful write
// is recorded; the availability phase adds: writes succeed with 10% loss,
// duplication and reordering and a jittered delay on every link; with two
// links losing everything operations are unavailable; clearing them
// restores service (recovery time recorded).
//
// Clock jumps: CLOCK_REALTIME cannot be moved without moving the shared
// machine's clock, and a time namespace's offsets are fixed before its
// first process enters it, so a running wormd's clocks cannot jump. The
// clock fault restarts a wormd into a new time namespace instead, with
// CLOCK_MONOTONIC and CLOCK_BOOTTIME moved by up to years forward or half
// the machine's uptime backward relative to its previous life (clock.go
// argues why wormd's safety does not depend on time). It needs root and
// a kernel with time namespaces; otherwise it is skipped with the reason.
//
// VMs: RunVM runs a shorter harness against a 3-VM cluster booted from the
// boot image under QEMU (package qemu): kill -9 of a VM's QEMU and a
// restart from its disk, SIGSTOP/SIGCONT of a QEMU process, and
// partitions with iptables in the cluster's network namespace, with the
// register history checked by porcupine, acknowledged writes read back,
// availability with one and two VMs down, and recovery times
// (`worm nemesis -vm`).
//
// Run is what `worm nemesis` and the package's tests call. A failing run
// names its seed; replaying the seed replays the fault schedule (the
// interleaving with the clients' operations is up to the scheduler).
package nemesis

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/localcluster"
)

// Faults is every fault name Run knows, in the order Report lists them.
var Faults = []string{"kill", "pause", "disk", "powerloss", "partition", "oneway", "loss", "delay", "dup", "reorder", "clock"}

// Config configures a run.
type Config struct {
	// Seed fixes the fault schedule and the clients' choices.
	Seed uint64
	// Duration of the randomized phase (default 10s). The deterministic
	// availability phases and the checks come after it.
	Duration time.Duration
	// Faults to inject (default: all of Faults).
	Faults []string
	// Wormd is the wormd binary (default localcluster.Find()).
	Wormd string
	// Dir is the working directory (data, logs); default a new temporary
	// directory, removed at the end unless the run failed.
	Dir string
	// CheckTimeout bounds each porcupine check (default 2m).
	CheckTimeout time.Duration
	// Logf receives progress lines (default: discarded).
	Logf func(format string, args ...any)
}

// Recovery is one measured time to recover.
type Recovery struct {
	What string
	Took time.Duration
}

// Verdict is the result of one check.
type Verdict struct {
	Name   string
	OK     bool
	Detail string
	// Visualization is a porcupine HTML file for a failed history check.
	Visualization string
}

// Report summarizes a run.
type Report struct {
	Seed     uint64
	Duration time.Duration
	Dir      string
	// Network says how the cluster is connected (kernel TCP on loopback,
	// or netstack wormds on TAP devices) and where.
	Network string
	// Ops counts operations by kind, then result ("ok", or an error kind).
	Ops map[string]map[string]int
	// Faults counts injected faults by name.
	Faults map[string]int
	// Skipped names faults that were asked for (or are known) but not
	// injected, with the reason.
	Skipped map[string]string
	// Recoveries are the measured times to recover.
	Recoveries []Recovery
	// Verdicts are the checks' results.
	Verdicts []Verdict

	vm bool // a RunVM report (the replay command differs)
}

// OK reports whether every check passed.
func (r *Report) OK() bool {
	if len(r.Verdicts) == 0 {
		return false
	}
	for _, v := range r.Verdicts {
		if !v.OK {
			return false
		}
	}
	return true
}

// Failures returns the failed verdicts.
func (r *Report) Failures() []Verdict {
	var out []Verdict
	for _, v := range r.Verdicts {
		if !v.OK {
			out = append(out, v)
		}
	}
	return out
}

// String is the human-readable summary `worm nemesis` prints.
func (r *Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "nemesis seed %d, %v, dir %s\n", r.Seed, r.Duration.Round(time.Millisecond), r.Dir)
	if r.Network != "" {
		fmt.Fprintf(&b, "network: %s\n", r.Network)
	}
	b.WriteString("operations:\n")
	kinds := make([]string, 0, len(r.Ops))
	for k := range r.Ops {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	for _, k := range kinds {
		res := r.Ops[k]
		keys := make([]string, 0, len(res))
		total := 0
		for rk, n := range res {
			keys = append(keys, rk)
			total += n
		}
		sort.Strings(keys)
		fmt.Fprintf(&b, "  %-14s %7d:", k, total)
		for _, rk := range keys {
			fmt.Fprintf(&b, " %s=%d", rk, res[rk])
		}
		b.WriteString("\n")
	}
	b.WriteString("faults:")
	for _, f := range Faults {
		if n, ok := r.Faults[f]; ok {
			fmt.Fprintf(&b, " %s=%d", f, n)
		}
	}
	for f, n := range r.Faults {
		if !slices.Contains(Faults, f) {
			fmt.Fprintf(&b, " %s=%d", f, n)
		}
	}
	b.WriteString("\n")
	skipped := make([]string, 0, len(r.Skipped))
	for f := range r.Skipped {
		skipped = append(skipped, f)
	}
	sort.Strings(skipped)
	for _, f := range skipped {
		fmt.Fprintf(&b, "  not injected: %s: %s\n", f, r.Skipped[f])
	}
	b.WriteString("recovery:\n")
	for _, rc := range r.Recoveries {
		fmt.Fprintf(&b, "  %-44s %v\n", rc.What, rc.Took.Round(time.Millisecond))
	}
	b.WriteString("verdicts:\n")
	for _, v := range r.Verdicts {
		st := "ok  "
		if !v.OK {
			st = "FAIL"
		}
		fmt.Fprintf(&b, "  %s %-12s %s", st, v.Name, v.Detail)
		if v.Visualization != "" {
			fmt.Fprintf(&b, " (visualization: %s)", v.Visualization)
		}
		b.WriteString("\n")
	}
	if r.OK() {
		fmt.Fprintf(&b, "PASS seed %d\n", r.Seed)
	} else {
		vm := ""
		if r.vm {
			vm = "-vm "
		}
		fmt.Fprintf(&b, "FAIL seed %d (replay: worm nemesis %s-seed %d)\n", r.Seed, vm, r.Seed)
	}
	return b.String()
}

// counter counts results by kind.
type counter struct {
	mu sync.Mutex
	m  map[string]map[string]int
}

func (c *counter) add(kind string, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]map[string]int{}
	}
	if c.m[kind] == nil {
		c.m[kind] = map[string]int{}
	}
	c.m[kind][ErrKind(err)]++
}

func (c *counter) snapshot() map[string]map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]map[string]int{}
	for k, v := range c.m {
		out[k] = map[string]int{}
		for rk, n := range v {
			out[k][rk] = n
		}
	}
	return out
}

// ErrKind names err's kind for counting: "ok", a worm error's short name,
// "timeout", or "other".
func ErrKind(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, worm.ErrEmpty):
		return "empty"
	case errors.Is(err, worm.ErrWritten):
		return "written"
	case errors.Is(err, worm.ErrPreempted):
		return "preempted"
	case errors.Is(err, worm.ErrUnavailable):
		return "unavailable"
	case errors.Is(err, worm.ErrUnknownOutcome):
		return "unknown-outcome"
	case errors.Is(err, worm.ErrUnallocated):
		return "unallocated"
	case errors.Is(err, worm.ErrTrimmed):
		return "trimmed"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return "timeout"
	}
	return "other"
}

func (cfg *Config) fill() error {
	if cfg.Duration <= 0 {
		cfg.Duration = 10 * time.Second
	}
	if len(cfg.Faults) == 0 {
		cfg.Faults = slices.Clone(Faults)
	}
	for _, f := range cfg.Faults {
		if !slices.Contains(Faults, f) {
			return fmt.Errorf("nemesis: unknown fault %q (known: %s)", f, strings.Join(Faults, ","))
		}
	}
	if cfg.CheckTimeout <= 0 {
		cfg.CheckTimeout = 2 * time.Minute
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	if cfg.Wormd == "" {
		w, err := localcluster.Find()
		if err != nil {
			return err
		}
		cfg.Wormd = w
	}
	return nil
}

// ParseFaults parses a comma-separated fault list ("" or "all": every
// fault).
func ParseFaults(s string) ([]string, error) {
	if s == "" || s == "all" {
		return slices.Clone(Faults), nil
	}
	var out []string
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if !slices.Contains(Faults, f) {
			return nil, fmt.Errorf("unknown fault %q (known: %s)", f, strings.Join(Faults, ","))
		}
		out = append(out, f)
	}
	return out, nil
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

func between(rng *rand.Rand, lo, hi time.Duration) time.Duration {
	return lo + time.Duration(rng.Int64N(int64(hi-lo)+1))
}

// tempDir makes the run's directory.
func tempDir(cfg *Config) (string, bool, error) {
	if cfg.Dir != "" {
		abs, err := filepath.Abs(cfg.Dir)
		if err != nil {
			return "", false, err
		}
		return abs, false, os.MkdirAll(abs, 0o755)
	}
	d, err := os.MkdirTemp("", fmt.Sprintf("worm-nemesis-%d-", cfg.Seed))
	return d, true, err
}
