package chain

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/wormspace/wormspace/worm"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// testChain is a chain of real replicas (Disk, Server, loopback TCP) in
// this process.
type testChain struct {
	t        testing.TB
	dir      string
	key      []byte
	segSize  uint32
	volatile bool
	addrs    []string

	mu   sync.Mutex
	srvs []*Server
	lns  []net.Listener
	n    int // clients opened
}

// listenLow listens on a free loopback port below the kernel's ephemeral
// range, so that no outgoing connection can take the port while its
// replica is down and keep it from restarting there.
func listenLow(t testing.TB) net.Listener {
	t.Helper()
	for try := 0; try < 1000; try++ {
		port := 10000 + mrand.IntN(20000)
		if l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			return l
		}
	}
	t.Fatal("no free port below the ephemeral range")
	return nil
}

// startChain starts n replicas with segment size segSize.
func startChain(t testing.TB, n int, segSize uint32, volatile bool) *testChain {
	t.Helper()
	key := make([]byte, 32)
	rand.Read(key)
	tc := &testChain{t: t, dir: t.TempDir(), key: key, segSize: segSize, volatile: volatile}
	for i := 0; i < n; i++ {
		l := listenLow(t)
		tc.lns = append(tc.lns, l)
		tc.addrs = append(tc.addrs, l.Addr().String())
	}
	tc.srvs = make([]*Server, n)
	for i := 0; i < n; i++ {
		tc.serve(i, tc.lns[i])
	}
	t.Cleanup(tc.stop)
	// A replica refuses writes until its link to the successor is up (it
	// fails fast, by design); the launcher waits for the links too.
	tc.waitLinks()
	return tc
}

func (tc *testChain) serve(i int, l net.Listener) {
	tc.t.Helper()
	disk, rep, err := OpenDisk(filepath.Join(tc.dir, fmt.Sprint("r", i)), DiskOptions{SegmentSize: tc.segSize, Cluster: "test", Volatile: tc.volatile, Logger: quiet})
	if err != nil {
		tc.t.Fatal(err)
	}
	srv, err := NewServer(ServerConfig{Chain: tc.addrs, Index: i, Cluster: "test", Key: tc.key, Logger: quiet}, rep, disk)
	if err != nil {
		tc.t.Fatal(err)
	}
	tc.mu.Lock()
	tc.srvs[i], tc.lns[i] = srv, l
	tc.mu.Unlock()
	go srv.Serve(l)
}

// kill stops replica i (its connections break, as with a crash of the
// process; its log keeps what it synced).
func (tc *testChain) kill(i int) {
	tc.mu.Lock()
	srv := tc.srvs[i]
	tc.srvs[i] = nil
	tc.mu.Unlock()
	if srv != nil {
		srv.Close()
	}
}

// crash stops replica i as a crash would: unsynced records and frames
// waiting for them are lost.
func (tc *testChain) crash(i int) {
	tc.mu.Lock()
	srv := tc.srvs[i]
	tc.srvs[i] = nil
	tc.mu.Unlock()
	if srv != nil {
		srv.abort()
	}
}

// restart starts replica i again on its directory and address.
func (tc *testChain) restart(i int) {
	tc.t.Helper()
	var l net.Listener
	var err error
	for try := 0; try < 100; try++ {
		if l, err = net.Listen("tcp", tc.addrs[i]); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		tc.t.Fatal(err)
	}
	tc.serve(i, l)
}

// waitLinks waits until every replica's link to its successor is up.
func (tc *testChain) waitLinks() {
	tc.t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; {
		ok := true
		tc.mu.Lock()
		for _, s := range tc.srvs {
			if s == nil || s.link != nil && !s.link.isUp.Load() {
				ok = false
			}
		}
		tc.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			tc.t.Fatal("replica links did not come up")
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func (tc *testChain) stop() {
	for i := range tc.srvs {
		tc.kill(i)
	}
}

// client dials a client with a fresh identity.
func (tc *testChain) client(t testing.TB) *Client {
	t.Helper()
	tc.mu.Lock()
	tc.n++
	id := fmt.Sprintf("c%d", tc.n)
	tc.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := Dial(ctx, Config{Chain: tc.addrs, Key: tc.key, ID: id, Logger: quiet, OpTimeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// open returns n fresh clients as worm.Spaces.
func (tc *testChain) open(n int) func(t *testing.T) []worm.Space {
	return func(t *testing.T) []worm.Space {
		var out []worm.Space
		for i := 0; i < n; i++ {
			out = append(out, tc.client(t))
		}
		return out
	}
}
