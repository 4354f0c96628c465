// Package kv is a replicated key-value store: a wormpaxos.StateMachine
// (Store), a client with exactly-once retries across replicas (Client),
// and a small network front (Serve, Dial) so that command-line tools and
// remote programs can reach a replica over any net.Listener / net.Conn
// (the host network or a user-space stack such as gVisor netstack).
//
// # Usage
//
// Next to each wormpaxos.Replica, serve it:
//
//	rep, _ := wormpaxos.New(space, kv.NewStore(), cfg)
//	go rep.Run(ctx)
//	ln, _ := net.Listen("tcp", ":7070")
//	go kv.Serve(ctx, rep, ln)
//
// and from a client, dial any replicas; the client moves to the next
// address when one fails and retries with the same (client, sequence), so
// every command takes effect at most once:
//
//	c, _ := kv.Dial(ctx, &net.Dialer{}, "a:7070", "b:7070", "c:7070")
//	defer c.Close()
//	_ = c.Put(ctx, "k", "v")
//	v, ok, _ := c.Get(ctx, "k")  // linearizable read (read barrier)
//	swapped, _ := c.CAS(ctx, "k", "v", "w")
//
// In-process, a Client can sit directly on replicas (NewClient accepts
// anything with Propose and Read, such as *wormpaxos.Replica).
//
// # Operations
//
// Put(k, v) sets k; Delete(k) removes k and reports whether it existed;
// CAS(k, old, new) sets k to new iff k currently holds old; Get(k) is a
// query, answered by Replica.Read without a log entry.
//
// # Wire protocol
//
// Each frame is a 4-byte big-endian length and a payload. A request is
// kind ('P' propose, 'L' propose without forwarding, 'R' read), uvarint-prefixed client id, uvarint
// sequence, then the encoded operation. A response is a status byte (0 ok,
// 1 failed: try another replica, 2 stale sequence) and the encoded result
// or an error message. One request is outstanding per connection.
//
// This package imports the standard library and apps/wormpaxos only. It
// must never import worm/paxos, worm/wire, worm/server, worm/client or
// worm/storage.
package kv

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
)

// Op kinds.
const (
	OpPut    byte = 1
	OpDelete byte = 2
	OpCAS    byte = 3
	OpGet    byte = 4
)

// ErrBadOp: an operation that does not decode.
var ErrBadOp = errors.New("kv: malformed operation")

// Op is a decoded operation.
type Op struct {
	Kind  byte
	Key   string
	Value string // Put, CAS: the new value
	Old   string // CAS: the expected value
}

// Result is an operation's result. Put, Delete: OK reports that the key
// existed and Value is its previous value. CAS: OK reports the swap and
// Value is the value after the operation. Get: OK reports presence.
type Result struct {
	OK    bool
	Value string
}

func appendStr(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func readStr(b []byte) (string, []byte, error) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)-k) {
		return "", nil, ErrBadOp
	}
	return string(b[k : k+int(n)]), b[k+int(n):], nil
}

// Encode encodes o.
func (o Op) Encode() []byte {
	b := []byte{o.Kind}
	b = appendStr(b, o.Key)
	switch o.Kind {
	case OpPut:
		b = appendStr(b, o.Value)
	case OpCAS:
		b = appendStr(b, o.Old)
		b = appendStr(b, o.Value)
	}
	return b
}

// DecodeOp decodes an encoded Op.
func DecodeOp(b []byte) (Op, error) {
	if len(b) == 0 {
		return Op{}, ErrBadOp
	}
	o := Op{Kind: b[0]}
	var err error
	if o.Key, b, err = readStr(b[1:]); err != nil {
		return Op{}, err
	}
	switch o.Kind {
	case OpPut:
		o.Value, b, err = readStr(b)
	case OpCAS:
		if o.Old, b, err = readStr(b); err == nil {
			o.Value, b, err = readStr(b)
		}
	case OpDelete, OpGet:
	default:
		return Op{}, fmt.Errorf("%w: kind %d", ErrBadOp, o.Kind)
	}
	if err == nil && len(b) != 0 {
		err = fmt.Errorf("%w: trailing bytes", ErrBadOp)
	}
	return o, err
}

// Encode encodes r.
func (r Result) Encode() []byte {
	b := []byte{0}
	if r.OK {
		b[0] = 1
	}
	return appendStr(b, r.Value)
}

// DecodeResult decodes an encoded Result.
func DecodeResult(b []byte) (Result, error) {
	ok, v, _, err := parseResult(b)
	if err != nil {
		return Result{}, err
	}
	return Result{OK: ok, Value: string(v)}, nil
}

// parseResult checks and splits an encoded Result without copying.
func parseResult(b []byte) (ok bool, v, rest []byte, err error) {
	if len(b) == 0 || b[0] > 1 {
		return false, nil, nil, ErrBadOp
	}
	v, rest, err = cutBytes(b[1:])
	if err != nil || len(rest) != 0 {
		return false, nil, nil, fmt.Errorf("%w: result", ErrBadOp)
	}
	return b[0] == 1, v, rest, nil
}

// Store is the key-value state machine. It implements
// wormpaxos.StateMachine; like every state machine it is not safe for
// concurrent use (the Replica serializes calls).
type Store struct {
	// Values are held by pointer so that Apply updates a present key
	// without allocating its key string again.
	m map[string]*string
}

// NewStore returns an empty Store.
func NewStore() *Store { return &Store{m: map[string]*string{}} }

// Exec applies o and returns its result; Get does not modify the store.
func (s *Store) Exec(o Op) Result {
	ok, v := s.exec(o.Kind, []byte(o.Key), o.Value, o.Old)
	return Result{OK: ok, Value: v}
}

// exec is Exec on an operation's parts; key is looked up without
// allocation, and stored (copied) only when new.
func (s *Store) exec(kind byte, key []byte, value, old string) (bool, string) {
	p := s.m[string(key)]
	var prev string
	if p != nil {
		prev = *p
	}
	switch kind {
	case OpPut:
		if p == nil {
			p = new(string) // only here: value itself does not escape
			*p = value
			s.m[string(key)] = p
			return false, prev
		} else {
			*p = value
		}
		return p != nil, prev
	case OpDelete:
		if p != nil {
			delete(s.m, string(key))
		}
		return p != nil, prev
	case OpCAS:
		if p != nil && prev == old {
			*p = value
			return true, value
		}
		return false, prev
	case OpGet:
		return p != nil, prev
	}
	return false, ""
}

// parseOp splits an encoded operation without copying: key, value and old
// alias b.
func parseOp(b []byte) (kind byte, key, value, old []byte, err error) {
	if len(b) == 0 {
		return 0, nil, nil, nil, ErrBadOp
	}
	kind = b[0]
	if key, b, err = cutBytes(b[1:]); err != nil {
		return 0, nil, nil, nil, err
	}
	switch kind {
	case OpPut:
		value, b, err = cutBytes(b)
	case OpCAS:
		if old, b, err = cutBytes(b); err == nil {
			value, b, err = cutBytes(b)
		}
	case OpDelete, OpGet:
	default:
		return 0, nil, nil, nil, fmt.Errorf("%w: kind %d", ErrBadOp, kind)
	}
	if err == nil && len(b) != 0 {
		err = fmt.Errorf("%w: trailing bytes", ErrBadOp)
	}
	return kind, key, value, old, err
}

func cutBytes(b []byte) ([]byte, []byte, error) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)-k) {
		return nil, nil, ErrBadOp
	}
	return b[k : k+int(n)], b[k+int(n):], nil
}

// encodeResult is Result{ok, v}.Encode in one exactly sized allocation.
func encodeResult(ok bool, v string) []byte {
	b := make([]byte, 1, 1+binary.MaxVarintLen64+len(v))
	if ok {
		b[0] = 1
	}
	return appendStr(b, v)
}

// Apply implements wormpaxos.StateMachine. A malformed op yields the zero
// Result (deterministically on every replica). A put allocates its value
// (and its key when new) and the result.
func (s *Store) Apply(op []byte) []byte {
	kind, key, value, old, err := parseOp(op)
	if err != nil || kind == OpGet {
		return encodeResult(false, "")
	}
	var v, o string
	if kind == OpPut || kind == OpCAS {
		v = string(value)
	}
	if kind == OpCAS {
		o = string(old)
	}
	ok, r := s.exec(kind, key, v, o)
	return encodeResult(ok, r)
}

// Query implements wormpaxos.StateMachine: it answers Get.
func (s *Store) Query(q []byte) []byte {
	kind, key, _, _, err := parseOp(q)
	if err != nil || kind != OpGet {
		return encodeResult(false, "")
	}
	ok, r := s.exec(kind, key, "", "")
	return encodeResult(ok, r)
}

// Snapshot implements wormpaxos.StateMachine: sorted keys, so equal
// stores have equal snapshots.
func (s *Store) Snapshot() ([]byte, error) {
	keys := slices.Sorted(maps.Keys(s.m))
	b := binary.AppendUvarint(nil, uint64(len(keys)))
	for _, k := range keys {
		b = appendStr(b, k)
		b = appendStr(b, *s.m[k])
	}
	return b, nil
}

// Restore implements wormpaxos.StateMachine.
func (s *Store) Restore(b []byte) error {
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)) {
		return fmt.Errorf("%w: snapshot", ErrBadOp)
	}
	b = b[k:]
	m := make(map[string]*string, n)
	for range n {
		var key, v string
		var err error
		if key, b, err = readStr(b); err != nil {
			return err
		}
		if v, b, err = readStr(b); err != nil {
			return err
		}
		m[key] = &v
	}
	if len(b) != 0 {
		return fmt.Errorf("%w: snapshot trailing bytes", ErrBadOp)
	}
	s.m = m
	return nil
}

// Len returns the number of keys.
func (s *Store) Len() int { return len(s.m) }
