package spec

import (
	"context"
	"sync"

	"github.com/wormspace/wormspace/worm"
)

// listener queues notifications without ever blocking the writer: the
// writer appends under mu (it holds the Store's mutex too, so the
// notification is ordered after the write it reports), and pump moves the
// queue to the caller's channel.
type listener struct {
	out   chan worm.Notification
	max   int
	wake  chan struct{} // capacity 1: "the queue changed"
	halt  chan struct{} // closed by stop (segment trimmed)
	once  sync.Once
	mu    sync.Mutex
	queue []worm.Notification
	lost  bool
}

func newListener(max int) *listener {
	return &listener{
		out:  make(chan worm.Notification, max),
		max:  max,
		wake: make(chan struct{}, 1),
		halt: make(chan struct{}),
	}
}

// notify queues the news that register off was written with v, which is
// chosen at once (the spec is atomic). v is copied.
func (l *listener) notify(off uint32, v []byte) {
	l.mu.Lock()
	if len(l.queue) >= l.max {
		// The listener fell behind: whatever is queued is redundant with
		// the rescan that Lost asks for.
		l.queue, l.lost = l.queue[:0], true
	} else if !l.lost {
		l.queue = append(l.queue, worm.Notification{Off: off, Chosen: true, Value: append([]byte{}, v...)})
	}
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

func (l *listener) stop() { l.once.Do(func() { close(l.halt) }) }

// pump delivers queued notifications until ctx ends, the client closes or
// the segment is trimmed; then it unregisters (detach) and closes out.
func (l *listener) pump(ctx context.Context, closed <-chan struct{}, detach func()) {
	defer close(l.out)
	defer detach()
	for {
		select {
		case <-ctx.Done():
			return
		case <-closed:
			return
		case <-l.halt:
			return
		case <-l.wake:
		}
		l.mu.Lock()
		batch, lost := l.queue, l.lost
		l.queue, l.lost = nil, false
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
			case <-l.halt:
				return
			}
		}
	}
}
