package check

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"

	"github.com/anishathalye/porcupine"

	"github.com/wormspace/wormspace/worm"
)

// outcome is what an operation's result tells the model.
type outcome uint8

const (
	outOK      outcome = iota + 1 // success: value read, written, token issued, allocation learned
	outEmpty                      // the register is empty (Read: ErrEmpty or ErrUnallocated; Check: ErrUnallocated)
	outWritten                    // *WrittenError: the register holds Value
	outMaybe                      // a write that may or may not have taken effect
)

// input and output are the porcupine Input and Output of one operation on
// one register. Values are strings so that states compare with ==.
type input struct {
	Kind   Kind // KindCaptureSegment never reaches the model (expanded to KindCapture)
	Addr   worm.Addr
	Value  string // written value; Alloc: encoded (client, meta)
	Client string
	Seg    bool // a capture that came from a CaptureSegment
}

type output struct {
	Out   outcome
	Value string // read value, WrittenError value; Alloc/Check: encoded (owner, meta)
	Won   bool   // Alloc/Check
}

// state is one register: empty, or holding V.
type state struct {
	Has bool
	V   string
}

// encodeInfo encodes an allocation record as the metadata register's value.
func encodeInfo(owner string, meta []byte) string {
	return strconv.Quote(owner) + ":" + string(meta)
}

func ownerOf(v string) string {
	q, err := strconv.QuotedPrefix(v)
	if err != nil {
		return ""
	}
	s, _ := strconv.Unquote(q)
	return s
}

// step is the sequential specification of one WOR (the metadata WOR
// included). It returns every state the register may be in afterwards, or
// none when the operation cannot have returned out from st.
func step(st state, in input, out output) []state {
	switch in.Kind {
	case KindRead, KindCheck:
		switch out.Out {
		case outEmpty:
			if !st.Has {
				return []state{st}
			}
		case outOK:
			if st.Has && st.V == out.Value && (in.Kind == KindRead || out.Won == (ownerOf(st.V) == in.Client)) {
				return []state{st}
			}
		}
	case KindCapture:
		switch out.Out {
		case outOK: // a token: nothing can have been chosen yet
			if !st.Has {
				return []state{st}
			}
		case outWritten:
			if st.Has && st.V == out.Value {
				return []state{st}
			}
		}
	case KindWrite, KindWriteUnsafe, KindAlloc:
		switch out.Out {
		case outOK:
			if in.Kind == KindAlloc {
				if !st.Has && out.Value == in.Value && out.Won {
					return []state{{Has: true, V: in.Value}}
				}
				if st.Has && out.Value == st.V && out.Won == (ownerOf(st.V) == in.Client) {
					return []state{st}
				}
				return nil
			}
			if !st.Has || st.V == in.Value {
				return []state{{Has: true, V: in.Value}}
			}
		case outWritten:
			if st.Has && st.V == out.Value && st.V != in.Value {
				return []state{st}
			}
		case outMaybe:
			if !st.Has {
				return []state{st, {Has: true, V: in.Value}}
			}
			return []state{st}
		}
	}
	return nil
}

func short(s string) string {
	if len(s) > 24 {
		return strconv.Quote(s[:21]) + "..."
	}
	return strconv.Quote(s)
}

func describe(in input, out output) string {
	var b strings.Builder
	b.WriteString(in.Client)
	b.WriteString(" ")
	b.WriteString(in.Kind.String())
	if in.Seg {
		b.WriteString("(segment)")
	}
	switch in.Kind {
	case KindWrite, KindWriteUnsafe, KindAlloc:
		fmt.Fprintf(&b, "(%v, %s)", in.Addr, short(in.Value))
	default:
		fmt.Fprintf(&b, "(%v)", in.Addr)
	}
	switch out.Out {
	case outOK:
		switch in.Kind {
		case KindRead, KindCheck, KindAlloc:
			fmt.Fprintf(&b, " -> %s", short(out.Value))
			if in.Kind != KindRead {
				fmt.Fprintf(&b, " won=%v", out.Won)
			}
		case KindCapture:
			b.WriteString(" -> token")
		default:
			b.WriteString(" -> ok")
		}
	case outEmpty:
		b.WriteString(" -> empty")
	case outWritten:
		fmt.Fprintf(&b, " -> written(%s)", short(out.Value))
	case outMaybe:
		b.WriteString(" -> unknown outcome")
	}
	return b.String()
}

// Model is the porcupine model of WormSpace: independent write-once
// registers, partitioned by address. It is exported so that callers can
// visualize or re-check histories themselves.
var Model = (&porcupine.NondeterministicModel{
	Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
		idx := map[worm.Addr]int{}
		var parts [][]porcupine.Operation
		for _, op := range h {
			a := op.Input.(input).Addr
			i, ok := idx[a]
			if !ok {
				i = len(parts)
				idx[a] = i
				parts = append(parts, nil)
			}
			parts[i] = append(parts[i], op)
		}
		return parts
	},
	Init: func() []any { return []any{state{}} },
	Step: func(st, in, out any) []any {
		next := step(st.(state), in.(input), out.(output))
		res := make([]any, len(next))
		for i, s := range next {
			res[i] = s
		}
		return res
	},
	Hash: func(st any) uint64 {
		s := st.(state)
		h := fnv.New64a()
		if s.Has {
			h.Write([]byte{1})
			h.Write([]byte(s.V))
		}
		return h.Sum64()
	},
	DescribeOperation: func(in, out any) string { return describe(in.(input), out.(output)) },
	DescribeState: func(st any) string {
		s := st.(state)
		if !s.Has {
			return "empty"
		}
		return short(s.V)
	},
}).ToModel()

// ambiguous reports whether err leaves a write's effect unknown.
func ambiguous(err error) bool {
	return errors.Is(err, worm.ErrUnknownOutcome) || errors.Is(err, worm.ErrUnavailable) ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// noEffect reports errors after which a write certainly did nothing.
func noEffect(err error) bool {
	for _, k := range []error{worm.ErrPreempted, worm.ErrTrimmed, worm.ErrOutOfRange, worm.ErrInvalid,
		worm.ErrTooLarge, worm.ErrUnallocated, worm.ErrEmpty} {
		if errors.Is(err, k) {
			return true
		}
	}
	return false
}

// classify turns a recorded operation on one register into the model's
// output. keep is false for operations that tell the model nothing (they
// are dropped); pending is set for writes whose outcome is unknown.
func classify(op Op) (out output, keep, pending bool) {
	err := op.Err
	if op.Return == Pending {
		// Still in flight: a write may yet take effect; a read or capture
		// observed nothing yet.
		switch op.Kind {
		case KindWrite, KindWriteUnsafe, KindAlloc:
			return output{Out: outMaybe}, true, true
		}
		return output{}, false, false
	}
	if w, ok := worm.WrittenValue(err); ok && op.Kind != KindRead && op.Kind != KindCheck && op.Kind != KindAlloc {
		return output{Out: outWritten, Value: string(w)}, true, false
	}
	switch op.Kind {
	case KindRead:
		switch {
		case err == nil:
			return output{Out: outOK, Value: string(op.Result)}, true, false
		case errors.Is(err, worm.ErrEmpty), errors.Is(err, worm.ErrUnallocated):
			return output{Out: outEmpty}, true, false
		}
	case KindCheck:
		switch {
		case err == nil:
			return output{Out: outOK, Value: encodeInfo(op.Info.Owner, op.Info.Meta), Won: op.Info.Won}, true, false
		case errors.Is(err, worm.ErrUnallocated):
			return output{Out: outEmpty}, true, false
		}
	case KindCapture:
		if err == nil {
			return output{Out: outOK}, true, false
		}
	case KindWrite, KindWriteUnsafe, KindAlloc:
		switch {
		case err == nil && op.Kind == KindAlloc:
			return output{Out: outOK, Value: encodeInfo(op.Info.Owner, op.Info.Meta), Won: op.Info.Won}, true, false
		case err == nil:
			return output{Out: outOK}, true, false
		case noEffect(err):
		case ambiguous(err):
			return output{Out: outMaybe}, true, true
		default:
			// An error of no known kind: assume nothing about it.
			return output{Out: outMaybe}, true, true
		}
	}
	return output{}, false, false
}
