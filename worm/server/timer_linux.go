//go:build linux

package server

import (
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// preciseTimer fires at sub-millisecond deadlines on time. A time.Timer
// does not, in a process with nothing else to do: the runtime then waits
// for its timers in epoll_wait, whose timeout is in whole milliseconds,
// so a 100 µs timer fires after about 1.1 ms. preciseTimer is a timerfd
// read through the runtime's poller instead, which wakes when the kernel's
// high-resolution timer expires.
//
// C receives one value per expiry (dropped if the previous one was not
// taken). A value may be left in C from an expiry that raced with Stop:
// drain C before Reset when that matters.
type preciseTimer struct {
	C    chan struct{}
	f    *os.File
	fd   int
	done chan struct{}
}

func newPreciseTimer() (*preciseTimer, error) {
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("timerfd_create", err)
	}
	t := &preciseTimer{C: make(chan struct{}, 1), f: os.NewFile(uintptr(fd), "timerfd"), fd: fd, done: make(chan struct{})}
	go t.run()
	return t, nil
}

func (t *preciseTimer) run() {
	defer close(t.done)
	var buf [8]byte // the expiry count
	for {
		if _, err := t.f.Read(buf[:]); err != nil {
			return // closed
		}
		select {
		case t.C <- struct{}{}:
		default:
		}
	}
}

// Reset arms the timer to fire once after d (d <= 0 fires at once).
func (t *preciseTimer) Reset(d time.Duration) {
	if d <= 0 {
		d = 1 // a zero it_value would disarm it
	}
	spec := unix.ItimerSpec{Value: unix.NsecToTimespec(int64(d))}
	// Cannot fail with a valid fd and a valid spec.
	_ = unix.TimerfdSettime(t.fd, 0, &spec, nil)
}

// Stop disarms the timer.
func (t *preciseTimer) Stop() {
	_ = unix.TimerfdSettime(t.fd, 0, &unix.ItimerSpec{}, nil)
}

// Close stops the timer and its goroutine.
func (t *preciseTimer) Close() {
	t.f.Close()
	<-t.done
}
