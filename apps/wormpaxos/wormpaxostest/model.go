package wormpaxostest

import (
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/wormspace/wormspace/apps/wormpaxos/kv"
)

// KVOp is one client operation of a key-value history.
type KVOp struct {
	Client  int
	Op      kv.Op
	Result  kv.Result
	Unknown bool // the call failed: it may or may not have taken effect
	Call    int64
	Return  int64
}

// KVHistory records operations from many goroutines.
type KVHistory struct {
	mu    sync.Mutex
	start time.Time
	ops   []KVOp
}

// NewKVHistory returns an empty history.
func NewKVHistory() *KVHistory { return &KVHistory{start: time.Now()} }

// Now is the history's clock.
func (h *KVHistory) Now() int64 { return int64(time.Since(h.start)) }

// Add records op.
func (h *KVHistory) Add(op KVOp) {
	h.mu.Lock()
	h.ops = append(h.ops, op)
	h.mu.Unlock()
}

// Ops returns the recorded operations.
func (h *KVHistory) Ops() []KVOp {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]KVOp(nil), h.ops...)
}

type kvState struct {
	present bool
	value   string
}

type kvOut struct {
	res     kv.Result
	unknown bool
}

// KVModel is the porcupine model of one key of the store (histories are
// partitioned by key). Operations with unknown outcome return at
// math.MaxInt64 and may take effect at any point after their call, or
// never; Gets with errors are dropped before checking.
var KVModel = porcupine.Model{
	Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
		by := map[string][]porcupine.Operation{}
		var keys []string
		for _, o := range h {
			k := o.Input.(kv.Op).Key
			if _, ok := by[k]; !ok {
				keys = append(keys, k)
			}
			by[k] = append(by[k], o)
		}
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, by[k])
		}
		return out
	},
	Init: func() any { return kvState{} },
	Step: func(state, input, output any) (bool, any) {
		st, in, out := state.(kvState), input.(kv.Op), output.(kvOut)
		var want kv.Result
		next := st
		switch in.Kind {
		case kv.OpPut:
			want = kv.Result{OK: st.present, Value: st.value}
			next = kvState{present: true, value: in.Value}
		case kv.OpDelete:
			want = kv.Result{OK: st.present, Value: st.value}
			next = kvState{}
		case kv.OpCAS:
			if st.present && st.value == in.Old {
				want = kv.Result{OK: true, Value: in.Value}
				next = kvState{present: true, value: in.Value}
			} else {
				want = kv.Result{OK: false, Value: st.value}
			}
		case kv.OpGet:
			want = kv.Result{OK: st.present, Value: st.value}
		}
		if out.unknown {
			return true, next
		}
		if !st.present {
			want.Value = ""
		}
		return out.res == want, next
	},
	Equal: func(a, b any) bool { return a.(kvState) == b.(kvState) },
	DescribeOperation: func(input, output any) string {
		in, out := input.(kv.Op), output.(kvOut)
		var s string
		switch in.Kind {
		case kv.OpPut:
			s = fmt.Sprintf("put(%s,%s)", in.Key, in.Value)
		case kv.OpDelete:
			s = fmt.Sprintf("delete(%s)", in.Key)
		case kv.OpCAS:
			s = fmt.Sprintf("cas(%s,%s->%s)", in.Key, in.Old, in.Value)
		case kv.OpGet:
			s = fmt.Sprintf("get(%s)", in.Key)
		}
		if out.unknown {
			return s + " -> ?"
		}
		return fmt.Sprintf("%s -> %v,%q", s, out.res.OK, out.res.Value)
	},
	DescribeState: func(state any) string {
		st := state.(kvState)
		if !st.present {
			return "absent"
		}
		return st.value
	},
}

// CheckKV checks ops for linearizability against KVModel.
func CheckKV(ops []KVOp, timeout time.Duration) (porcupine.CheckResult, porcupine.LinearizationInfo) {
	var hist []porcupine.Operation
	for _, o := range ops {
		if o.Unknown && o.Op.Kind == kv.OpGet {
			continue
		}
		ret := o.Return
		if o.Unknown {
			ret = math.MaxInt64
		}
		hist = append(hist, porcupine.Operation{ClientId: o.Client, Input: o.Op, Call: o.Call, Output: kvOut{res: o.Result, unknown: o.Unknown}, Return: ret})
	}
	return porcupine.CheckOperationsVerbose(KVModel, hist, timeout)
}
