package wormlog

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/wormspace/wormspace/worm"
)

// backoff is a jittered exponential backoff for retrying transient
// failures (ErrUnavailable, ErrPreempted of a contended capture).
type backoff struct{ d time.Duration }

const (
	backoffMin = 200 * time.Microsecond
	backoffMax = 50 * time.Millisecond
)

// wait sleeps for the next delay or until ctx ends; it returns ctx's error
// wrapped in worm.ErrUnavailable then, with last (the failure that made the
// caller retry) for diagnosis.
func (b *backoff) wait(ctx context.Context, last error) error {
	if b.d == 0 {
		b.d = backoffMin
	} else if b.d < backoffMax {
		b.d *= 2
	}
	d := b.d/2 + rand.N(b.d/2+1)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctxErr(ctx, last)
	}
}

func ctxErr(ctx context.Context, last error) error {
	if last != nil {
		return fmt.Errorf("%w: %w (last failure: %v)", worm.ErrUnavailable, ctx.Err(), last)
	}
	return fmt.Errorf("%w: %w", worm.ErrUnavailable, ctx.Err())
}

// transient reports whether an operation that changes nothing (or is
// idempotent) should simply be retried.
func transient(err error) bool {
	return errors.Is(err, worm.ErrUnavailable) || errors.Is(err, worm.ErrUnknownOutcome) || errors.Is(err, worm.ErrPreempted)
}

// retry runs op until it returns an error that is not transient, or ctx
// ends. Only for operations that are idempotent or change nothing.
func retry[T any](ctx context.Context, op func() (T, error)) (T, error) {
	var b backoff
	for {
		v, err := op()
		if err == nil || !transient(err) {
			return v, err
		}
		if ctx.Err() != nil {
			return v, ctxErr(ctx, err)
		}
		if werr := b.wait(ctx, err); werr != nil {
			return v, werr
		}
	}
}
