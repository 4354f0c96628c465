package wormtx

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/wormspace/wormspace/worm"
)

// transient reports whether err may go away by retrying: a quorum was not
// reachable, a capture lost a race, or a write's outcome is unknown (the
// caller then reads to resolve it). A done ctx is never transient.
func transient(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	return errors.Is(err, worm.ErrUnavailable) || errors.Is(err, worm.ErrPreempted) ||
		errors.Is(err, worm.ErrUnknownOutcome)
}

// backoff spaces retries: exponential from 1ms to 64ms with full jitter,
// so dueling recoverers on one register do not preempt each other forever.
type backoff struct{ d time.Duration }

func (b *backoff) wait(ctx context.Context) error {
	if b.d == 0 {
		b.d = time.Millisecond
	} else if b.d < 64*time.Millisecond {
		b.d *= 2
	}
	t := time.NewTimer(time.Duration(rand.Int64N(int64(b.d))) + 50*time.Microsecond)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// settle makes sure addr holds a chosen value and returns it: the value
// already there, or fill written with capture+write when the register is
// empty. It is safe for any number of concurrent callers with any fills
// (Paxos picks one), and it carries over a value that reached some
// acceptors (Capture then reports *WrittenError with it). filled reports
// whether the returned value is fill and this call attempted to write it.
func settle(ctx context.Context, sp worm.Space, addr worm.Addr, fill []byte) (v []byte, filled bool, err error) {
	var b backoff
	attempted := false
	for {
		v, err := sp.Read(ctx, addr)
		switch {
		case err == nil:
			return v, attempted && bytes.Equal(v, fill), nil
		case errors.Is(err, worm.ErrEmpty):
		case transient(ctx, err):
			if werr := b.wait(ctx); werr != nil {
				return nil, false, fmt.Errorf("settle %v: %w", addr, err)
			}
			continue
		default:
			return nil, false, fmt.Errorf("settle %v: read: %w", addr, err)
		}
		tok, err := sp.Capture(ctx, addr)
		if w, ok := worm.WrittenValue(err); ok {
			return w, false, nil
		}
		if err != nil {
			if transient(ctx, err) {
				if werr := b.wait(ctx); werr != nil {
					return nil, false, fmt.Errorf("settle %v: %w", addr, err)
				}
				continue
			}
			return nil, false, fmt.Errorf("settle %v: capture: %w", addr, err)
		}
		attempted = true
		err = sp.Write(ctx, addr, tok, fill)
		if err == nil {
			return fill, true, nil
		}
		if w, ok := worm.WrittenValue(err); ok {
			return w, false, nil
		}
		if !transient(ctx, err) {
			return nil, false, fmt.Errorf("settle %v: write: %w", addr, err)
		}
		// Preempted (someone else is settling it) or unknown outcome: the
		// next round's read tells.
		if werr := b.wait(ctx); werr != nil {
			return nil, false, fmt.Errorf("settle %v: %w", addr, err)
		}
	}
}

// writeOwn writes value at ballot 0 into a register the caller is the only
// ballot-0 writer of, and returns the register's chosen value: value
// itself, or what a recoverer chose instead (it captured the register
// before the vote got through). An ambiguous write is resolved by reading
// and, when the register still reads empty, retrying the identical write
// (idempotent). When a capture preempted the write, the register is a
// recoverer's to fill; writeOwn helps by settling it with fill.
func writeOwn(ctx context.Context, sp worm.Space, addr worm.Addr, value, fill []byte) ([]byte, error) {
	var b backoff
	for {
		err := sp.WriteUnsafe(ctx, addr, value)
		if err == nil {
			return value, nil
		}
		if w, ok := worm.WrittenValue(err); ok {
			return w, nil
		}
		if errors.Is(err, worm.ErrPreempted) {
			v, _, err := settle(ctx, sp, addr, fill)
			return v, err
		}
		if !transient(ctx, err) {
			return nil, fmt.Errorf("write %v: %w", addr, err)
		}
		// Unknown outcome or unavailable: read. A value settles it;
		// empty means nothing is chosen yet, so the identical write is
		// retried.
		for {
			if werr := b.wait(ctx); werr != nil {
				return nil, fmt.Errorf("write %v: %w", addr, err)
			}
			v, rerr := sp.Read(ctx, addr)
			if rerr == nil {
				return v, nil
			}
			if errors.Is(rerr, worm.ErrEmpty) {
				break
			}
			if !transient(ctx, rerr) {
				return nil, fmt.Errorf("write %v: resolve: %w", addr, rerr)
			}
		}
	}
}

// readOpt reads addr: a value, nil for empty, or an error (transient
// errors are retried until ctx ends).
func readOpt(ctx context.Context, sp worm.Space, addr worm.Addr) ([]byte, error) {
	var b backoff
	for {
		v, err := sp.Read(ctx, addr)
		switch {
		case err == nil:
			return v, nil
		case errors.Is(err, worm.ErrEmpty):
			return nil, nil
		case transient(ctx, err):
			if werr := b.wait(ctx); werr != nil {
				return nil, err
			}
		default:
			return nil, err
		}
	}
}

// Open reads transaction id's descriptor from its segment's metadata.
// Errors: worm.ErrUnallocated (no such transaction yet), worm.ErrTrimmed
// (finished and collected), ErrNotTransaction, and transient Space errors
// once ctx ends.
func Open(ctx context.Context, sp worm.Space, id TxID) (Tx, error) {
	if id.Shared() {
		return openShared(ctx, sp, id)
	}
	var b backoff
	for {
		info, err := sp.Check(ctx, uint64(id))
		if err == nil && isReservation(info.Meta) {
			return openReserved(ctx, sp, id)
		}
		if err == nil {
			d, err := UnmarshalDescriptor(info.Meta)
			if err != nil {
				return Tx{}, fmt.Errorf("wormtx: %v: %w", id, err)
			}
			return Tx{ID: id, Descriptor: d}, nil
		}
		if !transient(ctx, err) {
			return Tx{}, fmt.Errorf("wormtx: %v: %w", id, err)
		}
		if werr := b.wait(ctx); werr != nil {
			return Tx{}, fmt.Errorf("wormtx: %v: %w", id, err)
		}
	}
}

// Settle is the capture+write idiom for a register anyone may fill: it
// returns the register's chosen value, writing fill first when it is
// empty. Concurrent callers with different fills agree on one value; a
// value that reached some acceptors is carried over. Errors: non-transient
// Space errors (worm.ErrTrimmed, worm.ErrUnallocated, ...), or the last
// error once ctx ends.
func Settle(ctx context.Context, sp worm.Space, addr worm.Addr, fill []byte) ([]byte, error) {
	v, _, err := settle(ctx, sp, addr, fill)
	return v, err
}

// WriteOwn writes value at ballot 0 into a register the caller is the only
// ballot-0 writer of (and always with the same value), resolving ambiguous
// outcomes by reading, and returns the chosen value. If a capture preempts
// it, the register is settled with fill (see Settle). Errors as Settle.
func WriteOwn(ctx context.Context, sp worm.Space, addr worm.Addr, value, fill []byte) ([]byte, error) {
	return writeOwn(ctx, sp, addr, value, fill)
}
