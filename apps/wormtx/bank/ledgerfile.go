package bank

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	"github.com/wormspace/wormspace/apps/wormtx"
)

// ledgerState is a Ledger as saved on disk (JSON).
type ledgerState struct {
	Name      string                    `json:"name"`
	Balance   map[string]int64          `json:"balance"`
	Locks     map[string]wormtx.TxID    `json:"locks"`
	Prepared  map[string]preparedState  `json:"prepared"` // by TxID in decimal
	Applied   map[string]wormtx.Outcome `json:"applied"`  // by TxID in decimal
	Conflicts []string                  `json:"conflicts,omitempty"`
}

type preparedState struct {
	Yes    bool             `json:"yes"`
	Deltas map[string]int64 `json:"deltas,omitempty"`
}

// OpenLedgerFile returns participant name's ledger saved in the file at
// path: read from it when it exists (a restarted participant process),
// else created with balances. From then on every Prepare and Apply saves
// the whole ledger (a new file synced and renamed over the old one)
// before it returns, so the ledger survives a process crash at any point:
// a vote is durable before it is cast, as wormtx.Resource requires.
func OpenLedgerFile(path, name string, balances map[string]int64) (*Ledger, error) {
	l, err := LoadLedgerFile(path)
	switch {
	case err == nil:
		if l.name != name {
			return nil, fmt.Errorf("bank: %s holds the ledger of %q, not %q", path, l.name, name)
		}
	case errors.Is(err, fs.ErrNotExist):
		l = NewLedger(name, balances)
	default:
		return nil, err
	}
	l.path = path
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.saveLocked(); err != nil {
		return nil, err
	}
	return l, nil
}

// LoadLedgerFile reads a ledger saved by OpenLedgerFile, for inspection
// (the returned ledger does not save itself).
func LoadLedgerFile(path string) (*Ledger, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("bank: %w", err)
	}
	var st ledgerState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("bank: %s: %w", path, err)
	}
	l := NewLedger(st.Name, st.Balance)
	for a, tx := range st.Locks {
		l.locks[a] = tx
	}
	for k, p := range st.Prepared {
		tx, err := strconv.ParseUint(k, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("bank: %s: prepared %q: %w", path, k, err)
		}
		l.prepared[wormtx.TxID(tx)] = prepared{yes: p.Yes, deltas: p.Deltas}
	}
	for k, o := range st.Applied {
		tx, err := strconv.ParseUint(k, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("bank: %s: applied %q: %w", path, k, err)
		}
		l.applied[wormtx.TxID(tx)] = o
	}
	l.conflicts = st.Conflicts
	return l, nil
}

// saveLocked writes the ledger to its file, if it has one. l.mu is held.
func (l *Ledger) saveLocked() error {
	if l.path == "" {
		return nil
	}
	st := ledgerState{Name: l.name, Balance: l.balance, Locks: l.locks, Prepared: map[string]preparedState{},
		Applied: map[string]wormtx.Outcome{}, Conflicts: l.conflicts}
	for tx, p := range l.prepared {
		st.Prepared[strconv.FormatUint(uint64(tx), 10)] = preparedState{Yes: p.yes, Deltas: p.deltas}
	}
	for tx, o := range l.applied {
		st.Applied[strconv.FormatUint(uint64(tx), 10)] = o
	}
	b, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("bank: save ledger: %w", err)
	}
	tmp := l.path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("bank: save ledger: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, l.path)
	}
	if err == nil {
		// The rename is durable once the directory is synced.
		if d, derr := os.Open(filepath.Dir(l.path)); derr == nil {
			err = d.Sync()
			d.Close()
		}
	}
	if err != nil {
		return fmt.Errorf("bank: save ledger: %w", err)
	}
	return nil
}
