package sim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/wormspace/wormspace/worm/paxos"
	"github.com/wormspace/wormspace/worm/storage"
	"github.com/wormspace/wormspace/worm/storage/simfs"
)

// dataDir is each acceptor's data directory on its own simulated disk.
const dataDir = "/wormd"

// node is one wormserver: the real acceptor (worm/paxos) and the real
// storage log (worm/storage) on the acceptor's own simulated disk
// (worm/storage/simfs), joined by the rules of worm/server's Engine.
//
// The Engine itself cannot run here: NewEngine starts a sync goroutine
// that decides when group commits happen, which would make a run depend
// on the Go scheduler; and worm/server serves TCP, which this package must
// not import. node replicates only the Engine's storage rules, each one
// step of the simulation:
//
//   - a mutating request first Reserves room (refused with StatusError,
//     state unchanged, when storage cannot take it);
//   - the acceptor handles it and its records are Appended;
//   - the reply waits until a Sync covered everything appended before it
//     was computed (any earlier request's records too), and is released
//     in order; a reply that finds nothing waiting and everything synced
//     leaves at once (reads after a restart, for instance);
//   - a Sync is a separate event (the group commit), so the replies of
//     every request handled since the previous one share it;
//   - ShouldCompact is asked after every trim and every compactEvery
//     mutations, Compact runs with the acceptor's snapshot, and a sync
//     follows even if no reply waits for it;
//   - a failed Sync (or Append) stops the engine: waiting replies are
//     abandoned, later requests answered StatusError, until a restart.
type node struct {
	id   int
	disk *simfs.Disk
	opts storage.Options
	log  *storage.Log
	acc  *paxos.Acceptor
	down bool
	// failed is the storage failure that stopped the engine (not a
	// crash): requests are answered StatusError until a restart.
	failed error

	// The engine's state.
	recs       []paxos.Record
	end        uint64 // log position after the last Append
	synced     uint64 // log position the last Sync reported durable
	waiting    []held // replies waiting for a Sync, in order
	mutations  int    // mutating requests since the last compaction check
	syncWanted bool   // a compaction asks for a sync no reply waits for

	// Durability bookkeeping. The acceptor's lineage is the sequence of
	// states it went through, one per record, across restarts: a
	// recovery returns to one of them and the lineage is cut there.
	shadow  *paxos.Acceptor // replays each record singly
	lineage []uint64        // lineage[k]: fingerprint of the state after k records
	marks   []mark          // log position after each Append, with its lineage index
	kSent   int             // the latest state a reply that left depended on
	kSynced int             // the latest state storage reported durable (Sync, or Open)
	// uncounted holds accepts not yet counted towards "chosen": an
	// acceptance counts once the acceptor can no longer lose it (storage
	// reported it durable) or has revealed it (a reply depending on it
	// left). Until then a crash may take it back, as if never received.
	uncounted []pendingAccept
}

// held is a reply waiting for durability.
type held struct {
	m    *message // the response, ready to send
	need uint64   // log position that must be durable first
	k    int      // lineage index of the state the reply reveals
}

type mark struct {
	end uint64
	k   int
}

type pendingAccept struct {
	k   int
	rec paxos.Record
}

// compactEvery is the engine's interval between ShouldCompact checks when
// no trim arrives, scaled down (the engine's is 4096 mutations) so that
// compaction happens in runs of a few hundred requests.
const compactEvery = 32

// mutating reports whether a request kind can change acceptor state (as
// worm/server decides it).
func mutating(k paxos.Kind) bool {
	switch k {
	case paxos.KindPrepare, paxos.KindPrepareSeg, paxos.KindAccept, paxos.KindDecide, paxos.KindTrim:
		return true
	}
	return false
}

// estimate bounds the encoded size of the records req can produce (the
// engine's Reserve argument).
func estimate(req *paxos.Request) int {
	n := 64
	for _, v := range req.Values {
		n += 64 + len(v)
	}
	if req.Kind == paxos.KindDecide {
		n += 64 * int(req.Count)
	}
	return n
}

// fixedClock is the storage's clock: the identity file's creation time,
// the same in every run.
func fixedClock() time.Time { return time.Date(2019, 11, 20, 0, 0, 0, 0, time.UTC) }

// newNode creates acceptor i's disk and initialises its data directory.
func (s *Sim) newNode(i int) *node {
	cfg := s.cfg
	a := &node{id: i}
	dopts := simfs.Options{Seed: s.rng.Uint64(), Capacity: cfg.DiskCapacity}
	logger := slog.New(slog.DiscardHandler)
	if cfg.Trace != nil {
		dopts.Trace = func(line string) { s.trace("  acceptor %d disk: %s", i, line) }
		logger = slog.New(traceHandler{s: s, prefix: fmt.Sprintf("  acceptor %d ", i)})
	}
	a.disk = simfs.New(dopts)
	a.opts = storage.Options{
		SegmentSize: cfg.SegSize,
		Cluster:     "sim",
		Logger:      logger,
		// The smallest preallocation unit, so that files grow (and
		// preallocation can fail) within a run.
		ChunkSize: 4096,
		// Compact as soon as the log holds 1 KiB of garbage beyond twice
		// the live state (the default 8 MiB is never reached here).
		CompactSlack: 1024,
		FS:           a.disk,
		Now:          fixedClock,
		Volatile:     cfg.Control == ControlVolatile,
	}
	l, acc, err := storage.Open(dataDir, a.opts)
	if err != nil {
		panic(fmt.Sprintf("sim: initialising acceptor %d's fresh disk: %v", i, err))
	}
	a.log, a.acc = l, acc
	a.shadow = paxos.NewAcceptor(cfg.SegSize)
	a.lineage = []uint64{fingerprint(a.shadow)}
	a.disk.SetFaults(s.faults())
	return a
}

// faults are the disk faults of the configuration.
func (s *Sim) faults() simfs.Faults {
	if s.final {
		return simfs.Faults{IgnoreSync: s.cfg.Control == ControlLyingDisk, IgnoreSyncDir: s.cfg.Control == ControlNoDirSync}
	}
	return simfs.Faults{
		WriteErr:      s.cfg.WriteErr,
		SyncErr:       s.cfg.SyncErr,
		IgnoreSync:    s.cfg.Control == ControlLyingDisk,
		IgnoreSyncDir: s.cfg.Control == ControlNoDirSync,
	}
}

// dead reports whether acceptor i's machine crashed during the storage
// call just made (an armed crash struck), and if so takes it down.
func (s *Sim) dead(i int, what string) bool {
	a := s.accs[i]
	if !a.disk.Down() {
		return false
	}
	s.stats.MidOpCrashes++
	s.trace("acceptor %d crashed during %s", i, what)
	s.takeDown(i)
	return true
}

// handle is the engine's Handle for a request delivered to acceptor i.
func (s *Sim) handle(i int, m *message) error {
	a := s.accs[i]
	req := &m.req
	if a.failed != nil {
		s.replyError(i, m, a.failed.Error())
		return nil
	}
	if mutating(req.Kind) {
		if err := a.log.Reserve(estimate(req)); err != nil {
			if s.dead(i, "reserve") {
				return nil
			}
			s.stats.Refused++
			s.trace("  acceptor %d refuses %s: %v", i, req.Kind, err)
			s.replyError(i, m, "storage: "+err.Error())
			return nil
		}
	}
	var resp paxos.Response
	a.recs = a.acc.Handle(req, &resp, a.recs[:0])
	if s.cfg.Trace != nil {
		s.trace("  acceptor %d <- %s %d/%d b=%v n=%d tag=%d: %s %v (%d records)", i, req.Kind, req.Seg, req.Off, req.Ballot, len(req.Values), m.tag, resp.Status, resp.Results, len(a.recs))
	}
	if len(a.recs) > 0 {
		for _, rec := range a.recs {
			rec.Value = bytes.Clone(rec.Value)
			if err := a.shadow.Apply(rec); err != nil {
				return s.violation("records", "acceptor %d emitted a record it cannot replay: %v", i, err)
			}
			a.lineage = append(a.lineage, fingerprint(a.shadow))
			if rec.Kind == paxos.RecordAccept {
				a.uncounted = append(a.uncounted, pendingAccept{k: len(a.lineage) - 1, rec: rec})
			}
		}
		if fingerprint(a.acc) != a.lineage[len(a.lineage)-1] {
			return s.violation("records", "acceptor %d's records do not describe its state after %s", i, req.Kind)
		}
		end, err := a.log.Append(a.recs)
		if err != nil {
			if s.dead(i, "append") {
				return nil
			}
			s.fail(i, fmt.Errorf("storage append: %w", err))
			s.replyError(i, m, a.failed.Error())
			return nil
		}
		a.end = end
		a.marks = append(a.marks, mark{end, len(a.lineage) - 1})
		if req.Kind == paxos.KindTrim {
			if _, ok := s.trimmed[req.Seg]; !ok {
				s.trimmed[req.Seg] = s.step
			}
		}
	}
	if mutating(req.Kind) {
		a.mutations++
		if req.Kind == paxos.KindTrim || a.mutations >= compactEvery {
			if s.compact(i, false) {
				return nil // crashed during the compaction
			}
		}
	}
	if m.tag == 0 {
		return nil // a decide: never answered
	}
	out := &message{acceptor: i, client: m.client, op: m.op, tag: m.tag, resp: *resp.Clone()}
	k := len(a.lineage) - 1
	if s.cfg.Control == ControlReplyBeforeSync || len(a.waiting) == 0 && a.synced >= a.end ||
		s.cfg.Control == ControlOwnRecordsOnly && len(a.recs) == 0 {
		return s.send(i, out, k)
	}
	a.waiting = append(a.waiting, held{m: out, need: a.end, k: k})
	return nil
}

// replyError answers m with StatusError (state unchanged).
func (s *Sim) replyError(i int, m *message, text string) {
	if m.tag == 0 {
		return
	}
	s.net = append(s.net, &message{acceptor: i, client: m.client, op: m.op, tag: m.tag,
		resp: paxos.Response{Kind: m.req.Kind, Status: paxos.StatusError, Text: text}})
}

// send puts a reply of acceptor i that reveals its state at lineage index
// k on the network.
func (s *Sim) send(i int, m *message, k int) error {
	a := s.accs[i]
	a.kSent = max(a.kSent, k)
	s.net = append(s.net, m)
	return s.count(i)
}

// count counts the acceptances of acceptor i that can no longer be taken
// back.
func (s *Sim) count(i int) error {
	a := s.accs[i]
	k := max(a.kSent, a.kSynced)
	n := 0
	for n < len(a.uncounted) && a.uncounted[n].k <= k {
		n++
	}
	if n == 0 {
		return nil
	}
	var recs []paxos.Record
	for _, u := range a.uncounted[:n] {
		recs = append(recs, u.rec)
	}
	a.uncounted = a.uncounted[n:]
	return s.recordAccepts(i, recs)
}

// syncNode is the engine's group commit at acceptor i: one Sync for
// everything appended, then the replies it covers leave in order.
func (s *Sim) syncNode(i int) error {
	a := s.accs[i]
	a.syncWanted = false
	d, err := a.log.Sync()
	if s.dead(i, "sync") {
		return nil
	}
	if err != nil {
		s.fail(i, fmt.Errorf("storage sync: %w", err))
		return nil
	}
	s.stats.Syncs++
	a.synced = max(a.synced, d)
	n := 0
	for n < len(a.marks) && a.marks[n].end <= a.synced {
		a.kSynced = max(a.kSynced, a.marks[n].k)
		n++
	}
	a.marks = a.marks[n:]
	n = 0
	for n < len(a.waiting) && a.waiting[n].need <= a.synced {
		n++
	}
	release := a.waiting[:n]
	a.waiting = a.waiting[n:]
	s.trace("  acceptor %d synced to %d: %d replies released", i, d, len(release))
	for _, h := range release {
		if err := s.send(i, h.m, h.k); err != nil {
			return err
		}
	}
	return s.count(i)
}

// compact is the engine's compaction check (forced: compact regardless
// of ShouldCompact). It reports whether the acceptor crashed meanwhile.
func (s *Sim) compact(i int, force bool) bool {
	a := s.accs[i]
	a.mutations = 0
	if !force && !a.log.ShouldCompact(a.acc.LiveBytes()) {
		return false
	}
	err := a.log.Compact(sortedSnapshot(a.acc))
	if s.dead(i, "compaction") {
		return true
	}
	if err != nil {
		// Not fatal (the engine retries at its next check): the old
		// generation stays in charge.
		if !errors.Is(err, storage.ErrCompactPending) {
			s.stats.CompactFailed++
		}
		s.trace("  acceptor %d compaction failed: %v", i, err)
		return false
	}
	s.stats.Compactions++
	s.trace("  acceptor %d compacted (live %d bytes)", i, a.acc.LiveBytes())
	a.syncWanted = true
	return false
}

// fail stops acceptor i's engine after a storage failure: the replies
// waiting are abandoned (never sent: their records may not be durable).
func (s *Sim) fail(i int, err error) {
	a := s.accs[i]
	s.stats.StorageFailures++
	s.trace("acceptor %d storage failed, the engine stops: %v", i, err)
	a.failed = err
	a.waiting = nil
}

// takeDown marks acceptor i down after its machine crashed: its process
// state (acceptor, log, waiting replies) is gone, messages in flight to
// and from it are lost with its connections, and the clients' drivers see
// the connections break.
func (s *Sim) takeDown(i int) {
	a := s.accs[i]
	a.down = true
	a.log, a.acc, a.failed = nil, nil, nil
	a.waiting, a.marks = nil, nil
	s.stats.Crashes++
	kept := s.net[:0]
	for _, m := range s.net {
		if m.acceptor != i {
			kept = append(kept, m)
		}
	}
	s.net = kept
	for _, c := range s.clients {
		if c.cur != nil {
			c.cur.op.Fail(i)
			s.flush(c.cur)
		}
	}
}

// crash crashes acceptor i's machine now: a power failure or a process
// crash.
func (s *Sim) crash(i int, power bool) {
	a := s.accs[i]
	if power {
		s.stats.PowerLosses++
		a.disk.PowerLoss()
	} else {
		s.stats.Kills++
		a.disk.Kill()
	}
	s.trace("crash acceptor %d (power failure %v)", i, power)
	s.takeDown(i)
}

// restart boots acceptor i again: the real storage recovery over what its
// disk kept. The recovered state must be a state of its lineage at least
// as recent as every reply it sent and everything storage reported
// durable (the durability invariant).
func (s *Sim) restart(i int, armed bool) error {
	a := s.accs[i]
	a.disk.Restart()
	if armed {
		power := s.rng.Float64() < s.cfg.PowerLoss
		a.disk.ArmCrash(1+s.rng.IntN(8), power)
		s.trace("restart acceptor %d, crash armed (power failure %v)", i, power)
	}
	if s.cfg.Control == ControlUnsyncedRecovery {
		f := s.faults()
		f.IgnoreSync, f.IgnoreSyncDir = true, true
		a.disk.SetFaults(f)
	}
	l, acc, err := storage.Open(dataDir, a.opts)
	a.disk.SetFaults(s.faults())
	if a.disk.Down() {
		s.stats.RecoveryCrashes++
		s.trace("acceptor %d crashed during recovery: %v", i, err)
		return nil
	}
	if err != nil {
		if errors.Is(err, syscall.EIO) {
			s.trace("acceptor %d recovery failed on an injected I/O error: %v", i, err)
			return nil // stays down; tried again later
		}
		return s.violation("recovery", "acceptor %d: storage refused to recover after a crash: %v", i, err)
	}
	if err := s.checkRecovered(i, acc); err != nil {
		return err
	}
	st := l.Stats()
	if st.TailCut > 0 {
		s.stats.TornTails++
	}
	s.stats.Discarded += st.Discarded
	s.stats.Restarts++
	a.log, a.acc, a.down, a.failed = l, acc, false, nil
	a.end, a.synced, a.mutations, a.syncWanted = 0, 0, 0, false
	a.shadow = paxos.NewAcceptor(s.cfg.SegSize)
	if err := acc.Snapshot(a.shadow.Apply); err != nil {
		return s.violation("records", "acceptor %d: recovered snapshot does not replay: %v", i, err)
	}
	return s.count(i)
}

// checkRecovered is the durability invariant for a recovery of acceptor
// i, and cuts its lineage at the recovered state.
func (s *Sim) checkRecovered(i int, acc *paxos.Acceptor) error {
	a := s.accs[i]
	got := fingerprint(acc)
	need := max(a.kSent, a.kSynced)
	k := -1
	for j := len(a.lineage) - 1; j >= need; j-- {
		if a.lineage[j] == got {
			k = j
			break
		}
	}
	if k < 0 {
		for j := need - 1; j >= 0; j-- {
			if a.lineage[j] == got {
				return s.violation("durability", "acceptor %d recovered the state after %d of its records, but a reply it sent revealed the state after %d and storage reported the state after %d durable",
					i, j, a.kSent, a.kSynced)
			}
		}
		return s.violation("durability", "acceptor %d recovered a state that is not the state after any prefix of the %d records it appended", i, len(a.lineage)-1)
	}
	s.trace("restart acceptor %d: recovered the state after %d records (replies revealed %d, durable %d, appended %d)", i, k, a.kSent, a.kSynced, len(a.lineage)-1)
	a.lineage = a.lineage[:k+1]
	n := 0
	for n < len(a.uncounted) && a.uncounted[n].k <= k {
		n++
	}
	a.uncounted = a.uncounted[:n]
	// Open's contract: what it recovered is durable.
	a.kSynced = k
	return nil
}

// finalCheck cuts every acceptor's power at the end of the run, recovers
// it, and checks that every chosen register is still held by a majority:
// nothing a quorum acknowledged was lost.
func (s *Sim) finalCheck() error {
	// The run's counters describe the run, not this check.
	saved := s.stats
	defer func() { s.stats = saved }()
	s.final = true // no injected I/O errors: the last recovery must succeed
	for i, a := range s.accs {
		a.disk.SetFaults(s.faults())
		if !a.down {
			s.crash(i, true)
		} else {
			a.disk.PowerLoss()
		}
		if err := s.restart(i, false); err != nil {
			return err
		}
		if a.down {
			return s.violation("recovery", "acceptor %d did not recover at the end of the run", i)
		}
	}
	q := s.cfg.Acceptors/2 + 1
	for addr, ch := range s.chosen {
		if _, t := s.trimmed[addr.Seg]; t {
			continue
		}
		held := 0
		for _, a := range s.accs {
			var resp paxos.Response
			a.acc.Handle(&paxos.Request{Kind: paxos.KindRead, Seg: addr.Seg, Off: addr.Off}, &resp, nil)
			if resp.Status == paxos.StatusOK && resp.Reg.HasValue && bytes.Equal(resp.Reg.Value, ch.value) {
				held++
			}
		}
		if held < q {
			return s.violation("chosen-lost", "register %v chose %q at step %d, but after a power failure of every acceptor only %d hold it", addr, ch.value, ch.step, held)
		}
	}
	return nil
}

// sortedSnapshot emits acc's snapshot in a fixed order. The acceptor's own
// order follows map iteration; the bytes a compaction writes, and so the
// crash states of the disk, must be a function of the seed.
func sortedSnapshot(acc *paxos.Acceptor) func(emit func(paxos.Record) error) error {
	return func(emit func(paxos.Record) error) error {
		var recs []paxos.Record
		if err := acc.Snapshot(func(r paxos.Record) error {
			r.Value = bytes.Clone(r.Value)
			recs = append(recs, r)
			return nil
		}); err != nil {
			return err
		}
		// Trims first, then by segment; a segment's records keep their
		// order (registers in order, accept before decide).
		slices.SortStableFunc(recs, func(x, y paxos.Record) int {
			if tx, ty := x.Kind == paxos.RecordTrim, y.Kind == paxos.RecordTrim; tx != ty {
				if tx {
					return -1
				}
				return 1
			}
			switch {
			case x.Seg < y.Seg:
				return -1
			case x.Seg > y.Seg:
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

// fingerprint is a hash of acc's state: the sum of a hash of each of its
// snapshot records (one per register, range promise and trim, so the sum
// does not depend on their order).
func fingerprint(acc *paxos.Acceptor) uint64 {
	var sum uint64
	acc.Snapshot(func(r paxos.Record) error {
		h := uint64(14695981039346656037) // FNV-1a
		word := func(x uint64) {
			for range 8 {
				h = (h ^ (x & 0xff)) * 1099511628211
				x >>= 8
			}
		}
		word(uint64(r.Kind))
		word(r.Seg)
		word(uint64(r.Off))
		word(r.Ballot.Round)
		word(r.Ballot.Node)
		word(uint64(len(r.Value)))
		for _, c := range r.Value {
			h = (h ^ uint64(c)) * 1099511628211
		}
		// splitmix64's finaliser, so that sums of related hashes do not
		// cancel out.
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

// traceHandler sends storage's log records to the run's trace.
type traceHandler struct {
	s      *Sim
	prefix string
	attrs  []slog.Attr
}

func (h traceHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h traceHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	add := func(a slog.Attr) bool {
		if a.Key != "dir" {
			fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		}
		return true
	}
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(add)
	h.s.trace("%s%s", h.prefix, b.String())
	return nil
}

func (h traceHandler) WithAttrs(as []slog.Attr) slog.Handler {
	h.attrs = append(slices.Clip(h.attrs), as...)
	return h
}

func (h traceHandler) WithGroup(string) slog.Handler { return h }
