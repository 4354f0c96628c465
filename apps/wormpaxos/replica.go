package wormpaxos

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wormspace/wormspace/worm"
)

// Replica is one replica of a replicated state machine whose log lives in
// WormSpace. Create it with New, drive it with Run, and submit commands
// with Propose and queries with Read from any number of goroutines.
type Replica struct {
	space worm.Space
	cfg   Config
	sm    StateMachine
	size  uint64 // registers per segment
	log   *slog.Logger
	meta  []byte

	mu       sync.Mutex
	applied  uint64 // next log position to apply
	sessions map[string]*session
	waiters  map[string]*request // per client: proposers waiting, chained by next
	known    map[uint64][]byte   // chosen values at positions >= applied
	inflight map[uint64]int      // positions this replica is writing
	hint     uint64              // one past the highest position known written
	cmdHint  uint64              // one past the highest position that may hold commands (not known a no-op)
	progress chan struct{}       // closed and replaced whenever applied moves
	snapAt   uint64              // position of the last snapshot taken or restored
	snapping bool

	started  atomic.Bool
	stopped  chan struct{}
	wake     chan struct{}
	skipWake chan struct{} // Rotating: a later position holds commands (skipper)

	// The proposal queue: proposers append, workers take batches (see
	// takeBatch). busy counts batches being placed.
	qmu    sync.Mutex
	qcond  *sync.Cond
	queue  []*request
	qbytes int
	busy   int
	qdone  bool     // Run's context ended
	refs   []cmdRef // the learner's decode buffer (apply)

	pmu       sync.Mutex // proposer state
	lease     *lease
	leaseGen  uint64
	nextFree  uint64 // Leaderless: next slot to try
	allocated map[uint64]bool
	leased    map[uint64]bool // segments this replica held a lease on

	stats struct {
		applied, commands, dups, noops, writes, retries, leases, fills, skips, snapshots, restores atomic.Uint64
	}

	lmu          sync.Mutex // leader knowledge (Sticky forwarding)
	leader       string
	leaderSeg    uint64
	suspectUntil time.Time

	smu        sync.Mutex // snapshot area state
	snapLow    uint64     // lowest snapshot slot that may be live
	snapNext   uint64     // first snapshot slot not known allocated
	trimmedLog uint64     // log segments (relative) below this were trimmed
}

type outcome struct {
	res []byte
	err error
}

// request is one Propose waiting for its command to be applied. Until it
// is answered it is linked in waiters (under mu); the one who unlinks it
// (the applier, with an outcome on ch, or the proposer giving up) owns
// the link.
type request struct {
	ctx    context.Context
	cmd    Command
	ch     chan outcome // buffered: the applier never blocks
	next   *request
	linked bool
}

// lease is the right to write commands into a captured segment.
type lease struct {
	seg  uint64
	tok  worm.Token
	next uint32
	gen  uint64
}

// slot is one register a proposer may write with tok.
type slot struct {
	pos  uint64
	addr worm.Addr
	tok  worm.Token
	gen  uint64 // lease generation; 0 for a per-slot capture
}

// New returns a replica of the log described by cfg, applying commands to
// sm. The replica takes ownership of sm. It does nothing until Run.
func New(space worm.Space, sm StateMachine, cfg Config) (*Replica, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	if space.SegmentSize() < 2 {
		return nil, fmt.Errorf("%w: segment size %d", ErrConfig, space.SegmentSize())
	}
	r := &Replica{
		space:     space,
		cfg:       cfg,
		sm:        sm,
		size:      uint64(space.SegmentSize()),
		log:       cfg.Logger.With("replica", space.ID(), "policy", cfg.Policy.String()),
		meta:      []byte("wormpaxos " + cfg.Policy.String() + " " + space.ID()),
		sessions:  map[string]*session{},
		waiters:   map[string]*request{},
		known:     map[uint64][]byte{},
		inflight:  map[uint64]int{},
		progress:  make(chan struct{}),
		stopped:   make(chan struct{}),
		wake:      make(chan struct{}, 1),
		skipWake:  make(chan struct{}, 1),
		allocated: map[uint64]bool{},
		leased:    map[uint64]bool{},
	}
	r.qcond = sync.NewCond(&r.qmu)
	return r, nil
}

// Applied returns the number of log positions this replica has applied.
func (r *Replica) Applied() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.applied
}

// Leader returns the replica this one believes leads (Sticky with
// Config.Forward set; empty otherwise or when unknown).
func (r *Replica) Leader() string {
	r.lmu.Lock()
	defer r.lmu.Unlock()
	return r.leader
}

func (r *Replica) forwardTarget(forward bool) string {
	if !forward || r.cfg.Policy != Sticky || r.cfg.Forward == nil {
		return ""
	}
	r.lmu.Lock()
	defer r.lmu.Unlock()
	if r.leader == "" || r.leader == r.space.ID() || time.Now().Before(r.suspectUntil) {
		return ""
	}
	return r.leader
}

// suspect stops forwarding to leader until another leader is learned or
// a while has passed.
func (r *Replica) suspect(leader string) {
	r.lmu.Lock()
	defer r.lmu.Unlock()
	if r.leader == leader {
		r.suspectUntil = time.Now().Add(4 * r.cfg.HoleTimeout)
	}
}

// setLeader records that id leads from segment seg on.
func (r *Replica) setLeader(id string, seg uint64) {
	r.lmu.Lock()
	defer r.lmu.Unlock()
	if seg < r.leaderSeg {
		return
	}
	if id != r.leader {
		r.suspectUntil = time.Time{}
	}
	r.leader, r.leaderSeg = id, seg
}

// learnLeader (Sticky with forwarding) learns the leader from the Alloc
// record of a segment that holds commands: leaders write commands only
// into segments they allocated.
func (r *Replica) learnLeader(ctx context.Context, seg uint64) {
	r.lmu.Lock()
	known := seg == r.leaderSeg && r.leader != ""
	r.lmu.Unlock()
	if known {
		return
	}
	info, err := r.space.Check(ctx, seg)
	if err != nil {
		return
	}
	if string(info.Meta) == "wormpaxos sticky "+info.Owner {
		r.setLeader(info.Owner, seg)
	}
}

// Stats returns the replica's counters.
func (r *Replica) Stats() Stats {
	s := &r.stats
	return Stats{
		Applied: s.applied.Load(), Commands: s.commands.Load(), Dups: s.dups.Load(), Noops: s.noops.Load(),
		Writes: s.writes.Load(), Retries: s.retries.Load(), Leases: s.leases.Load(), Fills: s.fills.Load(),
		Skips: s.skips.Load(), Snapshots: s.snapshots.Load(), Restores: s.restores.Load(),
	}
}

// ID is the replica's identity (its Space's ID).
func (r *Replica) ID() string { return r.space.ID() }

// The log's layout. Sticky and Leaderless: position i is register i of
// the log's registers, segment after segment. Rotating (Mencius): the
// positions are dealt out to the replicas in turn, position i belonging
// to replica i mod n, and each replica's positions fill its own segments
// in order: group g of n segments (LogBase+g*n .. LogBase+g*n+n-1) holds
// positions [g*n*size, (g+1)*n*size), and position g*n*size + k*n + r is
// register k of segment LogBase+g*n+r. So an owner writes its positions
// with the one capture of its segment, and skipping its positions below
// another replica's proposal is a short run of registers of its own
// segment.
func (r *Replica) interleaved() bool { return r.cfg.Policy == Rotating && r.cfg.Replicas > 1 }

func (r *Replica) addr(pos uint64) worm.Addr {
	if !r.interleaved() {
		return worm.Addr{Seg: r.cfg.LogBase + pos/r.size, Off: uint32(pos % r.size)}
	}
	n := uint64(r.cfg.Replicas)
	g, rest := pos/(n*r.size), pos%(n*r.size)
	return worm.Addr{Seg: r.cfg.LogBase + g*n + rest%n, Off: uint32(rest / n)}
}

func (r *Replica) pos(seg uint64, off uint32) uint64 {
	if !r.interleaved() {
		return (seg-r.cfg.LogBase)*r.size + uint64(off)
	}
	n := uint64(r.cfg.Replicas)
	rel := seg - r.cfg.LogBase
	return (rel/n)*n*r.size + uint64(off)*n + rel%n
}

func (r *Replica) segOf(pos uint64) uint64 { return r.addr(pos).Seg }

// unusedOwn reports whether position pos lies in this replica's current
// lease at or past the next register it would hand out.
func (r *Replica) unusedOwn(pos uint64) bool {
	a := r.addr(pos)
	r.pmu.Lock()
	defer r.pmu.Unlock()
	return r.lease != nil && r.lease.seg == a.Seg && a.Off >= r.lease.next
}

// groupSegs is the number of segments whose positions interleave: the
// replicas' under Rotating, otherwise 1.
func (r *Replica) groupSegs() uint64 {
	if r.interleaved() {
		return uint64(r.cfg.Replicas)
	}
	return 1
}

// groupStart is the first segment of the group holding pos.
func (r *Replica) groupStart(pos uint64) uint64 {
	g := r.groupSegs()
	return r.cfg.LogBase + (pos/(g*r.size))*g
}

// endOfGroup is one past the last position of seg's group: the first
// position of the segments after it.
func (r *Replica) endOfGroup(seg uint64) uint64 {
	g := r.groupSegs()
	return ((seg-r.cfg.LogBase)/g + 1) * g * r.size
}

// offsBelow is the number of registers of seg whose positions lie below
// pos: seg's registers [0, offsBelow) precede pos in the log.
func (r *Replica) offsBelow(seg uint64, pos uint64) uint32 {
	for lo, hi := uint32(0), uint32(r.size); ; {
		if lo == hi {
			return lo
		}
		m := lo + (hi-lo)/2
		if r.pos(seg, m) < pos {
			lo = m + 1
		} else {
			hi = m
		}
	}
}

// segsBelow is the number of log segments (from LogBase) whose positions
// all lie below pos.
func (r *Replica) segsBelow(pos uint64) uint64 {
	g := r.groupSegs()
	return pos / (g * r.size) * g
}

func (r *Replica) owns(seg uint64) bool {
	return int((seg-r.cfg.LogBase)%uint64(r.cfg.Replicas)) == r.cfg.Index
}

func (r *Replica) kick() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// learnedAt records that position pos holds the chosen value v.
func (r *Replica) learnedAt(pos uint64, v []byte) {
	r.mu.Lock()
	if pos >= r.applied {
		if _, ok := r.known[pos]; !ok {
			r.known[pos] = v
		}
	}
	r.hint = max(r.hint, pos+1)
	more := false
	if pos+1 > r.cmdHint && !isNoop(v) {
		r.cmdHint, more = pos+1, true
	}
	r.mu.Unlock()
	r.kick()
	if more && r.interleaved() {
		select {
		case r.skipWake <- struct{}{}:
		default:
		}
	}
}

// noteWritten records that pos holds some value (a Listen hint).
func (r *Replica) noteWritten(pos uint64) {
	r.mu.Lock()
	r.hint = max(r.hint, pos+1)
	// Not cmdHint: a distributed Space announces a register first as a
	// hint and then, once a quorum reported it, with its value; a value
	// too large to travel (a batch, never a no-op) is read by the
	// learner's read-ahead, which then counts it.
	r.mu.Unlock()
	r.kick()
}

// frontier is the first position not known to be written.
func (r *Replica) frontier() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return max(r.applied, r.hint)
}

func empty(err error) bool {
	return errors.Is(err, worm.ErrEmpty) || errors.Is(err, worm.ErrUnallocated)
}

// Propose submits cmd and returns its result once the command is applied
// at this replica. A retried (Client, Seq) returns the cached result
// without being applied again; a (Client, Seq) older than the client's
// latest returns ErrStale. When ctx ends first, the command may still be
// applied later (at most once): retry it with the same (Client, Seq) to
// learn its result.
//
// Under Sticky with Config.Forward set, a replica that knows another
// leader forwards cmd there (the leader runs ProposeLocal) and then waits
// for the local application; when forwarding fails, it takes the lead
// itself.
func (r *Replica) Propose(ctx context.Context, cmd Command) ([]byte, error) {
	return r.propose(ctx, cmd, true)
}

// ProposeLocal is Propose without forwarding: this replica places the
// command itself (under Sticky it takes the lead if it does not hold it).
// The receiving end of Config.Forward calls it.
func (r *Replica) ProposeLocal(ctx context.Context, cmd Command) ([]byte, error) {
	return r.propose(ctx, cmd, false)
}

func (r *Replica) propose(ctx context.Context, cmd Command, forward bool) ([]byte, error) {
	if cmd.Client == "" || cmd.Seq == 0 {
		return nil, fmt.Errorf("%w: client %q seq %d", ErrInvalid, cmd.Client, cmd.Seq)
	}
	q := &request{ctx: ctx, cmd: cmd, ch: make(chan outcome, 1)}
	r.mu.Lock()
	if s := r.sessions[cmd.Client]; s != nil && s.Seq >= cmd.Seq {
		o := outcomeOf(s, cmd.Seq)
		r.mu.Unlock()
		return o.res, o.err
	}
	r.linkLocked(q)
	r.mu.Unlock()
	if leader := r.forwardTarget(forward); leader != "" {
		_, err := r.cfg.Forward(ctx, leader, cmd)
		switch {
		case err == nil:
			// Chosen and applied at the leader: wait for it here.
			return r.await(q)
		case errors.Is(err, ErrStale):
			r.unlink(q)
			return nil, err
		case ctx.Err() != nil:
			r.unlink(q)
			return nil, ctx.Err()
		}
		r.suspect(leader)
		r.log.Debug("forward failed; taking the lead", "leader", leader, "err", err)
	}
	q.cmd.Op = slices.Clone(cmd.Op)
	if !r.enqueue(q) {
		r.unlink(q)
		return nil, ErrStopped
	}
	return r.await(q)
}

// await waits for q's outcome. When it gives up, it unlinks q itself.
func (r *Replica) await(q *request) ([]byte, error) {
	select {
	case o := <-q.ch:
		return o.res, o.err
	case <-q.ctx.Done():
		r.unlink(q)
		return nil, q.ctx.Err()
	case <-r.stopped:
		r.unlink(q)
		return nil, ErrStopped
	}
}

// linkLocked adds q to its client's waiters. Caller holds r.mu.
func (r *Replica) linkLocked(q *request) {
	q.next = r.waiters[q.cmd.Client]
	q.linked = true
	r.waiters[q.cmd.Client] = q
}

// unlink removes q from its client's waiters if it is still there.
func (r *Replica) unlink(q *request) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !q.linked {
		return
	}
	q.linked = false
	head := r.waiters[q.cmd.Client]
	if head == q {
		if q.next == nil {
			delete(r.waiters, q.cmd.Client)
		} else {
			r.waiters[q.cmd.Client] = q.next
		}
		return
	}
	for p := head; p != nil; p = p.next {
		if p.next == q {
			p.next = q.next
			return
		}
	}
}

func outcomeOf(s *session, seq uint64) outcome {
	if s.Seq == seq {
		return outcome{res: slices.Clone(s.Result)}
	}
	return outcome{err: fmt.Errorf("%w: %d, client is at %d", ErrStale, seq, s.Seq)}
}

// resolveLocked answers the waiters of client whose sequence numbers the
// session s has reached (the result of its last, ErrStale for older
// ones). Caller holds r.mu. head is r.waiters[client], looked up by the
// caller.
func (r *Replica) resolveLocked(head *request, s *session) {
	var keep, tail *request
	for q := head; q != nil; {
		next := q.next
		if q.cmd.Seq <= s.Seq {
			q.linked, q.next = false, nil
			q.ch <- outcomeOf(s, q.cmd.Seq) // buffered, sent once
		} else {
			q.next = nil
			if tail == nil {
				keep = q
			} else {
				tail.next = q
			}
			tail = q
		}
		q = next
	}
	if keep == head {
		return
	}
	if keep == nil {
		delete(r.waiters, head.cmd.Client)
	} else {
		r.waiters[head.cmd.Client] = keep
	}
}

// doneLocked reports whether cmd has been applied (or superseded).
// Caller holds r.mu.
func (r *Replica) doneLocked(cmd Command) bool {
	s := r.sessions[cmd.Client]
	return s != nil && s.Seq >= cmd.Seq
}

// Read answers query against a state that reflects every command
// acknowledged (by any replica) before Read was called: it reads the log
// from its applied position up to the first empty register (every
// acknowledged command lies below it, because a command is acknowledged
// only after every position up to it is chosen), waits until the local
// state has applied that prefix, and then queries it.
func (r *Replica) Read(ctx context.Context, query []byte) ([]byte, error) {
	j := uint64(0)
	failures := 0
	for {
		r.mu.Lock()
		j = max(j, r.applied)
		_, ok := r.known[j]
		r.mu.Unlock()
		if ok {
			j++
			continue
		}
		v, err := r.space.Read(ctx, r.addr(j))
		switch {
		case err == nil:
			r.learnedAt(j, v)
			j++
			failures = 0
			continue
		case empty(err):
		case errors.Is(err, worm.ErrTrimmed):
			// Behind a snapshot: let the learner restore, then rescan.
			if err := r.waitApplied(ctx, j+1); err != nil {
				return nil, err
			}
			continue
		case errors.Is(err, worm.ErrUnavailable) && ctx.Err() == nil && failures < 5:
			// One register out of many: retry it before giving up.
			failures++
			if err := sleep(ctx, backoff(failures)); err != nil {
				return nil, err
			}
			continue
		default:
			return nil, fmt.Errorf("wormpaxos: read barrier at %d: %w", j, err)
		}
		break
	}
	if err := r.waitApplied(ctx, j); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.sm.Query(query)), nil
}

func (r *Replica) waitApplied(ctx context.Context, n uint64) error {
	for {
		r.mu.Lock()
		a, p := r.applied, r.progress
		r.mu.Unlock()
		if a >= n {
			return nil
		}
		select {
		case <-p:
		case <-ctx.Done():
			return ctx.Err()
		case <-r.stopped:
			return ErrStopped
		}
	}
}

// apply applies the chosen value v at position pos. Only the learner
// calls it (it decodes into r.refs). It reports whether the register held
// commands.
func (r *Replica) apply(pos uint64, v []byte) (bool, error) {
	refs, err := decodeRefs(v, r.refs[:0])
	r.refs = refs[:0]
	if err != nil {
		return false, fmt.Errorf("log position %d (%v): %w", pos, r.addr(pos), err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if pos != r.applied {
		return false, nil // a snapshot restore moved past pos
	}
	var ncmd, ndup uint64
	for i := range refs {
		c := &refs[i]
		s := r.sessions[string(c.client)] // no allocation for the lookup
		var res []byte
		dup := s != nil && c.seq <= s.Seq
		if dup {
			ndup++
		} else {
			ncmd++
			res = r.sm.Apply(c.op)
			if s == nil {
				s = &session{}
				r.sessions[string(c.client)] = s
			}
			s.Seq, s.Result = c.seq, res
		}
		if r.cfg.OnApply != nil {
			r.cfg.OnApply(Applied{Index: pos, Cmd: Command{Client: string(c.client), Seq: c.seq, Op: c.op}, Dup: dup, Result: res})
		}
		if len(r.waiters) > 0 {
			if head := r.waiters[string(c.client)]; head != nil {
				r.resolveLocked(head, s)
			}
		}
	}
	if len(refs) == 0 {
		r.stats.noops.Add(1)
	}
	r.stats.commands.Add(ncmd)
	r.stats.dups.Add(ndup)
	r.stats.applied.Add(1)
	delete(r.known, pos)
	r.applied++
	r.hint = max(r.hint, r.applied)
	close(r.progress)
	r.progress = make(chan struct{})
	return len(refs) > 0, nil
}

// Run is the replica's learner loop: it restores the newest snapshot,
// starts the proposer workers, and applies the log in order, tailing it
// with Listen and falling back to polling reads. It fills holes (empty
// registers below a written one) with no-ops after HoleTimeout, takes
// snapshots and trims. Run returns ctx's error when ctx ends, or an error
// the replica cannot recover from (ErrCorrupt, a failed Restore). After
// Run returns, Propose and Read return ErrStopped; a replica runs once
// (create a new one to restart: it catches up from WormSpace).
func (r *Replica) Run(ctx context.Context) error {
	if !r.started.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer close(r.stopped)
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	if _, err := r.restoreLatest(ctx); err != nil && errors.Is(err, ErrCorrupt) {
		return err
	}
	// Wakes the workers when ctx ends (cancelled by Run's deferred cancel
	// at the latest, before wg.Wait).
	context.AfterFunc(ctx, func() {
		r.qmu.Lock()
		r.qdone = true
		r.qcond.Broadcast()
		r.qmu.Unlock()
	})
	for range r.cfg.Pipeline {
		wg.Go(func() { r.worker(ctx) })
	}
	if r.interleaved() {
		wg.Go(func() { r.skipper(ctx) })
	}
	ls := &listens{r: r, segs: map[uint64]*listen{}}
	defer ls.close()
	return r.learn(ctx, ls, &wg)
}

func (r *Replica) learn(ctx context.Context, ls *listens, wg *sync.WaitGroup) error {
	var stall, lastProbe time.Time
	probeGap := r.cfg.HoleTimeout // doubles while probes find nothing
	var probed uint64             // evidence from probes: one past a position beyond which something exists
	failures := 0
	// One timer for every wait, and the listeners looked after when the
	// learner moves to another segment or waits (not at every position).
	poll := time.NewTimer(r.cfg.PollInterval)
	defer poll.Stop()
	tracked := ^uint64(0)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		r.mu.Lock()
		j := r.applied
		v, ok := r.known[j]
		mine := r.inflight[j] > 0
		hint, cmdHint := r.hint, r.cmdHint
		r.mu.Unlock()
		if !ok && !mine && cmdHint > j+1 && r.interleaved() && r.unusedOwn(j) {
			// Mencius skip without reading first: j is ours and we never
			// handed it out, so it is empty unless a filler took it (then
			// the no-op fails there and the learner reads).
			did, err := r.closeOwn(ctx, j, cmdHint)
			if err != nil {
				r.log.Debug("skip own positions", "pos", j, "err", err)
			}
			if did {
				r.stats.skips.Add(1)
				continue
			}
		}
		if !ok && !mine && hint > j+1 && r.cfg.ReadAhead > 1 {
			// Behind: fetch the next registers concurrently.
			r.readAhead(ctx, j, min(hint, j+uint64(r.cfg.ReadAhead)))
			r.mu.Lock()
			v, ok = r.known[j]
			r.mu.Unlock()
		}
		if seg := r.groupStart(j); seg != tracked {
			tracked = seg
			ls.track(ctx, seg)
		}
		for _, s := range ls.unnoticed() {
			if p := r.look(ctx, s, j); p > probed {
				probed = p
			}
		}
		var err error
		switch {
		case ok:
		case mine && (stall.IsZero() || time.Since(stall) < r.cfg.PollInterval):
			// Our own write is on its way: its outcome wakes us, a read
			// would only race it.
			err = worm.ErrEmpty
		default:
			v, err = r.space.Read(ctx, r.addr(j))
		}
		switch {
		case err == nil:
			cmds, err := r.apply(j, v)
			if err != nil {
				return err
			}
			if cmds && r.cfg.Policy == Sticky && r.cfg.Forward != nil {
				r.learnLeader(ctx, r.segOf(j))
			}
			stall, failures, probeGap = time.Time{}, 0, r.cfg.HoleTimeout
			r.maybeSnapshot(ctx, wg)
			continue
		case ctx.Err() != nil:
			return ctx.Err()
		case empty(err):
			failures = 0
			now := time.Now()
			if stall.IsZero() {
				stall = now
			}
			r.mu.Lock()
			evidence := max(r.hint, probed)
			skipTo := evidence
			if r.interleaved() {
				// Mencius skips in answer to proposals: no-ops that hole
				// fillers wrote ahead do not make owners skip theirs.
				skipTo = max(r.cmdHint, probed)
			}
			r.mu.Unlock()
			s := r.segOf(j)
			var beyond bool
			if r.interleaved() {
				// Mencius: a later position is proposed while this one,
				// ours, is empty: skip our unused positions below it.
				beyond = skipTo > j+1
			} else {
				beyond = evidence > r.endOfGroup(s)
			}
			if r.cfg.Policy == Rotating && r.owns(s) && beyond {
				did, err := r.closeOwn(ctx, j, skipTo)
				if err != nil {
					r.log.Debug("skip own positions", "seg", s, "err", err)
				}
				if did {
					r.stats.skips.Add(1)
					continue
				}
			}
			if evidence > j+1 && now.Sub(stall) >= r.cfg.HoleTimeout {
				if err := r.fillHole(ctx, j, evidence); err != nil {
					r.log.Debug("fill hole", "pos", j, "err", err)
				} else {
					r.stats.fills.Add(1)
					stall = time.Time{}
					continue
				}
			} else if evidence <= j+1 && now.Sub(stall) >= r.cfg.HoleTimeout && now.Sub(lastProbe) >= probeGap {
				lastProbe = now
				if p := r.probe(ctx, j); p > probed {
					probed = p
					continue
				}
				probeGap = min(2*probeGap, 16*r.cfg.HoleTimeout)
			}
			// Waiting: listeners that failed are retried (track), and
			// the poll timer rearmed.
			ls.track(ctx, r.groupStart(j))
			poll.Reset(r.cfg.PollInterval) // no stale tick since Go 1.23
			select {
			case <-r.wake:
			case <-poll.C:
			case <-ctx.Done():
				return ctx.Err()
			}
		case errors.Is(err, worm.ErrTrimmed):
			ok, err := r.restoreLatest(ctx)
			if err != nil && errors.Is(err, ErrCorrupt) {
				return err
			}
			if !ok {
				if err != nil {
					r.log.Debug("restore snapshot", "pos", j, "err", err)
				} else {
					r.log.Warn("log trimmed, no newer snapshot", "pos", j)
				}
				if err := sleep(ctx, r.cfg.HoleTimeout); err != nil {
					return err
				}
			}
		default:
			failures++
			r.log.Debug("learn", "pos", j, "err", err)
			if err := sleep(ctx, backoff(failures)); err != nil {
				return err
			}
		}
	}
}

// readAhead reads the registers of [from, to) not yet known, concurrently,
// and records their values.
func (r *Replica) readAhead(ctx context.Context, from, to uint64) {
	var wg sync.WaitGroup
	for p := from; p < to; p++ {
		r.mu.Lock()
		_, ok := r.known[p]
		r.mu.Unlock()
		if ok {
			continue
		}
		wg.Go(func() {
			if v, err := r.space.Read(ctx, r.addr(p)); err == nil {
				r.learnedAt(p, v)
			}
		})
	}
	wg.Wait()
}

// probe looks past an empty position j for signs that the log continues:
// the next registers of j's segment and the allocation of the following
// segments. It returns one past a position known to exist beyond j, or 0.
func (r *Replica) probe(ctx context.Context, j uint64) uint64 {
	base := r.groupStart(j)
	for i := j + 1; i < r.endOfGroup(base) && i <= j+8; i++ {
		if v, err := r.space.Read(ctx, r.addr(i)); err == nil {
			r.learnedAt(i, v)
			return i + 1
		}
	}
	// An allocated segment of a later group: the log went on there.
	for s := base + r.groupSegs(); s <= base+uint64(r.window()); s++ {
		if _, err := r.space.Check(ctx, s); err == nil || errors.Is(err, worm.ErrTrimmed) {
			return r.pos(s, 0) + 1
		}
	}
	return 0
}

// look checks a segment s past j's, just listened to, for writes made
// before the Listen (which notified nobody): an allocated segment of a
// later group counts as evidence that the log continues, as in probe; in
// j's own group (Rotating) the owner's next position after j is read.
// j's own segment is covered by polling j. It returns evidence, or 0.
func (r *Replica) look(ctx context.Context, s, j uint64) uint64 {
	if s < r.groupStart(j)+r.groupSegs() {
		if s == r.segOf(j) || s < r.groupStart(j) {
			return 0
		}
		// Another owner's segment of j's group (Rotating): its first
		// position past j, written before we listened, is the evidence a
		// skip needs.
		o := r.offsBelow(s, j+1)
		if uint64(o) >= r.size {
			return 0
		}
		if v, err := r.space.Read(ctx, worm.Addr{Seg: s, Off: o}); err == nil {
			p := r.pos(s, o)
			r.learnedAt(p, v)
			return p + 1
		}
		return 0
	}
	if _, err := r.space.Check(ctx, s); err == nil || errors.Is(err, worm.ErrTrimmed) {
		return r.pos(s, 0) + 1
	}
	return 0
}

// window is how many segments past the first of the learner's group we
// listen to and probe: the group's and the next group's (Rotating), or
// the next two segments.
func (r *Replica) window() int {
	if r.interleaved() {
		return 2*r.cfg.Replicas - 1
	}
	return 2
}

// listens keeps Listen channels on the learner's segment and the next
// window() segments. A Listen that fails, or whose channel closes early
// (a lost connection), is retried after PollInterval.
type listens struct {
	r     *Replica
	mu    sync.Mutex
	base  uint64
	segs  map[uint64]*listen
	fresh []uint64 // segments whose writes before now may have gone unnoticed
}

// unnoticed returns and clears the segments listened to since the last
// call (or that reported lost notifications): writes to them before the
// Listen produced no notification, so the learner checks them once.
func (l *listens) unnoticed() []uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.fresh
	l.fresh = nil
	return f
}

type listen struct {
	cancel context.CancelFunc // nil: not listening
	failed time.Time
}

func (l *listens) track(ctx context.Context, base uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	w := uint64(l.r.window())
	now := time.Now()
	if base != l.base || len(l.segs) == 0 {
		l.base = base
		for s, x := range l.segs {
			if s < base || s > base+w {
				if x.cancel != nil {
					x.cancel()
				}
				delete(l.segs, s)
			}
		}
	}
	for s := base; s <= base+w; s++ {
		x := l.segs[s]
		if x == nil {
			x = &listen{}
			l.segs[s] = x
		}
		if x.cancel != nil || now.Sub(x.failed) < l.r.cfg.PollInterval {
			continue
		}
		lctx, cancel := context.WithCancel(ctx)
		ch, err := l.r.space.Listen(lctx, s)
		if err != nil {
			cancel()
			x.failed = now
			continue
		}
		x.cancel = cancel
		l.fresh = append(l.fresh, s)
		go func(s uint64, x *listen) {
			for n := range ch {
				switch {
				case n.Lost:
					l.mu.Lock()
					l.fresh = append(l.fresh, s)
					l.mu.Unlock()
					l.r.kick()
				case n.Chosen:
					// The value came with the notification: no read.
					l.r.learnedAt(l.r.pos(s, n.Off), n.Value)
				default:
					l.r.noteWritten(l.r.pos(s, n.Off))
				}
			}
			l.mu.Lock()
			if l.segs[s] == x && x.cancel != nil {
				// Closed under us (trim, lost connection): retry later.
				x.cancel()
				x.cancel, x.failed = nil, time.Now()
			}
			l.mu.Unlock()
			l.r.kick()
		}(s, x)
	}
}

func (l *listens) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for s, x := range l.segs {
		if x.cancel != nil {
			x.cancel()
		}
		delete(l.segs, s)
	}
}
