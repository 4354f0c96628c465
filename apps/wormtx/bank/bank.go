package bank

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/wormspace/wormspace/apps/wormtx"
	"github.com/wormspace/wormspace/worm"
)

// Transfer is the payload of a bank transaction: move Amount from account
// From to account To.
type Transfer struct {
	From, To string
	Amount   int64
}

// Marshal encodes t as "from\x00to\x00amount".
func (t Transfer) Marshal() []byte {
	return []byte(t.From + "\x00" + t.To + "\x00" + strconv.FormatInt(t.Amount, 10))
}

// ErrBadTransfer: a payload that is not a transfer.
var ErrBadTransfer = errors.New("bank: bad transfer")

// ParseTransfer decodes a payload written by Marshal.
func ParseTransfer(b []byte) (Transfer, error) {
	f := strings.Split(string(b), "\x00")
	if len(f) != 3 || f[0] == "" || f[1] == "" || f[0] == f[1] {
		return Transfer{}, fmt.Errorf("%w: %q", ErrBadTransfer, b)
	}
	n, err := strconv.ParseInt(f[2], 10, 64)
	if err != nil || n <= 0 {
		return Transfer{}, fmt.Errorf("%w: amount %q", ErrBadTransfer, f[2])
	}
	return Transfer{From: f[0], To: f[1], Amount: n}, nil
}

// ErrConflict: the ledger was asked to apply a transaction with an
// outcome that contradicts what it applied or voted before. It means the
// commit protocol broke an invariant.
var ErrConflict = errors.New("bank: conflicting outcome")

// Ledger is one participant's accounts. It implements wormtx.Resource:
// Prepare locks the accounts a transfer touches here (voting no when one
// is locked by another transaction or would be overdrawn), Apply makes the
// change on commit and releases the locks. The ledger is the participant's
// durable state: a simulated crash stops RunParticipant but keeps the
// ledger, so a restarted participant finds its prepared transactions.
type Ledger struct {
	name string

	mu        sync.Mutex
	balance   map[string]int64
	locks     map[string]wormtx.TxID
	prepared  map[wormtx.TxID]prepared
	applied   map[wormtx.TxID]wormtx.Outcome
	conflicts []string
	// path, when set, is the file the ledger is saved to after every
	// change (OpenLedgerFile).
	path string
}

type prepared struct {
	yes    bool
	deltas map[string]int64
}

// NewLedger returns participant name's ledger holding balances.
func NewLedger(name string, balances map[string]int64) *Ledger {
	b := make(map[string]int64, len(balances))
	for k, v := range balances {
		b[k] = v
	}
	return &Ledger{name: name, balance: b, locks: map[string]wormtx.TxID{},
		prepared: map[wormtx.TxID]prepared{}, applied: map[wormtx.TxID]wormtx.Outcome{}}
}

var _ wormtx.Resource = (*Ledger)(nil)

// Prepare implements wormtx.Resource. The vote is recorded before it is
// returned, and the same vote is returned on every later call.
func (l *Ledger) Prepare(_ context.Context, tx wormtx.TxID, d wormtx.Descriptor) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	yes, err := l.prepareLocked(tx, d)
	if err == nil {
		if err := l.saveLocked(); err != nil {
			return false, err
		}
	}
	return yes, err
}

func (l *Ledger) prepareLocked(tx wormtx.TxID, d wormtx.Descriptor) (bool, error) {
	if p, ok := l.prepared[tx]; ok {
		return p.yes, nil
	}
	if _, ok := l.applied[tx]; ok {
		// Already aborted here without a vote (a recoverer voted for us).
		l.prepared[tx] = prepared{}
		return false, nil
	}
	p := prepared{deltas: map[string]int64{}}
	t, err := ParseTransfer(d.Payload)
	if err == nil {
		if _, ok := l.balance[t.From]; ok {
			p.deltas[t.From] -= t.Amount
		}
		if _, ok := l.balance[t.To]; ok {
			p.deltas[t.To] += t.Amount
		}
	}
	p.yes = err == nil && len(p.deltas) > 0
	for acct, delta := range p.deltas {
		if _, locked := l.locks[acct]; locked || l.balance[acct]+delta < 0 {
			p.yes = false
		}
	}
	if p.yes {
		for acct := range p.deltas {
			l.locks[acct] = tx
		}
	}
	l.prepared[tx] = p
	return p.yes, nil
}

// Apply implements wormtx.Resource.
func (l *Ledger) Apply(_ context.Context, tx wormtx.TxID, o wormtx.Outcome) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	err := l.applyLocked(tx, o)
	if serr := l.saveLocked(); serr != nil && err == nil {
		err = serr
	}
	return err
}

func (l *Ledger) applyLocked(tx wormtx.TxID, o wormtx.Outcome) error {
	if old, ok := l.applied[tx]; ok {
		if old != o {
			l.conflicts = append(l.conflicts, fmt.Sprintf("%s: %v applied as %v, now %v", l.name, tx, old, o))
			return fmt.Errorf("%w: %v applied as %v, now %v", ErrConflict, tx, old, o)
		}
		return nil
	}
	p := l.prepared[tx]
	if o == wormtx.Commit {
		if !p.yes {
			l.conflicts = append(l.conflicts, fmt.Sprintf("%s: %v commit without a yes vote", l.name, tx))
			return fmt.Errorf("%w: %v commit without a yes vote", ErrConflict, tx)
		}
		for acct, delta := range p.deltas {
			l.balance[acct] += delta
		}
	}
	if p.yes {
		for acct := range p.deltas {
			if l.locks[acct] == tx {
				delete(l.locks, acct)
			}
		}
	}
	l.applied[tx] = o
	return nil
}

// Balance returns an account's balance.
func (l *Ledger) Balance(acct string) (int64, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.balance[acct]
	return b, ok
}

// Total is the sum of the ledger's balances.
func (l *Ledger) Total() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	var s int64
	for _, b := range l.balance {
		s += b
	}
	return s
}

// Locked lists the accounts locked by a prepared transaction.
func (l *Ledger) Locked() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for a := range l.locks {
		out = append(out, a)
	}
	slices.Sort(out)
	return out
}

// Applied returns the outcome the ledger applied for tx.
func (l *Ledger) Applied(tx wormtx.TxID) (wormtx.Outcome, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	o, ok := l.applied[tx]
	return o, ok
}

// Conflicts lists invariant violations seen by Apply.
func (l *Ledger) Conflicts() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.conflicts)
}

// Layout places a bank's segments: participant i's inbox starts at
// Base + (i+1)<<32, coordinator k's transaction segments at
// Base + (len(Participants)+1+k)<<32.
type Layout struct {
	Base         uint64
	Participants []string
}

// Inbox returns participant name's first inbox segment.
func (l Layout) Inbox(name string) (uint64, error) {
	i := slices.Index(l.Participants, name)
	if i < 0 {
		return 0, fmt.Errorf("%w: unknown participant %q", wormtx.ErrInvalid, name)
	}
	return l.Base + uint64(i+1)<<32, nil
}

// Directory is the layout's inbox directory.
func (l Layout) Directory() wormtx.Directory { return l.Inbox }

// CoordinatorSeg returns coordinator k's first transaction segment.
func (l Layout) CoordinatorSeg(k int) uint64 {
	return l.Base + uint64(len(l.Participants)+1+k)<<32
}

// Config configures a bank participant process.
type Config struct {
	Name   string
	Layout Layout
	// Policy: when to recover missing votes (default wormtx.DefaultPolicy).
	Policy *wormtx.Policy
	// AbandonAfter: see wormtx.ParticipantConfig.
	AbandonAfter time.Duration
	// CrashAt, when not zero, crashes the participant (RunParticipant
	// returns wormtx.ErrCrashed) at that point of the first transaction
	// for which CrashIf returns true (nil: any).
	CrashAt wormtx.CrashPoint
	CrashIf func(wormtx.TxID) bool
	// OnCrash, when set, is called when the crash point fires, before
	// RunParticipant stops: a participant process exits there (a real
	// crash at that point).
	OnCrash func(wormtx.CrashPoint, wormtx.TxID)
	Logger  *slog.Logger
}

// RunParticipant runs participant cfg.Name over sp until ctx ends or a
// crash point fires: it serves its inbox (every transaction that names
// it), prepares transfers on the ledger, votes, learns outcomes, applies
// and acknowledges them. Run it again with the same ledger to restart.
func RunParticipant(ctx context.Context, sp worm.Space, cfg Config, l *Ledger) error {
	inbox, err := cfg.Layout.Inbox(cfg.Name)
	if err != nil {
		return err
	}
	pol := wormtx.DefaultPolicy
	if cfg.Policy != nil {
		pol = *cfg.Policy
	}
	pol.Notify = cfg.Layout.Directory()
	pc := wormtx.ParticipantConfig{Inbox: inbox, Policy: pol, AbandonAfter: cfg.AbandonAfter, Logger: cfg.Logger}
	if cfg.CrashAt != 0 {
		var once sync.Once
		pc.Crash = func(p wormtx.CrashPoint, tx wormtx.TxID) bool {
			fired := false
			if p == cfg.CrashAt && (cfg.CrashIf == nil || cfg.CrashIf(tx)) {
				once.Do(func() { fired = true })
			}
			if fired && cfg.OnCrash != nil {
				cfg.OnCrash(p, tx)
			}
			return fired
		}
	}
	return wormtx.NewParticipant(sp, cfg.Name, pc).Run(ctx, l)
}

// Bank moves money between accounts held by different participants, with
// any transaction manager (WormTX's Coordinator or the 2PC baseline).
type Bank struct {
	// Owner maps an account to the participant holding it.
	Owner map[string]string
	TM    wormtx.TM
}

// Transfer moves amount from one account to another atomically and
// returns the transaction and its outcome (Abort: an account was locked
// by a concurrent transfer or would be overdrawn, or a vote timed out).
func (b Bank) Transfer(ctx context.Context, from, to string, amount int64) (wormtx.TxID, wormtx.Outcome, error) {
	t := Transfer{From: from, To: to, Amount: amount}
	if _, err := ParseTransfer(t.Marshal()); err != nil {
		return 0, wormtx.Pending, err
	}
	pf, ok1 := b.Owner[from]
	pt, ok2 := b.Owner[to]
	if !ok1 || !ok2 {
		return 0, wormtx.Pending, fmt.Errorf("%w: unknown account", ErrBadTransfer)
	}
	parts := []string{pf}
	if pt != pf {
		parts = append(parts, pt)
	}
	id, err := b.TM.Begin(ctx, parts, t.Marshal())
	if err != nil {
		return id, wormtx.Pending, err
	}
	o, err := b.TM.Await(ctx, id)
	return id, o, err
}

// CrashOnce returns a coordinator crash hook (wormtx.CoordinatorConfig.
// Crash) that fires once, at point p when the count reaches n.
func CrashOnce(p wormtx.CrashPoint, n int) func(wormtx.CrashPoint, int) bool {
	var once sync.Once
	return func(q wormtx.CrashPoint, k int) bool {
		fired := false
		if q == p && k >= n {
			once.Do(func() { fired = true })
		}
		return fired
	}
}
