package txbench

import (
	"context"
	"encoding/binary"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/wormspace/wormspace/apps/wormtx"
	"github.com/wormspace/wormspace/apps/wormtx/internal/forcefile"
)

// Resource is the participants' state in both protocols: Prepare locks
// nothing (the transactions do not conflict) but records the vote, with
// the descriptor, in the participant's log and returns only once it is
// durable, as both protocols require of a participant; Apply records the
// outcome (not waited for: a participant that restarts finds the
// transaction prepared and applies it again, which is idempotent). It is
// Recoverable, as WormTX's direct mode requires, and Restorable
// (Config.Records): PrepareRecord keeps the vote in memory only. Its
// unforced Apply falls short of Restorable's contract (a restart finds a
// voted transaction only while its segment is untrimmed); the harness
// never restarts its participants, and 2PC's do the same.
type Resource struct {
	name   string
	proto  Protocol
	log    *groupLog
	report func(p Protocol, name string, tx wormtx.TxID, o wormtx.Outcome)

	mu       sync.Mutex
	prepared map[wormtx.TxID]wormtx.Descriptor
	applied  map[wormtx.TxID]wormtx.Outcome
	records  int // transactions prepared by PrepareRecord
}

var _ wormtx.Restorable = (*Resource)(nil)

func newResource(cfg ParticipantsConfig, p Protocol, name string, report func(Protocol, string, wormtx.TxID, wormtx.Outcome)) (*Resource, error) {
	l, err := openGroupLog(filepath.Join(cfg.Dir, string(p)+"-"+name+".log"), cfg.Volatile)
	if err != nil {
		return nil, err
	}
	l.proto = p
	return &Resource{name: name, proto: p, log: l, report: report, prepared: map[wormtx.TxID]wormtx.Descriptor{}, applied: map[wormtx.TxID]wormtx.Outcome{}}, nil
}

// Prepare implements wormtx.Resource: it votes yes once the vote is on
// disk.
func (r *Resource) Prepare(_ context.Context, tx wormtx.TxID, d wormtx.Descriptor) (bool, error) {
	r.mu.Lock()
	if _, ok := r.prepared[tx]; ok {
		r.mu.Unlock()
		return true, nil
	}
	if _, ok := r.applied[tx]; ok {
		r.mu.Unlock()
		return true, nil
	}
	r.prepared[tx] = d
	r.mu.Unlock()
	rec := binary.LittleEndian.AppendUint64([]byte{'P'}, uint64(tx))
	if err := r.log.append(append(rec, wormtx.MarshalDescriptor(d)...), true); err != nil {
		return false, err
	}
	return true, nil
}

// PrepareRecord implements wormtx.Restorable: the vote, kept in memory
// only (with Config.Records the vote register carries the prepare).
// The record is empty: the transaction's payload, which the vote carries
// too, is all there is to restore.
func (r *Resource) PrepareRecord(_ context.Context, tx wormtx.TxID, d wormtx.Descriptor) (bool, []byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.applied[tx]; !ok {
		if _, ok := r.prepared[tx]; !ok {
			r.prepared[tx] = d
			r.records++
		}
	}
	return true, nil, nil
}

// Restore implements wormtx.Restorable.
func (r *Resource) Restore(_ context.Context, tx wormtx.TxID, d wormtx.Descriptor, _ []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.applied[tx]; !ok {
		r.prepared[tx] = d
	}
	return nil
}

// Apply implements wormtx.Resource.
func (r *Resource) Apply(_ context.Context, tx wormtx.TxID, o wormtx.Outcome) error {
	r.mu.Lock()
	_, done := r.applied[tx]
	r.applied[tx] = o
	delete(r.prepared, tx)
	r.mu.Unlock()
	if done {
		return nil
	}
	rec := binary.LittleEndian.AppendUint64([]byte{'A'}, uint64(tx))
	if err := r.log.append(append(rec, byte(o)), false); err != nil {
		return err
	}
	r.report(r.proto, r.name, tx, o)
	return nil
}

// Prepared implements wormtx.Recoverable.
func (r *Resource) Prepared(context.Context) ([]wormtx.Tx, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]wormtx.Tx, 0, len(r.prepared))
	for tx, d := range r.prepared {
		out = append(out, wormtx.Tx{ID: tx, Descriptor: d})
	}
	return out, nil
}

// groupLog is an append-only file of records (apps/wormtx/internal/forcefile); appends that
// wait for durability share a sync (group commit), and a sync is one device
// flush, as a wormd's is (apps/wormtx/internal/forcefile). Volatile: never
// synced.
type groupLog struct {
	proto   Protocol // whose votes it holds
	mu      sync.Mutex
	cond    *sync.Cond
	f       *forcefile.File
	pending []byte
	seq     uint64 // appends so far
	durable uint64 // appends written (and synced)
	syncing bool
	err     error
	forces  Forces // the syncs that made appends durable
}

// Forces counts a log's forces (write and sync) and their total duration.
type Forces struct {
	N    uint64        `json:"n"`
	Time time.Duration `json:"time_ns"`
}

// Sub returns f's counts since earlier.
func (f Forces) Sub(earlier Forces) Forces {
	return Forces{N: f.N - earlier.N, Time: f.Time - earlier.Time}
}

// Add returns the sum of f and g.
func (f Forces) Add(g Forces) Forces { return Forces{N: f.N + g.N, Time: f.Time + g.Time} }

// counts returns the log's forces so far.
func (l *groupLog) counts() Forces {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.forces
}

func openGroupLog(path string, volatile bool) (*groupLog, error) {
	f, _, err := forcefile.Open(path, "wormspace txbench log v1\n", volatile)
	if err != nil {
		return nil, fmt.Errorf("txbench: %w", err)
	}
	l := &groupLog{f: f}
	l.cond = sync.NewCond(&l.mu)
	return l, nil
}

// append adds rec; with wait, it returns once rec is durable.
func (l *groupLog) append(rec []byte, wait bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.pending = forcefile.AppendRecord(l.pending, rec)
	l.seq++
	me := l.seq
	for wait && l.durable < me && l.err == nil {
		if l.syncing {
			l.cond.Wait()
			continue
		}
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
		l.forces = l.forces.Add(Forces{N: 1, Time: took})
		l.syncing = false
		if err != nil {
			l.err = fmt.Errorf("txbench: log: %w", err)
		} else {
			l.durable = upto
		}
		l.cond.Broadcast()
	}
	return l.err
}

func (l *groupLog) close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.pending) > 0 && l.err == nil {
		if err := l.f.Write(l.pending); err != nil {
			l.err = err
		}
		l.pending = nil
	}
	if err := l.f.Close(); err != nil {
		return err
	}
	return l.err
}
