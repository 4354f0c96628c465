package wormtx

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/wormspace/wormspace/worm"
)

// Directory maps a participant's name to the first segment of its inbox.
// A participant's inbox is the sequence of segments inbox, inbox+1, ...;
// each register of an inbox segment holds one entry (a transaction that
// names the participant, with its descriptor), appended by whoever begins
// or recovers such a transaction. Inbox ranges of different participants,
// and the coordinators' transaction segments, must not overlap.
type Directory func(participant string) (inbox uint64, err error)

// StaticDirectory is a Directory backed by a fixed map.
func StaticDirectory(m map[string]uint64) Directory {
	return func(p string) (uint64, error) {
		seg, ok := m[p]
		if !ok {
			return 0, fmt.Errorf("%w: no inbox for participant %q", ErrInvalid, p)
		}
		return seg, nil
	}
}

const inboxMagic = "wtx-inbox:"

// inboxCursor is a poster's hint of the first free inbox position: inbox
// segment k (relative to the inbox's first segment), offset off. Posters
// only move past a position after seeing it written, so the written
// positions of an inbox always form a prefix; a stale hint costs extra
// captures, never a hole.
type inboxCursor struct {
	mu  sync.Mutex
	k   uint64
	off uint32
}

// cursors holds a poster's hints, one per inbox.
type cursors struct{ m sync.Map } // first inbox segment -> *inboxCursor

func (c *cursors) get(base uint64) *inboxCursor {
	if c == nil {
		return &inboxCursor{}
	}
	v, _ := c.m.LoadOrStore(base, &inboxCursor{})
	return v.(*inboxCursor)
}

// claim is a captured inbox position, ready for one Write.
type claim struct {
	base uint64
	k    uint64
	off  uint32
	tok  worm.Token
}

// claimFrom captures the first position at or after (k, off) of the inbox
// at base that is not written. If it meets entry (an earlier ambiguous
// write of ours landed) it returns mine=true instead. entry may be nil.
func claimFrom(ctx context.Context, sp worm.Space, base uint64, p string, k uint64, off uint32, entry []byte) (c claim, mine bool, err error) {
	size := sp.SegmentSize()
	var b backoff
	for {
		if off >= size {
			k, off = k+1, 0
		}
		addr := worm.Addr{Seg: base + k, Off: off}
		tok, err := sp.Capture(ctx, addr)
		if w, ok := worm.WrittenValue(err); ok {
			if entry != nil && bytes.Equal(w, entry) {
				return claim{base: base, k: k, off: off}, true, nil
			}
			off++
			continue
		}
		switch {
		case err == nil:
			return claim{base: base, k: k, off: off, tok: tok}, false, nil
		case errors.Is(err, worm.ErrUnallocated):
			if _, err := sp.Alloc(ctx, base+k, []byte(inboxMagic+p)); err != nil && !transient(ctx, err) && !errors.Is(err, worm.ErrTrimmed) {
				return claim{}, false, fmt.Errorf("alloc inbox: %w", err)
			}
		case errors.Is(err, worm.ErrTrimmed):
			k, off = k+1, 0
		case transient(ctx, err):
			if werr := b.wait(ctx); werr != nil {
				return claim{}, false, err
			}
		default:
			return claim{}, false, err
		}
	}
}

// claimInbox captures participant p's first free inbox position (from the
// poster's hint), so that a post after Alloc costs one Write.
func claimInbox(ctx context.Context, sp worm.Space, dir Directory, cs *cursors, p string) (claim, error) {
	base, err := dir(p)
	if err != nil {
		return claim{}, err
	}
	cur := cs.get(base)
	cur.mu.Lock()
	k, off := cur.k, cur.off
	cur.mu.Unlock()
	c, _, err := claimFrom(ctx, sp, base, p, k, off, nil)
	if err != nil {
		return claim{}, fmt.Errorf("wormtx: claim inbox of %q: %w", p, err)
	}
	return c, nil
}

// postTo appends t to participant p's inbox (capture+write at the first
// free position; with pre, first a write with pre's token).
func postTo(ctx context.Context, sp worm.Space, dir Directory, cs *cursors, p string, t Tx, pre *claim) error {
	base, err := dir(p)
	if err != nil {
		return err
	}
	entry := marshalEntry(t)
	cur := cs.get(base)
	var c claim
	if pre != nil && pre.base == base {
		c = *pre
	} else {
		cur.mu.Lock()
		c = claim{base: base, k: cur.k, off: cur.off}
		cur.mu.Unlock()
	}
	var b backoff
	for {
		if c.tok.IsZero() {
			var mine bool
			c, mine, err = claimFrom(ctx, sp, base, p, c.k, c.off, entry)
			if err != nil {
				return fmt.Errorf("wormtx: post %v to %q: %w", t.ID, p, err)
			}
			if mine {
				break
			}
		}
		addr := worm.Addr{Seg: base + c.k, Off: c.off}
		err = sp.Write(ctx, addr, c.tok, entry)
		c.tok = worm.Token{}
		if err == nil {
			break
		}
		if w, ok := worm.WrittenValue(err); ok {
			if bytes.Equal(w, entry) {
				break
			}
			c.off++
			continue
		}
		if errors.Is(err, worm.ErrTrimmed) {
			c.k, c.off = c.k+1, 0
			continue
		}
		if !transient(ctx, err) {
			return fmt.Errorf("wormtx: post %v to %q: %w", t.ID, p, err)
		}
		if errors.Is(err, worm.ErrUnknownOutcome) {
			v, rerr := readOpt(ctx, sp, addr)
			if rerr == nil && bytes.Equal(v, entry) {
				break
			}
			if rerr == nil && v != nil {
				c.off++
				continue
			}
		}
		// Preempted, unavailable, or unknown and still empty: capture
		// the same position again (claimFrom tells if ours landed).
		if werr := b.wait(ctx); werr != nil {
			return fmt.Errorf("wormtx: post %v to %q: %w", t.ID, p, err)
		}
	}
	cur.mu.Lock()
	if c.k > cur.k || (c.k == cur.k && c.off+1 > cur.off) {
		cur.k, cur.off = c.k, c.off+1
	}
	cur.mu.Unlock()
	return nil
}
