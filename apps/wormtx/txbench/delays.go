package txbench

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/wormspace/wormspace/apps/wormtx"
	"github.com/wormspace/wormspace/apps/wormtx/internal/netdelay"
	"github.com/wormspace/wormspace/apps/wormtx/twopc"
	"github.com/wormspace/wormspace/worm"
)

// DelayCount is each protocol's fault-free critical path in one-way
// message delays: the median latency of sequential transactions over an
// in-memory Space (the specification) with every message (a Space call is two, a notification
// one, a network message one) taking OneWay, divided by OneWay.
type DelayCount struct {
	OneWay time.Duration `json:"one_way_ns"`
	// Coordinator: from Begin to the coordinator knowing the outcome.
	// Applied: to the last participant having applied it.
	WormTXCoordinator float64 `json:"wormtx_coordinator"`
	WormTXApplied     float64 `json:"wormtx_applied"`
	TwoPCCoordinator  float64 `json:"twopc_coordinator"`
	TwoPCApplied      float64 `json:"twopc_applied"`
}

// Delays counts the message delays of WormTX's direct mode and of 2PC with
// n participants, over txs sequential transactions each. newSpace returns
// an in-memory Space (spec.New(1024).Client) whose clients share one
// store and answer at once; each protocol gets its own. 2PC's decision log
// is a local disk (one of those clients, undelayed).
func Delays(ctx context.Context, newSpace func() func(id string) worm.Space, n int, oneWay time.Duration, txs int) (DelayCount, error) {
	dc := DelayCount{OneWay: oneWay}
	var err error
	if dc.WormTXCoordinator, dc.WormTXApplied, err = delaysOf(ctx, newSpace(), n, oneWay, txs, true); err != nil {
		return dc, fmt.Errorf("txbench: wormtx: %w", err)
	}
	if dc.TwoPCCoordinator, dc.TwoPCApplied, err = delaysOf(ctx, newSpace(), n, oneWay, txs, false); err != nil {
		return dc, fmt.Errorf("txbench: 2pc: %w", err)
	}
	return dc, nil
}

// memRes is an in-memory Recoverable resource that signals applies.
type memRes struct {
	mu       sync.Mutex
	prepared map[wormtx.TxID]wormtx.Descriptor
	done     map[wormtx.TxID]chan struct{}
}

func (r *memRes) ch(tx wormtx.TxID) chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.done[tx]
	if c == nil {
		c = make(chan struct{})
		r.done[tx] = c
	}
	return c
}

func (r *memRes) Prepare(_ context.Context, tx wormtx.TxID, d wormtx.Descriptor) (bool, error) {
	r.mu.Lock()
	r.prepared[tx] = d
	r.mu.Unlock()
	return true, nil
}

func (r *memRes) Apply(_ context.Context, tx wormtx.TxID, _ wormtx.Outcome) error {
	c := r.ch(tx)
	r.mu.Lock()
	delete(r.prepared, tx)
	r.mu.Unlock()
	select {
	case <-c:
	default:
		close(c)
	}
	return nil
}

func (r *memRes) Prepared(context.Context) ([]wormtx.Tx, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []wormtx.Tx
	for tx, d := range r.prepared {
		out = append(out, wormtx.Tx{ID: tx, Descriptor: d})
	}
	return out, nil
}

func delaysOf(ctx context.Context, client func(id string) worm.Space, n int, d time.Duration, txs int, wormTX bool) (coord, applied float64, err error) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	net := twopc.NewNetwork(d)
	names := make([]string, n)
	res := make([]*memRes, n)
	for i := range n {
		names[i] = "p" + strconv.Itoa(i)
		res[i] = &memRes{prepared: map[wormtx.TxID]wormtx.Descriptor{}, done: map[wormtx.TxID]chan struct{}{}}
	}
	var tm wormtx.TM
	if wormTX {
		wrap := func(id string) worm.Space { return netdelay.Wrap(client(id), d) }
		for i, name := range names {
			p := wormtx.NewParticipant(wrap(name), name, wormtx.ParticipantConfig{Policy: wormtx.Policy{RecoverAfter: time.Minute}, AbandonAfter: -1})
			defer p.Close()
			wg.Go(func() {
				_ = net.Serve(ctx, "wtx-"+name, func(m twopc.Message) {
					t := wormtx.Tx{ID: m.Tx, Descriptor: m.Desc}
					wg.Go(func() { _, _ = p.HandlePrepare(ctx, t, res[i]) })
				})
			})
		}
		co := wormtx.NewCoordinator(wrap("coord"), wormtx.CoordinatorConfig{FirstSeg: 1 << 40, Messenger: messenger{net},
			Policy: wormtx.Policy{RecoverAfter: time.Minute}, Shared: true})
		defer co.Close()
		tm = co
	} else {
		for i, name := range names {
			p := twopc.NewParticipant(net, res[i], twopc.ParticipantConfig{Name: name, QueryEvery: time.Minute})
			wg.Go(func() { _ = p.Run(ctx) })
		}
		// The decision log is a local disk: an undelayed Space.
		co := twopc.NewCoordinator(net, twopc.CoordinatorConfig{Name: "coord", Log: client("log"), LogSeg: 1, VoteTimeout: time.Minute})
		if err := co.EnsureLog(ctx, 1+txs/1024); err != nil {
			return 0, 0, err
		}
		wg.Go(func() { _ = co.Run(ctx) })
		tm = co
	}
	var cs, as []float64
	for k := range txs + 1 {
		t0 := time.Now()
		id, err := tm.Begin(ctx, names, nil)
		if err != nil {
			return 0, 0, err
		}
		o, err := tm.Await(ctx, id)
		if err != nil {
			return 0, 0, err
		}
		if o != wormtx.Commit {
			return 0, 0, fmt.Errorf("%v: %v", id, o)
		}
		c := time.Since(t0)
		for _, r := range res {
			select {
			case <-r.ch(id):
			case <-ctx.Done():
				return 0, 0, ctx.Err()
			}
		}
		if k > 0 { // the first one warms up (reserved segments, connections)
			cs = append(cs, float64(c)/float64(d))
			as = append(as, float64(time.Since(t0))/float64(d))
		}
	}
	slices.Sort(cs)
	slices.Sort(as)
	return cs[len(cs)/2], as[len(as)/2], nil
}
