package twopc_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/wormspace/wormspace/apps/wormtx"
	"github.com/wormspace/wormspace/apps/wormtx/twopc"
)

// A FileLog keeps the first outcome recorded for a transaction, shares
// syncs among concurrent decisions, and finds its records again after a
// reopen (a torn last record cut). Its records are followed by zeros
// (written ahead, so that a sync does not change the file's size).
func TestFileLog(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "decisions")
	l, err := twopc.OpenFileLog(path, false)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 64 {
		wg.Go(func() {
			want := wormtx.Commit
			if i%3 == 0 {
				want = wormtx.Abort
			}
			if o, err := l.Decide(ctx, wormtx.TxID(i), want); err != nil || o != want {
				t.Errorf("Decide(%d, %v) = %v, %v", i, want, o, err)
			}
		})
	}
	wg.Wait()
	// Presumed abort does not override a commit; it records abort for an
	// unknown transaction, which a later commit cannot override.
	if o, err := l.Presume(ctx, 1); err != nil || o != wormtx.Commit {
		t.Fatalf("Presume(1) = %v, %v; want the recorded commit", o, err)
	}
	if o, err := l.Presume(ctx, 1000); err != nil || o != wormtx.Abort {
		t.Fatalf("Presume(1000) = %v, %v", o, err)
	}
	if o, err := l.Decide(ctx, 1000, wormtx.Commit); err != nil || o != wormtx.Abort {
		t.Fatalf("Decide after Presume = %v, %v; want abort", o, err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	// A magic line, 65 records (length 9, transaction and outcome, CRC),
	// then the zeros written ahead of them.
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	const frame = 4 + 9 + 4
	hdr := bytes.IndexByte(b, '\n') + 1
	end := hdr + 65*frame
	if hdr == 0 || len(b) <= end || !bytes.Equal(b[end:], make([]byte, len(b)-end)) {
		t.Fatalf("log holds %d bytes, want a magic line, 65 records and zeros after them", len(b))
	}
	for off := hdr; off < end; off += frame {
		if n, o := binary.LittleEndian.Uint32(b[off:]), wormtx.Outcome(b[off+4+8]); n != 9 || (o != wormtx.Commit && o != wormtx.Abort) {
			t.Fatalf("record at %d: length %d, outcome %v", off, n, o)
		}
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte{9, 0, 0, 0, 1, 2, 3}, int64(end)) // a torn record
	f.Close()
	// Reopened, it has every record and none from the torn one; a new
	// record takes the torn one's place and survives another reopen.
	for _, volatile := range []bool{false, true} {
		l, err = twopc.OpenFileLog(path, volatile)
		if err != nil {
			t.Fatal(err)
		}
		for i, want := range map[wormtx.TxID]wormtx.Outcome{0: wormtx.Abort, 1: wormtx.Commit, 3: wormtx.Abort, 1000: wormtx.Abort, 2000: wormtx.Commit} {
			decide := l.Decide // first pass: records 2000's commit
			if volatile {
				// Second pass: Presume would record an abort for an
				// unknown transaction; 2000 must have come back.
				decide = func(ctx context.Context, tx wormtx.TxID, _ wormtx.Outcome) (wormtx.Outcome, error) {
					return l.Presume(ctx, tx)
				}
			}
			if o, err := decide(ctx, i, wormtx.Commit); err != nil || o != want {
				t.Fatalf("after reopen (volatile %v), %d: %v, %v; want %v", volatile, i, o, err, want)
			}
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// 2PC over loopback TCP with a decision log on disk: commit and abort.
func TestOverTCP(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	net, err := twopc.NewTCPNetwork()
	if err != nil {
		t.Fatal(err)
	}
	defer net.Close()
	log, err := twopc.OpenFileLog(filepath.Join(t.TempDir(), "log"), false)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	res := map[string]*voteRes{"a": {yes: true}, "b": {yes: true}, "c": {yes: false}}
	parts := map[string]*twopc.Participant{}
	for name, r := range res {
		parts[name] = twopc.NewParticipant(net, r, twopc.ParticipantConfig{Name: name})
		go parts[name].Run(ctx)
	}
	co := twopc.NewCoordinator(net, twopc.CoordinatorConfig{Name: "coord", Decisions: log})
	go co.Run(ctx)
	for _, c := range []struct {
		parts []string
		want  wormtx.Outcome
	}{{[]string{"a", "b"}, wormtx.Commit}, {[]string{"a", "c"}, wormtx.Abort}, {[]string{"b", "a"}, wormtx.Commit}} {
		id, err := co.Begin(ctx, c.parts, []byte("payload"))
		if err != nil {
			t.Fatal(err)
		}
		if o, err := co.Await(ctx, id); err != nil || o != c.want {
			t.Fatalf("%v: %v, %v; want %v", c.parts, o, err, c.want)
		}
		for _, p := range c.parts {
			if o, err := parts[p].Await(ctx, id); err != nil || o != c.want {
				t.Fatalf("%s: %v, %v", p, o, err)
			}
		}
	}
	if net.Sent() < 3*4 {
		t.Fatalf("%d messages sent", net.Sent())
	}
}

// Nodes spread over two networks that are each other's peers (two
// processes): 2PC between a coordinator on one and participants on the
// other.
func TestOverTwoProcesses(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	a, err := twopc.NewTCPNetwork()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := twopc.NewTCPPeerNetwork(a.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	a.SetPeer(b.Addr())
	res := map[string]*voteRes{"x": {yes: true}, "y": {yes: true}}
	parts := map[string]*twopc.Participant{}
	for name, r := range res {
		parts[name] = twopc.NewParticipant(b, r, twopc.ParticipantConfig{Name: name})
		go parts[name].Run(ctx)
	}
	log, err := twopc.OpenFileLog(filepath.Join(t.TempDir(), "log"), true)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	co := twopc.NewCoordinator(a, twopc.CoordinatorConfig{Name: "coord", Decisions: log})
	go co.Run(ctx)
	id, err := co.Begin(ctx, []string{"x", "y"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if o, err := co.Await(ctx, id); err != nil || o != wormtx.Commit {
		t.Fatalf("%v, %v", o, err)
	}
	for name, p := range parts {
		if o, err := p.Await(ctx, id); err != nil || o != wormtx.Commit {
			t.Fatalf("%s: %v, %v", name, o, err)
		}
	}
	if a.Sent() != 4 || b.Sent() != 2 {
		t.Fatalf("sent %d and %d messages, want 4 (prepares, decisions) and 2 (votes)", a.Sent(), b.Sent())
	}
}

// Senders in one process share the connection to the other: from many
// goroutines at once every message arrives, each sender's in the order it
// sent them, with their contents intact.
func TestTCPConcurrentSenders(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	recv, err := twopc.NewTCPNetwork()
	if err != nil {
		t.Fatal(err)
	}
	defer recv.Close()
	send, err := twopc.NewTCPPeerNetwork(recv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer send.Close()
	const senders, each = 8, 500
	var mu sync.Mutex
	next := map[string]wormtx.TxID{}
	got := 0
	done := make(chan struct{})
	go recv.Serve(ctx, "sink", func(m twopc.Message) {
		mu.Lock()
		defer mu.Unlock()
		if m.Tx != next[m.From] || m.Kind != twopc.MsgPrepare || len(m.Desc.Participants) != 1 || string(m.Desc.Payload) != m.From {
			t.Errorf("from %s: message %v (kind %v, descriptor %+v), want message %v", m.From, m.Tx, m.Kind, m.Desc, next[m.From])
		}
		next[m.From] = m.Tx + 1
		if got++; got == senders*each {
			close(done)
		}
	})
	time.Sleep(50 * time.Millisecond) // the sink's mailbox exists before the first message lands
	var wg sync.WaitGroup
	for i := range senders {
		from := fmt.Sprintf("sender-%d", i)
		wg.Go(func() {
			for k := range each {
				send.Send("sink", twopc.Message{Kind: twopc.MsgPrepare, From: from, Tx: wormtx.TxID(k),
					Desc: wormtx.Descriptor{Participants: []string{"sink"}, Payload: []byte(from)}})
			}
		})
	}
	wg.Wait()
	select {
	case <-done:
	case <-ctx.Done():
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("%d of %d messages arrived", got, senders*each)
	}
}
