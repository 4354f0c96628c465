package server

import (
	"sync"
	"sync/atomic"

	"github.com/wormspace/wormspace/worm/paxos"
	"github.com/wormspace/wormspace/worm/wire"
)

// Holder is optionally implemented by a Replier that accounts the memory
// of the responses an Engine holds for it. When Handle keeps a copy of a
// response until the Log is durable, it calls Hold(tag, resp) once, before
// Handle returns and before the matching Reply or Abandon, with the
// engine's lock held: Hold must not block nor call back into the Engine.
// resp is the held copy; it is valid only during the call. The server's
// connections implement it to charge held replies to their byte budgets.
type Holder interface {
	Hold(tag uint64, resp *paxos.Response)
}

// replyBudget is the server-wide byte budget for replies: queued output of
// every connection plus the responses the Engine holds for them until a
// sync, plus the admission reservations of readers dispatching a request.
//
// A reader takes a reservation of the largest possible reply (tryReserve)
// before it dispatches a request, so that what the request then adds never
// takes the total over the limit; everything else is either drawn from
// such a reservation, added only if it fits (notifications), or a few
// bytes of error frames and lost markers (force). used never exceeds limit
// except by those few bytes and by a held response larger than a frame
// (see Config.MaxPendingTotal).
type replyBudget struct {
	limit   int64
	used    atomic.Int64
	peak    atomic.Int64 // highest used seen
	waiters atomic.Int32 // readers blocked until bytes are released

	mu    sync.Mutex
	freed chan struct{} // closed (and replaced) by a release while waiters > 0
}

func (b *replyBudget) init(limit int64) {
	b.limit = limit
	b.freed = make(chan struct{})
}

// tryReserve adds n to used if the result stays within the limit.
func (b *replyBudget) tryReserve(n int64) bool {
	for {
		u := b.used.Load()
		if u+n > b.limit {
			return false
		}
		if b.used.CompareAndSwap(u, u+n) {
			b.notePeak(u + n)
			return true
		}
	}
}

// force adds n to used whatever the limit.
func (b *replyBudget) force(n int64) {
	b.notePeak(b.used.Add(n))
}

func (b *replyBudget) notePeak(u int64) {
	for {
		p := b.peak.Load()
		if u <= p || b.peak.CompareAndSwap(p, u) {
			return
		}
	}
}

// release gives n bytes back and wakes the readers waiting for room.
func (b *replyBudget) release(n int64) {
	b.used.Add(-n)
	if b.waiters.Load() > 0 {
		b.mu.Lock()
		close(b.freed)
		b.freed = make(chan struct{})
		b.mu.Unlock()
	}
}

// wait registers a waiter and returns the channel the next release closes.
// The caller must retry tryReserve after wait (a release that came before
// the registration did not close the channel) and call unwait once done.
func (b *replyBudget) wait() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.waiters.Add(1)
	return b.freed
}

func (b *replyBudget) unwait() { b.waiters.Add(-1) }

// Encoded sizes of the parts of a response frame (worm/wire's layout),
// for replySize.
const (
	respFixed   = wire.HeaderSize + 3 // header, kind, status, section mask
	ballotSize  = 16
	regStateMax = 4 + 1 + ballotSize + 4 // offset, flags, ballot, value length
	regResMax   = 2 + 2*ballotSize + 4   // status, flags, two ballots, value length
	notifySize  = 8 + 4 + 4
)

// replySize bounds the length of the frame wire.AppendResponse encodes for
// r (it is exact when every optional field is present). It is what a held
// response is charged: the copy the Engine keeps is of the same order.
func replySize(r *paxos.Response) int {
	n := respFixed + ballotSize + regStateMax + len(r.Reg.Value) + notifySize
	if len(r.Regs) > 0 {
		n += 4
		for i := range r.Regs {
			n += regStateMax + len(r.Regs[i].Value)
		}
	}
	if len(r.Contended) > 0 {
		n += 4 + 4*len(r.Contended)
	}
	if len(r.Results) > 0 {
		n += 4
		for i := range r.Results {
			n += regResMax + len(r.Results[i].Value)
		}
	}
	if r.Text != "" {
		n += 4 + len(r.Text)
	}
	return n
}
