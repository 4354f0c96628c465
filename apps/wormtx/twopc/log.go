package twopc

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/wormspace/wormspace/apps/wormtx"
	"github.com/wormspace/wormspace/apps/wormtx/internal/forcefile"
	"github.com/wormspace/wormspace/worm"
)

// DecisionLog is where a coordinator forces its decisions before it tells
// anyone. Implementations are safe for concurrent use.
type DecisionLog interface {
	// Decide records o for tx and returns once it is durable, with the
	// outcome the log holds for tx: o, or one recorded earlier.
	Decide(ctx context.Context, tx wormtx.TxID, o wormtx.Outcome) (wormtx.Outcome, error)
	// Presume returns the outcome recorded for tx, first recording abort
	// when there is none (presumed abort), so that no later Decide of an
	// earlier incarnation can commit it.
	Presume(ctx context.Context, tx wormtx.TxID) (wormtx.Outcome, error)
}

// SpaceLog keeps decisions in WormSpace: one write-once register per
// transaction in segments from Seg (allocate them with EnsureLog). Decide
// writes with WriteUnsafe (the coordinator is the only writer); Presume
// captures, so that an earlier incarnation's ambiguous write cannot
// resurface after it.
type SpaceLog struct {
	Space worm.Space
	Seg   uint64
}

func (l SpaceLog) addr(tx wormtx.TxID) worm.Addr {
	a := worm.FlatAddr(uint64(tx), l.Space.SegmentSize())
	a.Seg += l.Seg
	return a
}

// Decide implements DecisionLog.
func (l SpaceLog) Decide(ctx context.Context, tx wormtx.TxID, o wormtx.Outcome) (wormtx.Outcome, error) {
	v, err := wormtx.WriteOwn(ctx, l.Space, l.addr(tx), outcomeByte(o), outcomeByte(wormtx.Abort))
	if err != nil {
		return wormtx.Pending, err
	}
	return parseOutcome(v)
}

// Presume implements DecisionLog.
func (l SpaceLog) Presume(ctx context.Context, tx wormtx.TxID) (wormtx.Outcome, error) {
	v, err := wormtx.Settle(ctx, l.Space, l.addr(tx), outcomeByte(wormtx.Abort))
	if err != nil {
		return wormtx.Pending, err
	}
	return parseOutcome(v)
}

// FileLog is a coordinator's decision log on a local disk: an append-only
// file of (transaction, outcome) records, synced before Decide returns.
// Concurrent Decides share one sync (group commit), as wormd does, and a
// sync is one device flush, as wormd's is (the records are written over
// zeros written ahead of them: apps/wormtx/internal/forcefile).
type FileLog struct {
	mu      sync.Mutex
	cond    *sync.Cond
	f       *forcefile.File
	rec     map[wormtx.TxID]logEntry
	pending []byte // records appended, not yet written
	seq     uint64 // records appended
	durable uint64 // records written (and synced)
	syncing bool
	err     error
	forces  uint64        // writes and syncs done
	took    time.Duration // their total duration
}

// Forces returns the number of forces (a write and a sync, shared by the
// decisions that group-committed in it) the log has done, and their total
// duration.
func (l *FileLog) Forces() (uint64, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.forces, l.took
}

type logEntry struct {
	o   wormtx.Outcome
	seq uint64
}

// recordSize is the size of one record's payload: u64 transaction, u8
// outcome.
const recordSize = 9

// decisionLogMagic starts a decision log file.
const decisionLogMagic = "wormspace 2pc decision log v1\n"

// OpenFileLog opens (creating) the decision log at path and loads its
// records. With volatile set it never syncs (for benchmarks that compare
// with wormds started -volatile).
func OpenFileLog(path string, volatile bool) (*FileLog, error) {
	f, recs, err := forcefile.Open(path, decisionLogMagic, volatile)
	if err != nil {
		return nil, fmt.Errorf("twopc: decision log: %w", err)
	}
	l := &FileLog{f: f, rec: map[wormtx.TxID]logEntry{}}
	l.cond = sync.NewCond(&l.mu)
	for i, r := range recs {
		if len(r) != recordSize || (wormtx.Outcome(r[8]) != wormtx.Commit && wormtx.Outcome(r[8]) != wormtx.Abort) {
			f.Close()
			return nil, fmt.Errorf("twopc: decision log %s: bad record %d: %x", path, i, r)
		}
		tx := wormtx.TxID(binary.LittleEndian.Uint64(r))
		if _, ok := l.rec[tx]; !ok {
			l.rec[tx] = logEntry{o: wormtx.Outcome(r[8])}
		}
	}
	return l, nil
}

// Decide implements DecisionLog.
func (l *FileLog) Decide(_ context.Context, tx wormtx.TxID, o wormtx.Outcome) (wormtx.Outcome, error) {
	return l.force(tx, o)
}

// Presume implements DecisionLog.
func (l *FileLog) Presume(_ context.Context, tx wormtx.TxID) (wormtx.Outcome, error) {
	return l.force(tx, wormtx.Abort)
}

// force records o for tx unless an outcome is recorded, and waits until
// the record that holds tx's outcome is durable.
func (l *FileLog) force(tx wormtx.TxID, o wormtx.Outcome) (wormtx.Outcome, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.rec[tx]
	if !ok {
		l.seq++
		e = logEntry{o: o, seq: l.seq}
		l.rec[tx] = e
		var rec [recordSize]byte
		binary.LittleEndian.PutUint64(rec[:], uint64(tx))
		rec[8] = byte(o)
		l.pending = forcefile.AppendRecord(l.pending, rec[:])
	}
	for l.durable < e.seq && l.err == nil {
		if l.syncing {
			l.cond.Wait()
			continue
		}
		// Lead one write and sync for every record appended so far.
		l.syncing = true
		buf, upto := l.pending, l.seq
		l.pending = nil
		l.mu.Unlock()
		start := time.Now()
		err := l.f.Write(buf)
		if err == nil {
			err = l.f.Sync()
		}
		took := time.Since(start)
		l.mu.Lock()
		l.forces++
		l.took += took
		l.syncing = false
		if err != nil {
			l.err = fmt.Errorf("twopc: decision log: %w", err)
		} else {
			l.durable = upto
		}
		l.cond.Broadcast()
	}
	if l.durable < e.seq {
		return wormtx.Pending, l.err
	}
	return e.o, nil
}

// Close closes the file.
func (l *FileLog) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return errors.New("twopc: decision log closed twice")
	}
	err := l.f.Close()
	l.f = nil
	return err
}
