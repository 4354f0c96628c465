package explore

import (
	"errors"
	"fmt"
	"math/bits"
	"slices"
	"strconv"
	"strings"

	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/paxos"
)

// monitor holds the history variables the properties need: they are not
// a function of the acceptors' current state (an acceptor overwrites what
// it accepted), so they are part of the state and of its fingerprint.
// A monitor value is never changed in place once a node holds it: every
// update copies the slice it changes.
type monitor struct {
	accepted    []acceptance // by ballot, ascending
	chosen      string       // the value chosen, once hasChosen
	chosenAt    worm.Ballot  // the lowest ballot at which a quorum accepted it
	hasChosen   bool
	observed    string // the first value an operation returned
	hasObserved bool
	preempted   []string // values of writes that ended in ErrPreempted
	written     []string // values of every write started so far
}

// acceptance: which acceptors ever accepted value at ballot b.
type acceptance struct {
	b     worm.Ballot
	value string
	by    uint64
}

func (m *monitor) appendKey(b []byte) []byte {
	for _, a := range m.accepted {
		b = appendBallot(b, a.b)
		b = strconv.AppendQuote(b, a.value)
		b = strconv.AppendUint(b, a.by, 2)
		b = append(b, ',')
	}
	b = append(b, '|')
	if m.hasChosen {
		b = strconv.AppendQuote(b, m.chosen)
		b = appendBallot(b, m.chosenAt)
	}
	b = append(b, '|')
	if m.hasObserved {
		b = strconv.AppendQuote(b, m.observed)
	}
	b = append(b, '|')
	for _, v := range m.preempted {
		b = strconv.AppendQuote(b, v)
	}
	b = append(b, '|')
	for _, v := range m.written {
		b = strconv.AppendQuote(b, v)
	}
	return b
}

func addSorted(s []string, v string) []string {
	i, ok := slices.BinarySearch(s, v)
	if ok {
		return s
	}
	return slices.Insert(slices.Clone(s), i, v)
}

func contains(s []string, v string) bool {
	_, ok := slices.BinarySearch(s, v)
	return ok
}

type violationError struct{ prop, what string }

func (e *violationError) Error() string { return e.prop + ": " + e.what }

func violate(prop, format string, args ...any) *violationError {
	return &violationError{prop, fmt.Sprintf(format, args...)}
}

// record checks one durable change of acceptor i against the history.
func (m *monitor) record(i, quorum int, rec *paxos.Record) *violationError {
	if rec.Seg != reg.Seg || rec.Off != reg.Off {
		return nil
	}
	switch rec.Kind {
	case paxos.RecordAccept:
		v := string(rec.Value)
		if !contains(m.written, v) {
			return violate("validity", "acc%d accepted %q at %v, which no client is writing", i, v, rec.Ballot)
		}
		// (At ballot 0 another unsafe writer's value may still land on
		// a minority after one was chosen: no phase 1 vouched for it,
		// and agreement is what must hold.)
		if m.hasChosen && !rec.Ballot.Less(m.chosenAt) && v != m.chosen && !rec.Ballot.IsZero() {
			return violate("p2b", "acc%d accepted %q at %v, but %q was chosen at %v", i, v, rec.Ballot, m.chosen, m.chosenAt)
		}
		// One value per ballot, except at ballot 0: several unsafe
		// writers of the register (against WriteUnsafe's contract, which
		// the register must survive) each leave theirs on some acceptors.
		if !rec.Ballot.IsZero() {
			for _, a := range m.accepted {
				if a.b == rec.Ballot && a.value != v {
					return violate("one-value-per-ballot", "acc%d accepted %q at %v, which already carries %q", i, v, rec.Ballot, a.value)
				}
			}
		}
		k, found := slices.BinarySearchFunc(m.accepted, acceptance{b: rec.Ballot, value: v}, func(a, b acceptance) int {
			switch {
			case a.b.Less(b.b):
				return -1
			case b.b.Less(a.b):
				return 1
			}
			return strings.Compare(a.value, b.value)
		})
		m.accepted = slices.Clone(m.accepted)
		if !found {
			m.accepted = slices.Insert(m.accepted, k, acceptance{b: rec.Ballot, value: v})
		}
		m.accepted[k].by |= 1 << i
		if bits.OnesCount64(m.accepted[k].by) >= quorum {
			return m.choose(v, rec.Ballot)
		}
	case paxos.RecordDecide:
		// The mark carries no value: it applies to what this acceptor
		// accepted at that ballot (at ballot 0 other acceptors may hold
		// other values), which must be the chosen value. (A quorum at
		// that very ballot is not required: acceptors that hold the value
		// decided answer a later accept of it with OK without accepting
		// again.)
		for _, a := range m.accepted {
			if a.b == rec.Ballot && a.by&(1<<i) != 0 {
				if !m.hasChosen || m.chosen != a.value {
					return violate("decided", "acc%d marked %q decided at %v, but %s", i, a.value, rec.Ballot, m.chosenString())
				}
				return nil
			}
		}
		return violate("decided", "acc%d marked ballot %v decided, which it never accepted", i, rec.Ballot)
	}
	return nil
}

func (m *monitor) choose(v string, b worm.Ballot) *violationError {
	if m.hasChosen && m.chosen != v {
		return violate("agreement", "%q chosen at %v, but %q was chosen at %v", v, b, m.chosen, m.chosenAt)
	}
	if contains(m.preempted, v) {
		return violate("outcome", "%q chosen at %v after its write was answered preempted", v, b)
	}
	if !m.hasChosen || b.Less(m.chosenAt) {
		m.chosen, m.chosenAt, m.hasChosen = v, b, true
	}
	return nil
}

// observe records that an operation returned v as the register's value.
func (m *monitor) observe(who string, v string) *violationError {
	if !m.hasChosen || m.chosen != v {
		return violate("outcome", "%s returned %q, but %s", who, v, m.chosenString())
	}
	if m.hasObserved && m.observed != v {
		return violate("stability", "%s returned %q after another operation returned %q", who, v, m.observed)
	}
	m.observed, m.hasObserved = v, true
	return nil
}

func (m *monitor) chosenString() string {
	if !m.hasChosen {
		return "nothing is chosen"
	}
	return fmt.Sprintf("%q is chosen (at %v)", m.chosen, m.chosenAt)
}

// startFlags: what was known when an op started.
type startFlags struct {
	chosen   bool // a value was chosen
	observed bool // an op had returned a value
}

// finish checks a finished op's result against the history.
func (m *monitor) finish(who string, a Action, st startFlags, res *paxos.Result) *violationError {
	err := res.Err
	if v, ok := worm.WrittenValue(err); ok {
		if a.Op != Capture && a.Op != Write && a.Op != WriteUnsafe {
			return violate("outcome", "%s: unexpected %v", who, err)
		}
		if (a.Op == Write || a.Op == WriteUnsafe) && string(v) == a.Value {
			return violate("outcome", "%s answered written with its own value", who)
		}
		return m.observe(who+" (written)", string(v))
	}
	switch a.Op {
	case Read:
		switch {
		case err == nil:
			return m.observe(who, string(res.Value))
		case errors.Is(err, worm.ErrEmpty):
			if st.chosen {
				return violate("stability", "%s returned empty, but a value was chosen before it started (%s)", who, m.chosenString())
			}
			if st.observed {
				return violate("stability", "%s returned empty after an operation returned %q", who, m.observed)
			}
		case errors.Is(err, worm.ErrUnavailable):
		default:
			return violate("outcome", "%s: unexpected error %v", who, err)
		}
	case Capture:
		switch {
		case err == nil:
			if st.chosen {
				return violate("outcome", "%s returned token %v, but a value was chosen before it started (%s)", who, res.Token, m.chosenString())
			}
			if res.Token.IsZero() {
				return violate("outcome", "%s returned the zero token", who)
			}
		case errors.Is(err, worm.ErrPreempted), errors.Is(err, worm.ErrUnavailable):
		default:
			return violate("outcome", "%s: unexpected error %v", who, err)
		}
	case Write, WriteUnsafe:
		switch {
		case err == nil:
			return m.observe(who, a.Value)
		case errors.Is(err, worm.ErrPreempted):
			if m.hasChosen && m.chosen == a.Value {
				return violate("outcome", "%s answered preempted, but its value is chosen", who)
			}
			m.preempted = addSorted(m.preempted, a.Value)
		case errors.Is(err, worm.ErrUnknownOutcome), errors.Is(err, worm.ErrUnavailable):
		default:
			return violate("outcome", "%s: unexpected error %v", who, err)
		}
	}
	return nil
}

// outcomeKind names a result for coverage counts.
func outcomeKind(res *paxos.Result) string {
	err := res.Err
	if v, ok := worm.WrittenValue(err); ok {
		return fmt.Sprintf("written(%q)", v)
	}
	switch {
	case err == nil && res.Value != nil:
		return fmt.Sprintf("value(%q)", res.Value)
	case err == nil:
		return "ok"
	case errors.Is(err, worm.ErrEmpty):
		return "empty"
	case errors.Is(err, worm.ErrPreempted):
		return "preempted"
	case errors.Is(err, worm.ErrUnknownOutcome):
		return "unknown-outcome"
	case errors.Is(err, worm.ErrUnavailable):
		return "unavailable"
	}
	return "error: " + err.Error()
}
