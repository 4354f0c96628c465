package wormpaxos

import (
	"context"
	"strconv"
	"testing"

	"github.com/wormspace/wormspace/worm/spec"
)

// putStore is a minimal state machine with the kv store's shape (a map of
// present keys updated in place, a small result per command), so that the
// apply path can be measured in this package without importing kv.
type putStore struct{ m map[string]*[]byte }

func (s *putStore) Apply(op []byte) []byte {
	if p := s.m[string(op)]; p != nil {
		*p = append((*p)[:0], op...)
	} else {
		v := append([]byte(nil), op...)
		s.m[string(op)] = &v
	}
	return []byte{1}
}
func (s *putStore) Query([]byte) []byte       { return nil }
func (s *putStore) Snapshot() ([]byte, error) { return nil, nil }
func (s *putStore) Restore(b []byte) error    { return nil }
func newPutStore() *putStore                  { return &putStore{m: map[string]*[]byte{}} }
func benchCmds(n int) []*request {
	qs := make([]*request, n)
	for i := range qs {
		qs[i] = &request{cmd: Command{Client: "client-" + strconv.Itoa(i), Seq: 1, Op: []byte("key-" + strconv.Itoa(i) + "=value-16-bytes.")}}
	}
	return qs
}

// BenchmarkEncodeBatch: the proposer's encoding of a 64-command batch
// (one allocation per batch).
func BenchmarkEncodeBatch(b *testing.B) {
	qs := benchCmds(64)
	b.ReportAllocs()
	for b.Loop() {
		_ = encodeRequests(qs)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*64), "ns/cmd")
}

// BenchmarkApplyBatch: what every replica does per register of 64
// commands from known clients: decode, deduplicate, apply, record the
// session, answer waiters. Allocations per batch: the state machine's
// result per command and the progress channel; none in the replica's
// bookkeeping.
func BenchmarkApplyBatch(b *testing.B) {
	r, err := New(spec.New(1024).Client("r"), newPutStore(), Config{Policy: Sticky})
	if err != nil {
		b.Fatal(err)
	}
	qs := benchCmds(64)
	b.ReportAllocs()
	for b.Loop() {
		for _, q := range qs {
			q.cmd.Seq++
		}
		if _, err := r.apply(r.applied, encodeRequests(qs)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*64), "ns/cmd")
}

// BenchmarkProposeLocalPath: Propose's own bookkeeping around one command
// (queue, waiter, answer), with the batch applied by the benchmark as
// soon as a worker hands it over: no Space, no learner.
func BenchmarkProposeLocalPath(b *testing.B) {
	r, err := New(spec.New(1024).Client("r"), newPutStore(), Config{Policy: Sticky})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	op := []byte("k=v")
	b.ReportAllocs()
	seq := uint64(0)
	for b.Loop() {
		seq++
		q := &request{ctx: ctx, cmd: Command{Client: "c", Seq: seq, Op: op}, ch: make(chan outcome, 1)}
		r.mu.Lock()
		r.linkLocked(q)
		r.mu.Unlock()
		r.enqueue(q)
		batch := r.takeBatch(nil)
		live := r.live(batch)
		if _, err := r.apply(r.applied, encodeRequests(live)); err != nil {
			b.Fatal(err)
		}
		r.batchDone()
		if _, err := r.await(q); err != nil {
			b.Fatal(err)
		}
	}
}
