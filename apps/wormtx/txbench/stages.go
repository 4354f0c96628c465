package txbench

import (
	"encoding/binary"
	"slices"
	"sync"
	"time"

	"github.com/wormspace/wormspace/apps/wormtx"
	"github.com/wormspace/wormspace/worm/bench"
)

// Stage timing (Config.Stages): both protocols' coordinators and
// participants report their stages (wormtx.Stage) through Trace hooks;
// each participant sends the times of its stages of a transaction with its
// report that it applied it, and the harness puts them together with the
// coordinator's, as offsets from the coordinator's StageBegin. The two
// processes share the machine's clock (wall time, microseconds), so their
// times compare.

// StageStat is one stage's latency from Begin over a run's transactions.
type StageStat struct {
	Stage string `json:"stage"`
	// Who reached it: "coordinator", or "first" / "last" of the
	// participants (per transaction, the earliest and the latest).
	Who     string        `json:"who"`
	Latency bench.Latency `json:"latency"`
}

// stamp is a stage's time, in microseconds of wall time.
type stamp struct {
	s  wormtx.Stage
	at int64
}

// appendStamps encodes stamps (a report's Desc.Payload).
func appendStamps(b []byte, st []stamp) []byte {
	for _, x := range st {
		b = append(b, byte(x.s))
		b = binary.AppendVarint(b, x.at)
	}
	return b
}

// parseStamps decodes appendStamps' output; malformed input ends it.
func parseStamps(b []byte) []stamp {
	var out []stamp
	for len(b) > 0 {
		s := wormtx.Stage(b[0])
		at, n := binary.Varint(b[1:])
		if n <= 0 {
			break
		}
		out = append(out, stamp{s, at})
		b = b[1+n:]
	}
	return out
}

// stageRecorder keeps the stages reported in one process until they are
// taken: participants' until their report, coordinators' until the run
// ends.
type stageRecorder struct {
	mu sync.Mutex
	m  map[stageKey][]stamp
}

type stageKey struct {
	p   Protocol
	who string
	tx  wormtx.TxID
}

func newStageRecorder() *stageRecorder {
	return &stageRecorder{m: map[stageKey][]stamp{}}
}

// hook is the Trace function of who in protocol p.
func (r *stageRecorder) hook(p Protocol, who string) wormtx.TraceFunc {
	return func(tx wormtx.TxID, s wormtx.Stage, at time.Time) {
		k := stageKey{p, who, tx}
		r.mu.Lock()
		r.m[k] = append(r.m[k], stamp{s, at.UnixMicro()})
		r.mu.Unlock()
	}
}

// take removes and returns what who reported of tx.
func (r *stageRecorder) take(p Protocol, who string, tx wormtx.TxID) []stamp {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := stageKey{p, who, tx}
	st := r.m[k]
	delete(r.m, k)
	return st
}

// clear forgets everything.
func (r *stageRecorder) clear() {
	r.mu.Lock()
	clear(r.m)
	r.mu.Unlock()
}

// summarizeStages computes the stage table of the transactions of proto
// begun in [from, to) with n participants each, from the coordinator's
// stamps in coord and the participants' in parts.
func summarizeStages(proto Protocol, coord *stageRecorder, parts map[txKey]map[string][]stamp, n int, from, to time.Time) []StageStat {
	type series struct {
		stage wormtx.Stage
		who   string
	}
	ds := map[series][]time.Duration{}
	coord.mu.Lock()
	defer coord.mu.Unlock()
	for k, cst := range coord.m {
		if k.p != proto {
			continue
		}
		begin, ok := find(cst, wormtx.StageBegin)
		if !ok || begin < from.UnixMicro() || begin >= to.UnixMicro() {
			continue
		}
		off := func(at int64) time.Duration { return time.Duration(at-begin) * time.Microsecond }
		for _, x := range cst {
			if x.s != wormtx.StageBegin {
				ds[series{x.s, "coordinator"}] = append(ds[series{x.s, "coordinator"}], off(x.at))
			}
		}
		ps := parts[txKey{proto, k.tx}]
		if len(ps) < n {
			continue // some participant's report is missing
		}
		for _, s := range wormtx.Stages {
			var first, last int64
			seen := 0
			for _, pst := range ps {
				at, ok := find(pst, s)
				if !ok {
					continue
				}
				if seen == 0 || at < first {
					first = at
				}
				if seen == 0 || at > last {
					last = at
				}
				seen++
			}
			if seen == n {
				ds[series{s, "first"}] = append(ds[series{s, "first"}], off(first))
				ds[series{s, "last"}] = append(ds[series{s, "last"}], off(last))
			}
		}
	}
	var out []StageStat
	for _, s := range wormtx.Stages {
		for _, who := range []string{"coordinator", "first", "last"} {
			if d := ds[series{s, who}]; len(d) > 0 {
				out = append(out, StageStat{Stage: s.String(), Who: who, Latency: bench.Summarize(d)})
			}
		}
	}
	return out
}

// find returns the time of stage s in st.
func find(st []stamp, s wormtx.Stage) (int64, bool) {
	i := slices.IndexFunc(st, func(x stamp) bool { return x.s == s })
	if i < 0 {
		return 0, false
	}
	return st[i].at, true
}
