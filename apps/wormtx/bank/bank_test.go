package bank_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/wormspace/wormspace/apps/wormtx"
	"github.com/wormspace/wormspace/apps/wormtx/bank"
	"github.com/wormspace/wormspace/apps/wormtx/twopc"
	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/spec"
)

// world is a bank over WormTX on a spec store: participants p0..pn-1, each
// holding accounts a<i>0 and a<i>1 with 100 each.
type world struct {
	t       *testing.T
	ctx     context.Context
	st      *spec.Store
	layout  bank.Layout
	ledgers map[string]*bank.Ledger
	owner   map[string]string
	pol     wormtx.Policy
	mu      sync.Mutex
	stops   map[string]func() error
}

func newWorld(t *testing.T, st *spec.Store, n int, pol wormtx.Policy) *world {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	w := &world{t: t, ctx: ctx, st: st, ledgers: map[string]*bank.Ledger{}, owner: map[string]string{}, pol: pol,
		stops: map[string]func() error{}, layout: bank.Layout{Base: 1 << 40}}
	for i := range n {
		name := "p" + strconv.Itoa(i)
		w.layout.Participants = append(w.layout.Participants, name)
		acc := map[string]int64{}
		for j := range 2 {
			a := fmt.Sprintf("a%d%d", i, j)
			acc[a] = 100
			w.owner[a] = name
		}
		w.ledgers[name] = bank.NewLedger(name, acc)
	}
	for _, p := range w.layout.Participants {
		w.start(p, 0, nil)
	}
	t.Cleanup(w.stopAll)
	return w
}

// start runs participant p (again), optionally with a crash point.
func (w *world) start(p string, at wormtx.CrashPoint, crashIf func(wormtx.TxID) bool) <-chan error {
	sp := w.st.Client(p)
	ctx, cancel := context.WithCancel(w.ctx)
	done := make(chan error, 1)
	pol := w.pol
	go func() {
		done <- bank.RunParticipant(ctx, sp, bank.Config{Name: p, Layout: w.layout, Policy: &pol,
			AbandonAfter: 30 * time.Millisecond, CrashAt: at, CrashIf: crashIf}, w.ledgers[p])
	}()
	res := make(chan error, 1)
	var once sync.Once
	var err error
	stop := func() error {
		once.Do(func() { cancel(); err = <-done; sp.Close() })
		return err
	}
	go func() {
		e := <-done
		done <- e
		res <- e
	}()
	w.mu.Lock()
	w.stops[p] = stop
	w.mu.Unlock()
	return res
}

func (w *world) stopAll() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, s := range w.stops {
		s()
	}
}

func (w *world) coordinator(k int, crash func(wormtx.CrashPoint, int) bool) *wormtx.Coordinator {
	return wormtx.NewCoordinator(w.st.Client("coord"+strconv.Itoa(k)), wormtx.CoordinatorConfig{
		FirstSeg: w.layout.CoordinatorSeg(k), Directory: w.layout.Directory(), Policy: w.pol, Crash: crash})
}

func (w *world) bank(tm wormtx.TM) bank.Bank { return bank.Bank{Owner: w.owner, TM: tm} }

// settled waits until each participant of tx applied it and returns the
// common outcome.
func (w *world) settled(tx wormtx.TxID, parts ...string) wormtx.Outcome {
	w.t.Helper()
	for {
		var outs []wormtx.Outcome
		for _, p := range parts {
			if o, ok := w.ledgers[p].Applied(tx); ok {
				outs = append(outs, o)
			}
		}
		if len(outs) == len(parts) {
			for _, o := range outs {
				if o != outs[0] {
					w.t.Fatalf("%v applied as %v", tx, outs)
				}
			}
			return outs[0]
		}
		select {
		case <-w.ctx.Done():
			c := w.st.Client("debug")
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			t, err := wormtx.Open(ctx, c, tx)
			var st wormtx.Status
			if err == nil {
				st, err = t.Status(ctx, c)
			}
			w.t.Fatalf("%v: applied by %d of %v; status %+v %v", tx, len(outs), parts, st, err)
		case <-time.After(time.Millisecond):
		}
	}
}

func (w *world) checkLedgers(wantTotal int64) {
	w.t.Helper()
	var total int64
	for name, l := range w.ledgers {
		for _, c := range l.Conflicts() {
			w.t.Error(c)
		}
		if lk := l.Locked(); len(lk) > 0 {
			w.t.Errorf("%s still holds locks on %v", name, lk)
		}
		total += l.Total()
	}
	if total != wantTotal {
		w.t.Errorf("money not conserved: total %d, want %d", total, wantTotal)
	}
}

func fast(d time.Duration) wormtx.Policy {
	return wormtx.Policy{RecoverAfter: d, Poll: 5 * time.Millisecond}
}

func TestTransfer(t *testing.T) {
	w := newWorld(t, spec.New(64), 2, fast(time.Second))
	b := w.bank(w.coordinator(0, nil))
	tx, o, err := b.Transfer(w.ctx, "a00", "a10", 30)
	if err != nil || o != wormtx.Commit {
		t.Fatalf("Transfer = %v, %v", o, err)
	}
	w.settled(tx, "p0", "p1")
	if v, _ := w.ledgers["p0"].Balance("a00"); v != 70 {
		t.Errorf("a00 = %d, want 70", v)
	}
	if v, _ := w.ledgers["p1"].Balance("a10"); v != 130 {
		t.Errorf("a10 = %d, want 130", v)
	}
	// Overdraft: p0 votes no.
	tx, o, err = b.Transfer(w.ctx, "a01", "a11", 101)
	if err != nil || o != wormtx.Abort {
		t.Fatalf("overdraft Transfer = %v, %v; want abort", o, err)
	}
	w.settled(tx, "p0", "p1")
	// Same participant on both sides: one vote.
	tx, o, err = b.Transfer(w.ctx, "a00", "a01", 10)
	if err != nil || o != wormtx.Commit {
		t.Fatalf("local Transfer = %v, %v", o, err)
	}
	w.settled(tx, "p0")
	w.checkLedgers(400)
	if v, _ := w.ledgers["p0"].Balance("a01"); v != 110 {
		t.Errorf("a01 = %d, want 110", v)
	}
}

// TestCoordinatorCrashBlocks2PCNotWormTX is the blocking case: the
// coordinator crashes after asking everyone to prepare, every participant
// votes yes. Under 2PC the participants are in doubt and hold their locks
// for as long as the coordinator is down (a bounded wait shows they cannot
// decide); under WormTX they finish without it.
func TestCoordinatorCrashBlocks2PCNotWormTX(t *testing.T) {
	const bound = 300 * time.Millisecond
	t.Run("2PC", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		st := spec.New(64)
		net := twopc.NewNetwork(0)
		ledgers := map[string]*bank.Ledger{"p0": bank.NewLedger("p0", map[string]int64{"a00": 100}), "p1": bank.NewLedger("p1", map[string]int64{"a10": 100})}
		parts := map[string]*twopc.Participant{}
		for name, l := range ledgers {
			parts[name] = twopc.NewParticipant(net, l, twopc.ParticipantConfig{Name: name, QueryEvery: 10 * time.Millisecond})
			go parts[name].Run(ctx)
		}
		log := st.Client("coord")
		cfg := twopc.CoordinatorConfig{Name: "coord", Log: log, LogSeg: 1, VoteTimeout: time.Second,
			Crash: func(p twopc.CrashPoint, _ int) bool { return p == twopc.CoordinatorAfterPrepare }}
		co := twopc.NewCoordinator(net, cfg)
		if err := co.EnsureLog(ctx, 1); err != nil {
			t.Fatal(err)
		}
		go co.Run(ctx)
		b := bank.Bank{Owner: map[string]string{"a00": "p0", "a10": "p1"}, TM: co}
		tx, _, err := b.Transfer(ctx, "a00", "a10", 10)
		if !errors.Is(err, twopc.ErrCrashed) {
			t.Fatalf("Transfer: %v, want the coordinator crash", err)
		}
		for name, p := range parts {
			wctx, wcancel := context.WithTimeout(ctx, bound)
			o, err := p.Await(wctx, tx)
			wcancel()
			if !errors.Is(err, twopc.ErrInDoubt) {
				t.Fatalf("%s: Await = %v, %v; want in doubt (blocked)", name, o, err)
			}
			if len(ledgers[name].Locked()) == 0 {
				t.Fatalf("%s released its locks while in doubt", name)
			}
		}
		// Only the coordinator's recovery unblocks them: a new incarnation
		// on the same log presumes abort.
		net.Restart("coord")
		cfg.Crash, cfg.FirstTx = nil, 1000
		co2 := twopc.NewCoordinator(net, cfg)
		go co2.Run(ctx)
		for name, p := range parts {
			o, err := p.Await(ctx, tx)
			if err != nil || o != wormtx.Abort {
				t.Fatalf("%s after coordinator recovery: %v, %v; want abort", name, o, err)
			}
			if lk := ledgers[name].Locked(); len(lk) != 0 {
				t.Fatalf("%s still locks %v", name, lk)
			}
		}
	})
	t.Run("WormTX", func(t *testing.T) {
		w := newWorld(t, spec.New(64), 2, fast(50*time.Millisecond))
		// Crash after every participant was asked to prepare: nobody
		// needs the coordinator, every vote is yes, so commit.
		b := w.bank(w.coordinator(0, bank.CrashOnce(wormtx.CoordinatorBeforeAwait, 0)))
		start := time.Now()
		tx, _, err := b.Transfer(w.ctx, "a00", "a10", 10)
		if !errors.Is(err, wormtx.ErrCrashed) {
			t.Fatalf("Transfer: %v, want the coordinator crash", err)
		}
		if o := w.settled(tx, "p0", "p1"); o != wormtx.Commit {
			t.Fatalf("outcome %v, want commit", o)
		}
		if d := time.Since(start); d > bound {
			t.Fatalf("took %v, more than the bound %v under which 2PC stays blocked", d, bound)
		}
		// Crash after telling only p0: p0 recovers p1's vote (no) and
		// tells p1; both abort within the bound, locks released.
		b = w.bank(w.coordinator(1, bank.CrashOnce(wormtx.CoordinatorAfterPost, 1)))
		start = time.Now()
		tx, _, err = b.Transfer(w.ctx, "a01", "a11", 10)
		if !errors.Is(err, wormtx.ErrCrashed) {
			t.Fatalf("Transfer: %v, want the coordinator crash", err)
		}
		if o := w.settled(tx, "p0", "p1"); o != wormtx.Abort {
			t.Fatalf("outcome %v, want abort", o)
		}
		if d := time.Since(start); d > bound {
			t.Fatalf("took %v, more than the bound %v", d, bound)
		}
		w.checkLedgers(400)
	})
}

// TestRandomizedBank runs concurrent random transfers from several
// coordinators with crashes of coordinators (at every crash point) and of
// participants (before and after voting, restarted later), under spec
// fault injection, and checks: every participant of a transaction applies
// the same outcome, commit only with every vote yes (the ledgers record a
// conflict otherwise), money is conserved, no lock is left. WORMTX_SEED
// replays a seed.
func TestRandomizedBank(t *testing.T) {
	seeds := []uint64{}
	if s := os.Getenv("WORMTX_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		seeds = append(seeds, v)
	} else {
		base := uint64(time.Now().UnixNano())
		for i := range 10 {
			seeds = append(seeds, base+uint64(i))
		}
	}
	for _, seed := range seeds {
		t.Run(strconv.FormatUint(seed, 10), func(t *testing.T) {
			t.Logf("seed %d (replay: WORMTX_SEED=%d go test -run TestRandomizedBank ./apps/wormtx/bank)", seed, seed)
			randomizedBank(t, seed)
		})
	}
}

func randomizedBank(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 42))
	st := spec.New(32)
	st.SetListenBuffer(4)
	w := newWorld(t, st, 3, fast(15*time.Millisecond))
	// Participant crashes: each participant may crash once, at a random
	// point of a random transaction, and is restarted after a pause.
	for _, p := range w.layout.Participants {
		if rng.IntN(2) == 0 {
			continue
		}
		at := []wormtx.CrashPoint{wormtx.ParticipantBeforeVote, wormtx.ParticipantAfterVote}[rng.IntN(2)]
		mod := wormtx.TxID(2 + rng.IntN(3))
		pause := time.Duration(rng.IntN(40)) * time.Millisecond
		w.stops[p]()
		done := w.start(p, at, func(tx wormtx.TxID) bool { return tx%mod == 0 })
		go func() {
			if err := <-done; errors.Is(err, wormtx.ErrCrashed) {
				time.Sleep(pause)
				w.start(p, 0, nil)
			}
		}()
	}
	// Faults on the coordinators' and participants' clients during the
	// first 100ms.
	stop := make(chan struct{})
	var nwg sync.WaitGroup
	frng := rand.New(rand.NewPCG(seed, 9))
	nwg.Go(func() {
		end := time.After(100 * time.Millisecond)
		for {
			select {
			case <-stop:
				return
			case <-end:
				return
			case <-time.After(time.Millisecond):
				id := "coord" + strconv.Itoa(frng.IntN(4))
				if frng.IntN(2) == 0 {
					id = "p" + strconv.Itoa(frng.IntN(3))
				}
				if st.PendingFaults(id) == 0 {
					st.InjectFault(id, []spec.Fault{spec.FaultUnknownApplied, spec.FaultUnknownDropped, spec.FaultUnavailable}[frng.IntN(3)], 1)
				}
			}
		}
	})
	accounts := []string{"a00", "a01", "a10", "a11", "a20", "a21"}
	type plan struct {
		from, to string
		amount   int64
		crash    wormtx.CrashPoint
		count    int
	}
	var plans []plan
	for range 16 {
		i := rng.IntN(len(accounts))
		j := (i + 1 + rng.IntN(len(accounts)-1)) % len(accounts)
		p := plan{from: accounts[i], to: accounts[j], amount: int64(1 + rng.IntN(60))}
		if rng.IntN(4) == 0 {
			p.crash = []wormtx.CrashPoint{wormtx.CoordinatorAfterAlloc, wormtx.CoordinatorAfterPost, wormtx.CoordinatorBeforeAwait}[rng.IntN(3)]
			p.count = 1
		}
		plans = append(plans, p)
	}
	type result struct {
		tx    wormtx.TxID
		o     wormtx.Outcome
		err   error
		parts []string
	}
	results := make([]result, len(plans))
	var wg sync.WaitGroup
	for k, p := range plans {
		wg.Go(func() {
			var crash func(wormtx.CrashPoint, int) bool
			if p.crash != 0 {
				crash = bank.CrashOnce(p.crash, p.count)
			}
			co := wormtx.NewCoordinator(w.st.Client("coord"+strconv.Itoa(k%4)), wormtx.CoordinatorConfig{
				FirstSeg: w.layout.CoordinatorSeg(k), Directory: w.layout.Directory(), Policy: w.pol, Crash: crash})
			tx, o, err := w.bank(co).Transfer(w.ctx, p.from, p.to, p.amount)
			parts := []string{w.owner[p.from]}
			if w.owner[p.to] != parts[0] {
				parts = append(parts, w.owner[p.to])
			}
			results[k] = result{tx, o, err, parts}
		})
	}
	wg.Wait()
	close(stop)
	nwg.Wait()
	for _, id := range []string{"coord0", "coord1", "coord2", "coord3", "p0", "p1", "p2"} {
		st.InjectFault(id, spec.FaultNone, 0)
	}
	checker := st.Client("checker")
	defer checker.Close()
	for k, r := range results {
		if r.err != nil && !errors.Is(r.err, wormtx.ErrCrashed) {
			t.Fatalf("transfer %d: %v", k, r.err)
		}
		if r.tx == 0 {
			continue // crashed before allocating (not possible) or failed
		}
		if errors.Is(r.err, wormtx.ErrCrashed) && plans[k].crash == wormtx.CoordinatorAfterAlloc {
			// Nobody was told: an observer finishes it (and, through
			// recovery, tells the participants so they collect it).
			if _, err := wormtx.Resolve(w.ctx, checker, r.tx, wormtx.Policy{RecoverAfter: 0, Poll: 5 * time.Millisecond, Notify: w.layout.Directory()}); err != nil && !errors.Is(err, worm.ErrTrimmed) {
				t.Fatalf("resolve %v: %v", r.tx, err)
			}
		}
		o := w.settled(r.tx, r.parts...)
		if r.err == nil && o != r.o {
			t.Fatalf("%v: coordinator saw %v, participants applied %v", r.tx, r.o, o)
		}
	}
	w.checkLedgers(600)
}
