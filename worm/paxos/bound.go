package paxos

import (
	"bytes"
	"sync"

	"github.com/wormspace/wormspace/worm"
)

// Paxos allows one value per ballot per register. A WormSpace token is a
// ballot, and a caller may write with it many times, so the proposer
// remembers which value each (register, ballot) is bound to when the
// binding is not obvious to the caller:
//
//   - a capture that finished an existing value at its ballot binds that
//     value (the caller sees it as written: Written, *WrittenError);
//   - a write whose outcome is unknown binds its value (the value may still
//     be chosen at that ballot).
//
// A later write of a different value with the same token is answered
// locally: *WrittenError for a finished value, ErrInvalid for an unknown
// outcome (only the identical retry is allowed). Without this, two values
// could be accepted at one ballot on different acceptors and a later
// capture could choose the wrong one.
//
// The memory is bounded (oldest bindings are forgotten first); acceptors
// also refuse a second value at a ballot they already accepted, so what
// remains unguarded is a token handed to another process that reuses it for
// a register this proposer finished: the documented caller contract of
// worm.Space.Write (one value per register and token) covers that.
type bindings struct {
	mu    sync.Mutex
	m     map[bindKey]binding
	ring  []bindKey
	next  int
	limit int
}

type bindKey struct {
	addr worm.Addr
	b    Ballot
}

type binding struct {
	value    []byte
	finished bool // a capture finished it (chosen); else an unknown outcome
}

func (bs *bindings) bind(addr worm.Addr, b Ballot, v []byte, finished bool) {
	if b.IsZero() {
		return // ballot 0 has its single designated writer
	}
	bs.mu.Lock()
	defer bs.mu.Unlock()
	if bs.m == nil {
		if bs.limit == 0 {
			bs.limit = 1 << 16
		}
		bs.m = make(map[bindKey]binding)
	}
	k := bindKey{addr, b}
	if _, ok := bs.m[k]; !ok {
		if len(bs.ring) < bs.limit {
			bs.ring = append(bs.ring, k)
		} else {
			delete(bs.m, bs.ring[bs.next])
			bs.ring[bs.next] = k
			bs.next = (bs.next + 1) % bs.limit
		}
	}
	bs.m[k] = binding{value: v, finished: finished}
}

// has reports whether (addr, b) is bound to some value.
func (bs *bindings) has(addr worm.Addr, b Ballot) bool {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	_, ok := bs.m[bindKey{addr, b}]
	return ok
}

// unbind forgets (addr, b) (its ring slot is reused lazily).
func (bs *bindings) unbind(addr worm.Addr, b Ballot) {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	delete(bs.m, bindKey{addr, b})
}

// value returns the value (addr, b) is bound to (nil when none).
func (bs *bindings) value(addr worm.Addr, b Ballot) []byte {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	return bs.m[bindKey{addr, b}].value
}

// conflict returns the error for writing v to addr at b, or nil.
func (bs *bindings) conflict(addr worm.Addr, b Ballot, v []byte) error {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	bd, ok := bs.m[bindKey{addr, b}]
	if !ok || bytes.Equal(bd.value, v) {
		return nil
	}
	if bd.finished {
		return &worm.WrittenError{Addr: addr, Value: bytes.Clone(bd.value)}
	}
	return errBound
}

var errBound = worm.ErrInvalid
