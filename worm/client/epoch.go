package client

import (
	"context"
	"errors"
	"fmt"

	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/paxos"
	"github.com/wormspace/wormspace/worm/wire"
)

// The client's configuration (see "Configurations" in the package
// documentation). Lock order: Client.mu → conn.mu; call.mu → conn.mu and
// call.mu → Client.mu; nothing holding conn.mu takes Client.mu.

// view is the configuration the client issues its operations under:
// the epoch, and the members in the order of the connections (conns[i]
// stands for members[i]); nil members for epoch 0, whose members are
// Config.Servers.
type view struct {
	epoch   uint64
	members []wire.Member
}

// changedLocked wakes everyone waiting for the view or a connection's
// serving state to change. cl.mu is held.
func (cl *Client) changedLocked() {
	close(cl.changed)
	cl.changed = make(chan struct{})
}

// viewEpoch returns the epoch operations are issued under.
func (cl *Client) viewEpoch() uint64 {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return cl.view.epoch
}

// Epoch returns the configuration epoch the client issues operations
// under (0: the initial configuration, Config.Servers).
func (cl *Client) Epoch() uint64 { return cl.viewEpoch() }

// Servers returns the addresses of the configuration the client issues
// operations under, in the order of its connections: Config.Servers until
// the client learned of a newer configuration, then that configuration's
// members.
func (cl *Client) Servers() []string {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.view.members == nil {
		return append([]string(nil), cl.cfg.Servers...)
	}
	out := make([]string, len(cl.view.members))
	for i, m := range cl.view.members {
		out[i] = m.Addr
	}
	return out
}

// readyLocked reports whether a quorum of connections serves the view's
// epoch. cl.mu is held.
func (cl *Client) readyLocked() bool {
	n := 0
	for _, cn := range cl.conns {
		if cn.usable(cl.view.epoch) {
			n++
		}
	}
	return n >= cl.quorum()
}

// changingLocked reports whether a membership change is under way as far
// as the client can tell: a server announced a configuration newer than
// the view, or a reachable server does not (yet) serve the view's epoch.
// cl.mu is held.
func (cl *Client) changingLocked() bool {
	if cl.pendingNext > cl.view.epoch {
		return true
	}
	for _, cn := range cl.conns {
		cn.mu.Lock()
		c := cn.rebinding || cn.nc != nil && !(cn.epoch == cl.view.epoch && cn.serving)
		cn.mu.Unlock()
		if c {
			return true
		}
	}
	return false
}

// awaitView returns the epoch to issue an operation under, a channel
// closed at the next change of the view or of a connection, and whether
// a change is under way. While one is and no quorum serves the view yet,
// it waits (for ctx) for one to, or for a newer view.
func (cl *Client) awaitView(ctx context.Context) (uint64, <-chan struct{}, bool, error) {
	for {
		cl.mu.Lock()
		epoch, ready, changing, ch := cl.view.epoch, cl.readyLocked(), cl.changingLocked(), cl.changed
		cl.mu.Unlock()
		if ready || !changing {
			return epoch, ch, changing, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return 0, nil, false, fmt.Errorf("client: no quorum serves configuration epoch %d yet (a membership change is under way; `worm replace` finishes one that was interrupted): %w: %w", epoch, worm.ErrUnavailable, ctx.Err())
		case <-cl.closed:
			return 0, nil, false, errClosed
		}
	}
}

// maxRestarts bounds how often one call runs its operation again under a
// newer configuration (each restart needs a configuration change to have
// happened, so this only guards against a cluster changing faster than
// the call can finish).
const maxRestarts = 16

// run drives the operation mk makes to its end. When the result is one a
// membership change can cause (ErrUnavailable, ErrUnknownOutcome) and a
// change was on the way (a server refused a request of the epoch as
// sealed, the client moved to a newer configuration, or servers do not
// serve the view yet), it waits for the configuration or a connection to
// change and runs a fresh operation under the newest configuration, once
// a quorum serves it.
// Running an operation again is safe: reads and captures are idempotent
// in effect, and a write is retried with the identical token and value,
// which settles an earlier attempt's unknown outcome instead of
// reporting it.
func (cl *Client) run(ctx context.Context, mk func(p *paxos.Proposer) *paxos.Op) paxos.Result {
	select {
	case <-cl.closed:
		return paxos.Result{Err: errClosed}
	default:
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cl.cfg.OpTimeout)
		defer cancel()
	}
	var res paxos.Result
	for attempt := 0; ; attempt++ {
		epoch, changed, changing, err := cl.awaitView(ctx)
		if err != nil {
			if attempt > 0 {
				// The earlier attempt's result, which the wait could not
				// improve on, says more (an unknown outcome stays one).
				return res
			}
			return paxos.Result{Err: err}
		}
		var sealed bool
		res, sealed = cl.runAt(ctx, epoch, mk(cl.p))
		if res.Err == nil || ctx.Err() != nil || attempt >= maxRestarts || !restartable(res.Err) {
			return res
		}
		cl.mu.Lock()
		moving := changing || sealed || cl.view.epoch != epoch || cl.pendingNext > epoch || cl.changingLocked()
		cl.mu.Unlock()
		if !moving {
			return res
		}
		// Go again once something changed since the operation began (a
		// connection came up, went down or was told of a new membership).
		select {
		case <-changed:
		case <-ctx.Done():
			return res
		case <-cl.closed:
			return res
		}
		cl.log.Debug("operation runs again: the configuration is changing", "epoch", epoch, "err", res.Err)
	}
}

// restartable reports a result that a sealed epoch may have caused.
func restartable(err error) bool {
	return errors.Is(err, worm.ErrUnavailable) || errors.Is(err, worm.ErrUnknownOutcome)
}

// learn takes in what server cn said of its membership (its hello, or a
// push): whether it serves the epoch cn is bound to, and newer
// configurations.
func (cl *Client) learn(cn *conn, m wire.Membership) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	cn.mu.Lock()
	if cn.nc != nil {
		cn.serving = m.Serves(cn.epoch)
	}
	cn.mu.Unlock()
	adopted := false
	switch {
	case m.State == wire.StateActive && m.Epoch > cl.view.epoch:
		adopted = cl.adoptLocked(wire.Config{Epoch: m.Epoch, Members: m.Members})
	case m.State == wire.StateSealed && m.Next.Epoch > cl.pendingNext && m.Next.Epoch > cl.view.epoch:
		cl.pendingNext = m.Next.Epoch
		cl.log.Info("a membership change is under way", "sealed", m.Epoch, "next", m.Next.String())
	}
	if !adopted {
		// A connection dialed under an epoch the view left meanwhile.
		cn.rebind(cl.addrLocked(cn.idx), cl.view.epoch)
	}
	cl.changedLocked()
}

// addrLocked is the address of the view's member i. cl.mu is held.
func (cl *Client) addrLocked(i int) string {
	if cl.view.members == nil {
		return cl.conns[i].addr
	}
	return cl.view.members[i].Addr
}

// adoptLocked makes cfg, a configuration a member serves, the client's
// view: members are matched to connections by acceptor id, then by
// address, the rest in order; every connection is bound again (closed
// once its outstanding requests are answered, and redialed under the new
// epoch). cl.mu is held.
func (cl *Client) adoptLocked(cfg wire.Config) bool {
	if err := cfg.Validate(); err != nil || len(cfg.Members) != len(cl.conns) {
		cl.log.Error("ignoring a configuration this client cannot use (a change of the number of members needs new clients)",
			"config", cfg.String(), "members", len(cfg.Members), "servers", len(cl.conns), "err", err)
		return false
	}
	byIdx := make([]wire.Member, len(cl.conns))
	placed := make([]bool, len(cl.conns))
	var rest []wire.Member
	for _, m := range cfg.Members {
		if i, ok := cl.acceptors[m.ID]; ok && !placed[i] {
			byIdx[i], placed[i] = m, true
			continue
		}
		rest = append(rest, m)
	}
	var unplaced []wire.Member
	for _, m := range rest {
		found := false
		for i, cn := range cl.conns {
			if !placed[i] && (cn.addr == m.Addr || cn.dialAddr() == m.Addr) {
				byIdx[i], placed[i], found = m, true, true
				break
			}
		}
		if !found {
			unplaced = append(unplaced, m)
		}
	}
	for i := range cl.conns {
		if !placed[i] {
			byIdx[i], placed[i] = unplaced[0], true
			unplaced = unplaced[1:]
		}
	}
	cl.view = view{epoch: cfg.Epoch, members: byIdx}
	cl.epochNow.Store(cfg.Epoch)
	clear(cl.acceptors)
	for i, m := range byIdx {
		cl.acceptors[m.ID] = i
	}
	cl.log.Info("configuration changed", "config", cfg.String())
	for i, cn := range cl.conns {
		cn.rebind(byIdx[i].Addr, cfg.Epoch)
	}
	// Write reports counted by the listeners' learners are per connection
	// index; a report of the old configuration must not make a quorum
	// with reports of the new one.
	for _, ls := range cl.listeners {
		for l := range ls {
			l.mu.Lock()
			clear(l.tallies)
			l.mu.Unlock()
			l.push(worm.Notification{Lost: true})
		}
	}
	return true
}

// usable reports whether requests of epoch may be sent on cn.
func (cn *conn) usable(epoch uint64) bool {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	return cn.nc != nil && cn.epoch == epoch && cn.serving && !cn.stale
}

// dialAddr is the address cn dials: its member's in the client's view,
// else the configured one.
func (cn *conn) dialAddr() string {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	if cn.target != "" {
		return cn.target
	}
	return cn.addr
}

// rebind points cn at addr for epoch: a connection bound to another epoch
// takes no new requests and is closed once its outstanding ones are
// answered (the run loop then dials again).
func (cn *conn) rebind(addr string, epoch uint64) {
	cn.mu.Lock()
	if addr != cn.addr || cn.target != "" {
		cn.target = addr
	}
	if cn.nc == nil || cn.epoch != epoch {
		// Until its next dial settles, operations wait for it.
		cn.rebinding = true
	}
	if cn.nc != nil && cn.epoch != epoch {
		cn.stale = true
	}
	nc := cn.retireLocked()
	cn.mu.Unlock()
	if nc != nil {
		nc.Close()
	}
	select {
	case cn.redial <- struct{}{}:
	default:
	}
}

// retireLocked returns the connection to close when cn is stale and
// nothing is outstanding on it. cn.mu is held.
func (cn *conn) retireLocked() interface{ Close() error } {
	if cn.stale && cn.nc != nil && len(cn.pending) == 0 {
		return cn.nc
	}
	return nil
}

// refused records that the server refused a request of epoch (it does not
// serve it any more; its push with the news is on the way).
func (cn *conn) refused(epoch uint64) {
	cn.mu.Lock()
	changed := cn.epoch == epoch && cn.serving
	if changed {
		cn.serving = false
	}
	cn.mu.Unlock()
	if changed {
		cn.cl.mu.Lock()
		cn.cl.changedLocked()
		cn.cl.mu.Unlock()
	}
}

// errRetired ends a connection bound to an epoch the client left.
var errRetired = errors.New("client: connection bound to an older configuration")
