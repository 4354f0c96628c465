// Package spec is the specification of WormSpace: an atomic, in-memory
// implementation of worm.Space in which every operation is one indivisible
// step under one mutex.
//
// It is what the reference (section 4) calls "the atomic WOR": applications
// (apps/...) are tested against it, and the distributed implementation
// (worm/client) is checked to refine it, both by the conformance suite
// (worm/spacetest, which runs against spec and against real clusters) and
// by linearizability checking of recorded histories (worm/check).
//
// # Usage
//
// A Store is one shared address space; each Client handle is one client
// with its own identity (recorded by Alloc) and its own ballot node, so
// tokens are unique across clients:
//
//	st := spec.New(64)            // 64 data registers per segment
//	a, b := st.Client("a"), st.Client("b")
//	defer a.Close()
//	info, _ := a.Alloc(ctx, 7, []byte("owner metadata")) // info.Won
//	tok, _ := a.Capture(ctx, worm.Addr{Seg: 7, Off: 0})
//	_ = a.Write(ctx, worm.Addr{Seg: 7, Off: 0}, tok, []byte("x"))
//	v, _ := b.Read(ctx, worm.Addr{Seg: 7, Off: 0}) // "x"
//
// # Semantics in brief
//
// A register is empty or holds one value forever. Every register has a
// per-register capture ballot, and every segment a range capture ballot;
// the register's effective capture is the larger of the two. Capture and
// CaptureSegment issue a token higher than every token issued before (a
// global counter), so the newest capture always wins. A Write with token t
// stores its value only if t is exactly the register's effective capture:
// lower tokens were preempted, and higher ones were not issued for this
// register (ErrPreempted either way). Writing the value a register already
// holds succeeds whatever the token (idempotent retry); writing another
// value returns *worm.WrittenError carrying the stored one. WriteUnsafe is
// a write at ballot 0: it succeeds only on a register that was never
// captured. See worm.Space and the per-method comments for the error order.
//
// The spec is deliberately the strictest reasonable behaviour. Where a
// Paxos implementation may legitimately differ (for example Capture and
// CaptureSegment may return ErrPreempted under contention there, never
// here; a Write with a token issued for another register may succeed
// there), worm/spacetest only asserts what both promise.
//
// # Fault injection
//
// Applications must cope with ambiguous outcomes. Store.InjectFault makes
// the next n operations of a client fail with ErrUnknownOutcome after
// applying, with ErrUnknownOutcome without applying, or with
// ErrUnavailable without applying, so application tests can exercise those
// paths against the spec too.
//
// This package imports only the standard library and package worm. It must
// never import worm/client, worm/paxos or worm/wire (nor worm/check or
// worm/spacetest outside its tests).
package spec
