// Package netdelay wraps a worm.Space so that every operation costs two
// one-way message delays (request to the wormservers, reply back) and every
// Listen notification one (wormservers to the listener, counted from when
// the write reached them). Over it, latency divided by the one-way delay
// counts message delays on the critical path, comparable with the 2PC
// baseline's Network using the same delay.
//
// It imports only the standard library and package worm.
package netdelay

import (
	"context"
	"time"

	"github.com/wormspace/wormspace/worm"
)

// Space is a delayed worm.Space.
type Space struct {
	worm.Space
	d time.Duration
}

// Wrap returns sp with one-way delay d.
func Wrap(sp worm.Space, d time.Duration) *Space { return &Space{Space: sp, d: d} }

func (s *Space) hop(ctx context.Context) {
	t := time.NewTimer(s.d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// Capture implements worm.Space.
func (s *Space) Capture(ctx context.Context, a worm.Addr) (worm.Token, error) {
	s.hop(ctx)
	defer s.hop(ctx)
	return s.Space.Capture(ctx, a)
}

// Write implements worm.Space.
func (s *Space) Write(ctx context.Context, a worm.Addr, t worm.Token, v []byte) error {
	s.hop(ctx)
	defer s.hop(ctx)
	return s.Space.Write(ctx, a, t, v)
}

// WriteUnsafe implements worm.Space.
func (s *Space) WriteUnsafe(ctx context.Context, a worm.Addr, v []byte) error {
	s.hop(ctx)
	defer s.hop(ctx)
	return s.Space.WriteUnsafe(ctx, a, v)
}

// Read implements worm.Space.
func (s *Space) Read(ctx context.Context, a worm.Addr) ([]byte, error) {
	s.hop(ctx)
	defer s.hop(ctx)
	return s.Space.Read(ctx, a)
}

// Alloc implements worm.Space.
func (s *Space) Alloc(ctx context.Context, seg uint64, meta []byte) (worm.SegmentInfo, error) {
	s.hop(ctx)
	defer s.hop(ctx)
	return s.Space.Alloc(ctx, seg, meta)
}

// Check implements worm.Space.
func (s *Space) Check(ctx context.Context, seg uint64) (worm.SegmentInfo, error) {
	s.hop(ctx)
	defer s.hop(ctx)
	return s.Space.Check(ctx, seg)
}

// CaptureSegment implements worm.Space.
func (s *Space) CaptureSegment(ctx context.Context, seg uint64) (worm.SegmentCapture, error) {
	s.hop(ctx)
	defer s.hop(ctx)
	return s.Space.CaptureSegment(ctx, seg)
}

// WriteBatch implements worm.Space.
func (s *Space) WriteBatch(ctx context.Context, seg uint64, off uint32, t worm.Token, v [][]byte) error {
	s.hop(ctx)
	defer s.hop(ctx)
	return s.Space.WriteBatch(ctx, seg, off, t, v)
}

// Trim implements worm.Space.
func (s *Space) Trim(ctx context.Context, seg uint64) error {
	s.hop(ctx)
	defer s.hop(ctx)
	return s.Space.Trim(ctx, seg)
}

// Listen implements worm.Space: subscribing costs a round trip; each
// notification arrives one delay after the write reached the wormservers
// (the inner space reports it when the write is applied, which here is
// one delay after the writer sent it).
func (s *Space) Listen(ctx context.Context, seg uint64) (<-chan worm.Notification, error) {
	s.hop(ctx)
	in, err := s.Space.Listen(ctx, seg)
	if err != nil {
		s.hop(ctx)
		return nil, err
	}
	out := make(chan worm.Notification, 256)
	type timed struct {
		n  worm.Notification
		at time.Time
	}
	q := make(chan timed, 256)
	// Stamp notifications from the moment the subscription took effect,
	// while the reply to Listen is still on its way back.
	defer s.hop(ctx)
	go func() {
		defer close(q)
		for n := range in {
			select {
			case q <- timed{n, time.Now().Add(s.d)}:
			case <-ctx.Done():
				return
			}
		}
	}()
	go func() {
		defer close(out)
		for t := range q {
			if w := time.Until(t.at); w > 0 {
				time.Sleep(w)
			}
			select {
			case out <- t.n:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}
