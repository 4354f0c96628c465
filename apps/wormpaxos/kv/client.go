package kv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/wormspace/wormspace/apps/wormpaxos"
)

// Backend is one replica as a client sees it: *wormpaxos.Replica in
// process, or a connection to Serve. Calls may fail with any error; the
// Client then tries the next backend with the same (client, sequence).
type Backend interface {
	Propose(ctx context.Context, cmd wormpaxos.Command) ([]byte, error)
	Read(ctx context.Context, query []byte) ([]byte, error)
}

// Client issues key-value operations with exactly-once retries. It has
// one operation outstanding at a time (calls are serialized); use several
// Clients for concurrency. It owns the backends it was given by Dial (Close
// closes them).
type Client struct {
	id       string
	backends []Backend
	// AttemptTimeout bounds one attempt on one backend before the client
	// moves to the next. Default 2s; zero or less: attempts are bounded
	// by the operation's context alone (no timer per attempt), for a
	// client with a single in-process backend, where a timed-out attempt
	// would only be retried at the same replica.
	AttemptTimeout time.Duration

	mu  sync.Mutex
	seq uint64
	cur int
}

// NewClient returns a client with identity id (empty: random) over
// backends, tried in order starting with the first.
func NewClient(id string, backends ...Backend) *Client {
	if id == "" {
		var b [8]byte
		_, _ = rand.Read(b[:])
		id = "kv-" + hex.EncodeToString(b[:])
	}
	return &Client{id: id, backends: backends, AttemptTimeout: 2 * time.Second}
}

// ID returns the client identity used for deduplication.
func (c *Client) ID() string { return c.id }

// Close closes backends that are connections (from Dial).
func (c *Client) Close() error {
	var errs []error
	for _, b := range c.backends {
		if cl, ok := b.(interface{ Close() error }); ok {
			errs = append(errs, cl.Close())
		}
	}
	return errors.Join(errs...)
}

// Put sets key to value.
func (c *Client) Put(ctx context.Context, key, value string) error {
	res, err := c.do(ctx, Op{Kind: OpPut, Key: key, Value: value})
	if err == nil {
		_, _, _, err = parseResult(res)
	}
	return err
}

// Get returns key's value and whether it is present (linearizable).
func (c *Client) Get(ctx context.Context, key string) (string, bool, error) {
	r, err := c.Do(ctx, Op{Kind: OpGet, Key: key})
	return r.Value, r.OK, err
}

// Delete removes key and reports whether it existed.
func (c *Client) Delete(ctx context.Context, key string) (bool, error) {
	r, err := c.Do(ctx, Op{Kind: OpDelete, Key: key})
	return r.OK, err
}

// CAS sets key to new iff it holds old, and reports whether it did.
func (c *Client) CAS(ctx context.Context, key, old, new string) (bool, error) {
	r, err := c.Do(ctx, Op{Kind: OpCAS, Key: key, Old: old, Value: new})
	return r.OK, err
}

// Do runs one operation, trying backends in turn until one answers or ctx
// ends. When ctx ends, a write may or may not have taken effect (at most
// once).
func (c *Client) Do(ctx context.Context, o Op) (Result, error) {
	res, err := c.do(ctx, o)
	if err != nil {
		return Result{}, err
	}
	return DecodeResult(res)
}

// do is Do returning the encoded result.
func (c *Client) do(ctx context.Context, o Op) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.backends) == 0 {
		return nil, errors.New("kv: client has no backends")
	}
	var cmd wormpaxos.Command
	if o.Kind != OpGet {
		c.seq++
		cmd = wormpaxos.Command{Client: c.id, Seq: c.seq, Op: o.Encode()}
	}
	var last error
	for attempt := 0; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("kv: %w (last error: %v)", err, last)
		}
		b := c.backends[c.cur]
		actx, cancel := ctx, context.CancelFunc(nil)
		if c.AttemptTimeout > 0 {
			actx, cancel = context.WithTimeout(ctx, c.AttemptTimeout)
		}
		var res []byte
		var err error
		if o.Kind == OpGet {
			res, err = b.Read(actx, o.Encode())
		} else {
			res, err = b.Propose(actx, cmd)
		}
		if cancel != nil {
			cancel()
		}
		if err == nil {
			return res, nil
		}
		if errors.Is(err, wormpaxos.ErrStale) || errors.Is(err, wormpaxos.ErrInvalid) {
			return nil, err
		}
		last = err
		c.cur = (c.cur + 1) % len(c.backends)
		if c.cur == 0 && attempt > 0 {
			t := time.NewTimer(10 * time.Millisecond)
			select {
			case <-t.C:
			case <-ctx.Done():
			}
			t.Stop()
		}
	}
}
