// Package server is the wormserver: one process is one Paxos acceptor for
// the whole space, persistent in its data directory.
//
// The Engine is its heart and knows nothing of sockets: it serialises
// requests into the pure acceptor (worm/paxos), hands the resulting records
// to a durable Log, and releases each reply only once the Log is durable up
// to the records that reply depends on. Concurrent requests share one
// fsync (group commit): while one sync runs, the next batch accumulates.
//
// This package must never import worm/client.
package server

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"

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

// Reply is called with the response to a request, from the engine's sync
// goroutine or the caller's goroutine, possibly with the engine's lock
// held: it must not block (encode into the connection's send buffer and
// wake its writer). resp and its slices are valid only during the call.
type Reply func(resp *paxos.Response)

// Engine serialises requests into the acceptor and releases replies after
// durability.
type Engine struct {
	log     Log
	logger  *slog.Logger
	onWrite func(seg uint64, off, count uint32) // notification hook, may be nil

	mu      sync.Mutex
	acc     *paxos.Acceptor
	recs    []paxos.Record
	end     uint64 // log position after the last appended record
	waiting []pending
	failed  error
	synced  uint64 // log position known durable
	syncs   uint64

	kick chan struct{}
	done chan struct{}
	wg   sync.WaitGroup
}

type pending struct {
	need  uint64
	resp  *paxos.Response
	reply Reply
}

// ErrStopped is returned for requests after Close or after a storage
// failure.
var ErrStopped = errors.New("server: engine stopped")

// NewEngine starts an engine over acc (already recovered from log).
// onWrite, if not nil, is called (under the engine lock; it must not block)
// for every run of registers that accepted a value.
func NewEngine(acc *paxos.Acceptor, log Log, logger *slog.Logger, onWrite func(seg uint64, off, count uint32)) *Engine {
	if logger == nil {
		logger = slog.Default()
	}
	e := &Engine{acc: acc, log: log, logger: logger, onWrite: onWrite, kick: make(chan struct{}, 1), done: make(chan struct{})}
	e.wg.Add(1)
	go e.syncLoop()
	return e
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

// Handle applies req and arranges for reply to be called once the response
// may leave the server. req is only read during the call. A request whose
// records cannot be stored is answered StatusError at once with state
// unchanged.
func (e *Engine) Handle(req *paxos.Request, reply Reply) {
	resp := respPool.Get().(*paxos.Response)
	e.mu.Lock()
	if e.failed != nil {
		e.mu.Unlock()
		*resp = paxos.Response{Kind: req.Kind, Status: paxos.StatusError, Text: e.failed.Error()}
		reply(resp)
		respPool.Put(resp)
		return
	}
	if mutating(req.Kind) {
		if err := e.log.Reserve(estimate(req)); err != nil {
			e.mu.Unlock()
			*resp = paxos.Response{Kind: req.Kind, Status: paxos.StatusError, Text: "storage: " + err.Error()}
			reply(resp)
			respPool.Put(resp)
			return
		}
	}
	e.recs = e.acc.Handle(req, resp, e.recs[:0])
	if len(e.recs) > 0 {
		end, err := e.log.Append(e.recs)
		if err != nil {
			e.failLocked(fmt.Errorf("storage append: %w", err))
			e.mu.Unlock()
			*resp = paxos.Response{Kind: req.Kind, Status: paxos.StatusError, Text: e.failed.Error()}
			reply(resp)
			respPool.Put(resp)
			return
		}
		e.end = end
		if e.onWrite != nil && req.Kind == paxos.KindAccept {
			e.notifyAccepted(req, resp)
		}
	}
	if req.Kind == paxos.KindDecide {
		// No reply; decides are made durable with the next sync.
		e.mu.Unlock()
		respPool.Put(resp)
		return
	}
	need := e.end
	// The response may reveal state changed by earlier, not yet durable
	// requests as well as by this one: it waits for everything appended so
	// far. Detach it from the acceptor's scratch space first.
	if len(e.waiting) == 0 && e.durableLocked() >= need {
		// resp aliases the acceptor's scratch space: reply before the
		// next request may overwrite it.
		reply(resp)
		e.mu.Unlock()
		respPool.Put(resp)
		return
	}
	e.waiting = append(e.waiting, pending{need: need, resp: resp.Clone(), reply: reply})
	e.mu.Unlock()
	respPool.Put(resp)
	select {
	case e.kick <- struct{}{}:
	default:
	}
}

func (e *Engine) notifyAccepted(req *paxos.Request, resp *paxos.Response) {
	start := -1
	for i, r := range resp.Results {
		if r.Status == paxos.StatusOK {
			if start < 0 {
				start = i
			}
			continue
		}
		if start >= 0 {
			e.onWrite(req.Seg, req.Off+uint32(start), uint32(i-start))
			start = -1
		}
	}
	if start >= 0 {
		e.onWrite(req.Seg, req.Off+uint32(start), uint32(len(resp.Results)-start))
	}
}

// durable is tracked by the sync loop.
func (e *Engine) durableLocked() uint64 { return e.synced }

func (e *Engine) failLocked(err error) {
	if e.failed == nil {
		e.failed = err
		e.logger.Error("storage failed; the server stops acknowledging", "err", err)
	}
}

func (e *Engine) syncLoop() {
	defer e.wg.Done()
	for {
		select {
		case <-e.kick:
		case <-e.done:
			return
		}
		for {
			e.mu.Lock()
			if len(e.waiting) == 0 || e.failed != nil {
				e.mu.Unlock()
				break
			}
			e.mu.Unlock()
			durable, err := e.log.Sync()
			e.mu.Lock()
			if err != nil {
				e.failLocked(fmt.Errorf("storage sync: %w", err))
				// Replies that were waiting must never be sent: their
				// records may not be durable. Their clients see timeouts
				// (unknown outcome), which is the truth.
				e.waiting = nil
				e.mu.Unlock()
				break
			}
			if durable > e.synced {
				e.synced = durable
			}
			ready := e.waiting
			i := 0
			for i < len(ready) && ready[i].need <= e.synced {
				i++
			}
			release := ready[:i:i]
			e.waiting = append([]pending(nil), ready[i:]...)
			e.syncs++
			e.mu.Unlock()
			for _, p := range release {
				p.reply(p.resp)
			}
		}
	}
}

// Stats returns counters for metrics.
func (e *Engine) Stats() (syncs uint64, durable uint64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.syncs, e.synced
}

// Close stops the sync loop after flushing waiting replies.
func (e *Engine) Close() error {
	e.mu.Lock()
	waiting := len(e.waiting) > 0 && e.failed == nil
	e.mu.Unlock()
	if waiting {
		if _, err := e.log.Sync(); err == nil {
			e.mu.Lock()
			for _, p := range e.waiting {
				p.reply(p.resp)
			}
			e.waiting = nil
			e.mu.Unlock()
		}
	}
	close(e.done)
	e.wg.Wait()
	return nil
}

var respPool = sync.Pool{New: func() any { return new(paxos.Response) }}
