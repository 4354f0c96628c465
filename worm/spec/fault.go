package spec

import (
	"fmt"
	"slices"

	"github.com/wormspace/wormspace/worm"
)

// Op names a Space operation, for fault injection.
type Op uint8

// The operations of worm.Space.
const (
	OpCapture Op = iota + 1
	OpWrite
	OpWriteUnsafe
	OpRead
	OpAlloc
	OpCheck
	OpCaptureSegment
	OpWriteBatch
	OpTrim
	OpListen
)

var opNames = [...]string{"", "Capture", "Write", "WriteUnsafe", "Read", "Alloc", "Check", "CaptureSegment", "WriteBatch", "Trim", "Listen"}

func (o Op) String() string {
	if int(o) < len(opNames) && o != 0 {
		return opNames[o]
	}
	return fmt.Sprintf("Op(%d)", o)
}

// Fault is an injected failure of one operation.
//
// Operations that change nothing (Read, Check, Listen) fail with
// worm.ErrUnavailable under every fault. Capture and CaptureSegment fail
// with worm.ErrUnavailable too (ErrUnknownOutcome is for writes), but under
// FaultUnknownApplied their capture took effect: older tokens are
// preempted although the caller never learns the new one, exactly like a
// Paxos phase 1 that reached some acceptors before timing out.
type Fault uint8

const (
	// FaultNone: no fault.
	FaultNone Fault = iota
	// FaultUnknownApplied: apply the operation, then report
	// worm.ErrUnknownOutcome (the reply was lost). Only operations that
	// succeeded are turned into the fault; their errors are reported as
	// usual.
	FaultUnknownApplied
	// FaultUnknownDropped: do not apply; report worm.ErrUnknownOutcome (the
	// request was lost, but the client cannot know).
	FaultUnknownDropped
	// FaultUnavailable: do not apply; report worm.ErrUnavailable.
	FaultUnavailable
)

func (f Fault) String() string {
	switch f {
	case FaultNone:
		return "none"
	case FaultUnknownApplied:
		return "unknown-applied"
	case FaultUnknownDropped:
		return "unknown-dropped"
	case FaultUnavailable:
		return "unavailable"
	}
	return fmt.Sprintf("Fault(%d)", uint8(f))
}

// dropped reports whether the operation must not be applied.
func (f Fault) dropped() bool { return f == FaultUnknownDropped || f == FaultUnavailable }

func (f Fault) err() error {
	switch f {
	case FaultUnknownApplied, FaultUnknownDropped:
		return fmt.Errorf("spec: injected fault %v: %w", f, worm.ErrUnknownOutcome)
	default:
		return fmt.Errorf("spec: injected fault %v: %w", f, worm.ErrUnavailable)
	}
}

// faultPlan is one InjectFault call: n more operations (of ops) fail.
type faultPlan struct {
	f   Fault
	n   int
	ops []Op // empty: every operation
}

// InjectFault makes the next n operations of the clients with identity id
// fail with f. When ops is given, only those operations count. Plans queue:
// an operation consumes the first plan that matches it. InjectFault(id,
// FaultNone, 0) clears every plan of id.
func (s *Store) InjectFault(id string, f Fault, n int, ops ...Op) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f == FaultNone || n <= 0 {
		delete(s.faults, id)
		return
	}
	s.faults[id] = append(s.faults[id], &faultPlan{f: f, n: n, ops: slices.Clone(ops)})
}

// PendingFaults returns how many injected faults of id are still to fire.
func (s *Store) PendingFaults(id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	total := 0
	for _, p := range s.faults[id] {
		total += p.n
	}
	return total
}

func (s *Store) takeFault(id string, op Op) Fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	plans := s.faults[id]
	for i, p := range plans {
		if len(p.ops) > 0 && !slices.Contains(p.ops, op) {
			continue
		}
		p.n--
		if p.n == 0 {
			s.faults[id] = slices.Delete(plans, i, i+1)
			if len(s.faults[id]) == 0 {
				delete(s.faults, id)
			}
		}
		f := p.f
		if f != FaultUnavailable && (op == OpCapture || op == OpCaptureSegment) {
			// Captures are never "unknown outcome"; keep the applied or
			// dropped distinction but report unavailability.
			if f == FaultUnknownDropped {
				return FaultUnavailable
			}
			return faultCaptureApplied
		}
		return f
	}
	return FaultNone
}

// faultCaptureApplied is internal: a capture that took effect but reports
// worm.ErrUnavailable.
const faultCaptureApplied Fault = 100
