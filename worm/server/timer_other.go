//go:build !linux

package server

import "time"

// preciseTimer is a time.Timer off Linux (see timer_linux.go for why
// Linux has its own).
type preciseTimer struct {
	C chan struct{}
	t *time.Timer
}

func newPreciseTimer() (*preciseTimer, error) {
	t := &preciseTimer{C: make(chan struct{}, 1)}
	t.t = time.AfterFunc(time.Hour, func() {
		select {
		case t.C <- struct{}{}:
		default:
		}
	})
	t.t.Stop()
	return t, nil
}

func (t *preciseTimer) Reset(d time.Duration) { t.t.Reset(d) }
func (t *preciseTimer) Stop()                 { t.t.Stop() }
func (t *preciseTimer) Close()                { t.t.Stop() }
