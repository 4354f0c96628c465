// Package txbench measures WormTX against two-phase commit in one
// harness: the same participants (the same Resource, recording each vote
// in a log on disk before it is returned), the same network (loopback TCP
// for the prepares, votes and decisions of 2PC and the prepares of
// WormTX's direct mode), closed-loop clients (worm/bench.Loop), and runs
// of the two protocols interleaved by the caller.
//
//	h, err := txbench.Start(ctx, txbench.Config{Dial: dial, Dir: dir})
//	defer h.Close()
//	w, err := h.Run(ctx, txbench.WormTX, 16, time.Second, 5*time.Second)
//	p, err := h.Run(ctx, txbench.TwoPC, 16, time.Second, 5*time.Second)
//
// WormTX runs in the direct mode: its coordinator (one, shared by the
// clients, in this process) takes a segment allocated ahead, sends the
// prepares over the network, and learns the votes from the wormservers'
// notifications; each participant subscribes, prepares, votes with one
// write and learns the outcome the same way. 2PC's coordinator (one, in
// this process) forces its decisions to a log file, synced like the
// wormds' (or not at all with Volatile), and sends them to the
// participants. A transaction's latency is from Begin to the coordinator
// knowing the outcome (Await); Result.Applied is from Begin to the last
// participant having applied it.
//
// Delays counts the message delays of both protocols on the critical path
// (with a fixed artificial one-way delay over an in-memory Space), and
// Blocking shows the coordinator crash after the prepares: 2PC's
// participants stay in doubt, WormTX's apply.
//
// This package imports the standard library, package worm, worm/bench and
// apps/wormtx with its subpackages; never the protocol internals,
// worm/client (the caller dials) or worm/spec (the caller provides the
// in-memory Space Delays needs).
package txbench

import (
	"context"
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
	// all of them.
	Participants int
	// Dial returns a WormSpace client with identity id: the WormTX
	// coordinator and each participant get their own, as separate
	// processes would. Required.
	Dial func(ctx context.Context, id string) (worm.Space, error)
	// Dir holds the logs: 2PC's decision log and each participant's
	// prepare log. Required.
	Dir string
	// Volatile: no log is synced (to compare with wormds started
	// -volatile).
	Volatile bool
	// SegBase is the first segment WormTX uses (transactions, inboxes);
	// default: derived from the clock.
	SegBase uint64
	// Logger; default: discard.
	Logger *slog.Logger
}

// Result is one measurement.
type Result struct {
	bench.Result
	// Applied: latency from Begin to the last participant applying the
	// transaction, for the transactions begun in the measured window.
	Applied bench.Latency `json:"applied"`
}

// Harness is the running setup of both protocols.
type Harness struct {
	cfg   Config
	names []string
	net   *twopc.Network
	ctx   context.Context
	stop  context.CancelFunc
	wg    sync.WaitGroup

	spaces []worm.Space

	wco  *wormtx.Coordinator
	wres []*Resource

	pco    *twopc.Coordinator
	pres   []*Resource
	pparts []*twopc.Participant
	plog   *twopc.FileLog

	mu      sync.Mutex
	begun   map[txKey]time.Time
	pending map[txKey]int
	applied []sample
}

type txKey struct {
	p  Protocol
	tx wormtx.TxID
}

type sample struct {
	at time.Time
	d  time.Duration
}

// Start sets both protocols up: the network, WormTX's coordinator and
// participants (each with its own Space client, serving its inbox and
// taking prepares from the network), 2PC's coordinator with its decision
// log and its participants.
func Start(ctx context.Context, cfg Config) (*Harness, error) {
	if cfg.Dial == nil || cfg.Dir == "" {
		return nil, errors.New("txbench: Config.Dial and Config.Dir are required")
	}
	if cfg.Participants <= 0 {
		cfg.Participants = 3
	}
	if cfg.SegBase == 0 {
		cfg.SegBase = uint64(time.Now().UnixNano()/1000) << 8
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, err
	}
	h := &Harness{cfg: cfg, net: twopc.NewTCPNetwork(), begun: map[txKey]time.Time{}, pending: map[txKey]int{}}
	h.ctx, h.stop = context.WithCancel(context.Background())
	for i := range cfg.Participants {
		h.names = append(h.names, "p"+strconv.Itoa(i))
	}
	if err := h.startWormTX(ctx); err != nil {
		h.Close()
		return nil, err
	}
	if err := h.start2PC(); err != nil {
		h.Close()
		return nil, err
	}
	return h, nil
}

// The segment layout of WormTX in the harness: transactions from SegBase,
// participant i's inbox from SegBase + (i+1)<<32.
func (h *Harness) inbox(i int) uint64 { return h.cfg.SegBase + uint64(i+1)<<32 }

// wormPolicy is the participants' and the coordinator's recovery policy:
// WormTX's defaults (recovery after 2s, rescans every 250ms).
var wormPolicy = wormtx.DefaultPolicy

func (h *Harness) startWormTX(ctx context.Context) error {
	inboxes := map[string]uint64{}
	for i, n := range h.names {
		inboxes[n] = h.inbox(i)
	}
	dir := wormtx.StaticDirectory(inboxes)
	for _, name := range h.names {
		sp, err := h.cfg.Dial(ctx, "wtx-"+name)
		if err != nil {
			return fmt.Errorf("txbench: dial for %s: %w", name, err)
		}
		h.spaces = append(h.spaces, sp)
		res, err := h.newResource(WormTX, name)
		if err != nil {
			return err
		}
		h.wres = append(h.wres, res)
		pol := wormPolicy
		pol.Notify, pol.Logger = dir, h.cfg.Logger
		p := wormtx.NewParticipant(sp, name, wormtx.ParticipantConfig{Inbox: inboxes[name], Policy: pol, Logger: h.cfg.Logger,
			// The coordinator collects in the fault-free case; each
			// participant keeps a deferred check per transaction for
			// this long, in memory, so a long run at thousands of
			// transactions a second keeps it short.
			AbandonAfter: 10 * time.Second})
		h.wg.Go(func() {
			if err := p.Run(h.ctx, res); err != nil && h.ctx.Err() == nil {
				h.cfg.Logger.Error("txbench: participant", "name", name, "err", err)
			}
		})
		h.wg.Go(func() {
			_ = h.net.Serve(h.ctx, "wtx-"+name, func(m twopc.Message) {
				t := wormtx.Tx{ID: m.Tx, Descriptor: m.Desc}
				h.wg.Go(func() {
					if _, err := p.HandlePrepare(h.ctx, t, res); err != nil && h.ctx.Err() == nil && !errors.Is(err, worm.ErrTrimmed) {
						h.cfg.Logger.Error("txbench: participant", "name", name, "tx", t.ID, "err", err)
					}
				})
			})
		})
	}
	sp, err := h.cfg.Dial(ctx, "wtx-coordinator")
	if err != nil {
		return fmt.Errorf("txbench: dial for the coordinator: %w", err)
	}
	h.spaces = append(h.spaces, sp)
	pol := wormPolicy
	pol.Logger = h.cfg.Logger
	h.wco = wormtx.NewCoordinator(sp, wormtx.CoordinatorConfig{FirstSeg: h.cfg.SegBase, Directory: dir, Policy: pol,
		Messenger: messenger{h.net}, Logger: h.cfg.Logger,
		// Enough reserved segments for the largest client count's
		// burst; the pool refills in the background.
		Reserve: 128})
	return nil
}

// messenger sends WormTX's prepares over the harness's network.
type messenger struct{ net *twopc.Network }

func (m messenger) SendPrepare(_ context.Context, p string, t wormtx.Tx) error {
	m.net.Send("wtx-"+p, twopc.Message{Kind: twopc.MsgPrepare, From: "wtx-coordinator", Tx: t.ID, Desc: t.Descriptor})
	return nil
}

func (h *Harness) start2PC() error {
	log, err := twopc.OpenFileLog(filepath.Join(h.cfg.Dir, "2pc-decisions"), h.cfg.Volatile)
	if err != nil {
		return err
	}
	h.plog = log
	for _, name := range h.names {
		res, err := h.newResource(TwoPC, name)
		if err != nil {
			return err
		}
		h.pres = append(h.pres, res)
		p := twopc.NewParticipant(h.net, res, twopc.ParticipantConfig{Name: name})
		h.pparts = append(h.pparts, p)
		h.wg.Go(func() { p.Run(h.ctx) })
	}
	h.pco = twopc.NewCoordinator(h.net, twopc.CoordinatorConfig{Name: "2pc-coordinator", Decisions: log, Logger: h.cfg.Logger,
		// Above any fault-free latency: a vote that times out aborts.
		VoteTimeout: 10 * time.Second})
	h.wg.Go(func() { h.pco.Run(h.ctx) })
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
	r, err := bench.Loop(ctx, bench.LoopConfig{Workload: bench.Workload("tx-" + string(proto)), Clients: clients, Warmup: warmup, Duration: duration},
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
	if err != nil {
		return Result{}, err
	}
	res := Result{Result: r}
	// Let the last transactions finish applying, then keep the samples
	// of those begun in the measured window.
	time.Sleep(100 * time.Millisecond)
	from, to := start.Add(warmup), start.Add(warmup+duration)
	h.mu.Lock()
	var ds []time.Duration
	for _, s := range h.applied {
		if !s.at.Before(from) && s.at.Before(to) {
			ds = append(ds, s.d)
		}
	}
	h.mu.Unlock()
	res.Applied = bench.Summarize(ds)
	return res, nil
}

func (h *Harness) begin(p Protocol, tx wormtx.TxID, at time.Time) {
	h.mu.Lock()
	k := txKey{p, tx}
	if n, ok := h.pending[k]; ok && n >= len(h.names) {
		// Every participant applied before Begin returned.
		delete(h.pending, k)
		h.applied = append(h.applied, sample{at, time.Since(at)})
	} else {
		h.begun[k] = at
	}
	h.mu.Unlock()
}

// appliedBy records that one participant applied tx.
func (h *Harness) appliedBy(p Protocol, tx wormtx.TxID) {
	h.mu.Lock()
	defer h.mu.Unlock()
	k := txKey{p, tx}
	h.pending[k]++
	if h.pending[k] < len(h.names) {
		return
	}
	if at, ok := h.begun[k]; ok {
		delete(h.begun, k)
		delete(h.pending, k)
		h.applied = append(h.applied, sample{at, time.Since(at)})
	}
}

// Close stops everything the harness started and closes the Space clients.
func (h *Harness) Close() error {
	if h.wco != nil {
		h.wco.Close()
	}
	h.stop()
	h.net.Close()
	h.wg.Wait()
	var errs []error
	for _, sp := range h.spaces {
		errs = append(errs, sp.Close())
	}
	for _, r := range append(h.wres, h.pres...) {
		errs = append(errs, r.log.close())
	}
	if h.plog != nil {
		errs = append(errs, h.plog.Close())
	}
	return errors.Join(errs...)
}
