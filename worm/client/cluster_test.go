package client_test

import (
	"context"
	"flag"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/wormspace/wormspace/worm/client"
	"github.com/wormspace/wormspace/worm/paxos"
	"github.com/wormspace/wormspace/worm/server"
)

// memLog is an in-memory server.Log: everything appended is durable at
// once. The in-process cluster uses it so that client tests exercise the
// real acceptor, engine, server and wire code on loopback TCP without
// touching a disk (worm/storage and wormd are tested over real files and
// processes elsewhere).
type memLog struct {
	mu  sync.Mutex
	end uint64
}

func (l *memLog) Reserve(int) error { return nil }
func (l *memLog) Append(recs []paxos.Record) (uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.end += uint64(len(recs))
	return l.end, nil
}
func (l *memLog) Sync() (uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.end, nil
}

var verboseLogs = flag.Bool("worm.logs", false, "show client and server logs")

// quiet is the logger tests give clients and servers: connection churn is
// expected in fault tests and would drown the test output.
func quiet() *slog.Logger {
	if *verboseLogs {
		return slog.Default()
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// node is one in-process wormserver.
type node struct {
	id   uint32
	addr string
	acc  *paxos.Acceptor
	eng  *server.Engine
	srv  *server.Server
	l    net.Listener
}

// procCluster is a cluster of in-process wormservers on loopback. Stop
// and Start of a node keep its acceptor state (a restart that lost
// nothing durable) and its address.
type procCluster struct {
	t       testing.TB
	segSize uint32
	key     []byte
	nodes   []*node
}

func newProcCluster(t testing.TB, n int, segSize uint32, key []byte) *procCluster {
	t.Helper()
	c := &procCluster{t: t, segSize: segSize, key: key}
	for i := 0; i < n; i++ {
		nd := &node{id: uint32(i + 1), acc: paxos.NewAcceptor(segSize)}
		c.nodes = append(c.nodes, nd)
		c.start(nd, "127.0.0.1:0")
	}
	t.Cleanup(func() {
		for _, nd := range c.nodes {
			c.stopNode(nd)
		}
	})
	return c
}

func (c *procCluster) start(nd *node, addr string) {
	c.t.Helper()
	var l net.Listener
	var err error
	for try := 0; try < 50; try++ {
		if l, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond) // the old listener's port may linger briefly
	}
	if err != nil {
		c.t.Fatalf("listen %s: %v", addr, err)
	}
	nd.l = l
	nd.addr = l.Addr().String()
	nd.eng = server.NewEngine(nd.acc, &memLog{}, quiet(), nil)
	srv, err := server.New(server.Config{Engine: nd.eng, AcceptorID: nd.id, Cluster: "test", Key: c.key, Logger: quiet()})
	if err != nil {
		c.t.Fatal(err)
	}
	nd.srv = srv
	go srv.Serve(l)
}

func (c *procCluster) stopNode(nd *node) {
	if nd.srv == nil {
		return
	}
	nd.srv.Close()
	nd.eng.Close()
	nd.srv = nil
}

// Stop takes node i down abruptly (its connections break).
func (c *procCluster) Stop(i int) { c.stopNode(c.nodes[i]) }

// Start brings node i back on its old address with its old state.
func (c *procCluster) Start(i int) { c.start(c.nodes[i], c.nodes[i].addr) }

func (c *procCluster) Servers() []string {
	var s []string
	for _, nd := range c.nodes {
		s = append(s, nd.addr)
	}
	return s
}

func (c *procCluster) dial(t testing.TB, id string) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := client.Dial(ctx, client.Config{Servers: c.Servers(), ID: id, Key: c.key, Logger: quiet()})
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}
