package check

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/wormspace/wormspace/worm"
)

// Result describes one linearizability check.
type Result struct {
	// Outcome is porcupine's verdict: Ok, Illegal, or Unknown (the timeout
	// expired before a verdict).
	Outcome porcupine.CheckResult
	// Checked is the number of register operations given to porcupine
	// (after expanding batches and segment captures); Dropped the number
	// of recorded operations that told the model nothing (failed reads,
	// preempted writes, trimmed segments, ...); Pending the number of
	// writes checked as "may or may not have taken effect"; Elided the
	// number of ambiguous writes left out because they cannot matter (see
	// Operations).
	Checked, Dropped, Pending, Elided int
	// Registers is the number of partitions (distinct registers).
	Registers int
	// Elapsed is the time porcupine took.
	Elapsed time.Duration
	// Visualization is the path of the HTML visualization written when the
	// outcome is Illegal ("" otherwise, or when writing it failed; then
	// VisualizationErr says why).
	Visualization    string
	VisualizationErr error
	// Info is porcupine's linearization info, for WriteVisualization.
	Info porcupine.LinearizationInfo
}

func (r *Result) String() string {
	s := fmt.Sprintf("linearizability %s: %d ops (%d pending writes, %d elided, %d dropped) on %d registers in %v",
		r.Outcome, r.Checked, r.Pending, r.Elided, r.Dropped, r.Registers, r.Elapsed.Round(time.Millisecond))
	if r.Visualization != "" {
		s += "; visualization: " + r.Visualization
	}
	return s
}

// WriteVisualization writes porcupine's HTML visualization of the checked
// history to path.
func (r *Result) WriteVisualization(path string) error {
	return porcupine.VisualizePath(Model, r.Info, path)
}

// VisualizationDir is where Check writes visualizations of failed checks.
// The environment variable WORM_CHECK_DIR overrides it (CI points it at an
// artifact directory); the default is os.TempDir().
func VisualizationDir() string {
	if d := os.Getenv("WORM_CHECK_DIR"); d != "" {
		return d
	}
	return os.TempDir()
}

// Stats counts what Operations did with a history.
type Stats struct {
	Dropped int // recorded operations that told the model nothing
	Pending int // ambiguous writes kept, with Return = Pending
	Elided  int // ambiguous writes left out because they cannot matter
}

// Operations converts a recorded history to porcupine operations on single
// registers, as Check does.
//
// Conversion rules:
//   - Reads and Checks that failed with anything but ErrEmpty or
//     ErrUnallocated, and captures that failed with anything but a
//     *WrittenError, are dropped: they observed nothing.
//   - Writes that failed with an error that proves they had no effect
//     (ErrPreempted, ErrTrimmed, ErrOutOfRange, ...) are dropped. Writes
//     that failed ambiguously (ErrUnknownOutcome, ErrUnavailable, context
//     errors, errors of no known kind) or never returned are kept with
//     Return = Pending: they may take effect at any point after their call,
//     or never.
//   - A CaptureSegment becomes, for each register it reports written, a
//     capture that found that value; and for each other register of the
//     segment that appears elsewhere in the history (and is not
//     Contended), a capture that found it empty.
//   - Operations on a segment are not related to Trim: ErrTrimmed results
//     are dropped, values read before the trim are still checked.
//
// Ambiguous writes are what makes checking expensive: porcupine tries
// every subset of them, and an illegal history with a few dozen on one
// register would not be decided in any reasonable time. Two reductions
// keep the check exact (they change no verdict) and fast:
//   - An ambiguous write whose value no completed operation on that
//     register ever shows (as a value read, a *WrittenError value, a
//     capture's found value, an allocation record, or the value of a
//     successful write) is elided: had it taken effect, only other
//     ambiguous operations could follow it, and those are equally legal on
//     the state without it.
//   - Of several ambiguous writes of one value to one register, only the
//     one called earliest is kept: it can take effect at any point the
//     others could.
//
// A correct history thus keeps at most one ambiguous write per register.
func Operations(history []Op) ([]porcupine.Operation, Stats) {
	ops, st := convert(history)
	return reduce(ops, &st), st
}

// convert is Operations without the reduction.
func convert(history []Op) (ops []porcupine.Operation, st Stats) {
	history = slices.Clone(history)
	slices.SortStableFunc(history, func(a, b Op) int {
		switch {
		case a.Call < b.Call:
			return -1
		case a.Call > b.Call:
			return 1
		}
		return 0
	})
	// Registers in play per segment, for expanding segment captures.
	seen := map[uint64]map[uint32]bool{}
	for _, op := range history {
		if op.Kind == KindCaptureSegment || op.Addr.Off == worm.MetaOffset {
			continue
		}
		if seen[op.Addr.Seg] == nil {
			seen[op.Addr.Seg] = map[uint32]bool{}
		}
		seen[op.Addr.Seg][op.Addr.Off] = true
	}
	type lane struct{ free int64 } // time after which the lane is free
	var lanes []lane
	add := func(op Op, in input, out output, ret int64) {
		l := -1
		for i := range lanes {
			if lanes[i].free < op.Call {
				l = i
				break
			}
		}
		if l < 0 {
			l = len(lanes)
			lanes = append(lanes, lane{})
		}
		lanes[l].free = ret
		ops = append(ops, porcupine.Operation{ClientId: l, Input: in, Output: out, Call: op.Call, Return: ret})
	}
	for _, op := range history {
		if op.Return < op.Call {
			panic(fmt.Sprintf("check: operation returns (%d) before its call (%d)", op.Return, op.Call))
		}
		if op.Kind == KindCaptureSegment {
			if op.Err != nil || op.Return == Pending {
				st.Dropped++
				continue
			}
			skip := map[uint32]bool{}
			for _, off := range op.Capture.Contended {
				skip[off] = true
			}
			for _, e := range op.Capture.Written {
				skip[e.Off] = true
				in := input{Kind: KindCapture, Addr: worm.Addr{Seg: op.Addr.Seg, Off: e.Off}, Client: op.Client, Seg: true}
				add(op, in, output{Out: outWritten, Value: string(e.Value)}, op.Return)
			}
			offs := make([]uint32, 0, len(seen[op.Addr.Seg]))
			for off := range seen[op.Addr.Seg] {
				if !skip[off] {
					offs = append(offs, off)
				}
			}
			slices.Sort(offs)
			for _, off := range offs {
				in := input{Kind: KindCapture, Addr: worm.Addr{Seg: op.Addr.Seg, Off: off}, Client: op.Client, Seg: true}
				add(op, in, output{Out: outOK}, op.Return)
			}
			continue
		}
		out, keep, pend := classify(op)
		if !keep {
			st.Dropped++
			continue
		}
		in := input{Kind: op.Kind, Addr: op.Addr, Value: string(op.Value), Client: op.Client}
		if op.Kind == KindAlloc {
			in.Value = encodeInfo(op.Client, op.Value)
		}
		ret := op.Return
		if pend {
			ret = Pending
		}
		add(op, in, out, ret)
	}
	return ops, st
}

// reduce elides the ambiguous writes that cannot matter (see Operations)
// and counts the pending ones that remain.
func reduce(ops []porcupine.Operation, st *Stats) []porcupine.Operation {
	type key struct {
		a worm.Addr
		v string
	}
	observed := map[key]bool{}
	for _, op := range ops {
		in, out := op.Input.(input), op.Output.(output)
		switch out.Out {
		case outOK:
			observed[key{in.Addr, out.Value}] = true
			if in.Kind == KindWrite || in.Kind == KindWriteUnsafe || in.Kind == KindAlloc {
				observed[key{in.Addr, in.Value}] = true
			}
		case outWritten:
			observed[key{in.Addr, out.Value}] = true
		}
	}
	kept := map[key]bool{} // ops are in call order: the first is the earliest
	res := ops[:0]
	for _, op := range ops {
		in, out := op.Input.(input), op.Output.(output)
		if out.Out == outMaybe {
			k := key{in.Addr, in.Value}
			if !observed[k] || kept[k] {
				st.Elided++
				continue
			}
			kept[k] = true
			st.Pending++
		}
		res = append(res, op)
	}
	return res
}

// Check checks that history is linearizable against the atomic register
// model (Model), giving porcupine at most timeout (0: no limit). ok is
// false only when porcupine proved a violation (Outcome Illegal); a
// timeout gives ok == true with Outcome Unknown, which callers may treat as
// they see fit. On a violation Check writes an HTML visualization into
// VisualizationDir() and reports its path in the Result.
func Check(history []Op, timeout time.Duration) (ok bool, res *Result) {
	ops, st := Operations(history)
	res = &Result{Checked: len(ops), Dropped: st.Dropped, Pending: st.Pending, Elided: st.Elided}
	regs := map[worm.Addr]bool{}
	for _, op := range ops {
		regs[op.Input.(input).Addr] = true
	}
	res.Registers = len(regs)
	start := time.Now()
	res.Outcome, res.Info = porcupine.CheckOperationsVerbose(Model, ops, timeout)
	res.Elapsed = time.Since(start)
	if res.Outcome != porcupine.Illegal {
		return true, res
	}
	f, err := os.CreateTemp(VisualizationDir(), "worm-check-*.html")
	if err != nil {
		res.VisualizationErr = err
		return false, res
	}
	path := f.Name()
	if err := porcupine.Visualize(Model, res.Info, f); err != nil {
		res.VisualizationErr = err
		f.Close()
		return false, res
	}
	if err := f.Close(); err != nil {
		res.VisualizationErr = err
		return false, res
	}
	res.Visualization, _ = filepath.Abs(path)
	return false, res
}

// TB is the part of testing.TB that Require uses (this package does not
// import testing).
type TB interface {
	Helper()
	Logf(format string, args ...any)
	Fatalf(format string, args ...any)
}

// Require checks history and fails t when it is not linearizable, naming
// the visualization file. It logs the result either way.
func Require(t TB, history []Op, timeout time.Duration) *Result {
	t.Helper()
	ok, res := Check(history, timeout)
	if !ok {
		t.Fatalf("history of %d operations is not linearizable: %v", len(history), res)
	}
	t.Logf("%v", res)
	return res
}
