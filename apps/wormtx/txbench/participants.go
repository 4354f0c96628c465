package txbench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/wormspace/wormspace/apps/wormtx"
	"github.com/wormspace/wormspace/apps/wormtx/twopc"
	"github.com/wormspace/wormspace/worm"
)

// ParticipantsConfig configures the participants' side.
type ParticipantsConfig struct {
	// Participants: as the harness's Config.
	Participants int
	// Net carries the messages; its peer is the harness's process (or it
	// is the harness's own network).
	Net *twopc.Network
	// Dial returns a WormSpace client: one for the process, which its
	// WormTX participants share (id "wtx-participants"), or one for
	// each of them (id "wtx-NAME") with ClientPerParticipant.
	Dial func(ctx context.Context, id string) (worm.Space, error)
	// ClientPerParticipant gives each WormTX participant a client of its
	// own instead of one for the process. One per process is the default
	// because it is what an application process would run, what the
	// harness's coordinator process does, and what the 2PC side has (its
	// participants share the process's connection, Net): each process then has one
	// connection to each other, on both sides. With a client each, a
	// transaction's three votes leave the process by three connections
	// to every wormd instead of one.
	ClientPerParticipant bool
	// Dir holds each participant's vote logs (one per protocol).
	Dir string
	// Volatile: the logs are not synced.
	Volatile bool
	// SegBase: as the harness's Config (the inboxes' layout).
	SegBase uint64
	// Stages: as the harness's Config (each report carries the
	// participant's stage times).
	Stages bool
	// Records: as the harness's Config (WormTX participants vote with
	// records, keeping a segment log each in Dir).
	Records bool
	// Logger; default: discard.
	Logger *slog.Logger
}

// ServeParticipants runs the participants of both protocols on cfg.Net
// until ctx ends: for each name p0, p1, ..., a WormTX participant (on the
// process's Space client, or its own with ClientPerParticipant; serving
// its inbox, taking prepares at node "wtx-NAME")
// and a 2PC participant (node "NAME"), each with its own Resource. Every
// application of an outcome is reported to the harness. ready is called
// once with nil when everything is set up, or with the error that stops
// it.
func ServeParticipants(ctx context.Context, cfg ParticipantsConfig, ready func(error)) error {
	if cfg.Participants <= 0 {
		cfg.Participants = 3
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	fail := func(err error) error {
		ready(err)
		return err
	}
	if cfg.Net == nil || cfg.Dial == nil || cfg.Dir == "" || cfg.SegBase == 0 {
		return fail(errors.New("txbench: ParticipantsConfig.Net, Dial, Dir and SegBase are required"))
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return fail(err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var logs []*groupLog
	defer func() {
		for _, l := range logs {
			l.close()
		}
	}()
	var spaces []worm.Space
	defer func() {
		for _, sp := range spaces {
			sp.Close()
		}
	}()
	names := participantNames(cfg.Participants)
	dir := directory(cfg.SegBase, names)
	var stages *stageRecorder
	trace := func(Protocol, string) wormtx.TraceFunc { return nil }
	if cfg.Stages {
		stages = newStageRecorder()
		trace = func(p Protocol, name string) wormtx.TraceFunc {
			h := stages.hook(p, name)
			return func(tx wormtx.TxID, s wormtx.Stage, at time.Time) {
				// Applied is stamped by the report, which is sent
				// before the hook's call: kept, it would never be
				// taken.
				if s != wormtx.StageApplied {
					h(tx, s, at)
				}
			}
		}
	}
	report := func(p Protocol, name string, tx wormtx.TxID, o wormtx.Outcome) {
		m := twopc.Message{Kind: msgApplied, From: name, Tx: tx, Outcome: o, Yes: p == WormTX}
		if stages != nil {
			// The report goes as the Resource applies: that is the
			// applied stage (the Trace hook's comes after it).
			st := append(stages.take(p, name, tx), stamp{wormtx.StageApplied, time.Now().UnixMicro()})
			// In the descriptor, which travels only with
			// participants named.
			m.Desc = wormtx.Descriptor{Participants: []string{name}, Payload: appendStamps(nil, st)}
		}
		cfg.Net.Send(benchNode, m)
	}
	errs := make(chan error, 2*len(names))
	run := func(f func() error) {
		go func() {
			if err := f(); err != nil && ctx.Err() == nil {
				errs <- err
				cancel()
			}
		}()
	}
	dial := func(id string) (worm.Space, error) {
		sp, err := cfg.Dial(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("txbench: dial for %s: %w", id, err)
		}
		spaces = append(spaces, sp)
		return sp, nil
	}
	var shared worm.Space
	if !cfg.ClientPerParticipant {
		var err error
		if shared, err = dial("wtx-participants"); err != nil {
			return fail(err)
		}
	}
	for i, name := range names {
		sp := shared
		if sp == nil {
			var err error
			if sp, err = dial("wtx-" + name); err != nil {
				return fail(err)
			}
		}
		wres, err := newResource(cfg, WormTX, name, report)
		if err != nil {
			return fail(err)
		}
		pres, err := newResource(cfg, TwoPC, name, report)
		if err != nil {
			return fail(err)
		}
		logs = append(logs, wres.log, pres.log)
		pol := wormPolicy
		pol.Notify, pol.Logger = dir, cfg.Logger
		var segs wormtx.SegmentLog
		if cfg.Records {
			f, err := wormtx.OpenSegmentFile(filepath.Join(cfg.Dir, "wtx-"+name+".segments"))
			if err != nil {
				return fail(err)
			}
			defer f.Close()
			segs = f
		}
		p := wormtx.NewParticipant(sp, name, wormtx.ParticipantConfig{Inbox: inbox(cfg.SegBase, i), Policy: pol, Logger: cfg.Logger,
			Trace: trace(WormTX, name), Segments: segs,
			// The coordinator collects in the fault-free case; each
			// participant keeps a deferred check per transaction for
			// this long, in memory, so a long run at thousands of
			// transactions a second keeps it short.
			AbandonAfter: 10 * time.Second,
			SendAck: func(_ context.Context, t wormtx.Tx, _ wormtx.Outcome) error {
				cfg.Net.Send(benchNode, twopc.Message{Kind: msgAck, From: name, Tx: t.ID})
				return nil
			}})
		defer p.Close()
		run(func() error {
			if err := p.Run(ctx, wres); err != nil && ctx.Err() == nil {
				return fmt.Errorf("txbench: participant %s: %w", name, err)
			}
			return nil
		})
		run(func() error {
			return cfg.Net.Serve(ctx, "wtx-"+name, func(m twopc.Message) {
				t := wormtx.Tx{ID: m.Tx, Descriptor: m.Desc, NextSegment: m.Hint}
				go func() {
					if _, err := p.HandlePrepare(ctx, t, wres); err != nil && ctx.Err() == nil && !errors.Is(err, worm.ErrTrimmed) {
						cfg.Logger.Error("txbench: participant", "name", name, "tx", t.ID, "err", err)
					}
				}()
			})
		})
		pp := twopc.NewParticipant(cfg.Net, pres, twopc.ParticipantConfig{Name: name, Trace: trace(TwoPC, name)})
		run(func() error { return pp.Run(ctx) })
	}
	run(func() error {
		// The harness's questions: the logs' force counters.
		return cfg.Net.Serve(ctx, participantsNode, func(m twopc.Message) {
			if m.Kind != msgForcesQuery {
				return
			}
			var f ParticipantForces
			for _, l := range logs {
				if l.proto == WormTX {
					f.WormTX = f.WormTX.Add(l.counts())
				} else {
					f.TwoPC = f.TwoPC.Add(l.counts())
				}
			}
			cfg.Net.Send(m.From, twopc.Message{Kind: msgForces, From: participantsNode, Tx: m.Tx, Desc: forcesDesc(f)})
		})
	})
	ready(nil)
	select {
	case <-ctx.Done():
		return ctx.Err()
	case err := <-errs:
		return err
	}
}
