package kv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wormspace/wormspace/apps/wormpaxos"
	"github.com/wormspace/wormspace/worm/spec"
)

func TestStore(t *testing.T) {
	s := NewStore()
	steps := []struct {
		op   Op
		want Result
	}{
		{Op{Kind: OpGet, Key: "a"}, Result{}},
		{Op{Kind: OpPut, Key: "a", Value: "1"}, Result{}},
		{Op{Kind: OpPut, Key: "a", Value: "2"}, Result{OK: true, Value: "1"}},
		{Op{Kind: OpCAS, Key: "a", Old: "1", Value: "3"}, Result{Value: "2"}},
		{Op{Kind: OpCAS, Key: "a", Old: "2", Value: "3"}, Result{OK: true, Value: "3"}},
		{Op{Kind: OpCAS, Key: "b", Old: "", Value: "x"}, Result{}},
		{Op{Kind: OpGet, Key: "a"}, Result{OK: true, Value: "3"}},
		{Op{Kind: OpDelete, Key: "a"}, Result{OK: true, Value: "3"}},
		{Op{Kind: OpDelete, Key: "a"}, Result{}},
		{Op{Kind: OpPut, Key: "", Value: ""}, Result{}},
	}
	for i, st := range steps {
		enc := st.op.Encode()
		dec, err := DecodeOp(enc)
		if err != nil || dec != st.op {
			t.Fatalf("step %d: DecodeOp(Encode(%+v)) = %+v, %v", i, st.op, dec, err)
		}
		var raw []byte
		if st.op.Kind == OpGet {
			raw = s.Query(enc)
		} else {
			raw = s.Apply(enc)
		}
		got, err := DecodeResult(raw)
		if err != nil || got != st.want {
			t.Fatalf("step %d %+v: %+v, %v; want %+v", i, st.op, got, err, st.want)
		}
	}
	// Gets never change the store through Apply; garbage is a no-op.
	if got, _ := DecodeResult(s.Apply(Op{Kind: OpGet, Key: ""}.Encode())); got != (Result{}) {
		t.Fatalf("Apply(get) = %+v", got)
	}
	for _, bad := range [][]byte{nil, {9}, {OpPut, 5, 'a'}, append(Op{Kind: OpDelete, Key: "k"}.Encode(), 0)} {
		if _, err := DecodeOp(bad); !errors.Is(err, ErrBadOp) {
			t.Fatalf("DecodeOp(%v) = %v; want ErrBadOp", bad, err)
		}
		if got, _ := DecodeResult(s.Apply(bad)); got != (Result{}) {
			t.Fatalf("Apply(%v) = %+v; want zero result", bad, got)
		}
	}
	snap, err := s.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	r := NewStore()
	if err := r.Restore(snap); err != nil {
		t.Fatal(err)
	}
	snap2, _ := r.Snapshot()
	if string(snap) != string(snap2) || r.Len() != s.Len() || r.Len() != 1 {
		t.Fatalf("restore round trip: %d keys, %q vs %q", r.Len(), snap, snap2)
	}
	if err := r.Restore(snap[:len(snap)-1]); err == nil {
		t.Fatal("Restore accepted a truncated snapshot")
	}
}

// cluster starts n replicas over a spec store.
func cluster(t *testing.T, ctx context.Context, n int, tune ...func(*wormpaxos.Config)) []*wormpaxos.Replica {
	st := spec.New(16)
	var reps []*wormpaxos.Replica
	for i := range n {
		sp := st.Client(fmt.Sprintf("r%d", i))
		t.Cleanup(func() { sp.Close() })
		cfg := wormpaxos.Config{Policy: wormpaxos.Sticky, LogBase: 10, Replicas: n, Index: i,
			HoleTimeout: 20 * time.Millisecond, PollInterval: 5 * time.Millisecond}
		for _, f := range tune {
			f(&cfg)
		}
		r, err := wormpaxos.New(sp, NewStore(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		reps = append(reps, r)
	}
	return reps
}

type served struct {
	rep    *wormpaxos.Replica
	stop   context.CancelFunc
	done   sync.WaitGroup
	ln     net.Listener
	addr   string
	errors chan error
}

func serve(t *testing.T, ctx context.Context, rep *wormpaxos.Replica, ln net.Listener) *served {
	ctx, cancel := context.WithCancel(ctx)
	s := &served{rep: rep, stop: cancel, ln: ln, addr: ln.Addr().String(), errors: make(chan error, 2)}
	s.done.Go(func() { s.errors <- rep.Run(ctx) })
	s.done.Go(func() { s.errors <- Serve(ctx, rep, ln) })
	t.Cleanup(s.kill)
	return s
}

func (s *served) kill() {
	s.stop()
	s.done.Wait()
}

func testFront(t *testing.T, d Dialer, listen func() net.Listener) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	reps := cluster(t, ctx, 3)
	var srv []*served
	var addrs []string
	for _, r := range reps {
		s := serve(t, ctx, r, listen())
		srv = append(srv, s)
		addrs = append(addrs, s.addr)
	}
	c, err := Dial(ctx, d, addrs...)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.AttemptTimeout = 500 * time.Millisecond
	if err := c.Put(ctx, "k", "v1"); err != nil {
		t.Fatal(err)
	}
	if ok, err := c.CAS(ctx, "k", "v1", "v2"); err != nil || !ok {
		t.Fatalf("CAS = %v, %v", ok, err)
	}
	// The replica the client talks to dies (process and listener): the
	// client moves to the next address.
	srv[0].kill()
	if v, ok, err := c.Get(ctx, "k"); err != nil || !ok || v != "v2" {
		t.Fatalf("Get after failover = %q, %v, %v", v, ok, err)
	}
	if had, err := c.Delete(ctx, "k"); err != nil || !had {
		t.Fatalf("Delete = %v, %v", had, err)
	}
	// A retried (client, seq) sent to another replica returns the cached
	// result and is not applied again.
	b1, b2 := &remote{d: d, addr: addrs[1]}, &remote{d: d, addr: addrs[2]}
	defer b1.Close()
	defer b2.Close()
	cmd := wormpaxos.Command{Client: "raw", Seq: 1, Op: Op{Kind: OpPut, Key: "n", Value: "1"}.Encode()}
	r1, err := b1.Propose(ctx, cmd)
	if err != nil {
		t.Fatal(err)
	}
	cmd2 := wormpaxos.Command{Client: "raw", Seq: 2, Op: Op{Kind: OpPut, Key: "n", Value: "2"}.Encode()}
	if _, err := b1.Propose(ctx, cmd2); err != nil {
		t.Fatal(err)
	}
	r2, err := b2.Propose(ctx, cmd2)
	if err != nil {
		t.Fatal(err)
	}
	if res, _ := DecodeResult(r2); !res.OK || res.Value != "1" {
		t.Fatalf("retried put(n,2) = %+v; want the cached previous value 1", res)
	}
	if _, err := b2.Propose(ctx, cmd); !errors.Is(err, wormpaxos.ErrStale) {
		t.Fatalf("stale retry over the wire: %v; want ErrStale", err)
	}
	if res, _ := DecodeResult(r1); res.OK {
		t.Fatalf("first put(n) = %+v; want no previous value", res)
	}
	if v, _, _ := c.Get(ctx, "n"); v != "2" {
		t.Fatalf("n = %q; want 2", v)
	}
	for _, s := range srv {
		s.kill()
	}
	for _, s := range srv {
		close(s.errors)
		for err := range s.errors {
			if err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("%s: %v", s.addr, err)
			}
		}
	}
}

func TestServeTCP(t *testing.T) {
	testFront(t, &net.Dialer{}, func() net.Listener {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		return ln
	})
}

// pipeNet is an in-memory network of net.Pipe connections, standing in
// for a user-space stack: Serve and Dial need only net.Listener and
// net.Conn.
type pipeNet struct {
	mu sync.Mutex
	ls map[string]*pipeListener
}

type pipeListener struct {
	n      *pipeNet
	addr   string
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

type pipeAddr string

func (a pipeAddr) Network() string { return "pipe" }
func (a pipeAddr) String() string  { return string(a) }

func (n *pipeNet) listen() net.Listener {
	n.mu.Lock()
	defer n.mu.Unlock()
	l := &pipeListener{n: n, addr: fmt.Sprintf("pipe-%d", len(n.ls)), conns: make(chan net.Conn), closed: make(chan struct{})}
	n.ls[l.addr] = l
	return l
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr(l.addr) }

func (n *pipeNet) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	n.mu.Lock()
	l := n.ls[addr]
	n.mu.Unlock()
	if l == nil {
		return nil, fmt.Errorf("pipe: no listener at %s", addr)
	}
	a, b := net.Pipe()
	select {
	case l.conns <- b:
		return a, nil
	case <-l.closed:
		return nil, fmt.Errorf("pipe: %s: connection refused", addr)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func TestServePipe(t *testing.T) {
	n := &pipeNet{ls: map[string]*pipeListener{}}
	testFront(t, n, n.listen)
}

func TestFrameLimit(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go func() { _, _ = a.Write([]byte{0xff, 0xff, 0xff, 0xff}) }()
	if _, err := readFrame(b); err == nil {
		t.Fatal("readFrame accepted a frame above MaxFrame")
	}
}

// TestForwarder: replicas forward to the leader over the wire, so clients
// spread over all replicas keep one leader; when the leader's process
// dies, forwarding fails and another replica takes over.
func TestForwarder(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var lns []net.Listener
	addrs := map[string]string{}
	for i := range 3 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		addrs[fmt.Sprintf("r%d", i)] = ln.Addr().String()
	}
	d := &net.Dialer{}
	reps := cluster(t, ctx, 3, func(c *wormpaxos.Config) { c.Forward = Forwarder(d, addrs) })
	var srv []*served
	for i, r := range reps {
		srv = append(srv, serve(t, ctx, r, lns[i]))
	}
	put := func(tag string, ops int, live []int) {
		var wg sync.WaitGroup
		for _, i := range live {
			wg.Go(func() {
				c, err := Dial(ctx, d, srv[i].addr)
				if err != nil {
					t.Error(err)
					return
				}
				defer c.Close()
				for j := range ops {
					if err := c.Put(ctx, tag+strconv.Itoa(i), strconv.Itoa(j)); err != nil {
						t.Errorf("client at r%d: %v", i, err)
						return
					}
				}
			})
		}
		wg.Wait()
	}
	put("a", 40, []int{0, 1, 2})
	// Each segment the log used takes one lease; a lead that moved
	// instead of being forwarded to takes the current segment again. At
	// the start the replicas may race for the first lead (each client's
	// first put arrives before anyone leads): a little slack for that.
	var leases, applied uint64
	for _, r := range reps {
		st := r.Stats()
		leases += st.Leases
		applied = max(applied, st.Applied)
	}
	used := (applied + 15) / 16
	if leases > used+3 {
		t.Errorf("%d leases for %d log positions (%d segments of 16): the lead moved instead of being forwarded to", leases, applied, used)
	}
	leader := reps[2].Leader()
	if leader == "" || leader != reps[0].Leader() {
		t.Fatalf("replicas disagree on the leader: %q vs %q", reps[0].Leader(), leader)
	}
	dead := -1
	for i, r := range reps {
		if r.ID() == leader {
			dead = i
			srv[i].kill()
		}
	}
	var live []int
	for i := range reps {
		if i != dead {
			live = append(live, i)
		}
	}
	put("b", 20, live)
	c, err := Dial(ctx, d, srv[live[0]].addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, i := range live {
		if v, ok, err := c.Get(ctx, "b"+strconv.Itoa(i)); err != nil || !ok || v != "19" {
			t.Fatalf("b%d = %q, %v, %v", i, v, ok, err)
		}
	}
	t.Logf("leader %s, %d leases for %d segments before failover; new leader %s", leader, leases, used, reps[live[0]].Leader())
}

// BenchmarkStoreApply: one put of a present key as every replica applies
// it: the value copied out of the log entry and the encoded result (two
// allocations); the key is not copied again.
func BenchmarkStoreApply(b *testing.B) {
	s := NewStore()
	op := Op{Kind: OpPut, Key: "k1", Value: strings.Repeat("v", 16)}.Encode()
	s.Apply(op)
	b.ReportAllocs()
	for b.Loop() {
		s.Apply(op)
	}
}

func TestStoreApplyAllocs(t *testing.T) {
	s := NewStore()
	op := Op{Kind: OpPut, Key: "k1", Value: "v"}.Encode()
	s.Apply(op)
	if n := testing.AllocsPerRun(100, func() { s.Apply(op) }); n > 2 {
		t.Errorf("a put of a present key allocates %v times; want at most 2 (value, result)", n)
	}
	if r, _ := DecodeResult(s.Apply(Op{Kind: OpPut, Key: "k1", Value: "w"}.Encode())); !r.OK || r.Value != "v" {
		t.Errorf("put over v: %+v", r)
	}
	if r, _ := DecodeResult(s.Query(Op{Kind: OpGet, Key: "k1"}.Encode())); !r.OK || r.Value != "w" {
		t.Errorf("get: %+v", r)
	}
}
