package chain

import (
	"context"
	"sync"

	"github.com/wormspace/wormspace/worm"
)

// listenQueue bounds the notifications queued for one listener that has
// not taken them; past it they are dropped for one Lost notification.
const listenQueue = 4096

// listener queues notifications for one Listen call without ever blocking
// the tail connection's reader: push appends under mu, pump moves the
// queue to the caller's channel.
type listener struct {
	out  chan worm.Notification
	wake chan struct{} // capacity 1

	mu    sync.Mutex
	queue []worm.Notification
	lost  bool
}

func (l *listener) push(n worm.Notification) {
	l.mu.Lock()
	switch {
	case n.Lost || len(l.queue) >= listenQueue:
		l.queue, l.lost = l.queue[:0], true
	case !l.lost:
		l.queue = append(l.queue, n)
	}
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

func (l *listener) pump(ctx context.Context, closed <-chan struct{}, detach func()) {
	defer close(l.out)
	defer detach()
	var batch []worm.Notification
	for {
		select {
		case <-ctx.Done():
			return
		case <-closed:
			return
		case <-l.wake:
		}
		l.mu.Lock()
		batch = append(batch[:0], l.queue...)
		lost := l.lost
		l.queue, l.lost = l.queue[:0], false
		l.mu.Unlock()
		if lost {
			batch = append([]worm.Notification{{Lost: true}}, batch...)
		}
		for _, n := range batch {
			select {
			case l.out <- n:
			case <-ctx.Done():
				return
			case <-closed:
				return
			}
		}
	}
}

// notify fans a tail's push out to the segment's listeners (count 0: the
// tail dropped notifications).
func (cl *Client) notify(seg uint64, off, count uint32) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	ls := cl.listeners[seg]
	if count == 0 {
		for l := range ls {
			l.push(worm.Notification{Lost: true})
		}
		return
	}
	for i := uint32(0); i < count; i++ {
		if off+i == worm.MetaOffset {
			continue
		}
		for l := range ls {
			l.push(worm.Notification{Off: off + i})
		}
	}
}

// lostAllLocked tells every listener that notifications may have been
// missed (the tail connection went down). cl.mu is held.
func (cl *Client) lostAllLocked() {
	for _, ls := range cl.listeners {
		for l := range ls {
			l.push(worm.Notification{Lost: true})
		}
	}
}

// resubscribe renews every subscription on a tail connection that has
// just come up, and tells the listeners they may have missed writes.
func (cl *Client) resubscribe(cn *cconn) {
	cl.mu.Lock()
	segs := make([]uint64, 0, len(cl.listeners))
	for seg := range cl.listeners {
		segs = append(segs, seg)
	}
	cl.mu.Unlock()
	for _, seg := range segs {
		// No answer is awaited (id 0 matches no call); a trimmed segment
		// just stays silent.
		cn.send(0, &request{op: opListen, seg: seg})
	}
	if len(segs) > 0 {
		cl.mu.Lock()
		cl.lostAllLocked()
		cl.mu.Unlock()
	}
}

// Listen delivers notifications of writes to seg, as the tail commits
// them, until ctx ends or the client closes; the channel is then closed.
// It returns once the tail has subscribed, so every write committed
// afterwards is announced. Notifications are hints. Errors:
// worm.ErrTrimmed, worm.ErrUnavailable.
func (cl *Client) Listen(ctx context.Context, seg uint64) (<-chan worm.Notification, error) {
	if err := cl.begin(ctx); err != nil {
		return nil, err
	}
	l := &listener{out: make(chan worm.Notification, 64), wake: make(chan struct{}, 1)}
	cl.mu.Lock()
	ls := cl.listeners[seg]
	if ls == nil {
		ls = map[*listener]struct{}{}
		cl.listeners[seg] = ls
	}
	ls[l] = struct{}{}
	cl.mu.Unlock()
	detach := func() {
		cl.mu.Lock()
		delete(cl.listeners[seg], l)
		last := len(cl.listeners[seg]) == 0
		if last {
			delete(cl.listeners, seg)
		}
		cl.mu.Unlock()
		if last {
			cl.conns[cl.tail].send(0, &request{op: opUnlisten, seg: seg})
		}
	}
	req := request{op: opListen, seg: seg}
	c, err := cl.ask(ctx, cl.tail, &req)
	if err == nil {
		err = statusErr(&c.replies[0].resp)
		cl.release(c)
	}
	if err != nil {
		detach()
		return nil, err
	}
	go l.pump(ctx, cl.closed, detach)
	return l.out, nil
}
