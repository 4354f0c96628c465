package wormlog

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"time"

	"github.com/wormspace/wormspace/worm"
)

// probeAhead is how many positions past a stuck one a follower reads, when
// it has no other evidence, to learn whether the stuck position was handed
// out (a later one is written).
const probeAhead = 4

// Follow yields every position of the log from from on, in position order,
// each exactly once: records and holes (Record.Hole), so a consumer sees
// consecutive positions. It waits at an unwritten position, woken by
// Listen notifications (hints: it always reads; a Lost notification just
// makes it read again) and by a poll timer. A position that stays
// unwritten for cfg.HoleTimeout although it is known to be assigned (a
// later position is written, or the sequencer's tail is past it) is filled
// with a hole, so a crashed appender never blocks followers; a position
// past the tail is never filled, so an idle log does not fill up with
// holes.
//
// The sequence ends when the consumer stops, when ctx ends (no error is
// yielded then), or with one final (Record{Pos: p}, err) for an error at
// position p: worm.ErrTrimmed (the follower fell behind a trim) or
// ErrCorrupt.
func (c *Client) Follow(ctx context.Context, from uint64) iter.Seq2[Record, error] {
	return func(yield func(Record, error) bool) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		f := &follower{c: c, pos: from}
		defer f.unlisten()
		for {
			rec, err := f.next(ctx)
			if err != nil {
				if ctx.Err() == nil {
					yield(Record{Pos: f.pos}, err)
				}
				return
			}
			if !yield(rec, nil) {
				return
			}
		}
	}
}

type follower struct {
	c   *Client
	pos uint64

	// Listeners on the segment of pos and the one after it.
	lseg    uint64
	lcancel context.CancelFunc
	l0, l1  <-chan worm.Notification
	listen  bool // (re)listen before waiting

	hi    uint64    // 1 + highest position known written (0: none)
	stuck time.Time // when pos was first seen unwritten and assigned
}

func (f *follower) unlisten() {
	if f.lcancel != nil {
		f.lcancel()
		f.lcancel, f.l0, f.l1 = nil, nil, nil
	}
}

// relisten listens on the segment of pos and the next one, when pos moved
// to another segment or a listener was lost. Failures are not fatal: the
// poll timer covers them.
func (f *follower) relisten(ctx context.Context) {
	seg := f.c.lay.seg(f.pos)
	if f.lcancel != nil && f.lseg == seg && f.l0 != nil && f.l1 != nil && !f.listen {
		return
	}
	f.unlisten()
	lctx, cancel := context.WithCancel(ctx)
	f.lseg, f.lcancel, f.listen = seg, cancel, false
	if ch, err := f.c.space.Listen(lctx, seg); err == nil {
		f.l0 = ch
	}
	if ch, err := f.c.space.Listen(lctx, seg+1); err == nil {
		f.l1 = ch
	}
}

func (f *follower) poll() time.Duration {
	d := f.c.cfg.HoleTimeout / 4
	if f.c.cfg.HoleTimeout < 0 {
		d = 100 * time.Millisecond
	}
	return min(max(d, time.Millisecond), 100*time.Millisecond)
}

// next returns the record at f.pos and advances.
func (f *follower) next(ctx context.Context) (Record, error) {
	var b backoff
	f.stuck = time.Time{}
	for {
		f.relisten(ctx)
		rec, err := f.c.Read(ctx, f.pos)
		switch {
		case err == nil:
			f.pos++
			return rec, nil
		case errors.Is(err, ErrUnwritten):
			// wait below
		case transient(err) && ctx.Err() == nil:
			// Unavailable, or a read that had to repair a register and
			// met contention.
			if werr := b.wait(ctx, err); werr != nil {
				return Record{}, werr
			}
			continue
		default:
			return Record{}, fmt.Errorf("wormlog: follow: %w", err)
		}
		if f.c.cfg.HoleTimeout >= 0 {
			if !f.stuck.IsZero() && time.Since(f.stuck) >= f.c.cfg.HoleTimeout {
				rec, err := f.c.FillHole(ctx, f.pos)
				if err == nil {
					f.pos++
					return rec, nil
				}
				if ctx.Err() != nil {
					return Record{}, err
				}
				f.c.log.Debug("wormlog: follow: fill failed", "pos", f.pos, "err", err)
			}
			if f.stuck.IsZero() && f.assigned(ctx) {
				f.stuck = time.Now()
			}
		}
		if err := f.wait(ctx); err != nil {
			return Record{}, err
		}
	}
}

// assigned reports whether f.pos is known to be handed out: a later
// position is written, or the sequencer's tail is past it.
func (f *follower) assigned(ctx context.Context) bool {
	if f.hi > f.pos+1 {
		return true
	}
	if f.c.src != nil {
		if tail, err := f.c.src.Tail(ctx); err == nil {
			return tail > f.pos
		}
	}
	for i := uint64(1); i <= probeAhead; i++ {
		if _, err := f.c.Read(ctx, f.pos+i); err == nil {
			f.hi = max(f.hi, f.pos+i+1)
			return true
		}
	}
	return false
}

// wait blocks until a notification that may concern f.pos, the poll
// timer, or the end of ctx.
func (f *follower) wait(ctx context.Context) error {
	t := time.NewTimer(f.poll())
	defer t.Stop()
	off := f.c.lay.addr(f.pos).Off
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			return nil
		case n, ok := <-f.l0:
			if !ok {
				f.l0, f.listen = nil, true
				return nil
			}
			if n.Lost || n.Off == off {
				return nil
			}
			if n.Off > off {
				f.hi = max(f.hi, f.c.lay.pos(f.lseg, n.Off)+1)
				if f.stuck.IsZero() {
					return nil // now assigned: start the clock
				}
			}
		case n, ok := <-f.l1:
			if !ok {
				f.l1, f.listen = nil, true
				return nil
			}
			if !n.Lost {
				f.hi = max(f.hi, f.c.lay.pos(f.lseg+1, n.Off)+1)
			}
			if f.stuck.IsZero() {
				return nil
			}
		}
	}
}
