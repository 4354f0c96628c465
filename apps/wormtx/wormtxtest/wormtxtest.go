package wormtxtest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wormspace/wormspace/apps/wormtx"
	"github.com/wormspace/wormspace/worm"
)

// OpTimeout bounds each subtest.
var OpTimeout = 2 * time.Minute

// Open returns at least two fresh clients sharing one space.
type Open func(t *testing.T) []worm.Space

// Nemesis disturbs a space while the randomized subtest runs.
type Nemesis interface {
	// Disturb is called every few milliseconds with the clients' IDs.
	Disturb(rng *rand.Rand, ids []string)
	// Calm undoes every disturbance before the final checks.
	Calm(ids []string)
}

// Options tune RunWith.
type Options struct {
	Nemesis Nemesis
	// LossyListen says the Space may drop notifications (Lost): tests
	// that check what a listener hears at once then allow for a miss.
	LossyListen bool
	// NemesisWindow is how long the nemesis disturbs each seed (default
	// 200ms); the workload then finishes in calm.
	NemesisWindow time.Duration
	// Recovery is RecoverAfter in the subtests that need recovery to
	// happen (default 20ms); subtests that expect commits use a
	// recovery timeout far above any fault-free latency. Raise it for
	// slow clusters.
	Recovery time.Duration
	// Seeds is the number of randomized seeds (default 8).
	Seeds int
	// TxPerSeed is the number of concurrent transactions per seed
	// (default 12).
	TxPerSeed int
}

func (o Options) recovery() time.Duration {
	if o.Recovery <= 0 {
		return 20 * time.Millisecond
	}
	return o.Recovery
}

func (o Options) nemesisWindow() time.Duration {
	if o.NemesisWindow <= 0 {
		return 200 * time.Millisecond
	}
	return o.NemesisWindow
}

// Run runs the suite with default options.
func Run(t *testing.T, open Open) { RunWith(t, open, Options{}) }

// segment numbering: a random base per process, 1<<24 segments per
// subtest environment, handed out in ranges of 1<<12.
var (
	segBase = (rand.Uint64N(1<<28) + 1<<20) << 24
	segNext atomic.Uint64
)

// RunWith runs the suite.
func RunWith(t *testing.T, open Open, opts Options) {
	if opts.Seeds <= 0 {
		opts.Seeds = 8
	}
	if opts.TxPerSeed <= 0 {
		opts.TxPerSeed = 12
	}
	for _, c := range []struct {
		name string
		f    func(*env)
	}{
		{"CommitAllYes", testCommitAllYes},
		{"AbortOnNo", testAbortOnNo},
		{"RecoverMissingVote", testRecoverMissingVote},
		{"CarryOverYes", testCarryOverYes},
		{"ConcurrentRecoverers", testConcurrentRecoverers},
		{"InboxCommitAndCollect", testInboxCommitAndCollect},
		{"CoordinatorCrashBeforeAwait", testCoordinatorCrashBeforeAwait},
		{"CoordinatorCrashMidPost", testCoordinatorCrashMidPost},
		{"ParticipantCrashRestart", testParticipantCrashRestart},
		{"ConcurrentTransactions", testConcurrentTransactions},
		{"DirectCommitAndCollect", testDirectCommitAndCollect},
		{"DirectCoordinatorCrashMidPrepare", testDirectCoordinatorCrashMidPrepare},
		{"DirectCoordinatorCrashBeforeAwait", testDirectCoordinatorCrashBeforeAwait},
		{"DirectParticipantCrashRestart", testDirectParticipantCrashRestart},
		{"SharedTwoInOneSegment", testSharedTwoInOneSegment},
		{"SharedTrimAfterEveryTransaction", testSharedTrimAfterEveryTransaction},
		{"SharedRecoverMissingVote", testSharedRecoverMissingVote},
		{"SharedCoordinatorCrashBeforeAwait", testSharedCoordinatorCrashBeforeAwait},
		{"SharedParticipantCrashRestart", testSharedParticipantCrashRestart},
		{"RecordsCrashAfterVote", testRecordsCrashAfterVote},
		{"RecordsCrashBeforeVote", testRecordsCrashBeforeVote},
		{"RecordsAhead", testRecordsAhead},
	} {
		t.Run(c.name, func(t *testing.T) { c.f(setup(t, open, opts)) })
	}
	t.Run("Randomized", func(t *testing.T) { testRandomized(t, open, opts) })
	t.Run("RecordsRandomized", func(t *testing.T) { testRecordsRandomized(t, open, opts) })
}

type env struct {
	// recovery is RecoverAfter where a test needs recovery to happen.
	recovery time.Duration
	t        *testing.T
	ctx      context.Context
	c        []worm.Space
	base     uint64
	next     uint64
	lossy    bool // Options.LossyListen
}

func setup(t *testing.T, open Open, opts Options) *env {
	t.Helper()
	c := open(t)
	if len(c) < 2 {
		t.Fatalf("open returned %d clients; the suite needs at least 2", len(c))
	}
	if s := c[0].SegmentSize(); s < 16 {
		t.Fatalf("segment size %d; the suite needs at least 16", s)
	}
	ctx, cancel := context.WithTimeout(context.Background(), OpTimeout)
	t.Cleanup(cancel)
	return &env{t: t, ctx: ctx, c: c, base: segBase + segNext.Add(1)<<24, recovery: opts.recovery(), lossy: opts.LossyListen}
}

// client returns client i modulo the number of clients.
func (e *env) client(i int) worm.Space { return e.c[i%len(e.c)] }

// fast is the policy tests use: poll often, recover after d.
func fast(d time.Duration) wormtx.Policy {
	return wormtx.Policy{RecoverAfter: d, Poll: 5 * time.Millisecond}
}

// coordinator returns a coordinator on client i with its own segment
// range and, when dir is set, inbox posting.
func (e *env) coordinator(i int, dir wormtx.Directory, pol wormtx.Policy) *wormtx.Coordinator {
	e.next += 1 << 12
	return wormtx.NewCoordinator(e.client(i), wormtx.CoordinatorConfig{FirstSeg: e.base + e.next, Directory: dir, Policy: pol})
}

// directory assigns inboxes to names.
func (e *env) directory(names ...string) (wormtx.Directory, map[string]uint64) {
	m := map[string]uint64{}
	for _, n := range names {
		e.next += 1 << 12
		m[n] = e.base + e.next
	}
	return wormtx.StaticDirectory(m), m
}

func names(n int) []string {
	var s []string
	for i := range n {
		s = append(s, "p"+strconv.Itoa(i))
	}
	return s
}

func (e *env) begin(co *wormtx.Coordinator, parts []string) wormtx.Tx {
	e.t.Helper()
	id, err := co.Begin(e.ctx, parts, []byte("payload"))
	if err != nil {
		e.t.Fatalf("Begin: %v", err)
	}
	return wormtx.Tx{ID: id, Descriptor: wormtx.Descriptor{Participants: parts, Payload: []byte("payload")}}
}

func (e *env) vote(i int, tx wormtx.Tx, yes bool) wormtx.Vote {
	e.t.Helper()
	p := wormtx.NewParticipant(e.client(i), tx.Participants[i], wormtx.ParticipantConfig{})
	v, err := p.Vote(e.ctx, tx, yes)
	if err != nil {
		e.t.Fatalf("%s: Vote: %v", tx.Participants[i], err)
	}
	return v
}

// resolveAll resolves tx from every client and requires want.
func (e *env) resolveAll(tx wormtx.Tx, pol wormtx.Policy, want wormtx.Outcome) {
	e.t.Helper()
	for _, c := range e.c {
		o, err := wormtx.Resolve(e.ctx, c, tx.ID, pol)
		if err != nil || o != want {
			e.t.Fatalf("%s: Resolve(%v) = %v, %v; want %v", c.ID(), tx.ID, o, err, want)
		}
	}
}

func (e *env) status(tx wormtx.Tx) wormtx.Status {
	e.t.Helper()
	st, err := tx.Status(e.ctx, e.c[0])
	if err != nil {
		e.t.Fatalf("Status(%v): %v", tx.ID, err)
	}
	return st
}

func testCommitAllYes(e *env) {
	co := e.coordinator(0, nil, fast(-1))
	tx := e.begin(co, names(3))
	if st := e.status(tx); st.Outcome != wormtx.Pending {
		e.t.Fatalf("before any vote: %+v, want pending", st)
	}
	for i := range 3 {
		if v := e.vote(i, tx, true); v != wormtx.VoteYes {
			e.t.Fatalf("vote %d chosen %v, want yes", i, v)
		}
	}
	o, err := co.Await(e.ctx, tx.ID)
	if err != nil || o != wormtx.Commit {
		e.t.Fatalf("Await = %v, %v; want commit", o, err)
	}
	co.Close() // the coordinator's ack is written in the background
	// Recovery never turns a cast yes into no.
	e.resolveAll(tx, fast(0), wormtx.Commit)
	st := e.status(tx)
	if !slices.Equal(st.Votes, []wormtx.Vote{wormtx.VoteYes, wormtx.VoteYes, wormtx.VoteYes}) || st.Outcome != wormtx.Commit {
		e.t.Fatalf("status %+v", st)
	}
	if st.CoordinatorAck != wormtx.Commit {
		e.t.Fatalf("coordinator ack %v, want commit", st.CoordinatorAck)
	}
}

func testAbortOnNo(e *env) {
	co := e.coordinator(0, nil, fast(-1))
	tx := e.begin(co, names(3))
	e.vote(0, tx, true)
	e.vote(1, tx, false)
	// One no decides, even with a vote missing and no recovery.
	e.resolveAll(tx, fast(-1), wormtx.Abort)
	if v := e.vote(2, tx, true); v != wormtx.VoteYes {
		e.t.Fatalf("late yes chosen as %v", v)
	}
	e.resolveAll(tx, fast(-1), wormtx.Abort)
	if o, err := co.Await(e.ctx, tx.ID); err != nil || o != wormtx.Abort {
		e.t.Fatalf("Await = %v, %v; want abort", o, err)
	}
}

func testRecoverMissingVote(e *env) {
	co := e.coordinator(0, nil, fast(-1))
	tx := e.begin(co, names(3))
	e.vote(0, tx, true)
	e.vote(1, tx, true)
	// Without recovery the outcome is not decided: a bounded wait fails.
	ctx, cancel := context.WithTimeout(e.ctx, 30*time.Millisecond)
	o, err := wormtx.Resolve(ctx, e.client(1), tx.ID, fast(-1))
	cancel()
	if err == nil || !errors.Is(err, context.DeadlineExceeded) {
		e.t.Fatalf("Resolve without recovery = %v, %v; want deadline exceeded", o, err)
	}
	// With recovery, the missing vote becomes no.
	e.resolveAll(tx, fast(10*time.Millisecond), wormtx.Abort)
	st := e.status(tx)
	if st.Votes[2] != wormtx.VoteTimedOut || st.Decision != wormtx.Abort {
		e.t.Fatalf("status %+v; want vote 2 timed out and decision abort", st)
	}
	// The late participant learns its vote was taken.
	if v := e.vote(2, tx, true); v != wormtx.VoteTimedOut {
		e.t.Fatalf("late vote chosen as %v, want timed-out", v)
	}
}

func testCarryOverYes(e *env) {
	co := e.coordinator(0, nil, fast(-1))
	tx := e.begin(co, names(2))
	e.vote(0, tx, true)
	e.vote(1, tx, true)
	// A recoverer that runs at once captures nothing new: both yes votes
	// are chosen, whoever captures them.
	e.resolveAll(tx, fast(0), wormtx.Commit)
	if st := e.status(tx); st.Decision != wormtx.Pending && st.Decision != wormtx.Commit {
		e.t.Fatalf("decision %v", st.Decision)
	}
}

func testConcurrentRecoverers(e *env) {
	seed := uint64(time.Now().UnixNano())
	e.t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	for round := range 20 {
		co := e.coordinator(round, nil, fast(-1))
		tx := e.begin(co, names(3))
		intent := []bool{rng.IntN(4) != 0, rng.IntN(4) != 0, rng.IntN(4) != 0}
		delay := []time.Duration{time.Duration(rng.IntN(3000)) * time.Microsecond, time.Duration(rng.IntN(3000)) * time.Microsecond, time.Duration(rng.IntN(3000)) * time.Microsecond}
		var wg sync.WaitGroup
		chosen := make([]wormtx.Vote, 3)
		outs := make([]wormtx.Outcome, 8)
		errs := make([]error, 8+3)
		for i := range 3 {
			wg.Go(func() {
				time.Sleep(delay[i])
				p := wormtx.NewParticipant(e.client(i), tx.Participants[i], wormtx.ParticipantConfig{})
				chosen[i], errs[8+i] = p.Vote(e.ctx, tx, intent[i])
			})
		}
		for r := range 8 {
			wg.Go(func() {
				outs[r], errs[r] = wormtx.Resolve(e.ctx, e.client(r), tx.ID, fast(time.Duration(r)*300*time.Microsecond))
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			e.t.Fatalf("round %d: %v", round, err)
		}
		st := e.status(tx)
		for r, o := range outs {
			if o != outs[0] {
				e.t.Fatalf("round %d: recoverer %d saw %v, recoverer 0 saw %v", round, r, o, outs[0])
			}
		}
		for i := range 3 {
			if chosen[i] != st.Votes[i] {
				e.t.Fatalf("round %d: participant %d was told %v, register holds %v", round, i, chosen[i], st.Votes[i])
			}
			if chosen[i] == wormtx.VoteYes && !intent[i] || chosen[i] == wormtx.VoteNo && intent[i] {
				e.t.Fatalf("round %d: participant %d intended yes=%v, chosen %v", round, i, intent[i], chosen[i])
			}
		}
		if want := wormtx.OutcomeOf(st.Votes); outs[0] != want {
			e.t.Fatalf("round %d: outcome %v, votes %v say %v", round, outs[0], st.Votes, want)
		}
		if outs[0] == wormtx.Commit && slices.Contains(intent, false) {
			e.t.Fatalf("round %d: commit with a no intent %v", round, intent)
		}
	}
}

// ----- inbox-driven tests (Participant.Run with a recording Resource) -----

// Recorder is a Resource that records votes and applied outcomes and
// checks that a transaction is never applied with two outcomes. It is
// Recoverable (what it records stands for durable state: it survives a
// participant's simulated crash). It is exported for tests of
// applications built on WormTX.
type Recorder struct {
	Name string
	// VoteFn decides the vote of a transaction Prepare has not seen; nil
	// votes yes.
	VoteFn func(wormtx.TxID) bool

	mu       sync.Mutex
	votes    map[wormtx.TxID]bool
	descs    map[wormtx.TxID]wormtx.Descriptor
	applied  map[wormtx.TxID]wormtx.Outcome
	problems []string
	// Transactions prepared by PrepareRecord (volatile: Crash drops them
	// unless applied), how many calls each kind of prepare had, and which
	// transactions Restore brought back.
	recorded          map[wormtx.TxID]bool
	nPrepare, nRecord int
	restored          map[wormtx.TxID]bool
	// Crash takes life exclusively and bumps epoch; an Incarnation's
	// calls hold it shared and fail once their epoch is gone.
	life  sync.RWMutex
	epoch int
}

// errDeadIncarnation: a call from an incarnation that Crash ended.
var errDeadIncarnation = errors.New("wormtxtest: the participant's incarnation crashed")

// Incarnation returns the Recorder as one incarnation of its participant
// sees it: after Crash, its calls fail (a dead process makes none), so a
// goroutine of a crashed incarnation that is still winding down cannot
// leave state behind.
func (r *Recorder) Incarnation() wormtx.Restorable {
	r.life.RLock()
	defer r.life.RUnlock()
	return &incarnationRes{r: r, epoch: r.epoch}
}

type incarnationRes struct {
	r     *Recorder
	epoch int
}

func (v *incarnationRes) enter() error {
	v.r.life.RLock()
	if v.r.epoch != v.epoch {
		v.r.life.RUnlock()
		return errDeadIncarnation
	}
	return nil
}

func (v *incarnationRes) Prepared(ctx context.Context) ([]wormtx.Tx, error) {
	if err := v.enter(); err != nil {
		return nil, err
	}
	defer v.r.life.RUnlock()
	return v.r.Prepared(ctx)
}

func (v *incarnationRes) Prepare(ctx context.Context, tx wormtx.TxID, d wormtx.Descriptor) (bool, error) {
	if err := v.enter(); err != nil {
		return false, err
	}
	defer v.r.life.RUnlock()
	return v.r.Prepare(ctx, tx, d)
}

func (v *incarnationRes) PrepareRecord(ctx context.Context, tx wormtx.TxID, d wormtx.Descriptor) (bool, []byte, error) {
	if err := v.enter(); err != nil {
		return false, nil, err
	}
	defer v.r.life.RUnlock()
	return v.r.PrepareRecord(ctx, tx, d)
}

func (v *incarnationRes) Restore(ctx context.Context, tx wormtx.TxID, d wormtx.Descriptor, rec []byte) error {
	if err := v.enter(); err != nil {
		return err
	}
	defer v.r.life.RUnlock()
	return v.r.Restore(ctx, tx, d, rec)
}

func (v *incarnationRes) Apply(ctx context.Context, tx wormtx.TxID, o wormtx.Outcome) error {
	if err := v.enter(); err != nil {
		return err
	}
	defer v.r.life.RUnlock()
	return v.r.Apply(ctx, tx, o)
}

// describe tells what r holds of tx, for failure messages.
func (r *Recorder) describe(tx wormtx.TxID) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	v, voted := r.votes[tx]
	o, applied := r.applied[tx]
	return fmt.Sprintf("vote %v (held %v), by PrepareRecord %v, restored %v, applied %v (%v), epoch %d", v, voted, r.recorded[tx], r.restored[tx], applied, o, r.epoch)
}

// Pending returns the transactions prepared (or restored) and not
// applied: locks still held.
func (r *Recorder) Pending() []wormtx.TxID {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []wormtx.TxID
	for tx := range r.votes {
		if _, ok := r.applied[tx]; !ok {
			out = append(out, tx)
		}
	}
	return out
}

var _ wormtx.Restorable = (*Recorder)(nil)

// Prepared implements wormtx.Recoverable: the transactions prepared with
// Prepare (durable) and not applied.
func (r *Recorder) Prepared(context.Context) ([]wormtx.Tx, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []wormtx.Tx
	for tx, d := range r.descs {
		if _, ok := r.applied[tx]; !ok && !r.recorded[tx] {
			out = append(out, wormtx.Tx{ID: tx, Descriptor: d})
		}
	}
	return out, nil
}

// PrepareRecord implements wormtx.Restorable: Prepare whose vote lives in
// memory only (Crash loses it) and whose record names the participant.
func (r *Recorder) PrepareRecord(ctx context.Context, tx wormtx.TxID, d wormtx.Descriptor) (bool, []byte, error) {
	r.mu.Lock()
	_, known := r.votes[tx]
	r.nRecord++
	r.mu.Unlock()
	v, err := r.prepare(tx, d)
	if err != nil {
		return false, nil, err
	}
	r.mu.Lock()
	if !known {
		if r.recorded == nil {
			r.recorded = map[wormtx.TxID]bool{}
		}
		r.recorded[tx] = true
	}
	r.mu.Unlock()
	return v, []byte("rec:" + r.Name), nil
}

// Restore implements wormtx.Restorable.
func (r *Recorder) Restore(_ context.Context, tx wormtx.TxID, d wormtx.Descriptor, rec []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if string(rec) != "rec:"+r.Name {
		r.problems = append(r.problems, fmt.Sprintf("%s: %v restored from record %q", r.Name, tx, rec))
	}
	if d.Index(r.Name) < 0 {
		r.problems = append(r.problems, fmt.Sprintf("%s: %v restored with a descriptor that does not name it", r.Name, tx))
	}
	if r.restored == nil {
		r.restored = map[wormtx.TxID]bool{}
	}
	r.restored[tx] = true
	if _, ok := r.applied[tx]; ok {
		return nil
	}
	if r.votes == nil {
		r.votes, r.descs, r.recorded = map[wormtx.TxID]bool{}, map[wormtx.TxID]wormtx.Descriptor{}, map[wormtx.TxID]bool{}
	}
	r.votes[tx] = true
	r.descs[tx] = wormtx.Descriptor{Participants: slices.Clone(d.Participants), Payload: slices.Clone(d.Payload)}
	r.recorded[tx] = true
	return nil
}

// Crash drops what PrepareRecord kept in memory and is not applied, as a
// process crash would; it returns how many transactions it dropped.
func (r *Recorder) Crash() int {
	r.life.Lock()
	defer r.life.Unlock()
	r.epoch++
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for tx := range r.recorded {
		if _, ok := r.applied[tx]; !ok {
			delete(r.votes, tx)
			delete(r.descs, tx)
			delete(r.recorded, tx)
			n++
		}
	}
	return n
}

// Restored reports whether Restore brought tx back.
func (r *Recorder) Restored(tx wormtx.TxID) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.restored[tx]
}

// Prepares returns how many times Prepare and PrepareRecord were called.
func (r *Recorder) Prepares() (durable, record int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.nPrepare, r.nRecord
}

// Prepare implements wormtx.Resource.
func (r *Recorder) Prepare(_ context.Context, tx wormtx.TxID, d wormtx.Descriptor) (bool, error) {
	r.mu.Lock()
	r.nPrepare++
	r.mu.Unlock()
	return r.prepare(tx, d)
}

func (r *Recorder) prepare(tx wormtx.TxID, d wormtx.Descriptor) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.votes == nil {
		r.votes = map[wormtx.TxID]bool{}
	}
	if v, ok := r.votes[tx]; ok {
		return v, nil
	}
	if d.Index(r.Name) < 0 {
		r.problems = append(r.problems, fmt.Sprintf("%s: asked to prepare %v, which does not name it", r.Name, tx))
	}
	v := r.VoteFn == nil || r.VoteFn(tx)
	r.votes[tx] = v
	if r.descs == nil {
		r.descs = map[wormtx.TxID]wormtx.Descriptor{}
	}
	r.descs[tx] = wormtx.Descriptor{Participants: slices.Clone(d.Participants), Payload: slices.Clone(d.Payload)}
	return v, nil
}

// Apply implements wormtx.Resource.
func (r *Recorder) Apply(_ context.Context, tx wormtx.TxID, o wormtx.Outcome) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.applied == nil {
		r.applied = map[wormtx.TxID]wormtx.Outcome{}
	}
	if old, ok := r.applied[tx]; ok && old != o {
		r.problems = append(r.problems, fmt.Sprintf("%s: %v applied as %v and as %v", r.Name, tx, old, o))
	}
	if v, ok := r.votes[tx]; o == wormtx.Commit && (!ok || !v) {
		r.problems = append(r.problems, fmt.Sprintf("%s: %v committed without a yes vote here", r.Name, tx))
	}
	r.applied[tx] = o
	return nil
}

// Applied returns the outcome applied for tx (false when not applied).
func (r *Recorder) Applied(tx wormtx.TxID) (wormtx.Outcome, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	o, ok := r.applied[tx]
	return o, ok
}

// Problems returns the violations seen.
func (r *Recorder) Problems() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.problems)
}

// cluster is a set of running participants.
type cluster struct {
	e      *env
	dir    wormtx.Directory
	rec    map[string]*Recorder
	cfg    map[string]wormtx.ParticipantConfig
	cancel map[string]context.CancelFunc
	done   map[string]chan error
	idx    map[string]int

	// The running incarnations, for prepares sent directly.
	mu   sync.Mutex
	live map[string]*incarnation
	co   *wormtx.Coordinator
}

// sendAck is the participants' ParticipantConfig.SendAck: the message
// goes to the cluster's direct-mode coordinator, when there is one.
func (c *cluster) sendAck(name string) func(context.Context, wormtx.Tx, wormtx.Outcome) error {
	return func(_ context.Context, t wormtx.Tx, _ wormtx.Outcome) error {
		c.mu.Lock()
		co := c.co
		c.mu.Unlock()
		if co == nil {
			return errors.New("no coordinator to send the ack to")
		}
		co.Acked(t.ID, name)
		return nil
	}
}

type incarnation struct {
	p      *wormtx.Participant
	res    wormtx.Restorable // the Recorder as this incarnation sees it
	ctx    context.Context
	cancel context.CancelFunc
}

// SendPrepare implements wormtx.Messenger: it hands the prepare to the
// participant's running incarnation (HandlePrepare in a goroutine, as a
// network would). A crash point there kills the incarnation (its Run
// ends). A participant that is down does not get the message.
func (c *cluster) SendPrepare(_ context.Context, p string, t wormtx.Tx) error {
	c.mu.Lock()
	in := c.live[p]
	c.mu.Unlock()
	if in == nil {
		return nil // lost: the participant is down
	}
	go func() {
		_, err := in.p.HandlePrepare(in.ctx, t, in.res)
		switch {
		case errors.Is(err, wormtx.ErrCrashed):
			c.mu.Lock()
			if c.live[p] == in {
				delete(c.live, p)
			}
			c.mu.Unlock()
			in.cancel()
			in.p.Close()
		case err != nil && in.ctx.Err() == nil && !errors.Is(err, worm.ErrTrimmed) && !errors.Is(err, errDeadIncarnation):
			c.e.t.Errorf("%s: HandlePrepare(%v): %v", p, t.ID, err)
		}
	}()
	return nil
}

// stacks returns every goroutine's stack, for a test that hangs.
func stacks() []byte {
	buf := make([]byte, 1<<20)
	return buf[:runtime.Stack(buf, true)]
}

// crashSwitch is a participant's crash point that kills a whole
// incarnation: once it has fired, every later check at that point says
// crash (the incarnation may reach it from HandlePrepare and from Run's
// rescan of its Resource, in either order) until revive, called before
// the restart.
type crashSwitch struct{ revived atomic.Bool }

// at returns the ParticipantConfig.Crash function for point.
func (s *crashSwitch) at(point wormtx.CrashPoint) func(wormtx.CrashPoint, wormtx.TxID) bool {
	return func(p wormtx.CrashPoint, _ wormtx.TxID) bool { return p == point && !s.revived.Load() }
}

// revive lets the next incarnation pass the crash point.
func (s *crashSwitch) revive() { s.revived.Store(true) }

// directCoordinator is a coordinator in the direct mode: prepares go
// straight to the cluster's participants.
func (e *env) directCoordinator(i int, cl *cluster, pol wormtx.Policy, crash func(wormtx.CrashPoint, int) bool) *wormtx.Coordinator {
	e.next += 1 << 12
	co := wormtx.NewCoordinator(e.client(i), wormtx.CoordinatorConfig{FirstSeg: e.base + e.next, Directory: cl.dir, Policy: pol,
		Messenger: cl, Reserve: 2, Crash: crash})
	e.t.Cleanup(func() { co.Close() })
	cl.mu.Lock()
	cl.co = co
	cl.mu.Unlock()
	return co
}

func (e *env) cluster(parts []string, cfg func(name string) wormtx.ParticipantConfig) *cluster {
	dir, inbox := e.directory(parts...)
	c := &cluster{e: e, dir: dir, rec: map[string]*Recorder{}, cfg: map[string]wormtx.ParticipantConfig{},
		cancel: map[string]context.CancelFunc{}, done: map[string]chan error{}, idx: map[string]int{},
		live: map[string]*incarnation{}}
	for i, p := range parts {
		c.idx[p] = i
		pc := wormtx.ParticipantConfig{Policy: fast(e.recovery), AbandonAfter: 50 * time.Millisecond}
		if cfg != nil {
			pc = cfg(p)
		}
		pc.Inbox = inbox[p]
		pc.Policy.Notify = dir
		if i%2 == 0 {
			// Half the participants acknowledge direct-mode
			// transactions by message, half in their ack registers.
			pc.SendAck = c.sendAck(p)
		}
		c.cfg[p] = pc
		c.rec[p] = &Recorder{Name: p}
		c.start(p)
	}
	e.t.Cleanup(c.stop)
	return c
}

func (c *cluster) start(p string) {
	ctx, cancel := context.WithCancel(c.e.ctx)
	done := make(chan error, 1)
	c.cancel[p], c.done[p] = cancel, done
	part := wormtx.NewParticipant(c.e.client(c.idx[p]+1), p, c.cfg[p])
	res := c.rec[p].Incarnation()
	c.mu.Lock()
	c.live[p] = &incarnation{p: part, res: res, ctx: ctx, cancel: cancel}
	c.mu.Unlock()
	go func() {
		err := part.Run(ctx, res)
		// Run's end is the incarnation's death: its HandlePrepare
		// goroutines die with it.
		cancel()
		part.Close()
		done <- err
	}()
}

func (c *cluster) stop() {
	for p, cancel := range c.cancel {
		cancel()
		<-c.done[p]
		delete(c.cancel, p)
	}
	c.mu.Lock()
	clear(c.live)
	c.mu.Unlock()
}

// waitApplied waits until every participant of tx applied it and returns
// the common outcome.
func (c *cluster) waitApplied(tx wormtx.Tx) wormtx.Outcome {
	c.e.t.Helper()
	for {
		var outs []wormtx.Outcome
		for _, p := range tx.Participants {
			if o, ok := c.rec[p].Applied(tx.ID); ok {
				outs = append(outs, o)
			}
		}
		if len(outs) == len(tx.Participants) {
			for _, o := range outs {
				if o != outs[0] {
					c.e.t.Fatalf("%v applied with different outcomes %v", tx.ID, outs)
				}
			}
			return outs[0]
		}
		select {
		case <-c.e.ctx.Done():
			c.e.t.Fatalf("%v: only %d of %d participants applied it", tx.ID, len(outs), len(tx.Participants))
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// waitTrimmed waits until tx's segment is collected.
func (c *cluster) waitTrimmed(tx wormtx.Tx) {
	c.e.t.Helper()
	for {
		_, err := tx.Status(c.e.ctx, c.e.c[0])
		if errors.Is(err, worm.ErrTrimmed) {
			return
		}
		select {
		case <-c.e.ctx.Done():
			c.e.t.Fatalf("%v never trimmed (last: %v)", tx.ID, err)
		case <-time.After(2 * time.Millisecond):
		}
	}
}

func (c *cluster) checkProblems() {
	c.e.t.Helper()
	for _, r := range c.rec {
		for _, p := range r.Problems() {
			c.e.t.Error(p)
		}
	}
}

// patient: participants that never time out in a fault-free run.
func patient(string) wormtx.ParticipantConfig {
	return wormtx.ParticipantConfig{Policy: fast(10 * time.Second), AbandonAfter: 50 * time.Millisecond}
}

func testInboxCommitAndCollect(e *env) {
	parts := names(3)
	cl := e.cluster(parts, patient)
	co := e.coordinator(0, cl.dir, fast(time.Second))
	for range 3 {
		tx := e.begin(co, parts)
		o, err := co.Await(e.ctx, tx.ID)
		if err != nil || o != wormtx.Commit {
			e.t.Fatalf("Await = %v, %v", o, err)
		}
		if got := cl.waitApplied(tx); got != wormtx.Commit {
			e.t.Fatalf("applied %v", got)
		}
		cl.waitTrimmed(tx)
	}
	cl.checkProblems()
}

func testCoordinatorCrashBeforeAwait(e *env) {
	parts := names(3)
	// No recovery is needed: every participant was told and votes yes.
	cl := e.cluster(parts, patient)
	co := wormtx.NewCoordinator(e.c[0], wormtx.CoordinatorConfig{FirstSeg: e.base + 1, Directory: cl.dir, Policy: fast(-1),
		Crash: func(p wormtx.CrashPoint, _ int) bool { return p == wormtx.CoordinatorBeforeAwait }})
	tx := e.begin(co, parts)
	if _, err := co.Await(e.ctx, tx.ID); !errors.Is(err, wormtx.ErrCrashed) {
		e.t.Fatalf("Await: %v, want the simulated crash", err)
	}
	if o := cl.waitApplied(tx); o != wormtx.Commit {
		e.t.Fatalf("applied %v, want commit (every participant voted yes)", o)
	}
	// The participants abandon the dead coordinator's ack and collect.
	cl.waitTrimmed(tx)
	cl.checkProblems()
}

func testCoordinatorCrashMidPost(e *env) {
	parts := names(3)
	cl := e.cluster(parts, nil)
	co := wormtx.NewCoordinator(e.c[0], wormtx.CoordinatorConfig{FirstSeg: e.base + 1, Directory: cl.dir, Policy: fast(-1),
		Crash: func(p wormtx.CrashPoint, n int) bool { return p == wormtx.CoordinatorAfterPost && n == 1 }})
	id, err := co.Begin(e.ctx, parts, nil)
	if !errors.Is(err, wormtx.ErrCrashed) {
		e.t.Fatalf("Begin: %v, want the simulated crash", err)
	}
	tx := wormtx.Tx{ID: id, Descriptor: wormtx.Descriptor{Participants: parts}}
	// p0 was told; it votes, times out on p1 and p2, recovers them (abort)
	// and tells them through their inboxes, so everyone applies abort.
	if o := cl.waitApplied(tx); o != wormtx.Abort {
		e.t.Fatalf("applied %v, want abort", o)
	}
	st, err := tx.Status(e.ctx, e.c[0])
	if err == nil && (st.Votes[1] != wormtx.VoteTimedOut || st.Votes[2] != wormtx.VoteTimedOut) {
		e.t.Fatalf("votes %v; want p1 and p2 timed out", st.Votes)
	}
	cl.waitTrimmed(tx)
	cl.checkProblems()
}

func testParticipantCrashRestart(e *env) {
	parts := names(3)
	var crashed atomic.Bool
	cl := e.cluster(parts, func(name string) wormtx.ParticipantConfig {
		pc := wormtx.ParticipantConfig{Policy: fast(e.recovery), AbandonAfter: 50 * time.Millisecond}
		if name == "p2" {
			pc.Crash = func(p wormtx.CrashPoint, _ wormtx.TxID) bool {
				return p == wormtx.ParticipantBeforeVote && crashed.CompareAndSwap(false, true)
			}
		}
		return pc
	})
	co := e.coordinator(0, cl.dir, fast(time.Second))
	tx := e.begin(co, parts)
	o, err := co.Await(e.ctx, tx.ID)
	if err != nil || o != wormtx.Abort {
		e.t.Fatalf("Await = %v, %v; want abort (p2 crashed before voting)", o, err)
	}
	if err := <-cl.done["p2"]; !errors.Is(err, wormtx.ErrCrashed) {
		e.t.Fatalf("p2 Run = %v, want crash", err)
	}
	delete(cl.cancel, "p2")
	if _, ok := cl.rec["p2"].Applied(tx.ID); ok {
		e.t.Fatal("p2 applied before restarting")
	}
	cl.start("p2") // restart: the rescan finds the transaction
	if o := cl.waitApplied(tx); o != wormtx.Abort {
		e.t.Fatalf("applied %v", o)
	}
	cl.waitTrimmed(tx)
	cl.checkProblems()
}

func testConcurrentTransactions(e *env) {
	parts := names(4)
	// The expected outcomes assume nobody times out.
	cl := e.cluster(parts, patient)
	for _, r := range cl.rec {
		r.VoteFn = func(tx wormtx.TxID) bool { return tx%5 != 0 }
	}
	const n = 16
	txs := make([]wormtx.Tx, n)
	outs := make([]wormtx.Outcome, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for k := range n {
		wg.Go(func() {
			// Coordinators sharing a client identity must not share a
			// segment range (Alloc tells winners apart by identity).
			co := wormtx.NewCoordinator(e.client(k), wormtx.CoordinatorConfig{FirstSeg: e.base + 1 + uint64(k)*200, Directory: cl.dir, Policy: fast(time.Second)})
			ps := []string{parts[k%4], parts[(k+1)%4], parts[(k+2)%4]}
			id, err := co.Begin(e.ctx, ps, nil)
			if err != nil {
				errs[k] = err
				return
			}
			txs[k] = wormtx.Tx{ID: id, Descriptor: wormtx.Descriptor{Participants: ps}}
			outs[k], errs[k] = co.Await(e.ctx, id)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		e.t.Fatal(err)
	}
	ids := map[wormtx.TxID]bool{}
	for k, tx := range txs {
		if ids[tx.ID] {
			e.t.Fatalf("two transactions share segment %v", tx.ID)
		}
		ids[tx.ID] = true
		want := wormtx.Commit
		if tx.ID%5 == 0 {
			want = wormtx.Abort
		}
		if outs[k] != want {
			e.t.Errorf("%v: outcome %v, want %v", tx.ID, outs[k], want)
		}
		if got := cl.waitApplied(tx); got != outs[k] {
			e.t.Errorf("%v: applied %v, coordinator saw %v", tx.ID, got, outs[k])
		}
	}
	for _, tx := range txs {
		cl.waitTrimmed(tx)
	}
	cl.checkProblems()
}

// ----- the direct mode (prepares sent straight to the participants) -----

func testDirectCommitAndCollect(e *env) {
	parts := names(3)
	cl := e.cluster(parts, patient)
	cl.rec["p1"].VoteFn = func(tx wormtx.TxID) bool { return tx%3 != 0 }
	co := e.directCoordinator(0, cl, fast(10*time.Second), nil)
	for range 6 {
		tx := e.begin(co, parts)
		want := wormtx.Commit
		if tx.ID%3 == 0 {
			want = wormtx.Abort
		}
		o, err := co.Await(e.ctx, tx.ID)
		if err != nil || o != want {
			e.t.Fatalf("Await(%v) = %v, %v; want %v", tx.ID, o, err, want)
		}
		if got := cl.waitApplied(tx); got != want {
			e.t.Fatalf("%v applied %v, want %v", tx.ID, got, want)
		}
		// Observers that know only the TxID find the descriptor (the
		// coordinator writes it once the outcome is known).
		for {
			got, err := wormtx.Open(e.ctx, e.c[1], tx.ID)
			if err == nil && !slices.Equal(got.Participants, parts) {
				e.t.Fatalf("Open(%v): participants %q", tx.ID, got.Participants)
			}
			if err == nil || errors.Is(err, worm.ErrTrimmed) {
				break
			}
			if !errors.Is(err, worm.ErrUnallocated) || e.ctx.Err() != nil {
				e.t.Fatalf("Open(%v): %v", tx.ID, err)
			}
			time.Sleep(time.Millisecond)
		}
		// The coordinator collects once every participant acked.
		cl.waitTrimmed(tx)
	}
	cl.checkProblems()
}

func testDirectCoordinatorCrashMidPrepare(e *env) {
	parts := names(3)
	cl := e.cluster(parts, nil)
	co := e.directCoordinator(0, cl, fast(-1), func(p wormtx.CrashPoint, n int) bool { return p == wormtx.CoordinatorAfterPost && n == 1 })
	id, err := co.Begin(e.ctx, parts, nil)
	if !errors.Is(err, wormtx.ErrCrashed) {
		e.t.Fatalf("Begin: %v, want the simulated crash", err)
	}
	tx := wormtx.Tx{ID: id, Descriptor: wormtx.Descriptor{Participants: parts}}
	// p0 was told; it votes, times out on p1 and p2, recovers them (abort)
	// and tells them through their inboxes, so everyone applies abort.
	if o := cl.waitApplied(tx); o != wormtx.Abort {
		e.t.Fatalf("applied %v, want abort", o)
	}
	st, err := tx.Status(e.ctx, e.c[0])
	if err == nil && (st.Votes[1] != wormtx.VoteTimedOut || st.Votes[2] != wormtx.VoteTimedOut) {
		e.t.Fatalf("votes %v; want p1 and p2 timed out", st.Votes)
	}
	// Without the coordinator, the participants collect.
	cl.waitTrimmed(tx)
	cl.checkProblems()
}

func testDirectCoordinatorCrashBeforeAwait(e *env) {
	parts := names(3)
	// No recovery is needed: every participant was told and votes yes.
	cl := e.cluster(parts, patient)
	co := e.directCoordinator(0, cl, fast(-1), func(p wormtx.CrashPoint, _ int) bool { return p == wormtx.CoordinatorBeforeAwait })
	tx := e.begin(co, parts)
	if _, err := co.Await(e.ctx, tx.ID); !errors.Is(err, wormtx.ErrCrashed) {
		e.t.Fatalf("Await: %v, want the simulated crash", err)
	}
	if o := cl.waitApplied(tx); o != wormtx.Commit {
		e.t.Fatalf("applied %v, want commit (every participant voted yes)", o)
	}
	// The participants abandon the dead coordinator's ack and collect.
	cl.waitTrimmed(tx)
	cl.checkProblems()
}

func testDirectParticipantCrashRestart(e *env) {
	parts := names(3)
	var crash crashSwitch
	cl := e.cluster(parts, func(name string) wormtx.ParticipantConfig {
		pc := patient(name)
		if name == "p2" {
			pc.Crash = crash.at(wormtx.ParticipantAfterVote)
		}
		return pc
	})
	co := e.directCoordinator(0, cl, fast(10*time.Second), nil)
	tx := e.begin(co, parts)
	// p2 voted yes, then died before learning the outcome: the others
	// learn commit from the votes without it.
	o, err := co.Await(e.ctx, tx.ID)
	if err != nil || o != wormtx.Commit {
		e.t.Fatalf("Await = %v, %v; want commit (p2 voted before crashing)", o, err)
	}
	// HandlePrepare or Run's rescan of the Resource (which may find the
	// prepared transaction first) reaches the crash point; either ends
	// the incarnation.
	cl.waitDown("p2")
	if _, ok := cl.rec["p2"].Applied(tx.ID); ok {
		e.t.Fatal("p2 applied before restarting")
	}
	// The restarted p2 finds the transaction in its Resource (its inbox
	// never listed it) and applies it.
	crash.revive()
	cl.start("p2")
	if o := cl.waitApplied(tx); o != wormtx.Commit {
		e.t.Fatalf("applied %v", o)
	}
	cl.waitTrimmed(tx)
	cl.checkProblems()
}

// ----- shared segments (many direct-mode transactions per segment) -----

// sharedCoordinator is a direct-mode coordinator whose transactions share
// segments.
func (e *env) sharedCoordinator(i int, cl *cluster, pol wormtx.Policy, crash func(wormtx.CrashPoint, int) bool) *wormtx.Coordinator {
	e.next += 1 << 12
	// Shared segments' numbers are at most MaxSharedSegment (2^43-1),
	// below the suite's other ranges (from 2^44); envs' bases differ in
	// bits 24 and up, so base>>10 keeps them apart.
	first := e.base>>10 + e.next
	if first > wormtx.MaxSharedSegment {
		e.t.Fatalf("shared segment range %d beyond MaxSharedSegment", first)
	}
	return e.startShared(i, cl, first, wormtx.CoordinatorConfig{Policy: pol, Crash: crash})
}

// startShared starts the cluster's direct-mode coordinator with shared
// segments from first, on client i, with cfg's other settings.
func (e *env) startShared(i int, cl *cluster, first uint64, cfg wormtx.CoordinatorConfig) *wormtx.Coordinator {
	cfg.FirstSeg, cfg.Directory, cfg.Messenger, cfg.Shared = first, cl.dir, cl, true
	co := wormtx.NewCoordinator(e.client(i), cfg)
	e.t.Cleanup(func() { co.Close() })
	cl.mu.Lock()
	cl.co = co
	cl.mu.Unlock()
	return co
}

// perSegment is how many transactions of n participants a segment holds.
func (e *env) perSegment(n int) int {
	return wormtx.SlotsPerSegment(e.c[0].SegmentSize(), n)
}

// segmentTrimmed reports whether tx's segment is collected (Status of any
// of its transactions then fails with ErrTrimmed).
func (e *env) segmentTrimmed(tx wormtx.Tx) bool {
	_, err := tx.Status(e.ctx, e.c[0])
	if err != nil && !errors.Is(err, worm.ErrTrimmed) {
		e.t.Fatalf("Status(%v): %v", tx.ID, err)
	}
	return errors.Is(err, worm.ErrTrimmed)
}

func testSharedTwoInOneSegment(e *env) {
	parts := names(3)
	cl := e.cluster(parts, patient)
	cl.rec["p1"].VoteFn = func(tx wormtx.TxID) bool { return tx%2 == 0 }
	co := e.sharedCoordinator(0, cl, fast(10*time.Second), nil)
	// Two transactions in flight at once, in one segment.
	a, b := e.begin(co, parts), e.begin(co, parts)
	if !a.ID.Shared() || !b.ID.Shared() || a.ID.Segment() != b.ID.Segment() || a.ID == b.ID {
		e.t.Fatalf("transactions %v and %v: want two slots of one shared segment", a.ID, b.ID)
	}
	for _, tx := range []wormtx.Tx{b, a} {
		want := wormtx.Commit
		if tx.ID%2 != 0 {
			want = wormtx.Abort
		}
		o, err := co.Await(e.ctx, tx.ID)
		if err != nil || o != want {
			e.t.Fatalf("Await(%v) = %v, %v; want %v", tx.ID, o, err, want)
		}
		if got := cl.waitApplied(tx); got != want {
			e.t.Fatalf("%v applied %v, want %v", tx.ID, got, want)
		}
		// Each slot holds its own votes: the other transaction's do not
		// leak into it.
		st, err := tx.Status(e.ctx, e.c[1])
		if err != nil || st.Outcome != want {
			e.t.Fatalf("Status(%v) = %+v, %v; want outcome %v", tx.ID, st, err, want)
		}
		// Observers that know only the TxID find the descriptor.
		for {
			got, err := wormtx.Open(e.ctx, e.c[1], tx.ID)
			if err == nil {
				if !slices.Equal(got.Participants, parts) {
					e.t.Fatalf("Open(%v): participants %q", tx.ID, got.Participants)
				}
				break
			}
			if !errors.Is(err, worm.ErrUnallocated) || e.ctx.Err() != nil {
				e.t.Fatalf("Open(%v): %v", tx.ID, err)
			}
			time.Sleep(time.Millisecond)
		}
	}
	cl.checkProblems()
}

func testSharedTrimAfterEveryTransaction(e *env) {
	parts := names(3)
	cl := e.cluster(parts, patient)
	co := e.sharedCoordinator(0, cl, fast(10*time.Second), nil)
	per := e.perSegment(len(parts))
	if per < 2 {
		e.t.Fatalf("segment holds %d transactions; the test needs two", per)
	}
	// Fill the first segment; leave its first transaction unawaited.
	var first []wormtx.Tx
	for range per {
		first = append(first, e.begin(co, parts))
	}
	seg := first[0].ID.Segment()
	for _, tx := range first {
		if tx.ID.Segment() != seg {
			e.t.Fatalf("%v not in segment %d: the first %d transactions fit in one", tx.ID, seg, per)
		}
	}
	for _, tx := range first[1:] {
		if o, err := co.Await(e.ctx, tx.ID); err != nil || o != wormtx.Commit {
			e.t.Fatalf("Await(%v) = %v, %v", tx.ID, o, err)
		}
		cl.waitApplied(tx)
	}
	// The next transaction moves to a new segment; the first segment is
	// now closed, but one of its transactions is not decided as far as
	// its coordinator knows, so it must not be trimmed.
	next := e.begin(co, parts)
	if next.ID.Segment() == seg {
		e.t.Fatalf("%v still in the full segment %d", next.ID, seg)
	}
	if o, err := co.Await(e.ctx, next.ID); err != nil || o != wormtx.Commit {
		e.t.Fatalf("Await(%v) = %v, %v", next.ID, o, err)
	}
	cl.waitApplied(next)
	cl.waitApplied(first[0])
	time.Sleep(50 * time.Millisecond) // room for a wrong trim to happen
	if e.segmentTrimmed(first[0]) {
		e.t.Fatalf("segment %d trimmed while %v was not awaited", seg, first[0].ID)
	}
	// Once the last one is awaited (and acknowledged), the segment goes.
	if o, err := co.Await(e.ctx, first[0].ID); err != nil || o != wormtx.Commit {
		e.t.Fatalf("Await(%v) = %v, %v", first[0].ID, o, err)
	}
	cl.waitTrimmed(first[0])
	// The segment in use is not trimmed.
	if e.segmentTrimmed(next) {
		e.t.Fatalf("the current segment %d was trimmed", next.ID.Segment())
	}
	cl.checkProblems()
}

func testSharedRecoverMissingVote(e *env) {
	parts := names(3)
	cl := e.cluster(parts, nil)
	// The coordinator "dies" after telling p0 only, in the first slot
	// (only the first transaction crashes; the coordinator object goes on
	// to begin a neighbour in the same segment).
	var crashed atomic.Bool
	co := e.sharedCoordinator(0, cl, fast(10*time.Second), func(p wormtx.CrashPoint, n int) bool {
		return p == wormtx.CoordinatorAfterPost && n == 1 && crashed.CompareAndSwap(false, true)
	})
	id, err := co.Begin(e.ctx, parts, nil)
	if !errors.Is(err, wormtx.ErrCrashed) {
		e.t.Fatalf("Begin: %v, want the simulated crash", err)
	}
	tx := wormtx.Tx{ID: id, Descriptor: wormtx.Descriptor{Participants: parts}}
	// A transaction in the next slot of the same segment, fully prepared.
	other := e.begin(co, parts)
	if other.ID.Segment() != id.Segment() {
		e.t.Fatalf("%v and %v: want one segment", id, other.ID)
	}
	// p0 votes, times out on p1 and p2, captures their vote registers
	// in the shared segment and writes no, and tells them through their
	// inboxes: everyone applies abort.
	if o := cl.waitApplied(tx); o != wormtx.Abort {
		e.t.Fatalf("applied %v, want abort", o)
	}
	st, err := tx.Status(e.ctx, e.c[0])
	if err != nil {
		e.t.Fatalf("Status(%v): %v", tx.ID, err)
	}
	if st.Votes[1] != wormtx.VoteTimedOut || st.Votes[2] != wormtx.VoteTimedOut {
		e.t.Fatalf("votes %v; want p1 and p2 timed out", st.Votes)
	}
	// The recovery touched only its own slot: the neighbour commits
	// (patient enough: its votes come within the recovery timeout).
	if o, err := co.Await(e.ctx, other.ID); err != nil || o != wormtx.Commit {
		e.t.Fatalf("Await(%v) = %v, %v; want commit", other.ID, o, err)
	}
	if o := cl.waitApplied(other); o != wormtx.Commit {
		e.t.Fatalf("%v applied %v", other.ID, o)
	}
	ost, err := other.Status(e.ctx, e.c[0])
	if err != nil || ost.Outcome != wormtx.Commit || slices.Contains(ost.Votes, wormtx.VoteTimedOut) {
		e.t.Fatalf("Status(%v) = %+v, %v", other.ID, ost, err)
	}
	// The recoverer settled the crashed transaction's descriptor.
	if got, err := wormtx.Open(e.ctx, e.c[1], tx.ID); err != nil || !slices.Equal(got.Participants, parts) {
		e.t.Fatalf("Open(%v) = %v, %v", tx.ID, got, err)
	}
	cl.checkProblems()
}

func testSharedCoordinatorCrashBeforeAwait(e *env) {
	parts := names(3)
	cl := e.cluster(parts, patient)
	co := e.sharedCoordinator(0, cl, fast(-1), func(p wormtx.CrashPoint, _ int) bool { return p == wormtx.CoordinatorBeforeAwait })
	tx := e.begin(co, parts)
	if _, err := co.Await(e.ctx, tx.ID); !errors.Is(err, wormtx.ErrCrashed) {
		e.t.Fatalf("Await: %v, want the simulated crash", err)
	}
	// Every participant was told and votes yes: they learn commit from
	// the votes, without the coordinator.
	if o := cl.waitApplied(tx); o != wormtx.Commit {
		e.t.Fatalf("applied %v, want commit", o)
	}
	// Nobody but the (dead) coordinator trims a shared segment.
	time.Sleep(20 * time.Millisecond)
	if e.segmentTrimmed(tx) {
		e.t.Fatalf("%v's shared segment trimmed without its coordinator", tx.ID)
	}
	cl.checkProblems()
}

func testSharedParticipantCrashRestart(e *env) {
	parts := names(3)
	var crash crashSwitch
	cl := e.cluster(parts, func(name string) wormtx.ParticipantConfig {
		pc := patient(name)
		if name == "p2" {
			pc.Crash = crash.at(wormtx.ParticipantAfterVote)
		}
		return pc
	})
	co := e.sharedCoordinator(0, cl, fast(10*time.Second), nil)
	tx := e.begin(co, parts)
	if o, err := co.Await(e.ctx, tx.ID); err != nil || o != wormtx.Commit {
		e.t.Fatalf("Await = %v, %v; want commit (p2 voted before crashing)", o, err)
	}
	// HandlePrepare or Run's rescan of the Resource (which may find the
	// prepared transaction first) reaches the crash point; either ends
	// the incarnation.
	cl.waitDown("p2")
	if _, ok := cl.rec["p2"].Applied(tx.ID); ok {
		e.t.Fatal("p2 applied before restarting")
	}
	// The restarted p2 finds the transaction in its Resource and applies
	// it; its ack (in the ack register: it acknowledges by message only
	// from HandlePrepare) lets the coordinator trim once the segment is
	// full.
	crash.revive()
	cl.start("p2")
	if o := cl.waitApplied(tx); o != wormtx.Commit {
		e.t.Fatalf("applied %v", o)
	}
	for range e.perSegment(len(parts)) {
		nt := e.begin(co, parts)
		if o, err := co.Await(e.ctx, nt.ID); err != nil || o != wormtx.Commit {
			e.t.Fatalf("Await(%v) = %v, %v", nt.ID, o, err)
		}
	}
	cl.waitTrimmed(tx)
	cl.checkProblems()
}

// ----- votes carrying their prepare record (set segments) -----

// memSegments is a SegmentLog that survives a participant's simulated
// crash (it stands for a file).
type memSegments struct {
	mu   sync.Mutex
	segs []uint64
	adds int
}

func (m *memSegments) Add(_ context.Context, seg uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.adds++
	if !slices.Contains(m.segs, seg) {
		m.segs = append(m.segs, seg)
	}
	return nil
}

func (m *memSegments) Segments(context.Context) ([]uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.segs), nil
}

func (m *memSegments) Remove(_ context.Context, seg uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.segs = slices.DeleteFunc(m.segs, func(s uint64) bool { return s == seg })
	return nil
}

// recordsCluster is a cluster whose participants vote with records: each
// has a SegmentLog, and crash (a crash point of p2's) if set.
func (e *env) recordsCluster(parts []string, crash *crashSwitch, point wormtx.CrashPoint) (*cluster, map[string]*memSegments) {
	logs := map[string]*memSegments{}
	cl := e.cluster(parts, func(name string) wormtx.ParticipantConfig {
		pc := patient(name)
		logs[name] = &memSegments{}
		pc.Segments = logs[name]
		if name == "p2" && crash != nil {
			pc.Crash = crash.at(point)
		}
		return pc
	})
	return cl, logs
}

// setCoordinator is a shared-segment coordinator with segments tied to
// participant sets.
func (e *env) setCoordinator(cl *cluster) *wormtx.Coordinator {
	e.next += 1 << 12
	return e.startShared(0, cl, e.base>>10+e.next, wormtx.CoordinatorConfig{Policy: fast(10 * time.Second), SetSegments: true})
}

// waitDown waits for participant p's incarnation to end (a crash point).
func (c *cluster) waitDown(p string) {
	c.e.t.Helper()
	select {
	case <-c.done[p]:
	case <-c.e.ctx.Done():
		c.e.t.Fatalf("%s never reached its crash point; goroutines:\n%s", p, stacks())
	}
	delete(c.cancel, p)
}

func testRecordsCrashAfterVote(e *env) {
	parts := names(3)
	var crash crashSwitch
	cl, logs := e.recordsCluster(parts, &crash, wormtx.ParticipantAfterVote)
	co := e.setCoordinator(cl)
	tx := e.begin(co, parts)
	o, err := co.Await(e.ctx, tx.ID)
	if err != nil || o != wormtx.Commit {
		e.t.Fatalf("Await = %v, %v; want commit (p2 voted before crashing)", o, err)
	}
	cl.waitDown("p2")
	rec := cl.rec["p2"]
	if durable, record := rec.Prepares(); durable != 0 || record == 0 {
		e.t.Fatalf("p2 prepared %d times durably and %d with a record; want records only", durable, record)
	}
	if segs, _ := logs["p2"].Segments(e.ctx); !slices.Contains(segs, tx.ID.Segment()) {
		e.t.Fatalf("p2's segment log %v lacks segment %d, where it voted", segs, tx.ID.Segment())
	}
	// The crash loses the prepared state: only the vote register has it.
	if n := rec.Crash(); n != 1 {
		o, applied := rec.Applied(tx.ID)
		e.t.Fatalf("p2's crash dropped %d prepared transactions, want 1 (%v applied: %v %v)", n, tx.ID, applied, o)
	}
	crash.revive()
	cl.start("p2")
	if o := cl.waitApplied(tx); o != wormtx.Commit {
		e.t.Fatalf("applied %v", o)
	}
	if !rec.Restored(tx.ID) {
		e.t.Fatalf("p2 applied %v without restoring it from its vote", tx.ID)
	}
	// p2's restart fenced its vote registers in the rest of the segment:
	// the coordinator moves on, and the next transaction commits.
	e.afterFence(co, cl, parts, tx)
	// The fenced segment is complete and collected.
	cl.waitTrimmed(tx)
	cl.checkProblems()
}

// Prepares carry the set segment the coordinator allocated ahead
// (Tx.NextSegment), and a participant records it in the background: the
// first transaction of each later segment finds its segment recorded
// already, and its prepare adds nothing to the SegmentLog.
func testRecordsAhead(e *env) {
	parts := names(3)
	cl, logs := e.recordsCluster(parts, nil, 0)
	co := e.setCoordinator(cl)
	per := e.perSegment(len(parts))
	used := map[uint64]bool{}
	unused := func(segs []uint64) bool {
		return slices.ContainsFunc(segs, func(s uint64) bool { return !used[s] })
	}
	for i := range 2*per + 1 {
		newSeg := i%per == 0
		first := newSeg && i > 0 // the first transaction of a later segment
		adds := map[string]int{}
		if first {
			// The hints of the segment's transactions have been acted
			// on: every participant recorded a segment not used yet.
			deadline := time.After(10 * time.Second)
			for _, p := range parts {
				for {
					segs, _ := logs[p].Segments(e.ctx)
					if unused(segs) {
						break
					}
					select {
					case <-deadline:
						e.t.Fatalf("transaction %d: %s's segment log %v holds no segment ahead of those used %v after 10s", i, p, segs, used)
					case <-time.After(2 * time.Millisecond):
					}
				}
				logs[p].mu.Lock()
				adds[p] = logs[p].adds
				logs[p].mu.Unlock()
			}
		}
		tx := e.begin(co, parts)
		if o, err := co.Await(e.ctx, tx.ID); err != nil || o != wormtx.Commit {
			e.t.Fatalf("Await(%v) = %v, %v", tx.ID, o, err)
		}
		seg := tx.ID.Segment()
		if newSeg != !used[seg] {
			e.t.Fatalf("transaction %d is in segment %d (used before: %v); want a new segment every %d transactions", i, seg, used[seg], per)
		}
		used[seg] = true
		if !first {
			continue
		}
		// Every vote is chosen, so every prepare is past its record.
		for _, p := range parts {
			segs, _ := logs[p].Segments(e.ctx)
			logs[p].mu.Lock()
			n := logs[p].adds
			logs[p].mu.Unlock()
			if !slices.Contains(segs, seg) || n != adds[p] {
				e.t.Fatalf("%s, first transaction of segment %d: log %v, %d adds during its prepare; want the segment recorded ahead, none", p, seg, segs, n-adds[p])
			}
		}
	}
	cl.checkProblems()
}

func testRecordsCrashBeforeVote(e *env) {
	parts := names(3)
	var crash crashSwitch
	cl, _ := e.recordsCluster(parts, &crash, wormtx.ParticipantBeforeVote)
	co := e.setCoordinator(cl)
	tx := e.begin(co, parts)
	cl.waitDown("p2")
	// p2 prepared (in memory) and died before its vote left: after the
	// restart nothing recalls the transaction, and p2's fence of its own
	// registers settles its vote as timed out, long before anyone's
	// RecoverAfter (10s).
	cl.rec["p2"].Crash()
	crash.revive()
	cl.start("p2")
	o, err := co.Await(e.ctx, tx.ID)
	if err != nil || o != wormtx.Abort {
		e.t.Fatalf("Await = %v, %v; want abort (p2's vote fenced)", o, err)
	}
	// p0 and p1 apply the abort; p2 holds nothing of the transaction
	// after its crash, and its fenced vote is its acknowledgement.
	for _, p := range parts[:2] {
		for {
			if o, ok := cl.rec[p].Applied(tx.ID); ok {
				if o != wormtx.Abort {
					e.t.Fatalf("%s applied %v", p, o)
				}
				break
			}
			if e.ctx.Err() != nil {
				e.t.Fatalf("%s never applied %v", p, tx.ID)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	if cl.rec["p2"].Restored(tx.ID) {
		e.t.Fatalf("p2 restored %v, for which it never voted", tx.ID)
	}
	e.afterFence(co, cl, parts, tx)
	// Every transaction of the fenced segment is complete without an
	// ack from p2: the coordinator collects it.
	cl.waitTrimmed(tx)
	cl.checkProblems()
}

// afterFence checks that the coordinator moves off the segment of fenced
// (where a participant's restart fenced its vote registers): the next
// transaction begins in another segment and commits. When the fences'
// notifications were lost (fault injection) one transaction may still
// begin there: it aborts (the fence counts as no), and the coordinator
// moves on after it (Options.LossyListen).
func (e *env) afterFence(co *wormtx.Coordinator, cl *cluster, parts []string, fenced wormtx.Tx) {
	e.t.Helper()
	for attempt := 0; ; attempt++ {
		next := e.begin(co, parts)
		o, err := co.Await(e.ctx, next.ID)
		if err != nil {
			e.t.Fatalf("Await(%v): %v", next.ID, err)
		}
		if next.ID.Segment() == fenced.ID.Segment() {
			if o != wormtx.Abort || attempt > 0 || !e.lossy {
				e.t.Fatalf("%v began in the fenced segment (attempt %d) and ended %v", next.ID, attempt, o)
			}
			continue
		}
		if o != wormtx.Commit {
			e.t.Fatalf("Await(%v) = %v; want commit", next.ID, o)
		}
		if o := cl.waitApplied(next); o != wormtx.Commit {
			e.t.Fatalf("applied %v", o)
		}
		return
	}
}
