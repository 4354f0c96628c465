package check

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/wormspace/wormspace/worm"
)

// TestReductionKeepsVerdicts: on many small random histories of one
// register, the reduced history (Operations) is linearizable exactly when
// the full one is. Both verdicts occur, so the comparison is not vacuous.
func TestReductionKeepsVerdicts(t *testing.T) {
	a := worm.Addr{Seg: 1, Off: 0}
	vals := []string{"a", "b", "c"}
	verdicts := map[bool]int{}
	elided := 0
	for seed := uint64(0); seed < 3000; seed++ {
		rng := rand.New(rand.NewPCG(seed, 7))
		var h []Op
		n := 3 + rng.IntN(6)
		for i := 0; i < n; i++ {
			call := int64(rng.IntN(40))
			ret := call + int64(rng.IntN(15))
			v := vals[rng.IntN(len(vals))]
			op := Op{Client: "c", Addr: a, Call: call, Return: ret}
			switch rng.IntN(6) {
			case 0, 1:
				op.Kind = KindWrite
				op.Value = []byte(v)
				switch rng.IntN(4) {
				case 0:
				case 1:
					op.Err = &worm.WrittenError{Addr: a, Value: []byte(vals[rng.IntN(len(vals))])}
				default:
					op.Err = worm.ErrUnknownOutcome
				}
			case 2:
				op.Kind, op.Value, op.Return = KindWriteUnsafe, []byte(v), Pending
			case 3, 4:
				op.Kind = KindRead
				if rng.IntN(3) == 0 {
					op.Err = worm.ErrEmpty
				} else {
					op.Result = []byte(v)
				}
			case 5:
				op.Kind = KindCapture
				if rng.IntN(2) == 0 {
					op.Err = &worm.WrittenError{Addr: a, Value: []byte(v)}
				}
			}
			h = append(h, op)
		}
		full, _ := convert(h)
		reduced, st := Operations(h)
		elided += st.Elided
		want := porcupine.CheckOperations(Model, full)
		got := porcupine.CheckOperations(Model, reduced)
		if want != got {
			for _, op := range h {
				t.Logf("%v %q res=%q err=%v [%d,%d]", op.Kind, op.Value, op.Result, op.Err, op.Call, op.Return)
			}
			t.Fatalf("seed %d: full history linearizable=%v, reduced=%v", seed, want, got)
		}
		verdicts[want]++
	}
	if verdicts[true] < 100 || verdicts[false] < 100 || elided < 100 {
		t.Fatalf("weak sample: verdicts %v, %d elided writes", verdicts, elided)
	}
	t.Logf("verdicts %v, %d writes elided", verdicts, elided)
}

// TestManyAmbiguousWritesStayFast: hundreds of ambiguous writes of unique
// values on one register (what a nemesis run produces) are decided at
// once, legal or not. Without the reduction porcupine would explore their
// subsets.
func TestManyAmbiguousWritesStayFast(t *testing.T) {
	t.Setenv("WORM_CHECK_DIR", t.TempDir())
	a := worm.Addr{Seg: 1, Off: 0}
	var h []Op
	for i := 0; i < 300; i++ {
		h = append(h, Op{Client: "c", Kind: KindWrite, Addr: a, Value: []byte(fmt.Sprint("v", i)),
			Err: worm.ErrUnknownOutcome, Call: int64(i * 10), Return: int64(i*10 + 5)})
		h = append(h, Op{Client: "c", Kind: KindRead, Addr: a, Err: worm.ErrEmpty, Call: int64(i*10 + 1), Return: int64(i*10 + 2)})
	}
	good := append(h[:len(h):len(h)], Op{Client: "c", Kind: KindRead, Addr: a, Result: []byte("v299"), Call: 3001, Return: 3002})
	if ok, res := Check(good, time.Minute); !ok || res.Outcome != porcupine.Ok || res.Pending != 1 {
		t.Fatalf("legal history: %v", res)
	}
	bad := append(good, Op{Client: "c", Kind: KindRead, Addr: a, Result: []byte("v298"), Call: 3003, Return: 3004})
	if ok, res := Check(bad, time.Minute); ok || res.Outcome != porcupine.Illegal || res.Pending != 2 {
		t.Fatalf("two values read: %v", res)
	}
}
