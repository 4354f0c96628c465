package twopc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wormspace/wormspace/apps/wormtx"
	"github.com/wormspace/wormspace/worm"
)

// CrashPoint names where a 2PC process stops as if it crashed.
type CrashPoint uint8

const (
	// CoordinatorAfterPrepare: every prepare sent, nothing decided.
	CoordinatorAfterPrepare CrashPoint = iota + 1
	// CoordinatorAfterVotes: some votes received (the hook's count),
	// nothing decided.
	CoordinatorAfterVotes
	// ParticipantBeforeVote: prepared, vote not sent.
	ParticipantBeforeVote
)

// ErrCrashed reports that a simulated crash point fired.
var ErrCrashed = wormtx.ErrCrashed

// ErrInDoubt: a participant voted yes and has not learned the decision: it
// may neither commit nor abort (the blocking case of 2PC).
var ErrInDoubt = errors.New("twopc: in doubt: voted yes, decision unknown")

// CoordinatorConfig configures a Coordinator.
type CoordinatorConfig struct {
	// Name is the coordinator's network node.
	Name string
	// Decisions is where the coordinator forces its decisions (a FileLog
	// for a local disk). When nil, Log and LogSeg make a SpaceLog: one
	// register per transaction, in segments of its own (LogSeg,
	// LogSeg+1, ...); transaction IDs are flat addresses in that range.
	Decisions DecisionLog
	Log       worm.Space
	LogSeg    uint64
	// FirstTx numbers this incarnation's transactions (a restarted
	// coordinator must start above the previous one's).
	FirstTx uint64
	// VoteTimeout: abort when votes are still missing after it (0: 1s).
	VoteTimeout time.Duration
	// Crash, when set, is asked at each crash point; true crashes the
	// coordinator (its node goes down, it stops deciding).
	Crash func(p CrashPoint, votes int) bool
	// Trace, when set, receives the coordinator's stages of each
	// transaction: wormtx.StageBegin, StagePrepareSent, and StageOutcome
	// once the decision is forced to the log.
	Trace wormtx.TraceFunc
	// Logger; nil means slog.Default().
	Logger *slog.Logger
}

// Coordinator is a classic two-phase-commit coordinator with presumed
// abort: prepare -> votes -> force the decision to the log -> notify.
// It implements wormtx.TM. Run must be serving its messages.
type Coordinator struct {
	net  *Network
	cfg  CoordinatorConfig
	box  *mailbox
	next atomic.Uint64
	dead atomic.Bool

	mu  sync.Mutex
	txs map[wormtx.TxID]*coordTx
}

type coordTx struct {
	desc     wormtx.Descriptor
	votes    map[string]bool
	outcome  wormtx.Outcome
	deciding bool // a decision is being forced to the log
	done     chan struct{}
	timer    *time.Timer
}

var _ wormtx.TM = (*Coordinator)(nil)

// NewCoordinator returns a coordinator on net.
func NewCoordinator(net *Network, cfg CoordinatorConfig) *Coordinator {
	if cfg.VoteTimeout <= 0 {
		cfg.VoteTimeout = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Decisions == nil {
		cfg.Decisions = SpaceLog{Space: cfg.Log, Seg: cfg.LogSeg}
	}
	c := &Coordinator{net: net, cfg: cfg, box: net.box(cfg.Name), txs: map[wormtx.TxID]*coordTx{}}
	c.next.Store(cfg.FirstTx)
	return c
}

func (c *Coordinator) crash() {
	c.dead.Store(true)
	c.net.Crash(c.cfg.Name)
}

// Begin sends prepare to every participant and returns the transaction's
// ID. Errors: wormtx.ErrInvalid, ErrCrashed.
func (c *Coordinator) Begin(ctx context.Context, participants []string, payload []byte) (wormtx.TxID, error) {
	if c.dead.Load() {
		return 0, ErrCrashed
	}
	if len(participants) == 0 {
		return 0, fmt.Errorf("%w: no participants", wormtx.ErrInvalid)
	}
	id := wormtx.TxID(c.next.Add(1) - 1)
	trace(c.cfg.Trace, id, wormtx.StageBegin)
	d := wormtx.Descriptor{Participants: append([]string(nil), participants...), Payload: bytes.Clone(payload)}
	t := &coordTx{desc: d, votes: map[string]bool{}, done: make(chan struct{})}
	c.mu.Lock()
	c.txs[id] = t
	t.timer = time.AfterFunc(c.cfg.VoteTimeout, func() { c.decide(context.Background(), id, t, wormtx.Abort) })
	c.mu.Unlock()
	// The crash point is asked first, so that a coordinator crashing
	// after its prepares stops before it could handle a fast vote; the
	// prepares still leave.
	crash := c.cfg.Crash != nil && c.cfg.Crash(CoordinatorAfterPrepare, 0)
	if crash {
		c.dead.Store(true)
	}
	for _, p := range d.Participants {
		c.net.send(p, Message{Kind: MsgPrepare, From: c.cfg.Name, Tx: id, Desc: d})
	}
	trace(c.cfg.Trace, id, wormtx.StagePrepareSent)
	if crash {
		c.crash()
		return id, ErrCrashed
	}
	return id, nil
}

// Await waits for the coordinator's decision. Errors: ErrCrashed (the
// coordinator died), ctx's error.
func (c *Coordinator) Await(ctx context.Context, id wormtx.TxID) (wormtx.Outcome, error) {
	c.mu.Lock()
	t := c.txs[id]
	c.mu.Unlock()
	if t == nil {
		return wormtx.Pending, fmt.Errorf("twopc: %v: unknown transaction", id)
	}
	select {
	case <-t.done:
		return t.outcome, nil
	case <-ctx.Done():
		if c.dead.Load() {
			return wormtx.Pending, ErrCrashed
		}
		return wormtx.Pending, fmt.Errorf("twopc: %v: %w", id, ctx.Err())
	}
}

// Run serves the coordinator's messages until ctx ends or it crashes.
func (c *Coordinator) Run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-c.box.wake:
		}
		for _, m := range c.box.take() {
			if c.dead.Load() {
				return ErrCrashed
			}
			switch m.Kind {
			case MsgVote:
				c.onVote(ctx, m)
			case MsgQuery:
				c.onQuery(ctx, m)
			}
		}
	}
}

func (c *Coordinator) onVote(ctx context.Context, m Message) {
	c.mu.Lock()
	t := c.txs[m.Tx]
	if t == nil || t.deciding {
		c.mu.Unlock()
		return
	}
	t.votes[m.From] = m.Yes
	n := len(t.votes)
	// The outcome follows from every vote received, not from this one
	// alone: a no already received outweighs a last yes.
	o := wormtx.Pending
	if n == len(t.desc.Participants) {
		o = wormtx.Commit
	}
	for _, yes := range t.votes {
		if !yes {
			o = wormtx.Abort
		}
	}
	c.mu.Unlock()
	if c.cfg.Crash != nil && c.cfg.Crash(CoordinatorAfterVotes, n) {
		c.crash()
		return
	}
	// Decide off the message loop: forcing the log waits for the disk,
	// and concurrent decisions share a sync (group commit).
	if o != wormtx.Pending {
		go c.decide(ctx, m.Tx, t, o)
	}
}

// decide forces the decision to the log, then notifies the participants.
func (c *Coordinator) decide(ctx context.Context, id wormtx.TxID, t *coordTx, o wormtx.Outcome) {
	if c.dead.Load() {
		return
	}
	c.mu.Lock()
	if t.deciding {
		c.mu.Unlock()
		return
	}
	t.deciding = true
	c.mu.Unlock()
	t.timer.Stop()
	o, err := c.cfg.Decisions.Decide(ctx, id, o)
	if err != nil {
		// Cannot force the log: behave as crashed for this transaction.
		c.cfg.Logger.Error("twopc: log write failed", "tx", id, "err", err)
		return
	}
	trace(c.cfg.Trace, id, wormtx.StageOutcome)
	c.mu.Lock()
	t.outcome = o
	c.mu.Unlock()
	close(t.done)
	for _, p := range t.desc.Participants {
		c.net.send(p, Message{Kind: MsgDecision, From: c.cfg.Name, Tx: id, Outcome: o})
	}
}

// onQuery answers a participant in doubt: the logged decision, or (for a
// transaction this incarnation does not know) presumed abort, forced to
// the log first so a late commit cannot follow.
func (c *Coordinator) onQuery(ctx context.Context, m Message) {
	c.mu.Lock()
	t := c.txs[m.Tx]
	c.mu.Unlock()
	if t != nil {
		c.mu.Lock()
		o := t.outcome
		c.mu.Unlock()
		if o == wormtx.Commit || o == wormtx.Abort {
			c.net.send(m.From, Message{Kind: MsgDecision, From: c.cfg.Name, Tx: m.Tx, Outcome: o})
		}
		return // still deciding
	}
	o, err := c.cfg.Decisions.Presume(ctx, m.Tx)
	if err != nil {
		c.cfg.Logger.Error("twopc: log", "tx", m.Tx, "err", err)
		return
	}
	c.net.send(m.From, Message{Kind: MsgDecision, From: c.cfg.Name, Tx: m.Tx, Outcome: o})
}

// EnsureLog allocates the segments [LogSeg, LogSeg+n) of a SpaceLog.
func (c *Coordinator) EnsureLog(ctx context.Context, n int) error {
	for i := range n {
		if _, err := c.cfg.Log.Alloc(ctx, c.cfg.LogSeg+uint64(i), []byte("twopc-log:"+c.cfg.Name)); err != nil {
			return fmt.Errorf("twopc: log segment: %w", err)
		}
	}
	return nil
}

func outcomeByte(o wormtx.Outcome) []byte {
	if o == wormtx.Commit {
		return []byte("C")
	}
	return []byte("A")
}

func parseOutcome(v []byte) (wormtx.Outcome, error) {
	switch string(v) {
	case "C":
		return wormtx.Commit, nil
	case "A":
		return wormtx.Abort, nil
	}
	return wormtx.Pending, fmt.Errorf("%w: log holds %q", wormtx.ErrInconsistent, v)
}

// ParticipantConfig configures a Participant.
type ParticipantConfig struct {
	// Name is the participant's network node.
	Name string
	// QueryEvery: while in doubt, ask the coordinator this often (0: 50ms).
	QueryEvery time.Duration
	// Crash, when set, is asked at ParticipantBeforeVote.
	Crash func(p CrashPoint, tx wormtx.TxID) bool
	// Trace, when set, receives the participant's stages of each
	// transaction: wormtx.StagePrepareStart, StagePrepared, StageVoted
	// (the vote sent), StageOutcome (the decision received) and
	// StageApplied.
	Trace wormtx.TraceFunc
}

// trace reports stage s of tx to f, when set.
func trace(f wormtx.TraceFunc, tx wormtx.TxID, s wormtx.Stage) {
	if f != nil {
		f(tx, s, time.Now())
	}
}

// Participant is a 2PC participant: on prepare it prepares its Resource
// and votes; a no is aborted at once; a yes waits for the coordinator's
// decision, asking it again while in doubt. It never decides alone.
type Participant struct {
	net *Network
	res wormtx.Resource
	cfg ParticipantConfig
	box *mailbox

	mu      sync.Mutex
	coord   map[wormtx.TxID]string // in doubt: whom to ask
	outcome map[wormtx.TxID]wormtx.Outcome
	changed chan struct{} // closed and replaced on every outcome
}

// NewParticipant returns a participant on net guarding res.
func NewParticipant(net *Network, res wormtx.Resource, cfg ParticipantConfig) *Participant {
	if cfg.QueryEvery <= 0 {
		cfg.QueryEvery = 50 * time.Millisecond
	}
	return &Participant{net: net, res: res, cfg: cfg, box: net.box(cfg.Name),
		coord: map[wormtx.TxID]string{}, outcome: map[wormtx.TxID]wormtx.Outcome{}, changed: make(chan struct{})}
}

// Run serves the participant's messages until ctx ends or it crashes.
// Prepares are handled concurrently (each waits for its Resource, which
// records the vote durably), decisions in order.
func (p *Participant) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	defer wg.Wait()
	tick := time.NewTicker(p.cfg.QueryEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-tick.C:
			p.mu.Lock()
			for tx, co := range p.coord {
				p.net.send(co, Message{Kind: MsgQuery, From: p.cfg.Name, Tx: tx})
			}
			p.mu.Unlock()
			continue
		case <-p.box.wake:
		}
		for _, m := range p.box.take() {
			switch m.Kind {
			case MsgPrepare:
				wg.Go(func() { p.prepare(ctx, cancel, m) })
			case MsgDecision:
				p.apply(ctx, m.Tx, m.Outcome)
			}
		}
	}
}

// prepare prepares the Resource and sends the vote; a crash point there
// crashes the participant (cancel with ErrCrashed ends Run).
func (p *Participant) prepare(ctx context.Context, crash context.CancelCauseFunc, m Message) {
	trace(p.cfg.Trace, m.Tx, wormtx.StagePrepareStart)
	yes, err := p.res.Prepare(ctx, m.Tx, m.Desc)
	if err != nil {
		yes = false
	}
	trace(p.cfg.Trace, m.Tx, wormtx.StagePrepared)
	if ctx.Err() != nil {
		return
	}
	if p.cfg.Crash != nil && p.cfg.Crash(ParticipantBeforeVote, m.Tx) {
		p.net.Crash(p.cfg.Name)
		crash(ErrCrashed)
		return
	}
	if yes {
		p.mu.Lock()
		if _, done := p.outcome[m.Tx]; !done {
			p.coord[m.Tx] = m.From
		}
		p.mu.Unlock()
	}
	p.net.send(m.From, Message{Kind: MsgVote, From: p.cfg.Name, Tx: m.Tx, Yes: yes})
	trace(p.cfg.Trace, m.Tx, wormtx.StageVoted)
	if !yes {
		p.apply(ctx, m.Tx, wormtx.Abort)
	}
}

func (p *Participant) apply(ctx context.Context, tx wormtx.TxID, o wormtx.Outcome) {
	p.mu.Lock()
	if _, done := p.outcome[tx]; done {
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	trace(p.cfg.Trace, tx, wormtx.StageOutcome)
	if err := p.res.Apply(ctx, tx, o); err != nil {
		return
	}
	trace(p.cfg.Trace, tx, wormtx.StageApplied)
	p.mu.Lock()
	delete(p.coord, tx)
	p.outcome[tx] = o
	close(p.changed)
	p.changed = make(chan struct{})
	p.mu.Unlock()
}

// InDoubt lists the transactions the participant voted yes on and has no
// decision for.
func (p *Participant) InDoubt() []wormtx.TxID {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []wormtx.TxID
	for tx := range p.coord {
		out = append(out, tx)
	}
	return out
}

// Await waits until the participant applied tx. When ctx ends first it
// returns ErrInDoubt if the participant voted yes on tx (it is blocked),
// else ctx's error.
func (p *Participant) Await(ctx context.Context, tx wormtx.TxID) (wormtx.Outcome, error) {
	for {
		p.mu.Lock()
		o, ok := p.outcome[tx]
		ch := p.changed
		p.mu.Unlock()
		if ok {
			return o, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			p.mu.Lock()
			_, doubt := p.coord[tx]
			p.mu.Unlock()
			if doubt {
				return wormtx.Pending, fmt.Errorf("twopc: %v: %w (%w)", tx, ErrInDoubt, ctx.Err())
			}
			return wormtx.Pending, fmt.Errorf("twopc: %v: %w", tx, ctx.Err())
		}
	}
}
