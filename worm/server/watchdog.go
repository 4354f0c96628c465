package server

import (
	"time"
)

// The write watchdog replaces a write deadline armed before every write:
// under gVisor's netstack each SetWriteDeadline arms a timer, which cost
// an allocation and a timer operation per reply. Instead, each connection
// counts its writes (conn.wseq, odd while one is in progress) and one
// goroutine per Server looks at every connection a few times per limit.
// A write seen in progress with the same count for longer than its limit
// is stalled: its deadline is set in the past (which unblocks a Write on
// any net.Conn: kernel TCP, gonet, net.Pipe) and the connection is torn
// down, alone.
//
// The limit of a write is WriteTimeout; errorFlushTimeout when it flushes
// an error frame; PressureTimeout (when shorter) while a reader waits for
// room in the server-wide reply budget, so that clients that stopped
// reading give their bytes back to those that wait.

// Why the watchdog closed a connection
// (worm_write_timeouts_total{reason}).
const (
	wdTimeout  = iota // WriteTimeout, or errorFlushTimeout for an error frame
	wdPressure        // PressureTimeout while the reply budget was full
	numWDReasons
)

var wdReasonNames = [numWDReasons]string{"write_timeout", "budget_pressure"}

// aLongTimeAgo is a deadline in the past: it fails a pending I/O at once.
var aLongTimeAgo = time.Unix(1, 0)

// watchdogTick returns the watchdog's period for the server's limits.
func (s *Server) watchdogTick() time.Duration {
	shortest := errorFlushTimeout
	for _, d := range []time.Duration{s.writeTimeout, s.pressureTimeout} {
		if d > 0 && d < shortest {
			shortest = d
		}
	}
	return min(max(shortest/watchdogDivisor, minWatchdogTick), maxWatchdogTick)
}

func (s *Server) watchdog() {
	defer s.wdWG.Done()
	t := time.NewTicker(s.watchdogTick())
	defer t.Stop()
	for {
		select {
		case <-s.wdStop:
			return
		case now := <-t.C:
			s.checkWrites(now)
		}
	}
}

// checkWrites closes the connections whose write has been in progress,
// unchanged, for longer than its limit.
func (s *Server) checkWrites(now time.Time) {
	pressure := s.budget.waiters.Load() > 0
	s.mu.Lock()
	s.wdConns = s.wdConns[:0]
	for c := range s.conns {
		s.wdConns = append(s.wdConns, c)
	}
	s.mu.Unlock()
	for i, c := range s.wdConns {
		s.wdConns[i] = nil
		seq := c.wseq.Load()
		if seq&1 == 0 || seq != c.wdSeq {
			// Idle, or a write began since the last look.
			c.wdSeq, c.wdSince = seq, now
			continue
		}
		stalled := now.Sub(c.wdSince)
		limit, reason := s.writeTimeout, wdTimeout
		if c.flushing.Load() && (limit < 0 || limit > errorFlushTimeout) {
			limit = errorFlushTimeout
		}
		if pressure && s.pressureTimeout > 0 && (limit < 0 || s.pressureTimeout < limit) {
			limit, reason = s.pressureTimeout, wdPressure
		}
		if limit < 0 || stalled < limit {
			continue
		}
		c.expire(stalled, reason)
	}
}

// expire closes a connection whose write stalled.
func (c *conn) expire(stalled time.Duration, reason int) {
	c.mu.Lock()
	held, flushing := c.held, c.closing
	c.mu.Unlock()
	c.s.m.writeTimeouts[reason].Add(1)
	switch {
	case flushing:
		// Its error frame could not be delivered: expected of a client
		// that sent garbage and does not read.
		c.s.logger.Debug("closing a connection: its error frame was not read", "conn", c.id, "remote", c.remote, "stalled", stalled.Round(time.Millisecond))
	default:
		if ok, supp := c.s.wdLog.allow(); ok {
			msg := "closing a connection whose client has not read its replies for the write timeout"
			if reason == wdPressure {
				msg = "closing a connection whose client has not read its replies while the server's reply budget is full"
			}
			c.s.logger.Warn(msg, "conn", c.id, "remote", c.remote, "client", c.client, "stalled", stalled.Round(time.Millisecond),
				"held_bytes", held, "budget_used", c.s.budget.used.Load(), "budget", c.s.budget.limit, "suppressed", supp)
		}
	}
	c.nc.SetWriteDeadline(aLongTimeAgo)
	c.teardown()
}
