package wormlog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"

	"github.com/wormspace/wormspace/worm"
)

// Client appends to, reads, follows, fills and trims one log. It holds no
// state of its own beyond its configuration: any number of Clients, in any
// number of processes, may work on one log at once. Safe for concurrent
// use.
type Client struct {
	space worm.Space
	cfg   Config
	lay   layout
	src   TokenSource
	log   *slog.Logger
}

// NewClient returns a client of the log cfg names. src hands out positions
// for Append (a *Sequencer or a *Remote); it may be nil for a client that
// only reads, follows, fills and trims. The client does not own space or
// src: closing them is the caller's business.
func NewClient(space worm.Space, cfg Config, src TokenSource) *Client {
	cfg = cfg.withDefaults()
	return &Client{
		space: space,
		cfg:   cfg,
		lay:   layout{size: space.SegmentSize(), first: cfg.FirstSeg},
		src:   src,
		log:   cfg.Logger.With("component", "client", "client", space.ID()),
	}
}

// Addr returns the register that holds position pos.
func (c *Client) Addr(pos uint64) worm.Addr { return c.lay.addr(pos) }

// Append appends value and returns its position. It costs two round trips
// when nothing goes wrong: a grant from the sequencer, one Write. When the
// position was taken (a hole filler or a newer sequencer fenced the token:
// ErrPreempted or *worm.WrittenError) it retries at a new position. When a
// write ends in worm.ErrUnknownOutcome it retries the identical write and,
// if that is preempted, decides the position itself by filling it (capture
// + hole marker): either its record is there (success) or a hole is, and
// the value was certainly not appended there, so it retries elsewhere. So
// a value that Append acknowledged is at the returned position, and a
// value is in the log at most once.
//
// Errors: worm.ErrTooLarge (the value plus a 9-byte header exceeds the
// space's limit), ErrNoSequencer, ErrClosed, ErrForeign, and when ctx
// ends, ctx's error wrapped in worm.ErrUnavailable (nothing was appended)
// or worm.ErrUnknownOutcome (the value may be at the position the error
// names, and nowhere else). An unknown-outcome error also wraps its cause
// (ErrUnavailable, ErrTrimmed): test for worm.ErrUnknownOutcome first.
func (c *Client) Append(ctx context.Context, value []byte) (uint64, error) {
	if c.src == nil {
		return 0, ErrNoSequencer
	}
	rec := encodeRecord(rand.Uint64(), value)
	var b backoff
	for {
		g, err := c.src.NextN(ctx, 1)
		if err != nil {
			if errors.Is(err, worm.ErrUnavailable) && ctx.Err() == nil {
				if werr := b.wait(ctx, err); werr != nil {
					return 0, werr
				}
				continue
			}
			return 0, fmt.Errorf("wormlog: append: %w", err)
		}
		ours, err := c.writeAt(ctx, g.Pos, g.Token, rec, false)
		if err != nil {
			return 0, err
		}
		if ours {
			return g.Pos, nil
		}
		// Fenced: tell the sequencer (a hint) and take another position.
		_ = c.src.Fenced(ctx, g, g.Pos)
	}
}

// writeAt writes rec at pos with tok until the position is decided. It
// returns true when rec is the position's value, false when the position
// certainly does not hold rec (and never will). ambiguous says that an
// earlier attempt may still take effect.
func (c *Client) writeAt(ctx context.Context, pos uint64, tok worm.Token, rec []byte, ambiguous bool) (bool, error) {
	addr := c.lay.addr(pos)
	var b backoff
	unknowns := 0
	for {
		err := c.space.Write(ctx, addr, tok, rec)
		if v, ok := worm.WrittenValue(err); ok {
			// The register is decided (a WrittenError carries the chosen
			// value).
			return bytes.Equal(v, rec), nil
		}
		if errors.Is(err, worm.ErrUnknownOutcome) {
			ambiguous = true
			unknowns++
		}
		switch {
		case err == nil:
			return true, nil
		case errors.Is(err, worm.ErrPreempted) && !ambiguous:
			return false, nil // certainly no effect
		case errors.Is(err, worm.ErrPreempted), unknowns >= maxUnknownRetries:
			// An earlier attempt may have reached some acceptors, and
			// retrying does not settle it (a Paxos write preempted after
			// reaching some acceptors keeps ending in an unknown
			// outcome): decide the register ourselves.
			v, err := c.fill(ctx, addr)
			if err != nil {
				return false, c.unknown(pos, err)
			}
			return bytes.Equal(v, rec), nil
		case errors.Is(err, worm.ErrUnknownOutcome):
			// Retry the identical write: idempotent, and usually it
			// settles.
		case errors.Is(err, worm.ErrUnavailable):
			// No effect from this attempt; the token is still good.
		case errors.Is(err, worm.ErrTrimmed):
			if ambiguous {
				return false, c.unknown(pos, err)
			}
			return false, nil // trimmed under the sequencer: go elsewhere
		default:
			return false, fmt.Errorf("wormlog: append at %d: %w", pos, err)
		}
		if ctx.Err() != nil {
			if ambiguous {
				return false, c.unknown(pos, err)
			}
			return false, fmt.Errorf("wormlog: append at %d: %w", pos, ctxErr(ctx, err))
		}
		if werr := b.wait(ctx, err); werr != nil {
			if ambiguous {
				return false, c.unknown(pos, werr)
			}
			return false, fmt.Errorf("wormlog: append at %d: %w", pos, werr)
		}
	}
}

// AppendBatch appends values and returns their positions (positions[i]
// holds values[i]). It asks the sequencer for a run of positions (NextN)
// and writes as many values as the run holds with one WriteBatch; values
// whose position was taken are appended again at new positions, so the
// positions ascend with i only when nothing was taken. Each value gets
// Append's guarantees. On error, the values before the first one without
// a position may or may not have been appended: positions holds what is
// known (0 with an unknown outcome).
func (c *Client) AppendBatch(ctx context.Context, values [][]byte) ([]uint64, error) {
	if c.src == nil {
		return nil, ErrNoSequencer
	}
	recs := make([][]byte, len(values))
	for i, v := range values {
		recs[i] = encodeRecord(rand.Uint64(), v)
	}
	positions := make([]uint64, len(values))
	pending := make([]int, len(values))
	for i := range pending {
		pending[i] = i
	}
	var b backoff
	for len(pending) > 0 {
		g, err := c.src.NextN(ctx, len(pending))
		if err != nil {
			if errors.Is(err, worm.ErrUnavailable) && ctx.Err() == nil {
				if werr := b.wait(ctx, err); werr != nil {
					return positions, werr
				}
				continue
			}
			return positions, fmt.Errorf("wormlog: append: %w", err)
		}
		batch := pending[:g.N]
		vals := make([][]byte, len(batch))
		for j, i := range batch {
			vals[j] = recs[i]
		}
		a := c.lay.addr(g.Pos)
		err = c.space.WriteBatch(ctx, a.Seg, a.Off, g.Token, vals)
		var be *worm.BatchError
		if err != nil && !errors.As(err, &be) && !transient(err) && !errors.Is(err, worm.ErrTrimmed) {
			return positions, fmt.Errorf("wormlog: append batch at %d: %w", g.Pos, err)
		}
		var redo []int
		fenced, fencedAt := false, uint64(0)
		for j, i := range batch {
			pos := g.Pos + uint64(j)
			werr := err
			if be != nil {
				werr = be.Errs[j]
			}
			var ours bool
			switch v, written := worm.WrittenValue(werr); {
			case werr == nil:
				ours = true
			case written:
				ours = bytes.Equal(v, vals[j])
			case errors.Is(werr, worm.ErrPreempted), errors.Is(werr, worm.ErrTrimmed):
				ours = false
			default: // unknown or unavailable: settle this one position
				var serr error
				ours, serr = c.writeAt(ctx, pos, g.Token, vals[j], errors.Is(werr, worm.ErrUnknownOutcome))
				if serr != nil {
					return positions, serr
				}
			}
			if ours {
				positions[i] = pos
			} else {
				redo = append(redo, i)
				if !fenced {
					fenced, fencedAt = true, pos
				}
			}
		}
		if fenced {
			_ = c.src.Fenced(ctx, g, fencedAt)
		}
		pending = append(redo, pending[g.N:]...)
	}
	return positions, nil
}

// maxUnknownRetries is how many unknown outcomes in a row an appender
// sees at one position before it settles the position by filling it.
const maxUnknownRetries = 3

func (c *Client) unknown(pos uint64, err error) error {
	return fmt.Errorf("wormlog: append at %d: %w (%w)", pos, worm.ErrUnknownOutcome, err)
}

// fill decides addr: it captures the register and writes the hole marker,
// unless the capture finds a value, which it returns. It returns the
// register's chosen value.
func (c *Client) fill(ctx context.Context, addr worm.Addr) ([]byte, error) {
	var b backoff
	for {
		tok, err := c.space.Capture(ctx, addr)
		if v, ok := worm.WrittenValue(err); ok {
			return v, nil
		}
		if err == nil {
			err = c.space.Write(ctx, addr, tok, holeMarker)
			if v, ok := worm.WrittenValue(err); ok {
				return v, nil
			}
			if err == nil {
				return holeMarker, nil
			}
			// Preempted (a rival filler or appender), unknown or
			// unavailable: capture again; the capture reports the value
			// if one got chosen.
		}
		if !transient(err) {
			return nil, err
		}
		if ctx.Err() != nil {
			return nil, ctxErr(ctx, err)
		}
		if werr := b.wait(ctx, err); werr != nil {
			return nil, werr
		}
	}
}

// FillHole decides position pos: if nothing is there it captures the
// register (preempting the sequencer's segment capture for that one
// position) and writes the hole marker; a slow appender that holds the
// position is then preempted and appends elsewhere. It returns what the
// position holds now, hole or record, which never changes afterwards.
// Errors: worm.ErrTrimmed, worm.ErrUnallocated (the position's segment was
// never allocated: the position is beyond the log's end), ErrCorrupt, and
// ctx's error wrapped in worm.ErrUnavailable.
func (c *Client) FillHole(ctx context.Context, pos uint64) (Record, error) {
	v, err := c.fill(ctx, c.lay.addr(pos))
	if err != nil {
		return Record{Pos: pos}, fmt.Errorf("wormlog: fill %d: %w", pos, err)
	}
	return decode(pos, v)
}

// Read returns what position pos holds: a record or a hole. A position that
// holds one never changes. Errors: ErrUnwritten (together with
// worm.ErrEmpty or worm.ErrUnallocated), worm.ErrTrimmed, ErrCorrupt,
// worm.ErrUnavailable.
func (c *Client) Read(ctx context.Context, pos uint64) (Record, error) {
	v, err := c.space.Read(ctx, c.lay.addr(pos))
	switch {
	case err == nil:
		return decode(pos, v)
	case errors.Is(err, worm.ErrEmpty), errors.Is(err, worm.ErrUnallocated):
		return Record{Pos: pos}, fmt.Errorf("wormlog: read %d: %w: %w", pos, ErrUnwritten, err)
	}
	return Record{Pos: pos}, fmt.Errorf("wormlog: read %d: %w", pos, err)
}

// Tail returns the sequencer's tail: every acknowledged append lies below
// it. Errors: ErrNoSequencer, and the TokenSource's.
func (c *Client) Tail(ctx context.Context) (uint64, error) {
	if c.src == nil {
		return 0, ErrNoSequencer
	}
	return c.src.Tail(ctx)
}

// Trim garbage-collects the prefix of the log below upto, by whole
// segments: every segment all of whose positions lie below upto is
// trimmed, lowest first; the segment holding upto and later ones are kept.
// Reads of trimmed positions return worm.ErrTrimmed. Trim is idempotent
// and monotone; the trimmed segments always form a prefix of the log
// (which the sequencer's recovery relies on).
func (c *Client) Trim(ctx context.Context, upto uint64) error {
	end := c.lay.seg(upto) // segments below end lie entirely below upto
	start, err := c.firstUntrimmed(ctx, end)
	if err != nil {
		return fmt.Errorf("wormlog: trim: %w", err)
	}
	for seg := start; seg < end; seg++ {
		if _, err := retry(ctx, func() (struct{}, error) { return struct{}{}, c.space.Trim(ctx, seg) }); err != nil {
			return fmt.Errorf("wormlog: trim segment %d: %w", seg, err)
		}
	}
	if start < end {
		c.log.Debug("wormlog: trimmed", "from", start, "to", end)
	}
	return nil
}

// firstUntrimmed returns the lowest segment in [FirstSeg, end) that is not
// trimmed, or end. Trimmed segments form a prefix, so binary search works.
func (c *Client) firstUntrimmed(ctx context.Context, end uint64) (uint64, error) {
	lo, hi := c.cfg.FirstSeg, end // answer in [lo, hi]
	for lo < hi {
		mid := lo + (hi-lo)/2
		_, err := retry(ctx, func() (worm.SegmentInfo, error) { return c.space.Check(ctx, mid) })
		switch {
		case errors.Is(err, worm.ErrTrimmed):
			lo = mid + 1
		case err == nil, errors.Is(err, worm.ErrUnallocated):
			hi = mid
		default:
			return 0, err
		}
	}
	return lo, nil
}
