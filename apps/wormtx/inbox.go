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

// postTo appends t to participant p's inbox (capture+write at the first
// free position).
func postTo(ctx context.Context, sp worm.Space, dir Directory, cs *cursors, p string, t Tx) error {
	base, err := dir(p)
	if err != nil {
		return err
	}
	entry := marshalEntry(t)
	cur := cs.get(base)
	cur.mu.Lock()
	k, off := cur.k, cur.off
	cur.mu.Unlock()
	size := sp.SegmentSize()
	var b backoff
	wait := func(err error) error {
		if werr := b.wait(ctx); werr != nil {
			return fmt.Errorf("wormtx: post %v to %q: %w", t.ID, p, err)
		}
		return nil
	}
loop:
	for {
		if off >= size {
			k, off = k+1, 0
		}
		addr := worm.Addr{Seg: base + k, Off: off}
		tok, err := sp.Capture(ctx, addr)
		if w, ok := worm.WrittenValue(err); ok {
			if bytes.Equal(w, entry) {
				break loop // an earlier ambiguous attempt of ours landed
			}
			off++
			continue
		}
		switch {
		case err == nil:
		case errors.Is(err, worm.ErrUnallocated):
			if _, err := sp.Alloc(ctx, base+k, []byte(inboxMagic+p)); err != nil && !transient(ctx, err) && !errors.Is(err, worm.ErrTrimmed) {
				return fmt.Errorf("wormtx: post %v to %q: alloc inbox: %w", t.ID, p, err)
			}
			continue
		case errors.Is(err, worm.ErrTrimmed):
			k, off = k+1, 0
			continue
		case transient(ctx, err):
			if err := wait(err); err != nil {
				return err
			}
			continue
		default:
			return fmt.Errorf("wormtx: post %v to %q: %w", t.ID, p, err)
		}
		err = sp.Write(ctx, addr, tok, entry)
		if err == nil {
			break loop
		}
		if w, ok := worm.WrittenValue(err); ok {
			if bytes.Equal(w, entry) {
				break loop
			}
			off++
			continue
		}
		if errors.Is(err, worm.ErrTrimmed) {
			k, off = k+1, 0
			continue
		}
		if !transient(ctx, err) {
			return fmt.Errorf("wormtx: post %v to %q: %w", t.ID, p, err)
		}
		if errors.Is(err, worm.ErrUnknownOutcome) {
			v, rerr := readOpt(ctx, sp, addr)
			if rerr == nil && bytes.Equal(v, entry) {
				break loop
			}
			if rerr == nil && v != nil {
				off++
				continue
			}
		}
		if err := wait(err); err != nil {
			return err
		}
	}
	cur.mu.Lock()
	if k > cur.k || (k == cur.k && off+1 > cur.off) {
		cur.k, cur.off = k, off+1
	}
	cur.mu.Unlock()
	return nil
}
