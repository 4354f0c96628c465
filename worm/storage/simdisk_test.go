package storage_test

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/wormspace/wormspace/worm/paxos"
	"github.com/wormspace/wormspace/worm/storage"
	"github.com/wormspace/wormspace/worm/storage/simfs"
)

// sortedSnapshot emits acc's snapshot in a fixed order (the acceptor's
// own order follows map iteration), so that a seed writes the same bytes.
func sortedSnapshot(acc *paxos.Acceptor) func(emit func(paxos.Record) error) error {
	return func(emit func(paxos.Record) error) error {
		var recs []paxos.Record
		acc.Snapshot(func(r paxos.Record) error {
			r.Value = bytes.Clone(r.Value)
			recs = append(recs, r)
			return nil
		})
		slices.SortStableFunc(recs, func(a, b paxos.Record) int {
			ta, tb := a.Kind != paxos.RecordTrim, b.Kind != paxos.RecordTrim
			switch {
			case ta != tb && !ta:
				return -1
			case ta != tb:
				return 1
			case a.Seg < b.Seg:
				return -1
			case a.Seg > b.Seg:
				return 1
			}
			return 0
		})
		for _, r := range recs {
			if err := emit(r); err != nil {
				return err
			}
		}
		return nil
	}
}

// fingerprint is a hash of acc's state: the sum of a hash of every
// snapshot record (a state has one snapshot record per register, range
// promise and trim, so the sum does not depend on their order).
func fingerprint(acc *paxos.Acceptor) uint64 {
	var sum uint64
	acc.Snapshot(func(r paxos.Record) error {
		h := uint64(14695981039346656037)
		mix := func(x uint64) {
			for range 8 {
				h = (h ^ (x & 0xff)) * 1099511628211
				x >>= 8
			}
		}
		mix(uint64(r.Kind))
		mix(r.Seg)
		mix(uint64(r.Off))
		mix(r.Ballot.Round)
		mix(r.Ballot.Node)
		mix(uint64(len(r.Value)))
		for _, c := range r.Value {
			h = (h ^ uint64(c)) * 1099511628211
		}
		// splitmix64's finaliser, so that sums of related hashes do not
		// cancel.
		h ^= h >> 30
		h *= 0xbf58476d1ce4e5b9
		h ^= h >> 27
		h *= 0x94d049bb133111eb
		h ^= h >> 31
		sum += h
		return nil
	})
	return sum
}

// diskRun drives one log over a simulated disk through appends, group
// commits, compactions and crashes of every kind at any operation, and
// checks each recovery against the lineage of states the log was given.
type diskRun struct {
	t       *testing.T
	seed    uint64
	rng     *rand.Rand
	disk    *simfs.Disk
	opts    storage.Options
	log     *storage.Log
	w       *storage.Workload
	shadow  *paxos.Acceptor
	lineage []uint64 // lineage[k]: fingerprint of the state after k records
	marks   []mark   // log position after each Append and its lineage index
	synced  int      // lineage index storage reported durable
	trace   []string
	stats   struct{ crashes, recoveries, compactions, tailCuts, discarded, openCrashes, noSpace int }
}

type mark struct {
	end uint64
	k   int
}

func (r *diskRun) fail(format string, args ...any) {
	r.t.Helper()
	n := len(r.trace)
	r.t.Fatalf("seed %d: %s\nlast events:\n%s\n(replay: go test ./worm/storage -run 'TestSimDisk$' -seed %d -v)",
		r.seed, fmt.Sprintf(format, args...), joinTail(r.trace[max(0, n-30):]), r.seed)
}

func joinTail(lines []string) string {
	var b bytes.Buffer
	for _, l := range lines {
		b.WriteString("  " + l + "\n")
	}
	return b.String()
}

func (r *diskRun) note(format string, args ...any) {
	r.trace = append(r.trace, fmt.Sprintf(format, args...))
}

// crashed handles a storage call's outcome: true when the disk crashed
// (the process is dead), a test failure for any other error.
func (r *diskRun) crashed(what string, err error) bool {
	r.t.Helper()
	if r.disk.Down() {
		r.note("%s: crashed (%v)", what, err)
		return true
	}
	if err != nil {
		r.fail("%s: %v", what, err)
	}
	return false
}

func (r *diskRun) open() {
	r.t.Helper()
	for attempt := 0; ; attempt++ {
		if r.disk.Down() {
			if r.rng.IntN(3) == 0 {
				r.disk.PowerLoss()
			}
			r.disk.Restart()
		}
		if r.rng.IntN(4) == 0 {
			r.disk.ArmCrash(1+r.rng.IntN(8), r.rng.IntN(2) == 0)
		}
		l, acc, err := storage.Open("/data", r.opts)
		if r.disk.Down() {
			r.stats.openCrashes++
			r.note("open: crashed (%v)", err)
			continue
		}
		if err != nil {
			r.fail("open after a crash: %v", err)
		}
		r.log = l
		got := fingerprint(acc)
		k := -1
		for i := len(r.lineage) - 1; i >= r.synced; i-- {
			if r.lineage[i] == got {
				k = i
				break
			}
		}
		if k < 0 {
			for i := r.synced - 1; i >= 0; i-- {
				if r.lineage[i] == got {
					r.fail("recovered the state after %d records; storage had reported %d durable", i, r.synced)
				}
			}
			r.fail("recovered a state that is no prefix of the %d records appended", len(r.lineage)-1)
		}
		st := l.Stats()
		if st.TailCut > 0 {
			r.stats.tailCuts++
		}
		r.stats.discarded += st.Discarded
		r.note("open: recovered the state after %d records (reported durable %d, appended %d)", k, r.synced, len(r.lineage)-1)
		r.lineage = r.lineage[:k+1]
		// Open's contract: what it recovered is durable.
		r.synced, r.marks = k, nil
		r.w.SetAcceptor(acc)
		r.shadow = paxos.NewAcceptor(storage.TestSegSize)
		acc.Snapshot(func(rec paxos.Record) error { return r.shadow.Apply(rec) })
		r.stats.recoveries++
		return
	}
}

func (r *diskRun) run(steps int) {
	for range steps {
		if r.log == nil {
			r.open()
		}
		x := r.rng.IntN(100)
		switch {
		case x < 4:
			// Crash now, or arm one for one of the next operations.
			power := r.rng.IntN(3) != 0
			r.stats.crashes++
			if r.rng.IntN(2) == 0 {
				r.note("crash now (power %v)", power)
				if power {
					r.disk.PowerLoss()
				} else {
					r.disk.Kill()
				}
				r.log = nil
			} else {
				r.note("crash armed (power %v)", power)
				r.disk.ArmCrash(1+r.rng.IntN(6), power)
			}
		case x < 30:
			d, err := r.log.Sync()
			if r.crashed("sync", err) {
				r.log = nil
				continue
			}
			for len(r.marks) > 0 && r.marks[0].end <= d {
				r.synced = max(r.synced, r.marks[0].k)
				r.marks = r.marks[1:]
			}
			r.note("sync: durable %d (state %d)", d, r.synced)
		case x < 34:
			err := r.log.Compact(sortedSnapshot(r.w.Acceptor()))
			if errors.Is(err, storage.ErrCompactPending) {
				continue
			}
			if errors.Is(err, storage.ErrNoSpace) && !r.disk.Down() {
				r.stats.noSpace++
				r.note("compact: no space")
				continue
			}
			if r.crashed("compact", err) {
				r.log = nil
				continue
			}
			r.stats.compactions++
			r.note("compact at state %d", len(r.lineage)-1)
		default:
			recs := r.w.Step()
			n := 0
			for _, rec := range recs {
				n += storage.RecordOverhead + len(rec.Value)
			}
			err := r.log.Reserve(n)
			if errors.Is(err, storage.ErrNoSpace) && !r.disk.Down() {
				// Refused with nothing changed: the engine answers an
				// error, and the acceptor must forget the request.
				r.stats.noSpace++
				acc := paxos.NewAcceptor(storage.TestSegSize)
				r.shadow.Snapshot(acc.Apply)
				r.w.SetAcceptor(acc)
				continue
			}
			if r.crashed("reserve", err) {
				r.log = nil
				// The acceptor handled it; the crash took it back.
				continue
			}
			end, err := r.log.Append(recs)
			if r.crashed("append", err) {
				r.log = nil
				continue
			}
			for _, rec := range recs {
				rec.Value = bytes.Clone(rec.Value)
				if err := r.shadow.Apply(rec); err != nil {
					r.fail("apply: %v", err)
				}
				r.lineage = append(r.lineage, fingerprint(r.shadow))
			}
			r.marks = append(r.marks, mark{end, len(r.lineage) - 1})
		}
	}
}

// TestSimDisk runs the log over simulated disks through seeded crashes at
// any operation (power failures keeping any unsynced state a real disk
// may keep, process crashes keeping the page cache), compactions and
// recoveries: every recovery yields the state after a prefix of the
// records appended that holds everything a Sync reported durable and
// everything an earlier recovery returned.
func TestSimDisk(t *testing.T) {
	seeds := uint64(150)
	if testing.Short() {
		seeds = 30
	}
	first := uint64(1)
	if *storage.SeedFlag != 0 {
		first, seeds = *storage.SeedFlag, 1
	}
	var total diskRun
	var kept [5]int
	for seed := first; seed < first+seeds; seed++ {
		r := newDiskRun(t, seed)
		r.run(600)
		total.stats.crashes += r.stats.crashes
		total.stats.recoveries += r.stats.recoveries
		total.stats.compactions += r.stats.compactions
		total.stats.tailCuts += r.stats.tailCuts
		total.stats.discarded += r.stats.discarded
		total.stats.openCrashes += r.stats.openCrashes
		total.stats.noSpace += r.stats.noSpace
		for i, n := range r.disk.Stats().Kept {
			kept[i] += n
		}
		if *storage.SeedFlag != 0 {
			for _, l := range r.trace {
				t.Log(l)
			}
		}
	}
	s := total.stats
	t.Logf("%d seeds: %d crashes, %d recoveries (%d crashed during recovery), %d compactions, %d torn tails cut, %d incomplete generations discarded, %d refusals for lack of space; files kept none/all/prefix/torn/pages: %v",
		seeds, s.crashes, s.recoveries, s.openCrashes, s.compactions, s.tailCuts, s.discarded, s.noSpace, kept)
	if seeds >= 30 && (s.tailCuts == 0 || s.discarded == 0 || s.openCrashes == 0 || s.noSpace == 0) {
		t.Fatalf("the runs did not reach torn tails, interrupted compactions and crashes during recovery: %+v", s)
	}
}

func newDiskRun(t *testing.T, seed uint64) *diskRun {
	r := &diskRun{t: t, seed: seed, rng: rand.New(rand.NewPCG(seed, 0xd15c))}
	dopts := simfs.Options{Seed: seed}
	if seed%2 == 0 {
		// A small disk: refusals, and recoveries that need the room a
		// generation a crash brought back still holds.
		dopts.Capacity = 16 << 10
	}
	r.disk = simfs.New(dopts)
	r.opts = storage.Options{
		SegmentSize: storage.TestSegSize, Cluster: "sim",
		Logger:       slog.New(slog.DiscardHandler),
		ChunkSize:    4096, // the smallest: files grow often
		CompactSlack: 256,
		FS:           r.disk,
		Now:          func() time.Time { return time.Unix(1, 0) },
	}
	r.w = storage.NewWorkload(seed, 3)
	r.shadow = paxos.NewAcceptor(storage.TestSegSize)
	r.lineage = []uint64{fingerprint(r.shadow)}
	return r
}
