// Package check checks WormSpace histories for linearizability against the
// atomic write-once register model, with porcupine
// (github.com/anishathalye/porcupine).
//
// The reference (section 4) requires every history of WOR operations to be
// linearizable against the atomic register. This package turns that into a
// test: record what clients did and saw, then ask porcupine whether some
// total order of the operations, consistent with real time, explains every
// result.
//
// # Usage
//
// Wrap every client of one space with one Recorder, run a workload (with
// faults, if the implementation is distributed), then check:
//
//	rec := check.NewRecorder()
//	a := rec.Wrap(clientA) // a worm.Space; use it as usual
//	b := rec.Wrap(clientB)
//	... concurrent Capture / Write / WriteUnsafe / Read / Alloc / Check /
//	    CaptureSegment / WriteBatch on a and b ...
//	ok, res := check.Check(rec.History(), time.Minute)
//	// !ok: res.Visualization names an HTML file showing the longest
//	// linearizable prefixes and where they get stuck.
//
// From tests, check.Require(t, rec.History(), timeout) does the same and
// fails t with the visualization path.
//
// # The model
//
// Each register (the metadata register of Alloc included) is checked on its
// own (porcupine partitions by address). Its state is empty or a value:
//
//   - Read returning v needs state v; Read returning ErrEmpty (or
//     ErrUnallocated) needs empty.
//   - Write or WriteUnsafe succeeding needs empty or the same value, and
//     leaves the value. A *WrittenError(w) needs state w (w differs from
//     the value written). ErrPreempted and other errors that prove no
//     effect are dropped.
//   - Writes that end in ErrUnknownOutcome, ErrUnavailable or a context
//     error, or never return, may take effect at any point after their
//     call, or never: their return time is Pending (math.MaxInt64, the
//     porcupine convention) and the model steps nondeterministically.
//   - Capture returning a token needs empty (nothing can be chosen yet);
//     Capture returning *WrittenError(w) needs state w. CaptureSegment is
//     expanded to one such capture per register.
//   - Alloc is a write of (client, meta) to the metadata register whose
//     result must name the winner, with Won true exactly when the winner's
//     identity is the caller's; Check is a read of it.
//   - Failed reads and ErrTrimmed results are dropped; trim itself is not
//     modelled.
//
// Ambiguous writes are what makes linearizability checking exponential.
// Operations applies two reductions that change no verdict (a test
// compares verdicts with and without them on thousands of random
// histories): an ambiguous write whose value no completed operation on
// that register shows is left out, and of several ambiguous writes of one
// value only the earliest is kept. A correct history then has at most one
// ambiguous write per register, and a nemesis run with hundreds of them is
// checked in milliseconds.
//
// Check gives porcupine a timeout; a timeout yields Outcome Unknown with
// ok == true (no violation found). Callers that must be sure check
// Outcome == porcupine.Ok.
//
// # Imports
//
// This package imports the standard library, porcupine and package worm.
// It must never import worm/client, worm/paxos or worm/wire: it checks any
// worm.Space from the outside.
package check
