package server

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/paxos"
)

// gateLog is a Log whose Sync blocks until the test opens the gate.
type gateLog struct {
	mu      sync.Mutex
	recs    []paxos.Record
	durable uint64
	syncs   int
	gate    chan struct{}
	full    bool
	syncErr error
	entered chan struct{}
}

func newGateLog() *gateLog {
	return &gateLog{gate: make(chan struct{}), entered: make(chan struct{}, 100)}
}

func (l *gateLog) Reserve(n int) error {
	if l.full {
		return errors.New("no space left on device")
	}
	return nil
}

func (l *gateLog) Append(recs []paxos.Record) (uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recs = append(l.recs, recs...)
	return uint64(len(l.recs)), nil
}

// Sync makes durable what was appended when it started (a real log swaps
// its buffer at that moment); appends during the sync wait for the next.
func (l *gateLog) Sync() (uint64, error) {
	l.mu.Lock()
	n := uint64(len(l.recs))
	l.mu.Unlock()
	l.entered <- struct{}{}
	<-l.gate
	l.mu.Lock()
	defer l.mu.Unlock()
	l.syncs++
	if l.syncErr != nil {
		return 0, l.syncErr
	}
	l.durable = n
	return l.durable, nil
}

// replies is a Replier that records what it is given, in order, with
// the tags.
type replies struct {
	mu        sync.Mutex
	got       []paxos.Response
	tags      []uint64
	abandoned []uint64
	ch        chan struct{}
}

func newReplies() *replies { return &replies{ch: make(chan struct{}, 100)} }

func (r *replies) Reply(tag uint64, resp *paxos.Response) {
	r.mu.Lock()
	r.got = append(r.got, *resp.Clone())
	r.tags = append(r.tags, tag)
	r.mu.Unlock()
	r.ch <- struct{}{}
}

func (r *replies) Abandon(tag uint64) {
	r.mu.Lock()
	r.abandoned = append(r.abandoned, tag)
	r.mu.Unlock()
}

func (r *replies) n() int { r.mu.Lock(); defer r.mu.Unlock(); return len(r.got) }

func (r *replies) wait(t *testing.T, n int) {
	t.Helper()
	for r.n() < n {
		select {
		case <-r.ch:
		case <-time.After(5 * time.Second):
			t.Fatalf("got %d replies, want %d", r.n(), n)
		}
	}
}

// waitSync waits for a Sync to start (bounded: a test whose request never
// reaches the log fails instead of hanging).
func waitSync(t *testing.T, entered <-chan struct{}) {
	t.Helper()
	select {
	case <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("no sync started")
	}
}

func prepare(off uint32, round uint64) *paxos.Request {
	return &paxos.Request{Kind: paxos.KindPrepare, Seg: 1, Off: off, Ballot: worm.Ballot{Round: round, Node: 1}}
}

// No reply leaves before the sync covering its records; requests that
// arrive while a sync runs share the next one.
func TestRepliesWaitForDurability(t *testing.T) {
	log := newGateLog()
	e := NewEngine(paxos.NewAcceptor(8), log, nil, nil)
	defer func() { close(log.gate); e.Close() }()
	r := newReplies()
	e.Handle(prepare(0, 1), r, 0)
	waitSync(t, log.entered) // the first sync is running
	for i := uint32(1); i <= 5; i++ {
		e.Handle(prepare(i, 1), r, 0)
	}
	time.Sleep(20 * time.Millisecond)
	if r.n() != 0 {
		t.Fatalf("%d replies left before any sync finished", r.n())
	}
	log.gate <- struct{}{} // finish sync 1: covers request 0 only
	r.wait(t, 1)
	waitSync(t, log.entered)
	log.gate <- struct{}{} // sync 2 covers the five that waited
	r.wait(t, 6)
	if log.syncs != 2 {
		t.Fatalf("%d syncs for 6 requests, want 2 (group commit)", log.syncs)
	}
	for _, g := range r.got {
		if g.Status != paxos.StatusOK {
			t.Fatalf("reply %+v", g)
		}
	}
}

// A read that changes nothing still waits for earlier changes it may
// reveal.
func TestReadWaitsForEarlierChanges(t *testing.T) {
	log := newGateLog()
	e := NewEngine(paxos.NewAcceptor(8), log, nil, nil)
	defer func() { close(log.gate); e.Close() }()
	r := newReplies()
	e.Handle(&paxos.Request{Kind: paxos.KindAccept, Seg: 1, Off: 0, Values: [][]byte{[]byte("v")}}, r, 0)
	waitSync(t, log.entered)
	e.Handle(&paxos.Request{Kind: paxos.KindRead, Seg: 1, Off: 0}, r, 0)
	time.Sleep(20 * time.Millisecond)
	if r.n() != 0 {
		t.Fatal("a read revealed a value before it was durable")
	}
	log.gate <- struct{}{}
	r.wait(t, 2)
	if string(r.got[1].Reg.Value) != "v" {
		t.Fatalf("read %+v", r.got[1])
	}
}

// A full disk is answered with an error and leaves the state unchanged.
func TestFullDiskChangesNothing(t *testing.T) {
	log := newGateLog()
	log.full = true
	acc := paxos.NewAcceptor(8)
	e := NewEngine(acc, log, nil, nil)
	defer func() { close(log.gate); e.Close() }()
	r := newReplies()
	e.Handle(&paxos.Request{Kind: paxos.KindAccept, Seg: 1, Off: 0, Values: [][]byte{[]byte("v")}}, r, 0)
	r.wait(t, 1)
	if r.got[0].Status != paxos.StatusError {
		t.Fatalf("accept on a full disk: %+v", r.got[0])
	}
	if live, _ := acc.Segments(); live != 0 || len(log.recs) != 0 {
		t.Fatalf("state changed on a full disk: %d segments, %d records", live, len(log.recs))
	}
	// Space comes back: the same request succeeds.
	log.full = false
	e.Handle(&paxos.Request{Kind: paxos.KindAccept, Seg: 1, Off: 0, Values: [][]byte{[]byte("v")}}, r, 0)
	waitSync(t, log.entered)
	log.gate <- struct{}{}
	r.wait(t, 2)
	if r.got[1].Status != paxos.StatusOK {
		t.Fatalf("accept after space returned: %+v", r.got[1])
	}
}

// After a failed sync nothing waiting is acknowledged, and later requests
// are refused.
func TestSyncFailureStopsAcknowledging(t *testing.T) {
	log := newGateLog()
	log.syncErr = errors.New("input/output error")
	e := NewEngine(paxos.NewAcceptor(8), log, nil, nil)
	defer func() { close(log.gate); e.Close() }()
	r := newReplies()
	e.Handle(prepare(0, 1), r, 0)
	waitSync(t, log.entered)
	log.gate <- struct{}{}
	time.Sleep(20 * time.Millisecond)
	if r.n() != 0 {
		t.Fatal("a reply was acknowledged although its sync failed")
	}
	e.Handle(prepare(1, 1), r, 0)
	r.wait(t, 1)
	if r.got[0].Status != paxos.StatusError {
		t.Fatalf("request after sync failure: %+v", r.got[0])
	}
}

// notes records replies and notifications in the order they happen.
type notes struct {
	mu     sync.Mutex
	events []string
}

func (n *notes) Reply(tag uint64, resp *paxos.Response) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.events = append(n.events, fmt.Sprintf("reply %d %v", tag, resp.Status))
}

func (n *notes) Abandon(tag uint64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.events = append(n.events, fmt.Sprintf("abandon %d", tag))
}

func (n *notes) onWrite(seg uint64, off uint32, b paxos.Ballot, values [][]byte) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.events = append(n.events, fmt.Sprintf("write %d %d+%d %v %q", seg, off, len(values), b, values))
}

func (n *notes) get() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]string(nil), n.events...)
}

// Notifications are emitted only once the write is durable, after the
// accept's reply, one per run of registers that took the value.
func TestNotificationsFollowDurability(t *testing.T) {
	log := newGateLog()
	n := &notes{}
	e := NewEngine(paxos.NewAcceptor(16), log, nil, n.onWrite)
	defer func() { close(log.gate); e.Close() }()
	// Register 2 is promised higher: the batch 0..4 splits into 0+2, 3+2.
	e.Handle(&paxos.Request{Kind: paxos.KindPrepare, Seg: 1, Off: 2, Ballot: worm.Ballot{Round: 9, Node: 1}}, n, 1)
	waitSync(t, log.entered)
	log.gate <- struct{}{}
	v := []byte("v")
	e.Handle(&paxos.Request{Kind: paxos.KindAccept, Seg: 1, Off: 0, Values: [][]byte{v, v, v, v, v}}, n, 2)
	waitSync(t, log.entered)
	time.Sleep(20 * time.Millisecond)
	if got := n.get(); len(got) != 1 {
		t.Fatalf("before the sync: %v", got)
	}
	log.gate <- struct{}{}
	want := []string{"reply 1 ok", "reply 2 ok", `write 1 0+2 0.0 ["v" "v"]`, `write 1 3+2 0.0 ["v" "v"]`}
	deadline := time.Now().Add(5 * time.Second)
	for len(n.get()) < len(want) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if got := n.get(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("events %v, want %v", got, want)
	}
}

// Decide is never answered, whatever the engine's state; a failed sync
// abandons every waiting reply by tag.
func TestDecideUnansweredAndAbandon(t *testing.T) {
	log := newGateLog()
	n := &notes{}
	e := NewEngine(paxos.NewAcceptor(16), log, nil, nil)
	defer func() { close(log.gate); e.Close() }()
	e.Handle(&paxos.Request{Kind: paxos.KindDecide, Seg: 1, Off: 0, Count: 1, Ballot: worm.Ballot{Round: 1, Node: 1}}, n, 1)
	e.Handle(prepare(0, 1), n, 2)
	waitSync(t, log.entered)
	e.Handle(prepare(1, 1), n, 3)
	log.syncErr = errors.New("EIO")
	log.gate <- struct{}{}
	deadline := time.Now().Add(5 * time.Second)
	for len(n.get()) < 2 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	e.Handle(&paxos.Request{Kind: paxos.KindDecide, Seg: 1, Off: 0, Count: 1, Ballot: worm.Ballot{Round: 1, Node: 1}}, n, 4)
	e.Handle(prepare(2, 1), n, 5)
	want := []string{"abandon 2", "abandon 3", "reply 5 error"}
	if got := n.get(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("events %v, want %v", got, want)
	}
	if e.Failed() == nil || e.Stats().Failed == "" {
		t.Fatal("engine does not report its failure")
	}
}

// Close flushes what waits, then refuses.
func TestCloseFlushesWaiting(t *testing.T) {
	log := newMemLog()
	log.delay = 5 * time.Millisecond
	e := NewEngine(paxos.NewAcceptor(16), log, nil, nil)
	r := newReplies()
	for i := uint32(0); i < 5; i++ {
		e.Handle(prepare(i, 1), r, uint64(i))
	}
	e.Close()
	if r.n() != 5 {
		t.Fatalf("%d replies after Close, want 5", r.n())
	}
	e.Handle(prepare(9, 1), r, 9)
	if r.n() != 6 || r.got[5].Status != paxos.StatusError {
		t.Fatalf("request after Close: %+v", r.got[len(r.got)-1])
	}
	e.Close() // idempotent
}

// pump lets syncs through the gate until r holds n replies (however the
// requests were grouped into syncs).
func pump(t *testing.T, log *gateLog, r *replies, n int) {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for r.n() < n {
		select {
		case <-log.entered:
			log.gate <- struct{}{}
		case <-r.ch:
		case <-timeout:
			t.Fatalf("got %d replies, want %d", r.n(), n)
		}
	}
}

// A reply that waits owns its bytes: later requests reuse the acceptor's
// scratch space without changing it.
func TestWaitingReplyOwnsItsValues(t *testing.T) {
	log := newGateLog()
	e := NewEngine(paxos.NewAcceptor(16), log, nil, nil)
	defer func() { close(log.gate); e.Close() }()
	r := newReplies()
	e.Handle(&paxos.Request{Kind: paxos.KindAccept, Seg: 1, Off: 0, Values: [][]byte{[]byte("one"), []byte("two"), {}}}, r, 0)
	e.Handle(&paxos.Request{Kind: paxos.KindAccept, Seg: 2, Off: 0, Values: [][]byte{[]byte("XXX")}}, r, 1)
	pump(t, log, r, 2)
	e.Handle(&paxos.Request{Kind: paxos.KindPrepareSeg, Seg: 1, Ballot: worm.Ballot{Round: 2, Node: 1}}, r, 2)
	e.Handle(&paxos.Request{Kind: paxos.KindPrepareSeg, Seg: 2, Ballot: worm.Ballot{Round: 2, Node: 1}}, r, 3)
	pump(t, log, r, 4)
	g := r.got[2]
	if len(g.Regs) != 3 || string(g.Regs[0].Value) != "one" || string(g.Regs[1].Value) != "two" || len(g.Regs[2].Value) != 0 {
		t.Fatalf("segment 1 capture: %+v", g.Regs)
	}
	if h := r.got[3]; len(h.Regs) != 1 || string(h.Regs[0].Value) != "XXX" {
		t.Fatalf("segment 2 capture: %+v", h.Regs)
	}
}

type nopReplier struct{}

func (nopReplier) Reply(uint64, *paxos.Response) {}
func (nopReplier) Abandon(uint64)                {}

// The engine's request path does not allocate, whether a reply goes out
// at once (a read) or waits for a sync (a prepare).
func TestHandleDoesNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop items")
	}
	e := NewEngine(paxos.NewAcceptor(16), &nopLog{}, nil, nil)
	defer e.Close()
	var to Replier = nopReplier{}
	e.Handle(&paxos.Request{Kind: paxos.KindAccept, Seg: 1, Off: 0, Values: [][]byte{make([]byte, 64)}}, to, 0)
	for e.Stats().Waiting > 0 {
		time.Sleep(time.Millisecond)
	}
	read := &paxos.Request{Kind: paxos.KindRead, Seg: 1, Off: 0}
	if a := testing.AllocsPerRun(1000, func() { e.Handle(read, to, 0) }); a > 0 {
		t.Errorf("read: %v allocations per request", a)
	}
	prep := &paxos.Request{Kind: paxos.KindPrepare, Seg: 1, Off: 0, Ballot: worm.Ballot{Round: 2, Node: 1}}
	// In steady state the replies in flight are bounded (the server caps
	// them per connection), so released buffers come back to the pool:
	// model that by letting each reply leave before the next request.
	if a := testing.AllocsPerRun(2000, func() {
		prep.Ballot.Round++
		e.Handle(prep, to, 0)
		for e.Stats().Waiting > 0 {
			runtime.Gosched()
		}
	}); a > 0.05 {
		t.Errorf("prepare: %v allocations per request", a)
	}
}

// copyFrom makes a deep copy that survives reuse of the source, keeps nil
// and empty values apart, and reuses its storage.
func TestRespBufCopy(t *testing.T) {
	src := &paxos.Response{
		Kind: paxos.KindPrepareSeg, Status: paxos.StatusOK, Text: "t",
		Reg:       paxos.RegState{Off: 1, HasValue: true, Value: []byte("reg")},
		Regs:      []paxos.RegState{{Off: 2, Value: []byte("a")}, {Off: 3, Value: []byte{}}, {Off: 4}},
		Contended: []uint32{7, 8},
		Results:   []paxos.RegResult{{Status: paxos.StatusDecided, Value: []byte("dec")}, {Status: paxos.StatusOK}},
	}
	var b respBuf
	b.copyFrom(src)
	for _, v := range [][]byte{src.Reg.Value, src.Regs[0].Value, src.Results[0].Value} {
		for i := range v {
			v[i] = 'X'
		}
	}
	src.Contended[0] = 99
	got := &b.resp
	switch {
	case string(got.Reg.Value) != "reg", string(got.Regs[0].Value) != "a", string(got.Results[0].Value) != "dec":
		t.Fatalf("copy aliases the source: %+v", got)
	case got.Regs[1].Value == nil || len(got.Regs[1].Value) != 0 || got.Regs[2].Value != nil:
		t.Fatalf("nil and empty values not kept apart: %#v", got.Regs)
	case got.Contended[0] != 7 || got.Text != "t" || got.Results[1].Value != nil:
		t.Fatalf("copy %+v", got)
	}
	if a := testing.AllocsPerRun(100, func() { b.copyFrom(src) }); a != 0 {
		t.Fatalf("copyFrom into a used buffer allocates %v times", a)
	}
}

// typedStatsLog has a Stats method with a concrete result, like
// worm/storage's Log.
type typedStatsLog struct{ gateLog }

type typedStats struct{ Files int }

func (*typedStatsLog) Stats() typedStats { return typedStats{Files: 3} }

func TestLogStats(t *testing.T) {
	for _, tc := range []struct {
		log  Log
		want string
	}{
		{newMemLog(), "map[durable:0 records:0]"},
		{&typedStatsLog{}, "{3}"},
		{newGateLog(), "<nil>"},
	} {
		e := NewEngine(paxos.NewAcceptor(8), tc.log, nil, nil)
		if got := fmt.Sprint(e.LogStats()); got != tc.want {
			t.Errorf("%T: LogStats = %s, want %s", tc.log, got, tc.want)
		}
		e.Close()
	}
}

// cheapLog is a Log whose Sync never waits for a device; it counts syncs
// and checks that each reply's records were synced before it left.
type cheapLog struct {
	mu      sync.Mutex
	end     uint64
	durable uint64
	syncs   int
}

func (l *cheapLog) Reserve(int) error { return nil }
func (l *cheapLog) Append(recs []paxos.Record) (uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.end += uint64(len(recs))
	return l.end, nil
}
func (l *cheapLog) Sync() (uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.durable = l.end
	l.syncs++
	return l.durable, nil
}
func (l *cheapLog) SyncIsCheap() bool { return true }

// With a CheapSyncer log, requests lead syncs on their own goroutines:
// from many goroutines at once every request is answered exactly once,
// and only after a sync covered its records.
func TestInlineSyncsAnswerEveryRequestOnce(t *testing.T) {
	log := &cheapLog{}
	e := NewEngine(paxos.NewAcceptor(1024), log, nil, nil)
	defer e.Close()
	r := newCountingReplier(log)
	const workers, each = 8, 200
	acceptFromMany(e, log, r, workers, each)
	if got := r.total(); got != workers*each {
		t.Fatalf("%d replies for %d requests", got, workers*each)
	}
	if r.early.Load() != 0 {
		t.Fatalf("%d replies left before their records were synced", r.early.Load())
	}
	if d := r.dups.Load(); d != 0 {
		t.Fatalf("%d requests answered twice", d)
	}
	log.mu.Lock()
	t.Logf("%d requests, %d syncs", workers*each, log.syncs)
	log.mu.Unlock()
}

// acceptFromMany has workers goroutines hand e each accepts of distinct
// registers, noting for each the log's end before it (r.before), then
// waits up to 5 s for the replies.
func acceptFromMany(e *Engine, log *cheapLog, r *countingReplier, workers, each int) {
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Go(func() {
			for i := 0; i < each; i++ {
				off := uint32(w*each + i)
				log.mu.Lock()
				r.before.Store(uint64(off), log.end)
				log.mu.Unlock()
				e.Handle(&paxos.Request{Kind: paxos.KindAccept, Seg: uint64(1 + off/1024), Off: off % 1024, Values: [][]byte{{byte(i)}}}, r, uint64(off))
			}
		})
	}
	wg.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for r.total() < workers*each && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
}

type countingReplier struct {
	log *cheapLog
	// before: the log's end before the request was handled; its reply
	// may leave only once a sync went past it.
	before sync.Map
	mu     sync.Mutex
	seen   map[uint64]bool
	early  atomic.Int64
	dups   atomic.Int64
}

func newCountingReplier(l *cheapLog) *countingReplier {
	return &countingReplier{log: l, seen: map[uint64]bool{}}
}

func (c *countingReplier) Reply(tag uint64, resp *paxos.Response) {
	b, _ := c.before.Load(tag)
	c.log.mu.Lock()
	synced := c.log.durable > b.(uint64)
	c.log.mu.Unlock()
	if !synced {
		c.early.Add(1)
	}
	c.mu.Lock()
	if c.seen[tag] {
		c.dups.Add(1)
	}
	c.seen[tag] = true
	c.mu.Unlock()
}
func (c *countingReplier) Abandon(uint64) {}
func (c *countingReplier) total() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seen)
}

// overlapLog is a cheapLog whose Sync notices being run twice at once.
type overlapLog struct {
	cheapLog
	in, overlaps atomic.Int64
}

func (l *overlapLog) Sync() (uint64, error) {
	if l.in.Add(1) > 1 {
		l.overlaps.Add(1)
	}
	time.Sleep(20 * time.Microsecond)
	defer l.in.Add(-1)
	return l.cheapLog.Sync()
}

// The sync loop, woken while a request's goroutine leads an inline sync
// (by a compaction or a kick left in the channel), must wait for it: the
// two used to run at once and release replies from one shared scratch
// slice, which crashed wormd under load (index out of range in syncOnce).
func TestInlineSyncAndSyncLoopDoNotOverlap(t *testing.T) {
	log := &overlapLog{}
	e := NewEngine(paxos.NewAcceptor(1024), log, nil, nil)
	defer e.Close()
	r := newCountingReplier(&log.cheapLog)
	stop := make(chan struct{})
	kicked := make(chan struct{})
	go func() {
		defer close(kicked)
		for {
			select {
			case <-stop:
				return
			case e.kick <- struct{}{}:
			default:
			}
			runtime.Gosched()
		}
	}()
	const workers, each = 8, 300
	acceptFromMany(e, &log.cheapLog, r, workers, each)
	close(stop)
	<-kicked
	if n := log.overlaps.Load(); n != 0 {
		t.Fatalf("%d syncs ran while another was running", n)
	}
	if got := r.total(); got != workers*each {
		t.Fatalf("%d replies for %d requests", got, workers*each)
	}
	if r.early.Load() != 0 || r.dups.Load() != 0 {
		t.Fatalf("%d early and %d duplicate replies", r.early.Load(), r.dups.Load())
	}
}
