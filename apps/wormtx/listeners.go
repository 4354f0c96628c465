package wormtx

import (
	"context"
	"sync"

	"github.com/wormspace/wormspace/worm"
)

// segListener is one long-lived Listen on a shared segment, whose
// notifications it hands to the transactions (slots) that subscribed to
// their registers. Since many transactions use one segment, a process
// subscribes to the segment once, not once per transaction.
//
// It remembers every chosen notification it saw (a segment holds at most
// SegmentSize registers), so a transaction that subscribes late (its
// prepare came after another participant's vote was announced) is
// replayed what it missed. A Lost notification goes to every current
// subscriber and, as the first notification, to every later one (they
// then read). When the Listen ends (ctx, trim, or a failure to
// subscribe), every subscriber's channel is closed and the listener is
// dead: its owner opens another.
type segListener struct {
	seg    uint64
	cancel context.CancelFunc
	ready  chan struct{} // closed once Listen returned
	err    error         // Listen's error, set before ready is closed

	mu   sync.Mutex
	subs map[*slotSub]struct{}
	// byOff indexes subs by every offset they cover, so that a
	// notification finds its slot's subscribers without a walk over
	// every transaction of the segment (subscriptions are slot-wide: a
	// few registers each).
	byOff  map[uint32][]*slotSub
	chosen map[uint32]worm.Notification
	// The highest offset in chosen below slotsEnd (0: no bound), if any:
	// a coordinator's listener on a shared segment bounds it to the slots
	// (the descriptor index follows them).
	anyChosen bool
	maxChosen uint32
	slotsEnd  uint32
	lost      bool
	dead      bool
	used      int64 // a logical clock of the last subscription, for eviction
}

// slotSub is one transaction's subscription: the notifications of
// registers [lo, hi] of the segment.
type slotSub struct {
	lo, hi uint32
	ch     chan worm.Notification
	done   chan struct{} // closed by unsubscribe
	once   sync.Once
}

// startSegListener subscribes to seg in the background (until ctx ends or
// the listener's cancel). slotsEnd bounds chosenFrom (0: none).
func startSegListener(ctx context.Context, sp worm.Space, seg uint64, slotsEnd uint32) *segListener {
	ctx, cancel := context.WithCancel(ctx)
	l := &segListener{seg: seg, cancel: cancel, slotsEnd: slotsEnd, ready: make(chan struct{}), subs: map[*slotSub]struct{}{}, byOff: map[uint32][]*slotSub{}, chosen: map[uint32]worm.Notification{}}
	go func() {
		ch, err := sp.Listen(ctx, seg)
		l.err = err
		close(l.ready)
		if err != nil {
			cancel()
			l.end()
			return
		}
		l.demux(ch)
	}()
	return l
}

func (l *segListener) demux(ch <-chan worm.Notification) {
	var to []*slotSub
	for nt := range ch {
		to = to[:0]
		l.mu.Lock()
		switch {
		case nt.Lost:
			l.lost = true
			for s := range l.subs {
				to = append(to, s)
			}
		default:
			if nt.Chosen {
				l.chosen[nt.Off] = nt
				if (l.slotsEnd == 0 || nt.Off < l.slotsEnd) && (!l.anyChosen || nt.Off > l.maxChosen) {
					l.anyChosen, l.maxChosen = true, nt.Off
				}
			}
			to = append(to, l.byOff[nt.Off]...)
		}
		l.mu.Unlock()
		for _, s := range to {
			// Never block the segment's other transactions on one
			// subscriber: a subscriber that does not read (a transaction
			// begun and never awaited, an Await that gave up) would
			// stall them all. A live one reads far faster than its
			// slot's few registers fill the buffer; if a notification is
			// dropped all the same, its resolve reads after HintWait or
			// the next Poll tick.
			select {
			case s.ch <- nt:
			default:
			}
		}
	}
	l.end()
}

// end marks the listener dead and closes every subscriber's channel.
// chosenFrom reports whether the listener heard a chosen value at offset
// lo or beyond.
func (l *segListener) chosenFrom(lo uint32) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.anyChosen && l.maxChosen >= lo
}

func (l *segListener) end() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.dead = true
	for s := range l.subs {
		close(s.ch)
		delete(l.subs, s)
	}
	clear(l.byOff)
}

// subscribe returns a subscription to registers [lo, hi], primed with the
// chosen notifications already seen there, or nil if the listener is
// dead. The caller must unsubscribe.
func (l *segListener) subscribe(lo, hi uint32, clock int64) *slotSub {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.dead {
		return nil
	}
	l.used = clock
	// Room for the replay and then some: every register of the slot may
	// be announced as a hint and then as chosen before the subscriber
	// reads.
	s := &slotSub{lo: lo, hi: hi, ch: make(chan worm.Notification, 2*int(hi-lo+1)+8), done: make(chan struct{})}
	if l.lost {
		s.ch <- worm.Notification{Lost: true}
	}
	for off := lo; off <= hi; off++ {
		if nt, ok := l.chosen[off]; ok {
			s.ch <- nt
		}
	}
	l.subs[s] = struct{}{}
	for off := lo; off <= hi; off++ {
		l.byOff[off] = append(l.byOff[off], s)
	}
	return s
}

func (l *segListener) unsubscribe(s *slotSub) {
	s.once.Do(func() { close(s.done) })
	l.mu.Lock()
	if _, ok := l.subs[s]; ok {
		delete(l.subs, s)
		for off := s.lo; off <= s.hi; off++ {
			l.byOff[off] = removeSub(l.byOff[off], s)
			if len(l.byOff[off]) == 0 {
				delete(l.byOff, off)
			}
		}
	}
	l.mu.Unlock()
}

// idle reports whether nobody is subscribed.
func (l *segListener) idle() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.subs) == 0
}

// listenerSet keeps a participant's shared-segment listeners: one per
// segment it has transactions in, opened by the first and kept for the
// next ones; beyond keepListeners, the least recently used idle ones
// are closed (a coordinator fills its segments in order, so old ones go
// quiet).
type listenerSet struct {
	mu    sync.Mutex
	life  context.Context
	stop  context.CancelFunc
	m     map[uint64]*segListener
	clock int64
}

const keepListeners = 4

func newListenerSet() *listenerSet {
	life, stop := context.WithCancel(context.Background())
	return &listenerSet{life: life, stop: stop, m: map[uint64]*segListener{}}
}

// subscribe returns seg's listener (opened if need be) and a subscription
// to registers [lo, hi] on it.
func (ls *listenerSet) subscribe(sp worm.Space, seg uint64, lo, hi uint32) (*segListener, *slotSub) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	ls.clock++
	for {
		l := ls.m[seg]
		if l == nil {
			l = startSegListener(ls.life, sp, seg, 0)
			l.used = ls.clock // not the eviction's victim
			ls.m[seg] = l
			ls.evictLocked()
		}
		if s := l.subscribe(lo, hi, ls.clock); s != nil {
			return l, s
		}
		delete(ls.m, seg) // dead: open another
	}
}

func (ls *listenerSet) evictLocked() {
	for len(ls.m) > keepListeners {
		var victim *segListener
		for _, l := range ls.m {
			if l.idle() && (victim == nil || l.used < victim.used) {
				victim = l
			}
		}
		if victim == nil {
			return
		}
		victim.cancel()
		delete(ls.m, victim.seg)
	}
}

// close stops every listener.
func (ls *listenerSet) close() {
	ls.stop()
	ls.mu.Lock()
	clear(ls.m)
	ls.mu.Unlock()
}

// removeSub removes s from list (in place; order does not matter).
func removeSub(list []*slotSub, s *slotSub) []*slotSub {
	for i, x := range list {
		if x == s {
			last := len(list) - 1
			list[i], list[last] = list[last], nil
			return list[:last]
		}
	}
	return list
}
