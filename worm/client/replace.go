package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/paxos"
	"github.com/wormspace/wormspace/worm/wire"
)

// ConfigSegment is the segment whose metadata register decides the
// configuration of epoch e: the change to e is proposed by an Alloc of
// ConfigSegment(e), in epoch e-1, whose meta is the configuration, and
// the first proposer wins (two concurrent replacements never seal the
// same epoch for different successors). Segments from 2^64 - 2^32 up are
// reserved for this; applications must not use them.
func ConfigSegment(epoch uint64) uint64 { return math.MaxUint64 - epoch }

// Sentinel errors of Replace.
var (
	// ErrInterrupted: Replacement.Interrupt stopped the replacement (a
	// test hook); running Replace again finishes it.
	ErrInterrupted = errors.New("client: replacement interrupted")
	// ErrReplace: the replacement cannot go on (the reason follows); what
	// it did so far is left for a later run to finish.
	ErrReplace = errors.New("client: replacement")
)

// Replacement describes a membership change: the member Old of the
// cluster reached through Servers is replaced by New, a wormd started
// with -join on an empty data directory. See Replace.
type Replacement struct {
	// Servers reach the cluster: the members of its current
	// configuration, or of an older one (the list clients were given), or
	// any of them; members of configurations the servers announce are
	// reached too.
	Servers []string
	// Key is the cluster key (nil: none).
	Key []byte
	// ID is the identity recorded by the configuration's Alloc. Default:
	// a random "replace-" name.
	ID string
	// Old is the member to replace: its address as a configuration or
	// Servers lists it, or its acceptor id. Empty: only finish a change
	// that an earlier run left half done.
	Old string
	// New is the new member's address.
	New string
	// Dialer makes the connections (default: kernel TCP).
	Dialer Dialer
	// DialTimeout bounds each dial and handshake (default 2s).
	DialTimeout time.Duration
	// ChunkBytes bounds one chunk of the state transfer (default 1 MiB;
	// it is also held under the servers' frame limits): memory stays
	// bounded however large the state is.
	ChunkBytes int
	// Progress receives a line per step (nil: none).
	Progress func(line string)
	// Logger receives the client's connection events (default: none).
	Logger *slog.Logger
	// Interrupt, when set, is asked at each step ("decided", "sealed",
	// "activated", "installing" after the first chunk, "installed");
	// returning true stops there with ErrInterrupted. It lets tests leave
	// a change half done.
	Interrupt func(step string) bool
}

// Replace replaces a member of the cluster, online: clients keep working
// (an operation refused by a sealed epoch runs again under the new
// configuration), and it returns the new configuration. It is
// idempotent and finishes what an earlier, interrupted run (or a
// concurrent one) left half done, before it does its own change.
//
// The procedure, from configuration C (epoch e) to C' (epoch e+1, C with
// Old replaced by New):
//
//  1. Decide C': Alloc(ConfigSegment(e+1), C') in epoch e. The first
//     proposal wins, so every replacer seals e for the same C'.
//  2. Seal e at every reachable member of C (each records "sealed, next
//     C'" durably and refuses epoch e from then on); go on only once a
//     majority of C is sealed: no quorum of C can act in epoch e any
//     more, and the state of every sealed member is frozen.
//  3. Activate C' at the sealed members of C that C' keeps. Clients move
//     to C' at once (it has a quorum: the kept members are a majority of
//     C'); the new member serves nothing yet.
//  4. Transfer: stream the state of a majority of C (sealed, or active in
//     C' since, which only added to it) in chunks into New, which merges
//     each record as a lattice join (paxos.Acceptor.Install); then mark
//     the transfer complete (install-done) and activate New in C'.
//
// Why no chosen value is lost, without any timer: a value v chosen in e
// was accepted by a majority of C, which intersects the majority read in
// step 4 at a member that accepted v before it was sealed (after the seal
// it accepts nothing of e), and every proposal above v's ballot carries
// v; so New holds v at the highest ballot any source holds, and a
// promise made by a phase-1 quorum of e reaches New the same way. A
// quorum of C' either contains New (which holds that state) or is a
// majority of C' without New, hence a majority of C's members, which
// intersects v's quorum. Everything New takes is something a member of C
// accepted or promised, so installing is like delivering old messages
// late, and New answers nothing before it holds all of it. A write
// refused by a sealed epoch changed nothing, and one in flight when the
// seal struck is retried identically under C', which settles its outcome.
//
// A change left half done (the replacer died) is finished by whoever runs
// Replace next, from any step: the decision is in C's register, the
// sealed members record C', activation and install are idempotent
// (install merges by max). Until it is finished, clients wait for C'
// (operations end with ErrUnavailable at their deadline). If New is lost
// before it is installed, the change can still be finished (the kept
// members serve C' alone) and New replaced in turn.
//
// Errors: ErrReplace (what could not be done), ErrInterrupted, the
// context's error, or a connection error.
func Replace(ctx context.Context, r Replacement) (wire.Config, error) {
	if r.DialTimeout <= 0 {
		r.DialTimeout = 2 * time.Second
	}
	if r.ChunkBytes <= 0 {
		r.ChunkBytes = 1 << 20
	}
	if r.Dialer == nil {
		r.Dialer = netDialer{net.Dialer{KeepAlive: 15 * time.Second}}
	}
	if r.ID == "" {
		r.ID = "replace-" + strconv.FormatUint(uint64(time.Now().UnixNano()), 36)
	}
	if r.Key != nil && len(r.Key) < wire.MinKeySize {
		return wire.Config{}, fmt.Errorf("%w: cluster key of %d bytes (want at least %d)", ErrConfig, len(r.Key), wire.MinKeySize)
	}
	if (r.Old == "") != (r.New == "") {
		return wire.Config{}, fmt.Errorf("%w: give both the member to replace and the new member, or neither (to finish a pending change)", ErrConfig)
	}
	rp := &replacer{r: r, conns: map[string]*adminConn{}}
	defer rp.closeAll()
	for round := 0; round < 8; round++ {
		st := rp.survey(ctx)
		if err := ctx.Err(); err != nil {
			return wire.Config{}, err
		}
		if x, ok := st.pending(); ok {
			rp.progress("finishing the change to %v, which is under way", x)
			if err := rp.finish(ctx, st, x); err != nil {
				return wire.Config{}, err
			}
			continue
		}
		cur, err := st.current(r.Servers)
		if err != nil {
			return wire.Config{}, err
		}
		if r.Old == "" {
			rp.progress("no change is under way; the configuration is %v", cur)
			return cur, nil
		}
		next, done, err := rp.plan(st, cur)
		if err != nil || done {
			return cur, err
		}
		rp.progress("replacing: %v -> %v", cur, next)
		got, err := rp.decide(ctx, cur, next)
		if err != nil {
			return wire.Config{}, err
		}
		if !got.Equal(next) {
			rp.progress("another change to epoch %d was decided first: %v; finishing it before ours", got.Epoch, got)
		} else {
			rp.progress("decided: epoch %d is %v", next.Epoch, next)
			if rp.interrupted("decided") {
				return wire.Config{}, ErrInterrupted
			}
		}
		if err := rp.finish(ctx, rp.survey(ctx), got); err != nil {
			return wire.Config{}, err
		}
		if got.Equal(next) {
			return next, nil
		}
	}
	return wire.Config{}, fmt.Errorf("%w: the configuration kept changing while this replacement ran", ErrReplace)
}

type replacer struct {
	r     Replacement
	mu    sync.Mutex
	conns map[string]*adminConn // by address; nil when unreachable
}

func (rp *replacer) progress(format string, args ...any) {
	if rp.r.Progress != nil {
		rp.r.Progress(fmt.Sprintf(format, args...))
	}
}

func (rp *replacer) interrupted(step string) bool {
	return rp.r.Interrupt != nil && rp.r.Interrupt(step)
}

func (rp *replacer) closeAll() {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	for _, a := range rp.conns {
		if a != nil {
			a.nc.Close()
		}
	}
}

// probe is what one server said of itself.
type probe struct {
	addr string
	a    *adminConn
	id   uint32
	m    wire.Membership
	err  error
}

// survey is what the reachable servers said.
type survey struct {
	probes []*probe // in the order they were found
}

// survey asks Servers, New and every member of the configurations they
// name for their membership.
func (rp *replacer) survey(ctx context.Context) *survey {
	st := &survey{}
	seen := map[string]bool{}
	todo := append(append([]string(nil), rp.r.Servers...), rp.r.New)
	for len(todo) > 0 {
		var batch []string
		for _, a := range todo {
			if a != "" && !seen[a] {
				seen[a] = true
				batch = append(batch, a)
			}
		}
		todo = nil
		ps := make([]*probe, len(batch))
		var wg sync.WaitGroup
		for i, a := range batch {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ps[i] = rp.probe(ctx, a)
			}()
		}
		wg.Wait()
		for _, p := range ps {
			st.probes = append(st.probes, p)
			if p.err != nil {
				continue
			}
			for _, m := range p.m.Members {
				todo = append(todo, m.Addr)
			}
			for _, m := range p.m.Next.Members {
				todo = append(todo, m.Addr)
			}
		}
	}
	return st
}

func (rp *replacer) probe(ctx context.Context, addr string) *probe {
	p := &probe{addr: addr}
	a, err := rp.conn(ctx, addr)
	if err != nil {
		p.err = err
		return p
	}
	rep, err := a.do(ctx, &wire.Control{Op: wire.CtlMembership})
	if err != nil {
		p.err = err
		rp.drop(addr)
		return p
	}
	p.a, p.id, p.m = a, a.hello.AcceptorID, rep.Membership
	return p
}

// conn returns the admin connection to addr, dialing it if needed.
func (rp *replacer) conn(ctx context.Context, addr string) (*adminConn, error) {
	rp.mu.Lock()
	a := rp.conns[addr]
	rp.mu.Unlock()
	if a != nil {
		return a, nil
	}
	dctx, cancel := context.WithTimeout(ctx, rp.r.DialTimeout)
	defer cancel()
	a, err := dialAdmin(dctx, rp.r.Dialer, addr, rp.r.Key, rp.r.ID)
	if err != nil {
		return nil, err
	}
	rp.mu.Lock()
	rp.conns[addr] = a
	rp.mu.Unlock()
	return a, nil
}

func (rp *replacer) drop(addr string) {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	if a := rp.conns[addr]; a != nil {
		a.nc.Close()
	}
	delete(rp.conns, addr)
}

// byID returns the reachable probe of acceptor id (nil when none).
func (st *survey) byID(id uint32) *probe {
	for _, p := range st.probes {
		if p.err == nil && p.id == id {
			return p
		}
	}
	return nil
}

// active returns the newest configuration a reachable server serves
// (epoch 0: no members known).
func (st *survey) active() wire.Config {
	var best wire.Config
	for _, p := range st.probes {
		if p.err == nil && p.m.State == wire.StateActive && p.m.Epoch >= best.Epoch && len(p.m.Members) > 0 {
			best = wire.Config{Epoch: p.m.Epoch, Members: p.m.Members}
		}
	}
	return best
}

// pending returns a change under way that this run can push on: a
// configuration a sealed server names as its successor that no
// reachable server serves yet, or the newest served configuration while
// some of its reachable members do not serve it (sealed or joining for
// it, or left behind in an older epoch while they were down).
func (st *survey) pending() (wire.Config, bool) {
	act := st.active()
	for _, p := range st.probes {
		if p.err == nil && p.m.State == wire.StateSealed && p.m.Next.Epoch > act.Epoch {
			return p.m.Next.Clone(), true
		}
	}
	if act.Epoch == 0 {
		return wire.Config{}, false
	}
	for _, m := range act.Members {
		if p := st.byID(m.ID); p != nil && behind(p.m, act) {
			return act, true
		}
	}
	return wire.Config{}, false
}

// behind reports whether a member of x can be brought to serve x: it
// serves or sealed an older epoch (a sealed one pointed at x or at an
// older configuration), or it is joining x.
func behind(m wire.Membership, x wire.Config) bool {
	switch m.State {
	case wire.StateActive:
		return m.Epoch < x.Epoch
	case wire.StateSealed:
		return m.Epoch < x.Epoch && (m.Next.Equal(x) || m.Next.Epoch < x.Epoch)
	case wire.StateJoining:
		return m.Next.Epoch == 0 || m.Next.Equal(x)
	}
	return false
}

// current returns the configuration the cluster is in, with acceptor ids
// (for epoch 0, from the hellos of the servers listed; every listed
// server must be reachable but the one to replace, whose id is not
// needed).
func (st *survey) current(servers []string) (wire.Config, error) {
	if act := st.active(); act.Epoch > 0 {
		return act, nil
	}
	cfg := wire.Config{}
	for _, addr := range servers {
		var m wire.Member
		m.Addr = addr
		for _, p := range st.probes {
			if p.addr == addr && p.err == nil {
				m.ID = p.id
			}
		}
		cfg.Members = append(cfg.Members, m)
	}
	return cfg, nil
}

// plan returns the configuration that replaces Old by New in cur, or done
// when that is already the case.
func (rp *replacer) plan(st *survey, cur wire.Config) (next wire.Config, done bool, err error) {
	oldIdx, newIdx := -1, -1
	newProbe := (*probe)(nil)
	for _, p := range st.probes {
		if p.addr == rp.r.New && p.err == nil {
			newProbe = p
		}
	}
	for i, m := range cur.Members {
		if m.Addr == rp.r.Old || strconv.FormatUint(uint64(m.ID), 10) == rp.r.Old && m.ID != 0 {
			oldIdx = i
		}
		if m.Addr == rp.r.New || newProbe != nil && m.ID == newProbe.id && m.ID != 0 {
			newIdx = i
		}
	}
	switch {
	case oldIdx < 0 && newIdx >= 0:
		rp.progress("%s is already a member and %s is not: nothing to do; the configuration is %v", rp.r.New, rp.r.Old, cur)
		return cur, true, nil
	case oldIdx < 0:
		return wire.Config{}, false, fmt.Errorf("%w: %s is not a member of %v", ErrReplace, rp.r.Old, cur)
	case newIdx >= 0:
		return wire.Config{}, false, fmt.Errorf("%w: %s is already a member of %v", ErrReplace, rp.r.New, cur)
	case newProbe == nil:
		return wire.Config{}, false, fmt.Errorf("%w: the new member %s is unreachable: %w", ErrReplace, rp.r.New, rp.probeErr(st, rp.r.New))
	case newProbe.m.State != wire.StateJoining || newProbe.m.Next.Epoch != 0 && newProbe.m.Next.Epoch != cur.Epoch+1:
		return wire.Config{}, false, fmt.Errorf("%w: %s (acceptor %d) is %v, not a new member: start it with wormd -join on an empty data directory", ErrReplace, rp.r.New, newProbe.id, newProbe.m)
	}
	next = wire.Config{Epoch: cur.Epoch + 1, Members: slices.Clone(cur.Members)}
	next.Members[oldIdx] = wire.Member{ID: newProbe.id, Addr: rp.r.New}
	for i, m := range next.Members {
		if m.ID == 0 {
			return wire.Config{}, false, fmt.Errorf("%w: member %s of the initial configuration is unreachable, and its acceptor id is needed to name it in the next configuration (%w): %w", ErrReplace, m.Addr, rp.probeErr(st, m.Addr), worm.ErrUnavailable)
		}
		if i != oldIdx && m.ID == newProbe.id {
			return wire.Config{}, false, fmt.Errorf("%w: the new member %s has acceptor id %d, which member %s has: give it another -id", ErrReplace, rp.r.New, m.ID, m.Addr)
		}
	}
	if err := next.Validate(); err != nil {
		return wire.Config{}, false, fmt.Errorf("%w: %w", ErrReplace, err)
	}
	return next, false, nil
}

func (rp *replacer) probeErr(st *survey, addr string) error {
	for _, p := range st.probes {
		if p.addr == addr && p.err != nil {
			return p.err
		}
	}
	return errors.New("not reached")
}

// configMeta is the encoding of a configuration in its register.
type configMeta struct {
	Epoch   uint64        `json:"epoch"`
	Members []wire.Member `json:"members"`
}

// decide proposes next as the successor of cur in cur's configuration
// register and returns the configuration decided there (ours, or one
// proposed first).
func (rp *replacer) decide(ctx context.Context, cur, next wire.Config) (wire.Config, error) {
	servers := make([]string, len(cur.Members))
	for i, m := range cur.Members {
		servers[i] = m.Addr
	}
	logger := rp.r.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	cl, err := Dial(ctx, Config{Servers: servers, Key: rp.r.Key, ID: rp.r.ID, Dialer: rp.r.Dialer, DialTimeout: rp.r.DialTimeout, Logger: logger})
	if err != nil {
		return wire.Config{}, fmt.Errorf("%w: deciding the next configuration in epoch %d: %w", ErrReplace, cur.Epoch, err)
	}
	defer cl.Close()
	if e := cl.Epoch(); e != cur.Epoch {
		return wire.Config{}, fmt.Errorf("%w: the cluster moved to epoch %d while this replacement planned from epoch %d; run it again", ErrReplace, e, cur.Epoch)
	}
	meta, _ := json.Marshal(configMeta{Epoch: next.Epoch, Members: next.Members})
	info, err := cl.Alloc(ctx, ConfigSegment(next.Epoch), meta)
	if err != nil {
		return wire.Config{}, fmt.Errorf("%w: deciding the next configuration in epoch %d: %w", ErrReplace, cur.Epoch, err)
	}
	var got configMeta
	if err := json.Unmarshal(info.Meta, &got); err != nil || got.Epoch != next.Epoch {
		return wire.Config{}, fmt.Errorf("%w: configuration register %d holds %q, not a configuration of epoch %d (an application used a reserved segment?)", ErrReplace, ConfigSegment(next.Epoch), info.Meta, next.Epoch)
	}
	return wire.Config{Epoch: got.Epoch, Members: got.Members}, nil
}

// finish brings the change to x as far as the reachable servers allow:
// seal its predecessor at a majority, activate the kept members,
// transfer the state into the joining ones and activate them.
func (rp *replacer) finish(ctx context.Context, st *survey, x wire.Config) error {
	e := x.Epoch - 1
	quorum := len(x.Members)/2 + 1
	inX := func(p *probe) bool { return x.Has(p.id) }
	started := false
	for _, p := range st.probes {
		if p.err == nil && p.m.Epoch >= x.Epoch && p.m.State != wire.StateJoining {
			started = true
		}
	}
	// 2. Seal e wherever it is still served (a member that was unreachable
	// when the change began may be back); until the change has started,
	// count the sealed members of e. A server that serves e > 0 was
	// activated in e, so it is a member of e; epoch 0 has no recorded
	// members, so only the servers the caller lists are sealed there.
	listed := func(p *probe) bool { return e > 0 || slices.Contains(rp.r.Servers, p.addr) && p.addr != rp.r.New }
	sealed := map[uint32]bool{}
	for _, p := range st.probes {
		if p.err != nil {
			continue
		}
		if p.m.Serves(e) && listed(p) {
			rep, err := p.a.do(ctx, &wire.Control{Op: wire.CtlSeal, Epoch: e, Config: x})
			if err != nil {
				rp.progress("sealing epoch %d at %s: %v", e, p.addr, err)
				continue
			}
			p.m = rep.Membership
			if rep.Status != wire.CtlOK {
				rp.progress("sealing epoch %d at %s: %v: %s", e, p.addr, rep.Status, rep.Text)
				continue
			}
			rp.progress("sealed epoch %d at %s (acceptor %d)", e, p.addr, p.id)
		}
		if p.m.State == wire.StateSealed && p.m.Epoch == e && p.m.Next.Equal(x) {
			sealed[p.id] = true
		}
	}
	if !started {
		if len(sealed) < quorum {
			return fmt.Errorf("%w: epoch %d is sealed at %d members, a majority is %d: bring members of epoch %d back and run again (the change to %v stays pending): %w", ErrReplace, e, len(sealed), quorum, e, x, worm.ErrUnavailable)
		}
		if rp.interrupted("sealed") {
			return ErrInterrupted
		}
	}
	// 3. The members x keeps serve it from now on; one left behind in an
	// older epoch while it was down (a laggard, which is harmless) is
	// sealed there for x first.
	for _, p := range st.probes {
		if p.err != nil || !inX(p) || p.m.State == wire.StateJoining || !behind(p.m, x) {
			continue
		}
		if !p.m.Next.Equal(x) {
			rep, err := p.a.do(ctx, &wire.Control{Op: wire.CtlSeal, Epoch: p.m.Epoch, Config: x})
			if err != nil {
				return fmt.Errorf("%w: sealing epoch %d at %s, which is behind: %w", ErrReplace, p.m.Epoch, p.addr, err)
			}
			if rep.Status != wire.CtlOK {
				return fmt.Errorf("%w: sealing epoch %d at %s, which is behind: %v: %s", ErrReplace, p.m.Epoch, p.addr, rep.Status, rep.Text)
			}
			rp.progress("sealed epoch %d at %s (acceptor %d), which missed changes, for epoch %d", p.m.Epoch, p.addr, p.id, x.Epoch)
			p.m = rep.Membership
		}
		if err := rp.activate(ctx, p, x); err != nil {
			return err
		}
	}
	if rp.interrupted("activated") {
		return ErrInterrupted
	}
	// 4. New members: transfer, then activate.
	for _, m := range x.Members {
		p := st.byID(m.ID)
		if p == nil {
			rp.progress("member %d (%s) of %v is unreachable; it joins when a later run reaches it", m.ID, m.Addr, x)
			continue
		}
		if p.m.State != wire.StateJoining {
			continue
		}
		if !p.m.Installed {
			if err := rp.transfer(ctx, st, p, x); err != nil {
				return err
			}
			if rp.interrupted("installed") {
				return ErrInterrupted
			}
		}
		if err := rp.activate(ctx, p, x); err != nil {
			return err
		}
	}
	var missing []string
	for _, m := range x.Members {
		if p := st.byID(m.ID); p == nil || !p.m.Serves(x.Epoch) {
			missing = append(missing, m.Addr)
		}
	}
	if len(missing) > 0 {
		rp.progress("epoch %d is active; not serving it yet: %v", x.Epoch, missing)
	} else {
		rp.progress("epoch %d is active at every member", x.Epoch)
	}
	return nil
}

func (rp *replacer) activate(ctx context.Context, p *probe, x wire.Config) error {
	rep, err := p.a.do(ctx, &wire.Control{Op: wire.CtlActivate, Config: x})
	if err != nil {
		return fmt.Errorf("%w: activating %v at %s: %w", ErrReplace, x, p.addr, err)
	}
	p.m = rep.Membership
	if rep.Status != wire.CtlOK && !(rep.Membership.State == wire.StateActive && rep.Membership.Epoch > x.Epoch) {
		return fmt.Errorf("%w: activating %v at %s: %v: %s", ErrReplace, x, p.addr, rep.Status, rep.Text)
	}
	rp.progress("activated epoch %d at %s (acceptor %d)", x.Epoch, p.addr, p.id)
	return nil
}

// transfer streams the state of a majority of x's predecessor into the
// joining member j, one bounded chunk at a time, and marks it complete.
func (rp *replacer) transfer(ctx context.Context, st *survey, j *probe, x wire.Config) error {
	e := x.Epoch - 1
	quorum := len(x.Members)/2 + 1
	// Members of e: those sealed at e for x (kept by x or not), and the
	// members of x past e that are not new (sealed at e before x was
	// activated there, which only added to their state).
	var sources []*probe
	seen := map[uint32]bool{}
	for _, p := range st.probes {
		if p.err != nil || p == j || seen[p.id] {
			continue
		}
		sealedAtE := p.m.State == wire.StateSealed && p.m.Epoch == e && p.m.Next.Equal(x)
		kept := x.Has(p.id) && p.m.State != wire.StateJoining && p.m.Epoch >= x.Epoch
		if sealedAtE || kept {
			seen[p.id] = true
			sources = append(sources, p)
		}
	}
	if len(sources) < quorum {
		return fmt.Errorf("%w: %d members of epoch %d are reachable to read its state from, a majority is %d: %w", ErrReplace, len(sources), e, quorum, worm.ErrUnavailable)
	}
	sources = sources[:quorum]
	for _, src := range sources {
		if src.a.hello.MaxValue > j.a.hello.MaxValue {
			return fmt.Errorf("%w: %s accepts values of %d bytes, the new member %s only %d: start it with a larger -max-value", ErrReplace, src.addr, src.a.hello.MaxValue, j.addr, j.a.hello.MaxValue)
		}
	}
	for si, src := range sources {
		budget := min(rp.r.ChunkBytes, int(src.a.hello.MaxFrame)-wire.ControlOverhead, int(j.a.hello.MaxFrame)-wire.ControlOverhead)
		budget = max(budget, 1)
		var cur paxos.ExportCursor
		var chunks, records, bytes int
		var conflicts uint32
		for {
			rep, err := src.a.do(ctx, &wire.Control{Op: wire.CtlExport, Epoch: e, Cursor: cur, MaxBytes: uint32(budget)})
			if err != nil {
				return fmt.Errorf("%w: reading the state of %s: %w", ErrReplace, src.addr, err)
			}
			if rep.Status != wire.CtlOK {
				return fmt.Errorf("%w: reading the state of %s: %v: %s", ErrReplace, src.addr, rep.Status, rep.Text)
			}
			// rep's records alias src's reader buffer, which is not read
			// again before the install is done.
			in, err := j.a.do(ctx, &wire.Control{Op: wire.CtlInstall, Config: x, Records: rep.Records})
			if err != nil {
				return fmt.Errorf("%w: installing into %s: %w", ErrReplace, j.addr, err)
			}
			if in.Status != wire.CtlOK {
				return fmt.Errorf("%w: installing into %s: %v: %s", ErrReplace, j.addr, in.Status, in.Text)
			}
			chunks++
			records += len(rep.Records)
			for i := range rep.Records {
				bytes += wire.RecordSize(&rep.Records[i])
			}
			conflicts += in.Conflicts
			if si == 0 && chunks == 1 && rp.interrupted("installing") {
				return ErrInterrupted
			}
			if rep.Done {
				break
			}
			cur = rep.Next
		}
		rp.progress("copied the state of %s (acceptor %d) into %s: %d records, %d bytes, %d chunks", src.addr, src.id, j.addr, records, bytes, chunks)
		if conflicts > 0 {
			rp.progress("warning: %d records of %s held another value at a ballot %s already held (two writers of a register at ballot 0?); %s kept its own (its log says which)", conflicts, src.addr, j.addr, j.addr)
		}
	}
	rep, err := j.a.do(ctx, &wire.Control{Op: wire.CtlInstallDone, Config: x})
	if err != nil {
		return fmt.Errorf("%w: completing the install at %s: %w", ErrReplace, j.addr, err)
	}
	j.m = rep.Membership
	if rep.Status != wire.CtlOK {
		return fmt.Errorf("%w: completing the install at %s: %v: %s", ErrReplace, j.addr, rep.Status, rep.Text)
	}
	rp.progress("installed the state of %d members of epoch %d into %s (acceptor %d)", len(sources), e, j.addr, j.id)
	return nil
}

// adminConn is a connection for control requests, one at a time.
type adminConn struct {
	addr  string
	nc    net.Conn
	r     *wire.Reader
	hello wire.ServerHello
	next  uint64
}

func dialAdmin(ctx context.Context, d Dialer, addr string, key []byte, id string) (*adminConn, error) {
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	h, err := wire.ClientHandshake(ctx, nc, wire.ClientHello{ID: id}, key)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("handshake with %s: %w", addr, err)
	}
	return &adminConn{addr: addr, nc: nc, r: wire.NewReader(nc, int(h.MaxFrame)), hello: h}, nil
}

// do sends req and returns its reply; the reply's records alias the
// connection's buffer until the next call. Membership pushes on the way
// are skipped. The connection is closed on any error.
func (a *adminConn) do(ctx context.Context, req *wire.Control) (*wire.ControlReply, error) {
	if dl, ok := ctx.Deadline(); ok {
		a.nc.SetDeadline(dl)
	} else {
		a.nc.SetDeadline(time.Time{})
	}
	stop := context.AfterFunc(ctx, func() { a.nc.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	a.next++
	if _, err := a.nc.Write(wire.AppendControl(nil, a.next, req)); err != nil {
		a.nc.Close()
		return nil, err
	}
	for {
		f, err := a.r.Next()
		if err != nil {
			a.nc.Close()
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, err
		}
		switch f.Type {
		case wire.FrameControl:
			var rep wire.ControlReply
			if err := wire.DecodeControlReply(f.Payload, int(a.hello.MaxValue), &rep); err != nil {
				a.nc.Close()
				return nil, err
			}
			if f.ID == a.next {
				return &rep, nil
			}
		case wire.FrameErr:
			re, err := wire.DecodeError(f.Payload)
			a.nc.Close()
			if err != nil {
				return nil, err
			}
			return nil, re
		}
	}
}
