package kv

import (
	"testing"
)

// Replicas parse every committed operation, whoever proposed it: any
// bytes parse to an operation or ErrBadOp, never a panic, and an accepted
// operation encodes back to one that parses the same.
func FuzzParseOp(f *testing.F) {
	for _, o := range []Op{{Kind: OpPut, Key: "k", Value: "v"}, {Kind: OpCAS, Key: "k", Old: "a", Value: "b"}, {Kind: OpDelete, Key: "k"}, {Kind: OpGet, Key: ""}} {
		f.Add(o.Encode())
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		kind, key, value, old, err := parseOp(b)
		if err != nil {
			return
		}
		o := Op{Kind: kind, Key: string(key), Value: string(value), Old: string(old)}
		k2, key2, value2, old2, err := parseOp(o.Encode())
		if err != nil || k2 != kind || string(key2) != o.Key || string(value2) != o.Value || string(old2) != o.Old {
			t.Fatalf("%x parses as %+v, its encoding as kind %d key %q value %q old %q (%v)", b, o, k2, key2, value2, old2, err)
		}
	})
}
