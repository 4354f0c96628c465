package server

import (
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"sync"
	"time"

	"github.com/wormspace/wormspace/worm/paxos"
)

// Log is the durable record log the engine writes (worm/storage's Log
// satisfies it).
//
// Contract: Append only buffers and returns the log position after the
// records; Sync makes everything appended so far durable and returns that
// position; Append and Sync may run concurrently. Reserve(n) fails (with an
// error wrapping ErrNoSpace-like conditions) when n more bytes cannot be
// stored, before anything changes. Once Sync fails the log is unusable.
type Log interface {
	Reserve(n int) error
	Append(recs []paxos.Record) (end uint64, err error)
	Sync() (durable uint64, err error)
}

// Compactor is optionally implemented by a Log that can reclaim the space
// of superseded records (worm/storage's Log does). The engine asks
// ShouldCompact after every trim and every compactEvery mutations, with its
// lock held and the acceptor's current live size; on yes it calls Compact
// with the acceptor's Snapshot, still under its lock, so that no Append
// interleaves. Compact errors are not fatal (the old records stay in
// charge); the engine retries at the next check.
type Compactor interface {
	ShouldCompact(liveBytes int64) bool
	Compact(snapshot func(emit func(paxos.Record) error) error) error
}

// CheapSyncer is optionally implemented by a Log whose Sync does not wait
// for the device (worm/storage in volatile mode). With it, a request that
// must wait for a sync and finds none running leads one on its own
// goroutine, saving the hand-off to the sync goroutine and back; with a
// Log that fsyncs, Handle never blocks on Sync.
type CheapSyncer interface {
	SyncIsCheap() bool
}

// compactEvery is how many mutating requests pass between two
// ShouldCompact checks when no trim arrives.
const compactEvery = 4096

// StatsLog is optionally implemented by a Log that reports statistics
// (files, bytes, syncs...). Stats must be safe to call concurrently with
// Append and Sync; its result is rendered as JSON in the server's status
// document. A Log whose Stats method returns a concrete type instead of
// any (worm/storage's Stats() Stats) is accepted too (see
// Engine.LogStats).
type StatsLog interface {
	Stats() any
}

// Replier receives the engine's responses. One Replier usually stands for
// one client connection; tag is the opaque value the caller passed to
// Handle (the server uses it as a slot number that remembers the wire
// request id), so that no per-request closure is needed.
//
// Ordering and context: Reply and Abandon are called exactly once per
// Handle (never for KindDecide), from the caller's goroutine or the
// engine's sync goroutine, possibly with the engine's lock held: they must
// not block and must not call back into the Engine. resp and its slices
// are valid only during the call (encode, do not keep).
//
// Failure contract: Abandon(tag) means the response will never be sent
// because the storage failed before it was durable; the client is left to
// time out, which is the truth (the outcome is unknown).
type Replier interface {
	Reply(tag uint64, resp *paxos.Response)
	Abandon(tag uint64)
}

// Engine serialises requests into the acceptor and releases replies after
// durability.
type Engine struct {
	log    Log
	logger *slog.Logger

	// fsync measures the duration of every Log.Sync (seconds).
	fsync histogram

	mu      sync.Mutex
	acc     *paxos.Acceptor
	memb    membState // the server's membership in the configurations (membership.go)
	onWrite WriteHook // notification hook, may be nil
	recs    []paxos.Record
	end     uint64 // log position after the last appended record
	waiting []pending
	failed  error
	closed  bool
	synced  uint64 // log position known durable
	// mutations counts mutating requests since the last compaction
	// check; syncWanted asks the sync loop for a sync no reply waits for
	// (after a compaction); compactions counts them.
	mutations  int
	syncWanted bool
	// inlineSync: the Log is a CheapSyncer that says so; then syncing
	// tells whether a goroutine (a request's leader or the sync loop) is
	// in or about to enter syncOnce, and new requests only queue.
	inlineSync  bool
	syncing     bool
	compactions uint64
	// refused counts requests refused because the log could not reserve
	// room; refusedLogged rate-limits the warning.
	refused       uint64
	refusedLogged time.Time
	syncs         uint64

	// Adaptive group commit (gather.go), with a Log that fsyncs: gc is
	// the policy, gather its estimator, inSync tells whether syncOnce is
	// running, and leader is the arrival of a burst's first reply whose
	// sync the sync goroutine has not started yet (leading says there is
	// one). gathered counts the syncs that waited for followers.
	gc       GroupCommit
	gather   gatherer
	inSync   bool
	leading  bool
	leader   time.Time
	gathered uint64

	// syncMu serializes syncOnce: with inline syncs a request's own
	// goroutine leads a sync while the sync loop may be kicked at the same
	// time (a compaction, a kick left in the channel); both would release
	// replies from released, which only the holder of syncMu may touch.
	syncMu   sync.Mutex
	released []pending // syncOnce's scratch: replies being released (syncMu)

	kick chan struct{}
	done chan struct{}
	wg   sync.WaitGroup
}

// pending is a reply (to != nil) or a write notification (to == nil)
// waiting for the log to be durable up to need.
type pending struct {
	need uint64
	to   Replier
	tag  uint64
	resp *respBuf
	seg  uint64
	off  uint32
	note *writeNote
}

// ErrStopped is the reason given (StatusError) for requests after Close.
var ErrStopped = errors.New("server: engine stopped")

// NewEngine starts an engine over acc (already recovered from log).
// onWrite, if not nil, is called for every run of registers that accepted
// a value, once the records of that write are durable, in log order and
// after the reply to the accept was released (see SetOnWrite).
func NewEngine(acc *paxos.Acceptor, log Log, logger *slog.Logger, onWrite WriteHook) *Engine {
	if logger == nil {
		logger = slog.Default()
	}
	e := &Engine{acc: acc, log: log, logger: logger, onWrite: onWrite, kick: make(chan struct{}, 1), done: make(chan struct{})}
	if c, ok := log.(CheapSyncer); ok && c.SyncIsCheap() {
		e.inlineSync = true
	}
	e.fsync.init(fsyncBuckets)
	e.initMembership()
	e.wg.Add(1)
	go e.syncLoop()
	return e
}

// SetGroupCommit chooses how syncs are scheduled (GroupCommitAdaptive
// unless set). It matters only with a Log that fsyncs; call it before the
// engine handles requests.
func (e *Engine) SetGroupCommit(gc GroupCommit) {
	e.mu.Lock()
	e.gc = gc
	e.leading = false
	e.mu.Unlock()
}

// SetOnWrite replaces the write notification hook (the Server installs its
// own). fn is called from the sync goroutine or with the engine lock held;
// it must not block and must not call back into the Engine.
func (e *Engine) SetOnWrite(fn WriteHook) {
	e.mu.Lock()
	e.onWrite = fn
	e.mu.Unlock()
}

// mutating reports whether a request kind can change acceptor state.
func mutating(k paxos.Kind) bool {
	switch k {
	case paxos.KindPrepare, paxos.KindPrepareSeg, paxos.KindAccept, paxos.KindDecide, paxos.KindTrim:
		return true
	}
	return false
}

// estimate bounds the encoded size of the records req can produce.
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

// Handle applies req and arranges for to.Reply(tag, resp) to be called
// once the response may leave the server: after the Log is durable up to
// every record appended before the response was computed (this request's
// and any earlier one's, since the response may reveal them). KindDecide
// is never answered. req is only read during the call. A request whose
// records cannot be stored is answered StatusError at once with state
// unchanged; after Close or a storage failure every request is answered
// StatusError.
//
// Handle does not allocate in steady state. It is HandleAt for epoch 0,
// the initial configuration.
func (e *Engine) Handle(req *paxos.Request, to Replier, tag uint64) {
	e.HandleAt(0, req, to, tag)
}

// HandleAt is Handle for a request issued under configuration epoch (the
// epoch its connection is bound to): a request of an epoch the server
// does not serve (see SetMembership) is answered StatusSealed at once,
// with nothing changed.
func (e *Engine) HandleAt(epoch uint64, req *paxos.Request, to Replier, tag uint64) {
	resp := respPool.Get().(*respBuf)
	defer respPool.Put(resp)
	r := &resp.resp
	e.mu.Lock()
	if e.failed != nil || e.closed {
		reason := ErrStopped
		if e.failed != nil {
			reason = e.failed
		}
		e.mu.Unlock()
		if req.Kind != paxos.KindDecide {
			*r = paxos.Response{Kind: req.Kind, Status: paxos.StatusError, Text: reason.Error()}
			to.Reply(tag, r)
		}
		return
	}
	if !e.memb.serves(epoch) {
		e.mu.Unlock()
		if req.Kind != paxos.KindDecide {
			*r = paxos.Response{Kind: req.Kind, Status: paxos.StatusSealed}
			to.Reply(tag, r)
		}
		return
	}
	if mutating(req.Kind) {
		if err := e.log.Reserve(estimate(req)); err != nil {
			e.refused++
			if now := time.Now(); now.Sub(e.refusedLogged) > 10*time.Second {
				e.refusedLogged = now
				e.logger.Warn("storage refuses new state (disk full?): answering writes with an error; reads are still served", "err", err, "refused_so_far", e.refused)
			}
			e.mu.Unlock()
			if req.Kind != paxos.KindDecide {
				*r = paxos.Response{Kind: req.Kind, Status: paxos.StatusError, Text: "storage: " + err.Error()}
				to.Reply(tag, r)
			}
			return
		}
	}
	e.recs = e.acc.Handle(req, r, e.recs[:0])
	notify := false
	if len(e.recs) > 0 {
		end, err := e.log.Append(e.recs)
		if err != nil {
			e.failLocked(fmt.Errorf("storage append: %w", err))
			text := e.failed.Error()
			e.mu.Unlock()
			if req.Kind != paxos.KindDecide {
				*r = paxos.Response{Kind: req.Kind, Status: paxos.StatusError, Text: text}
				to.Reply(tag, r)
			}
			return
		}
		e.end = end
		notify = e.onWrite != nil && req.Kind == paxos.KindAccept
	}
	if mutating(req.Kind) {
		e.mutations++
		if req.Kind == paxos.KindTrim || e.mutations >= compactEvery {
			e.maybeCompactLocked()
		}
	}
	need := e.end
	if len(e.waiting) == 0 && e.synced >= need {
		// Nothing to wait for. r aliases the acceptor's scratch space:
		// reply before the next request may overwrite it.
		if req.Kind != paxos.KindDecide {
			to.Reply(tag, r)
		}
		if notify {
			e.notifyAccepted(req, r, need, false)
		}
		e.mu.Unlock()
		return
	}
	if req.Kind != paxos.KindDecide {
		if !e.inlineSync && e.gc == GroupCommitAdaptive {
			now := time.Now()
			if e.gather.arrival(now, len(e.waiting) == 0 && !e.inSync) {
				e.leading, e.leader = true, now
			}
		}
		// Detach the response from the acceptor's scratch space.
		p := respPool.Get().(*respBuf)
		p.copyFrom(r)
		e.waiting = append(e.waiting, pending{need: need, to: to, tag: tag, resp: p})
		if h, ok := to.(Holder); ok {
			h.Hold(tag, &p.resp)
		}
	}
	if notify {
		e.notifyAccepted(req, r, need, true)
	}
	if !e.inlineSync {
		e.mu.Unlock()
		select {
		case e.kick <- struct{}{}:
		default:
		}
		return
	}
	if e.syncing {
		// A sync is running or about to: it (or the one after it)
		// covers this request.
		e.mu.Unlock()
		return
	}
	// Nobody is syncing: this goroutine leads one sync itself, which
	// saves waking the sync goroutine (the common case with few
	// clients). Requests that arrive meanwhile share it or the next one,
	// which the sync goroutine runs, so a leader never syncs for others
	// more than once and its own connection is not starved.
	e.syncing = true
	e.mu.Unlock()
	e.syncOnce()
	e.mu.Lock()
	more := len(e.waiting) > 0 || e.syncWanted
	if !more {
		e.syncing = false
	}
	e.mu.Unlock()
	if more {
		select {
		case e.kick <- struct{}{}:
		default:
		}
	}
}

// notifyAccepted reports the runs of registers of an accept that took a
// value: at once, or queued behind the reply when queue is set.
func (e *Engine) notifyAccepted(req *paxos.Request, resp *paxos.Response, need uint64, queue bool) {
	emit := func(off, count uint32) {
		vals := req.Values[off-req.Off : off-req.Off+count]
		if queue {
			e.waiting = append(e.waiting, pending{need: need, seg: req.Seg, off: off, note: newWriteNote(req.Ballot, vals)})
		} else {
			e.onWrite(req.Seg, off, req.Ballot, vals)
		}
	}
	start := -1
	for i, r := range resp.Results {
		if r.Status == paxos.StatusOK {
			if start < 0 {
				start = i
			}
			continue
		}
		if start >= 0 {
			emit(req.Off+uint32(start), uint32(i-start))
			start = -1
		}
	}
	if start >= 0 {
		emit(req.Off+uint32(start), uint32(len(resp.Results)-start))
	}
}

func (e *Engine) failLocked(err error) {
	if e.failed == nil {
		e.failed = err
		e.logger.Error("storage failed; the server stops acknowledging", "err", err)
	}
}

func (e *Engine) syncLoop() {
	defer e.wg.Done()
	var timer *preciseTimer
	if !e.inlineSync {
		t, err := newPreciseTimer()
		if err != nil {
			e.logger.Warn("no precise timer: group commit does not wait for followers", "err", err)
		} else {
			timer = t
			defer timer.Close()
		}
	}
	for {
		stop := false
		select {
		case <-e.kick:
			if timer != nil && !e.awaitFollowers(timer) {
				stop = true
			}
		case <-e.done:
			// Close: flush what is waiting, then stop.
			stop = true
		}
		for e.syncOnce() {
		}
		if stop {
			return
		}
	}
}

// awaitFollowers holds the sync of a burst that just started for the
// followers its predecessors had (gather.go). It returns false if the
// engine is closing.
func (e *Engine) awaitFollowers(timer *preciseTimer) bool {
	e.mu.Lock()
	if !e.leading {
		e.mu.Unlock()
		return true
	}
	e.leading = false
	until, want := e.gather.plan(e.leader)
	e.mu.Unlock()
	wait := time.Until(until)
	if want == 0 || wait <= 0 {
		return true
	}
	select { // an expiry left over from a wait cut short
	case <-timer.C:
	default:
	}
	timer.Reset(wait)
	defer timer.Stop()
	for {
		select {
		case <-e.kick:
			e.mu.Lock()
			enough := !e.gather.open || e.gather.followers >= want
			e.mu.Unlock()
			if enough {
				e.countGathered()
				return true
			}
		case <-timer.C:
			e.countGathered()
			return true
		case <-e.done:
			return false
		}
	}
}

func (e *Engine) countGathered() {
	e.mu.Lock()
	e.gathered++
	e.mu.Unlock()
}

// syncOnce runs one Sync if anything is waiting and releases what it
// covers. It reports whether it did anything.
// maybeCompactLocked compacts the log when it holds much more than the
// live state. e.mu is held.
func (e *Engine) maybeCompactLocked() {
	e.mutations = 0
	c, ok := e.log.(Compactor)
	if !ok || !c.ShouldCompact(e.acc.LiveBytes()) {
		return
	}
	t0 := time.Now()
	if err := c.Compact(e.acc.Snapshot); err != nil {
		e.logger.Warn("storage compaction failed; retrying later", "err", err)
		return
	}
	e.compactions++
	e.logger.Info("storage compacted", "live_bytes", e.acc.LiveBytes(), "took", time.Since(t0).Round(time.Microsecond))
	// The snapshot becomes durable (and the old records removable) with
	// the next sync, which must come even if no reply waits for it.
	e.syncWanted = true
	select {
	case e.kick <- struct{}{}:
	default:
	}
}

func (e *Engine) syncOnce() bool {
	e.syncMu.Lock()
	defer e.syncMu.Unlock()
	e.mu.Lock()
	if (len(e.waiting) == 0 && !e.syncWanted) || e.failed != nil {
		e.syncing = false
		e.mu.Unlock()
		return false
	}
	e.syncing = true
	e.syncWanted = false
	e.inSync = true
	e.mu.Unlock()
	t0 := time.Now()
	durable, err := e.log.Sync()
	took := time.Since(t0)
	e.fsync.observe(took)
	e.mu.Lock()
	e.inSync = false
	e.gather.synced(took)
	if err != nil {
		e.failLocked(fmt.Errorf("storage sync: %w", err))
		// Replies that were waiting must never be sent: their records may
		// not be durable. Their clients see timeouts (unknown outcome),
		// which is the truth.
		e.released = append(e.released[:0], e.waiting...)
		clear(e.waiting)
		e.waiting = e.waiting[:0]
		e.mu.Unlock()
		for i := range e.released {
			p := &e.released[i]
			if p.to != nil {
				p.to.Abandon(p.tag)
				respPool.Put(p.resp)
			}
		}
		clear(e.released)
		return false
	}
	if durable > e.synced {
		e.synced = durable
	}
	i := 0
	for i < len(e.waiting) && e.waiting[i].need <= e.synced {
		i++
	}
	e.released = append(e.released[:0], e.waiting[:i]...)
	n := copy(e.waiting, e.waiting[i:])
	clear(e.waiting[n:])
	e.waiting = e.waiting[:n]
	e.syncs++
	onWrite := e.onWrite
	e.mu.Unlock()
	for j := range e.released {
		p := &e.released[j]
		if p.to != nil {
			p.to.Reply(p.tag, &p.resp.resp)
			respPool.Put(p.resp)
		} else if p.note != nil {
			if onWrite != nil {
				onWrite(p.seg, p.off, p.note.ballot, p.note.vals)
			}
			p.note.release()
		}
	}
	clear(e.released)
	return true
}

// EngineStats is a snapshot of the engine's counters.
type EngineStats struct {
	Syncs           uint64 `json:"syncs"`            // completed Log.Sync calls
	Gathered        uint64 `json:"gathered"`         // syncs held for a burst's followers (adaptive group commit)
	GroupCommit     string `json:"group_commit"`     // adaptive or immediate (see GroupCommit)
	Durable         uint64 `json:"durable"`          // log position known durable
	Appended        uint64 `json:"appended"`         // log position after the last append
	Waiting         int    `json:"waiting"`          // replies and notifications waiting for a sync
	LiveBytes       int64  `json:"live_bytes"`       // approximate size of the live acceptor state
	LiveSegments    int    `json:"live_segments"`    // segments holding state
	TrimmedSegments int    `json:"trimmed_segments"` // segments trimmed
	Compactions     uint64 `json:"compactions"`      // storage compactions done
	Refused         uint64 `json:"refused"`          // requests refused for lack of storage room
	Failed          string `json:"failed,omitempty"` // the storage failure, if any
}

// Stats returns a snapshot of the engine's counters.
func (e *Engine) Stats() EngineStats {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := EngineStats{Syncs: e.syncs, Gathered: e.gathered, GroupCommit: e.gc.String(), Durable: e.synced, Appended: e.end, Waiting: len(e.waiting), LiveBytes: e.acc.LiveBytes(), Compactions: e.compactions, Refused: e.refused}
	s.LiveSegments, s.TrimmedSegments = e.acc.Segments()
	if e.failed != nil {
		s.Failed = e.failed.Error()
	}
	return s
}

// LogStats returns the Log's own statistics: the result of its Stats
// method when it has one taking no argument and returning one value
// (StatsLog, or any concrete result type), else nil.
func (e *Engine) LogStats() any {
	if sl, ok := e.log.(StatsLog); ok {
		return sl.Stats()
	}
	m := reflect.ValueOf(e.log).MethodByName("Stats")
	if !m.IsValid() || m.Type().NumIn() != 0 || m.Type().NumOut() != 1 {
		return nil
	}
	return m.Call(nil)[0].Interface()
}

// SegmentSize returns the acceptor's number of data registers per segment.
func (e *Engine) SegmentSize() uint32 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.acc.SegmentSize()
}

// IsTrimmed reports whether seg is trimmed.
func (e *Engine) IsTrimmed(seg uint64) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.acc.IsTrimmed(seg)
}

// Failed returns the storage failure that stopped the engine, or nil.
func (e *Engine) Failed() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.failed
}

// Close refuses further requests (StatusError), flushes the replies that
// are waiting (one last Sync; they are abandoned if it fails) and stops
// the sync goroutine. It is idempotent.
func (e *Engine) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		e.wg.Wait()
		return nil
	}
	e.closed = true
	e.mu.Unlock()
	close(e.done)
	e.wg.Wait()
	return nil
}

// respBuf is a Response together with the storage its slices point into,
// so that a response waiting for durability owns its bytes without
// allocating in steady state.
type respBuf struct {
	resp      paxos.Response
	vals      []byte
	regs      []paxos.RegState
	contended []uint32
	results   []paxos.RegResult
}

// maxPooledValues bounds the value storage a pooled respBuf keeps.
const maxPooledValues = 1 << 20

var respPool = sync.Pool{New: func() any { return new(respBuf) }}

// copyFrom makes b.resp a deep copy of r that aliases nothing of r,
// reusing b's storage. nil and non-nil empty values are preserved.
func (b *respBuf) copyFrom(r *paxos.Response) {
	n := len(r.Reg.Value)
	for i := range r.Regs {
		n += len(r.Regs[i].Value)
	}
	for i := range r.Results {
		n += len(r.Results[i].Value)
	}
	if cap(b.vals) < n || b.vals == nil || cap(b.vals) > maxPooledValues && n < maxPooledValues {
		b.vals = make([]byte, 0, max(n, 64))
	}
	vals := b.vals[:0]
	dup := func(v []byte) []byte {
		if v == nil {
			return nil
		}
		start := len(vals)
		vals = append(vals, v...)
		return vals[start:len(vals):len(vals)]
	}
	b.resp = *r
	b.resp.Reg.Value = dup(r.Reg.Value)
	if r.Regs != nil {
		b.regs = append(b.regs[:0], r.Regs...)
		for i := range b.regs {
			b.regs[i].Value = dup(b.regs[i].Value)
		}
		b.resp.Regs = b.regs
	}
	if r.Contended != nil {
		b.contended = append(b.contended[:0], r.Contended...)
		b.resp.Contended = b.contended
	}
	if r.Results != nil {
		b.results = append(b.results[:0], r.Results...)
		for i := range b.results {
			b.results[i].Value = dup(b.results[i].Value)
		}
		b.resp.Results = b.results
	}
}
