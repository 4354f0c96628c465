package chain

import (
	"net"
	"sync"

	"github.com/wormspace/wormspace/worm/sockio"
)

// outbox is the send side of one connection: frames are appended to out
// under mu (by whoever has something to say) and one writer goroutine
// hands everything queued to the socket with one write, so that a burst
// of pipelined frames costs one system call. out and spare are swapped,
// so steady state allocates nothing.
type outbox struct {
	mu    sync.Mutex
	out   []byte
	spare []byte
	wake  chan struct{} // capacity 1: "out has bytes"
}

func newOutbox() outbox { return outbox{wake: make(chan struct{}, 1)} }

// kick wakes the writer.
func (o *outbox) kick() {
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// put appends a copy of frame, refusing (false) when more than max bytes
// are already queued: the peer stopped reading.
func (o *outbox) put(frame []byte, max int) bool {
	o.mu.Lock()
	if len(o.out) > max {
		o.mu.Unlock()
		return false
	}
	o.out = append(o.out, frame...)
	o.mu.Unlock()
	o.kick()
	return true
}

// reset drops whatever is queued (the connection is gone).
func (o *outbox) reset() {
	o.mu.Lock()
	o.out = o.out[:0]
	o.mu.Unlock()
}

// loop writes what is queued to nc until stop is closed or a write fails
// (then it closes nc, so that its reader sees the failure too).
func (o *outbox) loop(nc net.Conn, stop <-chan struct{}) error {
	w := sockio.ReadWriter(nc)
	for {
		select {
		case <-o.wake:
		case <-stop:
			return nil
		}
		for {
			o.mu.Lock()
			if len(o.out) == 0 {
				o.mu.Unlock()
				break
			}
			buf := o.out
			o.out = o.spare[:0]
			o.spare = nil
			o.mu.Unlock()
			_, err := w.Write(buf)
			o.mu.Lock()
			if cap(buf) <= 1<<20 && o.spare == nil {
				o.spare = buf[:0]
			}
			o.mu.Unlock()
			if err != nil {
				nc.Close()
				return err
			}
		}
	}
}
