// Package txbench measures WormTX against two-phase commit in one
// harness: the same participants (the same Resource, recording each vote
// in a log on disk before it is returned), the same network (loopback TCP
// for the prepares, votes and decisions of 2PC and the prepares of
// WormTX's direct mode), closed-loop clients (worm/bench.Loop), and runs
// of the two protocols interleaved by the caller.
//
// The clients and both coordinators run in the harness's process; the
// participants of both protocols run in another (ServeParticipants, on a
// network whose peer is the harness's), so that every message on either
// protocol's critical path crosses processes, as it crosses machines in a
// deployment:
//
//	net, _ := twopc.NewTCPNetwork()           // the harness's process
//	// start the participants' process with net.Addr() as its peer ...
//	net.SetPeer(participantsAddr)
//	h, err := txbench.Start(ctx, txbench.Config{Net: net, Dial: dial, Dir: dir})
//	defer h.Close()
//	w, err := h.Run(ctx, txbench.WormTX, 16, time.Second, 5*time.Second)
//	p, err := h.Run(ctx, txbench.TwoPC, 16, time.Second, 5*time.Second)
//
// With Config.Net nil, Start runs the participants in its own process
// (tests).
//
// WormTX runs in the direct mode with shared segments: its coordinator
// (one, shared by the clients) takes a slot of a segment allocated and
// subscribed to ahead, sends the prepares over the network, and learns
// the votes from the wormservers' notifications; each participant
// (subscribed to the segment since its first transaction there)
// prepares, votes with one write and learns the outcome the same way,
// and acknowledges it by a message to the coordinator, which trims the
// segment once every transaction in it is acknowledged. 2PC's coordinator (one) forces its decisions to a
// log file, synced like the wormds' (or not at all with Volatile), and
// sends them to the participants. A transaction's latency is from Begin
// to the coordinator knowing the outcome (Await); Result.Applied is from
// Begin to the harness hearing that the last participant applied it (a
// report message, one more delay, for both protocols).
//
// Delays counts the message delays of both protocols on the critical path
// (with a fixed artificial one-way delay over an in-memory Space), and
// Blocking shows a coordinator crash after the prepares: 2PC's
// participants stay in doubt, WormTX's apply.
//
// This package imports the standard library, package worm, worm/bench and
// apps/wormtx with its subpackages; never the protocol internals,
// worm/client (the caller dials) or worm/spec (the caller provides the
// in-memory Space Delays needs).
package txbench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/wormspace/wormspace/apps/wormtx"
	"github.com/wormspace/wormspace/apps/wormtx/twopc"
	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/bench"
)

// Protocol names what Run measures.
type Protocol string

// The protocols.
const (
	WormTX Protocol = "wormtx"
	TwoPC  Protocol = "2pc"
)

// Config configures a Harness.
type Config struct {
	// Participants per transaction (default 3). Every transaction names
	// all of them. The participants' process must be given the same.
	Participants int
	// Net carries the messages; its peer is the participants' process.
	// Nil: a network of this process, and the participants run here.
	Net *twopc.Network
	// Dial returns a WormSpace client with identity id: the WormTX
	// coordinator gets its own, shared by the clients (and, when the
	// participants run here, they get theirs: see ParticipantsConfig),
	// as separate processes would. Required.
	Dial func(ctx context.Context, id string) (worm.Space, error)
	// ClientPerParticipant: see ParticipantsConfig. The participants'
	// process must be given the same.
	ClientPerParticipant bool
	// Dir holds the logs: 2PC's decision log (and the participants' vote
	// logs when they run here). Required.
	Dir string
	// Volatile: no log is synced (to compare with wormds started
	// -volatile).
	Volatile bool
	// SegBase is the first segment WormTX uses (transactions, inboxes);
	// the participants' process must be given the same. Default: derived
	// from the clock (only when the participants run here).
	SegBase uint64
	// Stages times each stage of both protocols' transactions (see
	// stages.go): Result.Stages. The participants' process must be
	// given the same.
	Stages bool
	// Records runs WormTX with votes that carry their prepare record
	// (segments tied to the participant set; each participant keeps a
	// segment log instead of forcing its vote before casting it; see
	// apps/wormtx/records.go). The participants' process must be given
	// the same.
	Records bool
	// Think is each client's pause between its transactions (not
	// measured; see bench.LoopConfig.Think). Zero: back to back.
	Think time.Duration
	// Window, if set, is called by Run when the measured part of a run
	// begins (true) and when it ends (false), from a goroutine of its
	// own, so that the caller can take counters over the same window
	// (the wormservers' syncs, say). Run returns after both calls.
	Window func(proto Protocol, begins bool)
	// Logger; default: discard.
	Logger *slog.Logger
}

// Result is one measurement.
type Result struct {
	bench.Result
	// Applied: latency from Begin to the last participant's report that
	// it applied the transaction, for the transactions begun in the
	// measured window.
	Applied bench.Latency `json:"applied"`
	// Stages: with Config.Stages, each stage's latency from Begin, for
	// the transactions begun in the measured window.
	Stages []StageStat `json:"stages,omitempty"`
}

// Harness is the running setup of both protocols' coordinators.
type Harness struct {
	cfg    Config
	names  []string
	net    *twopc.Network
	ownNet bool
	ctx    context.Context
	stop   context.CancelFunc
	wg     sync.WaitGroup

	spaces []worm.Space
	wco    *wormtx.Coordinator
	pco    *twopc.Coordinator
	plog   *twopc.FileLog

	mu       sync.Mutex
	begun    map[txKey]time.Time
	reported map[txKey][]wormtx.Outcome
	applied  []sample
	changed  chan struct{} // closed and replaced on every report

	// With Config.Stages: the coordinators' stages, and the
	// participants' from their reports (under mu).
	coordStages *stageRecorder
	partStages  map[txKey]map[string][]stamp

	// Forces' questions to the participants' process, by sequence
	// number (under mu).
	forcesSeq  uint64
	forcesWait map[wormtx.TxID]chan ParticipantForces
}

type txKey struct {
	p  Protocol
	tx wormtx.TxID
}

type sample struct {
	at time.Time
	d  time.Duration
}

// benchNode receives the participants' reports.
const benchNode = "txbench"

// participantsNode answers the harness's questions to the participants'
// process.
const participantsNode = "txbench-participants"

// ParticipantForces are the participants' logs' forces, summed over the
// participants, for each protocol.
type ParticipantForces struct {
	WormTX Forces `json:"wormtx"`
	TwoPC  Forces `json:"twopc"`
}

// encodeForces and decodeForces carry ParticipantForces in a message.
func encodeForces(f ParticipantForces) []byte {
	var b []byte
	for _, x := range []Forces{f.WormTX, f.TwoPC} {
		b = binary.LittleEndian.AppendUint64(b, x.N)
		b = binary.LittleEndian.AppendUint64(b, uint64(x.Time))
	}
	return b
}

func decodeForces(b []byte) (ParticipantForces, bool) {
	if len(b) != 32 {
		return ParticipantForces{}, false
	}
	u := func(i int) uint64 { return binary.LittleEndian.Uint64(b[8*i:]) }
	return ParticipantForces{WormTX: Forces{N: u(0), Time: time.Duration(u(1))}, TwoPC: Forces{N: u(2), Time: time.Duration(u(3))}}, true
}

// forcesDesc wraps counters in a descriptor (a message carries a payload
// only with a descriptor that names a participant).
func forcesDesc(f ParticipantForces) wormtx.Descriptor {
	return wormtx.Descriptor{Participants: []string{participantsNode}, Payload: encodeForces(f)}
}

// Forces returns the force counters of 2PC's decision log (this process)
// and of the participants' logs (asked of their process).
func (h *Harness) Forces(ctx context.Context) (decisions Forces, participants ParticipantForces, err error) {
	n, took := h.plog.Forces()
	decisions = Forces{N: n, Time: took}
	h.mu.Lock()
	h.forcesSeq++
	seq := wormtx.TxID(h.forcesSeq)
	ch := make(chan ParticipantForces, 1)
	h.forcesWait[seq] = ch
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		delete(h.forcesWait, seq)
		h.mu.Unlock()
	}()
	h.net.Send(participantsNode, twopc.Message{Kind: msgForcesQuery, From: benchNode, Tx: seq})
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	select {
	case participants = <-ch:
		return decisions, participants, nil
	case <-ctx.Done():
		return decisions, participants, fmt.Errorf("txbench: the participants' process did not answer for its forces: %w", ctx.Err())
	}
}

// The harness's own messages: msgApplied is the participants' report
// (Message.Tx applied with Message.Outcome, Message.Yes set for WormTX);
// msgAck is a WormTX participant's acknowledgement for the coordinator
// (ParticipantConfig.SendAck).
const (
	msgApplied twopc.Kind = 100
	msgAck     twopc.Kind = 101
	// msgForcesQuery asks the participants' process (participantsNode)
	// for its logs' force counters; it answers with msgForces, carrying
	// the query's Tx and the counters (encodeForces) in Desc.Payload.
	msgForcesQuery twopc.Kind = 102
	msgForces      twopc.Kind = 103
)

// Start sets up both protocols' coordinators (WormTX's with its Space
// client, 2PC's with its decision log) on cfg.Net, or everything
// (participants included) on a network of its own.
func Start(ctx context.Context, cfg Config) (*Harness, error) {
	if cfg.Dial == nil || cfg.Dir == "" {
		return nil, errors.New("txbench: Config.Dial and Config.Dir are required")
	}
	if cfg.Participants <= 0 {
		cfg.Participants = 3
	}
	if cfg.SegBase == 0 {
		if cfg.Net != nil {
			return nil, errors.New("txbench: Config.SegBase is required with a participants' process")
		}
		cfg.SegBase = NewSegBase()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, err
	}
	h := &Harness{cfg: cfg, net: cfg.Net, begun: map[txKey]time.Time{}, reported: map[txKey][]wormtx.Outcome{}, changed: make(chan struct{}), forcesWait: map[wormtx.TxID]chan ParticipantForces{}}
	h.ctx, h.stop = context.WithCancel(context.Background())
	h.names = participantNames(cfg.Participants)
	if h.net == nil {
		n, err := twopc.NewTCPNetwork()
		if err != nil {
			return nil, err
		}
		h.net, h.ownNet = n, true
	}
	h.wg.Go(func() { _ = h.net.Serve(h.ctx, benchNode, h.report) })
	if h.ownNet {
		pcfg := ParticipantsConfig{Participants: cfg.Participants, Net: h.net, Dial: cfg.Dial, Dir: filepath.Join(cfg.Dir, "participants"),
			Volatile: cfg.Volatile, SegBase: cfg.SegBase, Stages: cfg.Stages, Records: cfg.Records, ClientPerParticipant: cfg.ClientPerParticipant, Logger: cfg.Logger}
		ready := make(chan error, 1)
		h.wg.Go(func() { _ = ServeParticipants(h.ctx, pcfg, func(err error) { ready <- err }) })
		if err := <-ready; err != nil {
			h.Close()
			return nil, err
		}
	}
	if err := h.startCoordinators(ctx); err != nil {
		h.Close()
		return nil, err
	}
	return h, nil
}

func participantNames(n int) []string {
	names := make([]string, n)
	for i := range names {
		names[i] = "p" + strconv.Itoa(i)
	}
	return names
}

// NewSegBase returns a base segment for a run, derived from the clock:
// below 2^42, so that WormTX's shared segments (transactions from the
// base, inboxes from base + 2^32 and up) stay below
// wormtx.MaxSharedSegment.
func NewSegBase() uint64 {
	return 1<<41 + uint64(time.Now().UnixNano()/1000)%(1<<30)<<8
}

// inbox is participant i's first inbox segment: transactions from
// SegBase, inboxes from SegBase + (i+1)<<32.
func inbox(segBase uint64, i int) uint64 { return segBase + uint64(i+1)<<32 }

func directory(segBase uint64, names []string) wormtx.Directory {
	inboxes := map[string]uint64{}
	for i, n := range names {
		inboxes[n] = inbox(segBase, i)
	}
	return wormtx.StaticDirectory(inboxes)
}

// wormPolicy is the participants' and the coordinator's recovery policy:
// WormTX's defaults (recovery after 2s, rescans every 250ms).
var wormPolicy = wormtx.DefaultPolicy

func (h *Harness) startCoordinators(ctx context.Context) error {
	sp, err := h.cfg.Dial(ctx, "wtx-coordinator")
	if err != nil {
		return fmt.Errorf("txbench: dial for the coordinator: %w", err)
	}
	h.spaces = append(h.spaces, sp)
	pol := wormPolicy
	pol.Logger = h.cfg.Logger
	var wtrace, ptrace wormtx.TraceFunc
	if h.cfg.Stages {
		h.coordStages = newStageRecorder()
		h.partStages = map[txKey]map[string][]stamp{}
		wtrace, ptrace = h.coordStages.hook(WormTX, "coordinator"), h.coordStages.hook(TwoPC, "coordinator")
	}
	h.wco = wormtx.NewCoordinator(sp, wormtx.CoordinatorConfig{FirstSeg: h.cfg.SegBase, Directory: directory(h.cfg.SegBase, h.names),
		Policy: pol, Messenger: messenger{h.net}, Logger: h.cfg.Logger, Trace: wtrace,
		// Transactions share segments: one Alloc, one Listen per
		// process and one Trim per segment, all off the critical path.
		Shared: true, SetSegments: h.cfg.Records})
	log, err := twopc.OpenFileLog(filepath.Join(h.cfg.Dir, "2pc-decisions"), h.cfg.Volatile)
	if err != nil {
		return err
	}
	h.plog = log
	h.pco = twopc.NewCoordinator(h.net, twopc.CoordinatorConfig{Name: "2pc-coordinator", Decisions: log, Logger: h.cfg.Logger, Trace: ptrace,
		// Above any fault-free latency: a vote that times out aborts.
		VoteTimeout: 10 * time.Second})
	h.wg.Go(func() { _ = h.pco.Run(h.ctx) })
	return nil
}

// messenger sends WormTX's prepares over the harness's network.
type messenger struct{ net *twopc.Network }

func (m messenger) SendPrepare(_ context.Context, p string, t wormtx.Tx) error {
	m.net.Send("wtx-"+p, twopc.Message{Kind: twopc.MsgPrepare, From: "wtx-coordinator", Tx: t.ID, Desc: t.Descriptor, Hint: t.NextSegment})
	return nil
}

// Run measures proto with clients closed-loop clients, each beginning a
// transaction among all participants and awaiting its outcome. A
// transaction that does not commit counts as an error.
func (h *Harness) Run(ctx context.Context, proto Protocol, clients int, warmup, duration time.Duration) (Result, error) {
	var tm wormtx.TM
	switch proto {
	case WormTX:
		tm = h.wco
	case TwoPC:
		tm = h.pco
	default:
		return Result{}, fmt.Errorf("txbench: unknown protocol %q", proto)
	}
	payload := []byte("transfer 1 from a to b")
	h.mu.Lock()
	h.applied = h.applied[:0]
	h.mu.Unlock()
	start := time.Now()
	windowDone := make(chan struct{})
	if h.cfg.Window == nil {
		close(windowDone)
	} else {
		go func() {
			defer close(windowDone)
			for i, at := range []time.Duration{warmup, warmup + duration} {
				select {
				case <-time.After(time.Until(start.Add(at))):
				case <-ctx.Done():
				}
				h.cfg.Window(proto, i == 0)
			}
		}()
	}
	r, err := bench.Loop(ctx, bench.LoopConfig{Workload: bench.Workload("tx-" + string(proto)), Clients: clients, Warmup: warmup, Duration: duration, Think: h.cfg.Think},
		func(ctx context.Context, _ int) error {
			t0 := time.Now()
			id, err := tm.Begin(ctx, h.names, payload)
			if err != nil {
				return err
			}
			h.begin(proto, id, t0)
			o, err := tm.Await(ctx, id)
			if err != nil {
				return err
			}
			if o != wormtx.Commit {
				return fmt.Errorf("%v: %v", id, o)
			}
			return nil
		})
	<-windowDone
	if err != nil {
		return Result{}, err
	}
	// Let the last reports arrive, then keep the samples of the
	// transactions begun in the measured window.
	time.Sleep(100 * time.Millisecond)
	from, to := start.Add(warmup), start.Add(warmup+duration)
	h.mu.Lock()
	var ds []time.Duration
	for _, s := range h.applied {
		if !s.at.Before(from) && s.at.Before(to) {
			ds = append(ds, s.d)
		}
	}
	clear(h.begun)
	clear(h.reported)
	res := Result{Result: r, Applied: bench.Summarize(ds)}
	if h.cfg.Stages {
		res.Stages = summarizeStages(proto, h.coordStages, h.partStages, len(h.names), from, to)
		h.coordStages.clear()
		clear(h.partStages)
	}
	h.mu.Unlock()
	return res, nil
}

// begin records when tx began (its reports may already be in).
func (h *Harness) begin(p Protocol, tx wormtx.TxID, at time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	k := txKey{p, tx}
	if len(h.reported[k]) >= len(h.names) {
		h.applied = append(h.applied, sample{at, time.Since(at)})
		return
	}
	h.begun[k] = at
}

// report handles a participant's report that it applied a transaction,
// and WormTX's acknowledgements.
func (h *Harness) report(m twopc.Message) {
	if m.Kind == msgAck {
		h.wco.Acked(m.Tx, m.From)
		return
	}
	if m.Kind == msgForces {
		f, ok := decodeForces(m.Desc.Payload)
		h.mu.Lock()
		ch := h.forcesWait[m.Tx]
		h.mu.Unlock()
		if ok && ch != nil {
			select {
			case ch <- f:
			default:
			}
		}
		return
	}
	if m.Kind != msgApplied {
		return
	}
	p := TwoPC
	if m.Yes {
		p = WormTX
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	k := txKey{p, m.Tx}
	if h.partStages != nil && len(m.Desc.Payload) > 0 {
		if h.partStages[k] == nil {
			h.partStages[k] = map[string][]stamp{}
		}
		h.partStages[k][m.From] = parseStamps(m.Desc.Payload)
	}
	h.reported[k] = append(h.reported[k], m.Outcome)
	if len(h.reported[k]) == len(h.names) {
		if at, ok := h.begun[k]; ok {
			delete(h.begun, k)
			h.applied = append(h.applied, sample{at, time.Since(at)})
		}
	}
	close(h.changed)
	h.changed = make(chan struct{})
}

// Close stops everything the harness started and closes its Space
// clients (and its network, when it made it).
func (h *Harness) Close() error {
	if h.wco != nil {
		h.wco.Close()
	}
	h.stop()
	if h.ownNet {
		h.net.Close()
	}
	h.wg.Wait()
	var errs []error
	for _, sp := range h.spaces {
		errs = append(errs, sp.Close())
	}
	if h.plog != nil {
		errs = append(errs, h.plog.Close())
	}
	return errors.Join(errs...)
}
