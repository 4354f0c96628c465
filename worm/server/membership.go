package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/wormspace/wormspace/worm/paxos"
	"github.com/wormspace/wormspace/worm/wire"
)

// A wormserver's membership: where it stands in the sequence of
// configurations (wire.Membership), and the control requests that move it
// (wire.Control), which worm/client's Replace drives to replace a failed
// wormserver. The procedure, and why it is safe, are documented there;
// this file keeps the server's side of the contract:
//
//   - A connection is bound to the epoch its client named in the hello.
//     The Engine answers its requests only while the server is active in
//     that epoch; otherwise StatusSealed, with nothing changed. The check
//     is made under the Engine's lock, so every request is handled either
//     entirely before a seal or refused after it.
//   - Seal(e, next) is accepted only by an active member of e. From then
//     on the acceptor's state changes no more until the member is
//     activated in next: a sealed member is frozen, and what it exports is
//     what it holds for good of epoch e.
//   - Export answers only for an epoch the member sealed (or is past), and
//     its reply leaves after the log is durable up to the exported state.
//   - Install is accepted only by a joining member, merges records
//     (paxos.Acceptor.Install) through the log like any request, and
//     replies once they are durable. A joining member answers no
//     operation at all.
//   - Activate(next) is accepted by a sealed member of next's predecessor
//     that is a member of next, or by a joining member whose transfer into
//     next is installed (InstallDone). A member removed by next stays
//     sealed for good.
//   - Every change is recorded with the acceptor's state (a
//     paxos.RecordMembership in the log, so it is exactly as durable as
//     the state it governs, survives compactions, and moves with the data
//     directory) and is durable before the reply; the server acts on it at
//     once (refusals change nothing, and replies of a newly served epoch
//     wait for a sync that covers the record), then pushes the new
//     membership to its connections.
//
// No timer is involved in any of it.

// Sentinel errors of membership changes (Engine.Seal and the others).
var (
	// ErrRefused: the member's membership does not allow the change (a
	// seal of an epoch it does not serve, an activation it was not
	// prepared for, an install into a server that is not joining); nothing
	// changed.
	ErrRefused = errors.New("server: membership change refused")
	// ErrBadConfig: the configuration given is not valid.
	ErrBadConfig = errors.New("server: invalid configuration")
	// ErrJoinNotEmpty: Join on an acceptor that holds state and no
	// membership: a joining member must start empty.
	ErrJoinNotEmpty = errors.New("server: a joining member needs an empty data directory")
	// ErrAlreadyMember: Join on a server whose membership is recorded and
	// is not joining (wormd says -join was ignored).
	ErrAlreadyMember = errors.New("server: already a member")
)

// membState is the Engine's membership: the recorded wire.Membership
// (the zero value: active in epoch 0, as a server that never took part in
// a change is), guarded by the Engine's lock.
type membState struct {
	cur      wire.Membership
	version  uint64          // bumped on every change (pushes compare it)
	exporter *paxos.Exporter // the current transfer's, while sealed
	// pushMu orders membership pushes, so that no connection is told an
	// older membership after a newer one.
	pushMu sync.Mutex
}

// serves reports whether operations of epoch are answered. Hot path.
func (m *membState) serves(epoch uint64) bool {
	return m.cur.State == wire.StateActive && m.cur.Epoch == epoch
}

// membershipRecordV1 is the encoding of a membership in the value of a
// paxos.RecordMembership (JSON: small, rare, and readable in a dump).
type membershipRecordV1 struct {
	Format    int           `json:"format"`
	State     string        `json:"state"`
	Epoch     uint64        `json:"epoch"`
	Members   []wire.Member `json:"members,omitempty"`
	Next      *wire.Config  `json:"next,omitempty"`
	Installed bool          `json:"installed,omitempty"`
}

func encodeMembership(m wire.Membership) []byte {
	r := membershipRecordV1{Format: 1, State: m.State.String(), Epoch: m.Epoch, Members: m.Members, Installed: m.Installed}
	if m.Next.Epoch != 0 || len(m.Next.Members) > 0 {
		n := m.Next
		r.Next = &n
	}
	b, err := json.Marshal(r)
	if err != nil {
		panic("server: encoding a membership: " + err.Error())
	}
	return b
}

func decodeMembership(b []byte) (wire.Membership, error) {
	var r membershipRecordV1
	if err := json.Unmarshal(b, &r); err != nil {
		return wire.Membership{}, fmt.Errorf("server: the recorded membership is corrupt: %w", err)
	}
	if r.Format != 1 {
		return wire.Membership{}, fmt.Errorf("server: the recorded membership has format %d (this wormd reads format 1)", r.Format)
	}
	m := wire.Membership{Epoch: r.Epoch, Members: r.Members, Installed: r.Installed}
	if r.Next != nil {
		m.Next = *r.Next
	}
	switch r.State {
	case "active":
		m.State = wire.StateActive
	case "sealed":
		m.State = wire.StateSealed
	case "joining":
		m.State = wire.StateJoining
	default:
		return wire.Membership{}, fmt.Errorf("server: the recorded membership has an unknown state %q", r.State)
	}
	return m, nil
}

// initMembership loads the membership recorded in the acceptor's state
// (NewEngine calls it). A record that cannot be decoded stops the engine:
// serving without knowing whether the epoch was sealed could break a
// replacement's safety.
func (e *Engine) initMembership() {
	b := e.acc.Membership()
	if b == nil {
		return
	}
	m, err := decodeMembership(b)
	if err != nil {
		e.failLocked(err)
		return
	}
	e.memb.cur = m
}

// Join makes a new server a joining member, which answers no operation
// until a state transfer is installed in it and it is activated (wormd
// -join); it returns once that is durable. A server already joining stays
// so. Errors: ErrJoinNotEmpty (the acceptor holds state and no
// membership), ErrAlreadyMember (another membership is recorded), or a
// storage error.
func (e *Engine) Join() (wire.Membership, error) {
	e.mu.Lock()
	if err := e.membershipLocked(); err != nil {
		e.mu.Unlock()
		return wire.Membership{}, err
	}
	cur := e.memb.cur
	if e.acc.Membership() != nil {
		e.mu.Unlock()
		if cur.State == wire.StateJoining {
			return cur.Clone(), nil
		}
		return cur.Clone(), fmt.Errorf("%w: %v", ErrAlreadyMember, cur)
	}
	if live, trimmed := e.acc.Segments(); live+trimmed > 0 {
		e.mu.Unlock()
		return cur.Clone(), fmt.Errorf("%w: it holds %d segments", ErrJoinNotEmpty, live+trimmed)
	}
	if err := e.changeLocked(wire.Membership{State: wire.StateJoining}); err != nil {
		e.mu.Unlock()
		return cur.Clone(), err
	}
	m, durable := e.memb.cur.Clone(), e.durableLocked()
	e.mu.Unlock()
	return m, <-durable
}

// Membership returns the server's membership and its version (which
// grows with every change).
func (e *Engine) Membership() (wire.Membership, uint64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.memb.cur.Clone(), e.memb.version
}

// changeLocked makes next the membership: the acceptor records it (a
// paxos.RecordMembership appended to the log) and the engine acts on it at
// once; the caller replies only after durableLocked. e.mu is held. Acting
// before the record is durable reveals nothing: refusals change nothing,
// and a reply to a request of a newly served epoch waits for a sync that
// covers the record.
func (e *Engine) changeLocked(next wire.Membership) error {
	v := encodeMembership(next)
	if err := e.log.Reserve(64 + len(v)); err != nil {
		return fmt.Errorf("storage: %w", err)
	}
	e.recs = e.acc.SetMembership(v, e.recs[:0])
	end, err := e.log.Append(e.recs)
	clear(e.recs)
	e.recs = e.recs[:0]
	if err != nil {
		e.failLocked(fmt.Errorf("storage append: %w", err))
		return e.failed
	}
	e.end = end
	e.memb.cur = next.Clone()
	e.memb.version++
	e.memb.exporter = nil
	return nil
}

// membershipLocked checks that the engine can change its membership.
func (e *Engine) membershipLocked() error {
	switch {
	case e.failed != nil:
		return e.failed
	case e.closed:
		return ErrStopped
	}
	return nil
}

// Seal seals epoch: from the moment it returns nil, every request of
// epoch is refused, and the sealed state, with next as the configuration
// the server joins next, is durable. next is epoch's successor, or (a
// member that missed changes while it was down, catching up) a later
// configuration; a sealed member whose next is older than next is
// pointed at next (it never served its old next, and a member that
// missed messages is only a laggard). Sealing again with the same next
// is a no-op. It returns the membership after the call, and changed when
// this call changed it. Errors: ErrBadConfig, ErrRefused (the server is
// neither an active nor a sealed member of epoch, or is sealed for
// another configuration at least as new), or a storage error.
func (e *Engine) Seal(epoch uint64, next wire.Config) (m wire.Membership, changed bool, err error) {
	if err := next.Validate(); err != nil {
		return wire.Membership{}, false, fmt.Errorf("%w: %w", ErrBadConfig, err)
	}
	if next.Epoch <= epoch {
		return wire.Membership{}, false, fmt.Errorf("%w: sealing epoch %d for a configuration of epoch %d", ErrBadConfig, epoch, next.Epoch)
	}
	e.mu.Lock()
	cur := e.memb.cur.Clone()
	if err := e.membershipLocked(); err != nil {
		e.mu.Unlock()
		return cur, false, err
	}
	switch {
	case cur.State == wire.StateActive && cur.Epoch == epoch:
		err = e.changeLocked(wire.Membership{State: wire.StateSealed, Epoch: epoch, Members: cur.Members, Next: next.Clone()})
		changed = err == nil
	case cur.State == wire.StateSealed && cur.Epoch == epoch && cur.Next.Equal(next):
		// Sealed already; still wait below for the seal to be durable.
	case cur.State == wire.StateSealed && cur.Epoch == epoch && cur.Next.Epoch < next.Epoch:
		err = e.changeLocked(wire.Membership{State: wire.StateSealed, Epoch: epoch, Members: cur.Members, Next: next.Clone()})
		changed = err == nil
	case cur.State == wire.StateSealed && cur.Epoch == epoch:
		err = fmt.Errorf("%w: epoch %d is sealed for another configuration (%v)", ErrRefused, epoch, cur.Next)
	default:
		err = fmt.Errorf("%w: this server is %v, not an active member of epoch %d", ErrRefused, cur, epoch)
	}
	return e.finishChangeLocked(err, changed, "sealed", "epoch", epoch, "next", next.String())
}

// finishChangeLocked unlocks e.mu and, unless err, waits until the
// membership is durable; it returns the membership after the change.
func (e *Engine) finishChangeLocked(err error, changed bool, what string, args ...any) (wire.Membership, bool, error) {
	m := e.memb.cur.Clone()
	if err != nil {
		e.mu.Unlock()
		return m, false, err
	}
	durable := e.durableLocked()
	e.mu.Unlock()
	if err := <-durable; err != nil {
		return m, false, err
	}
	if changed {
		e.logger.Info("membership: "+what, args...)
	}
	return m, changed, nil
}

// Activate makes the server serve next (self is its acceptor id): a
// sealed member of next's predecessor that is a member of next, or a
// joining member whose transfer into next is installed. Activating the
// configuration the server serves is a no-op. Errors: ErrBadConfig,
// ErrRefused, or a storage error.
func (e *Engine) Activate(next wire.Config, self uint32) (m wire.Membership, changed bool, err error) {
	if err := next.Validate(); err != nil {
		return wire.Membership{}, false, fmt.Errorf("%w: %w", ErrBadConfig, err)
	}
	e.mu.Lock()
	cur := e.memb.cur.Clone()
	if err := e.membershipLocked(); err != nil {
		e.mu.Unlock()
		return cur, false, err
	}
	switch {
	case cur.State == wire.StateActive && cur.Epoch == next.Epoch && cur.Current().Equal(next):
	case !next.Has(self):
		err = fmt.Errorf("%w: acceptor %d is not a member of %v", ErrRefused, self, next)
	case cur.State == wire.StateSealed && cur.Next.Equal(next),
		cur.State == wire.StateJoining && cur.Next.Equal(next) && cur.Installed:
		err = e.changeLocked(wire.Membership{State: wire.StateActive, Epoch: next.Epoch, Members: next.Clone().Members})
		changed = err == nil
	case cur.State == wire.StateJoining && cur.Next.Equal(next):
		err = fmt.Errorf("%w: the state transfer into %v is not complete", ErrRefused, next)
	default:
		err = fmt.Errorf("%w: this server is %v; it cannot serve %v", ErrRefused, cur, next)
	}
	return e.finishChangeLocked(err, changed, "active", "config", next.String())
}

// Export calls encode, with the engine locked, with the chunk of the
// acceptor's state that starts at from (about maxBytes of records; see
// paxos.Exporter), for a transfer out of sealed epoch: the server must
// have sealed epoch, or be past it (its state then only grew). The
// records alias the acceptor's state: encode must copy them. Export
// returns once the log is durable up to the exported state. Errors:
// ErrRefused, or a storage error.
func (e *Engine) Export(epoch uint64, from paxos.ExportCursor, maxBytes int, encode func(recs []paxos.Record, next paxos.ExportCursor, done bool)) (wire.Membership, error) {
	e.mu.Lock()
	cur := e.memb.cur.Clone()
	if err := e.membershipLocked(); err != nil {
		e.mu.Unlock()
		return cur, err
	}
	if !(cur.State == wire.StateSealed && cur.Epoch == epoch) && !(cur.State != wire.StateJoining && cur.Epoch > epoch) {
		e.mu.Unlock()
		return cur, fmt.Errorf("%w: this server is %v; it exports only the state of an epoch it sealed", ErrRefused, cur)
	}
	x := e.memb.exporter
	if x == nil || from.IsZero() {
		x = e.acc.NewExporter()
		e.memb.exporter = x
	}
	recs := e.recs[:0]
	next, done := x.Export(from, maxBytes, func(r paxos.Record) { recs = append(recs, r) })
	encode(recs, next, done)
	clear(recs)
	e.recs = recs[:0]
	durable := e.durableLocked()
	e.mu.Unlock()
	return cur, <-durable
}

// Install merges recs, exported by members of the sealed epoch that
// precedes next, into a joining server's acceptor, and returns once the
// resulting records are durable, with the number of records that
// conflicted with what the server holds (paxos.ConflictError: it keeps
// its own). The first install records next as the configuration the
// server joins; installs for another configuration are refused. Errors:
// ErrRefused, ErrBadConfig, a *paxos.InvalidRecordError (the records
// before it were installed), or a storage error.
func (e *Engine) Install(next wire.Config, recs []paxos.Record) (m wire.Membership, conflicts int, err error) {
	if err := next.Validate(); err != nil {
		return wire.Membership{}, 0, fmt.Errorf("%w: %w", ErrBadConfig, err)
	}
	e.mu.Lock()
	cur := e.memb.cur.Clone()
	if err := e.membershipLocked(); err != nil {
		e.mu.Unlock()
		return cur, 0, err
	}
	switch {
	case cur.State != wire.StateJoining:
		e.mu.Unlock()
		return cur, 0, fmt.Errorf("%w: this server is %v, not joining", ErrRefused, cur)
	case cur.Next.Epoch == 0:
		joining := cur.Clone()
		joining.Next = next.Clone()
		if err := e.changeLocked(joining); err != nil {
			e.mu.Unlock()
			return cur, 0, err
		}
		e.logger.Info("membership: joining", "config", next.String())
	case !cur.Next.Equal(next):
		e.mu.Unlock()
		return cur, 0, fmt.Errorf("%w: this server is joining %v, not %v", ErrRefused, cur.Next, next)
	}
	n := 64
	for i := range recs {
		n += 64 + len(recs[i].Value)
	}
	var firstErr error
	if err := e.log.Reserve(n); err != nil {
		firstErr = fmt.Errorf("storage: %w", err)
		recs = nil
	}
	out := e.recs[:0]
	for i := range recs {
		var err error
		out, err = e.acc.Install(recs[i], out)
		var ce *paxos.ConflictError
		if errors.As(err, &ce) {
			conflicts++
			e.logger.Warn("membership: install conflict: keeping this server's value", "err", err)
		} else if err != nil {
			firstErr = err
			break
		}
	}
	if len(out) > 0 {
		end, err := e.log.Append(out)
		if err != nil {
			e.failLocked(fmt.Errorf("storage append: %w", err))
			firstErr = e.failed
		} else {
			e.end = end
			e.mutations += len(out)
			if e.mutations >= compactEvery {
				e.maybeCompactLocked()
			}
		}
	}
	clear(out)
	e.recs = out[:0]
	m = e.memb.cur.Clone()
	durable := e.durableLocked()
	e.mu.Unlock()
	if err := <-durable; err != nil {
		return m, conflicts, err
	}
	return m, conflicts, firstErr
}

// InstallDone records that the state of a read quorum of next's
// predecessor is installed in this joining server, which may then be
// activated in next. Errors: ErrRefused, ErrBadConfig, or a storage
// error.
func (e *Engine) InstallDone(next wire.Config) (m wire.Membership, changed bool, err error) {
	if err := next.Validate(); err != nil {
		return wire.Membership{}, false, fmt.Errorf("%w: %w", ErrBadConfig, err)
	}
	e.mu.Lock()
	cur := e.memb.cur.Clone()
	if err := e.membershipLocked(); err != nil {
		e.mu.Unlock()
		return cur, false, err
	}
	switch {
	case cur.State != wire.StateJoining || !cur.Next.Equal(next):
		err = fmt.Errorf("%w: this server is %v, not joining %v", ErrRefused, cur, next)
	case cur.Installed:
	default:
		done := cur.Clone()
		done.Installed = true
		err = e.changeLocked(done)
		changed = err == nil
	}
	return e.finishChangeLocked(err, changed, "state transfer installed", "config", next.String())
}

// durableLocked returns a channel that yields nil once the log is
// durable up to everything appended so far (or the storage failure); e.mu
// is held. It rides on the replies' queue, so it costs no sync of its own
// when one is coming anyway.
func (e *Engine) durableLocked() <-chan error {
	ch := make(chan error, 1)
	if e.failed != nil {
		ch <- e.failed
		return ch
	}
	if len(e.waiting) == 0 && e.synced >= e.end {
		ch <- nil
		return ch
	}
	e.waiting = append(e.waiting, pending{need: e.end, to: durableWaiter{ch}, resp: respPool.Get().(*respBuf)})
	select {
	case e.kick <- struct{}{}:
	default:
	}
	return ch
}

// durableWaiter is the Replier of durableLocked.
type durableWaiter struct{ ch chan error }

func (w durableWaiter) Reply(uint64, *paxos.Response) { w.ch <- nil }
func (w durableWaiter) Abandon(uint64) {
	w.ch <- fmt.Errorf("storage failed before the state was durable: %w", ErrStopped)
}

// helloFor returns the server hello for c, carrying the membership, and
// records which membership c was told.
func (s *Server) helloFor(c *conn) wire.ServerHello {
	h := s.hello
	m, v := s.eng.Membership()
	h.Membership = m
	c.membSeen.Store(v)
	return h
}

// pushMembership tells every connection that was told an older
// membership the current one (a control frame with id 0).
func (s *Server) pushMembership() {
	memb := &s.eng.memb
	memb.pushMu.Lock()
	defer memb.pushMu.Unlock()
	m, v := s.eng.Membership()
	frame := wire.AppendControlReply(nil, 0, &wire.ControlReply{Op: wire.CtlMembership, Membership: m})
	s.mu.Lock()
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		if c.membSeen.Load() >= v {
			continue
		}
		c.mu.Lock()
		if !c.dead && !c.closing {
			n := len(c.out)
			c.out = append(c.out, frame...)
			// A small frame per connection and change: forced into the
			// budget, like lost markers.
			c.chargeLocked(noTag, len(c.out)-n)
			c.outputLocked()
		}
		c.membSeen.Store(v)
		c.mu.Unlock()
	}
}

// control answers one control request (a FrameControl from the client)
// on the reader goroutine. It reports false when the connection must stop
// reading (bad input or a drain).
func (c *conn) control(id uint64, payload []byte) bool {
	var req wire.Control
	if err := wire.DecodeControl(payload, c.s.maxValue, &req); err != nil {
		reason := badMalformed
		if errors.Is(err, wire.ErrValueTooLarge) {
			reason = badTooLarge
		}
		c.bad(reason, err)
		return false
	}
	// The reply may be as large as a frame (an export chunk): reserve
	// room for it as for any request.
	switch c.waitRoom(true) {
	case roomOK:
	case roomDrain:
		c.finishReading(errShuttingDown)
		return false
	default:
		return false
	}
	frame, changed := c.s.control(id, &req)
	if changed {
		c.s.pushMembership()
	}
	c.mu.Lock()
	if !c.dead && !c.closing {
		n := len(c.out)
		c.out = append(c.out, frame...)
		c.chargeLocked(noTag, len(c.out)-n)
		c.outputLocked()
	}
	r := c.resv
	c.resv = 0
	c.mu.Unlock()
	c.s.budget.release(int64(r))
	return true
}

// control carries out req and returns the encoded reply, and whether the
// membership changed.
func (s *Server) control(id uint64, req *wire.Control) (frame []byte, changed bool) {
	rep := wire.ControlReply{Op: req.Op}
	var err error
	switch req.Op {
	case wire.CtlMembership:
		rep.Membership, _ = s.eng.Membership()
	case wire.CtlSeal:
		rep.Membership, changed, err = s.eng.Seal(req.Epoch, req.Config)
	case wire.CtlActivate:
		rep.Membership, changed, err = s.eng.Activate(req.Config, s.hello.AcceptorID)
	case wire.CtlInstallDone:
		rep.Membership, changed, err = s.eng.InstallDone(req.Config)
	case wire.CtlInstall:
		var n int
		rep.Membership, n, err = s.eng.Install(req.Config, req.Records)
		rep.Conflicts = uint32(n)
	case wire.CtlExport:
		// Room for the records in a frame, whatever the membership and
		// text take.
		budget := min(int(req.MaxBytes), s.maxFrame-wire.ControlOverhead)
		if budget < 1 {
			budget = 1
		}
		rep.Membership, err = s.eng.Export(req.Epoch, req.Cursor, budget, func(recs []paxos.Record, next paxos.ExportCursor, done bool) {
			rep.Records, rep.Next, rep.Done = recs, next, done
			frame = wire.AppendControlReply(nil, id, &rep)
			rep.Records = nil
		})
		if err == nil && len(frame)-4 > s.maxFrame {
			err = fmt.Errorf("an export chunk of %d bytes does not fit in the frame limit of %d (a value too large for a control frame)", len(frame), s.maxFrame)
		}
		if err == nil {
			return frame, false
		}
	default:
		err = fmt.Errorf("unknown control op %v", req.Op)
	}
	if err != nil {
		rep.Text = err.Error()
		var ie *paxos.InvalidRecordError
		switch {
		case errors.Is(err, ErrRefused):
			rep.Status = wire.CtlRefused
		case errors.Is(err, ErrBadConfig), errors.As(err, &ie):
			rep.Status = wire.CtlInvalid
		default:
			rep.Status = wire.CtlFailed
		}
		if rep.Status != wire.CtlRefused {
			s.logger.Warn("membership: control request failed", "op", req.Op.String(), "err", err)
		}
	}
	return wire.AppendControlReply(nil, id, &rep), changed
}
