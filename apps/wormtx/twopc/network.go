package twopc

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wormspace/wormspace/apps/wormtx"
)

// Kind is a 2PC message type.
type Kind uint8

// The messages of two-phase commit.
const (
	MsgPrepare  Kind = iota + 1 // coordinator -> participant: prepare tx (with descriptor)
	MsgVote                     // participant -> coordinator: yes/no
	MsgDecision                 // coordinator -> participant: commit/abort
	MsgQuery                    // participant -> coordinator: what was decided? (termination)
)

// Message is one 2PC message.
type Message struct {
	Kind    Kind
	From    string
	Tx      wormtx.TxID
	Desc    wormtx.Descriptor
	Yes     bool
	Outcome wormtx.Outcome
	// Hint is not read by 2PC: a number another protocol on the network
	// attaches (WormTX's prepares: Tx.NextSegment).
	Hint uint64
}

// Network delivers messages between named nodes and drops messages from or
// to a crashed node. It stands for the network the baseline would use:
// NewNetwork delivers in the process after a fixed one-way delay, so that
// message delays are comparable with WormTX over a Space with the same
// delay; NewTCPNetwork carries every message over a loopback TCP
// connection, like WormTX's requests to its wormservers. Other protocols
// may use it too (WormTX's prepares: Send and Serve).
type Network struct {
	delay time.Duration
	tcp   *tcpTransport // nil: in-process
	sent  atomic.Int64

	mu    sync.Mutex
	boxes map[string]*mailbox
	down  map[string]bool
}

// NewNetwork returns an in-process network whose messages take oneWay to
// arrive.
func NewNetwork(oneWay time.Duration) *Network {
	return &Network{delay: oneWay, boxes: map[string]*mailbox{}, down: map[string]bool{}}
}

// NewTCPNetwork returns a network that carries every message over
// loopback TCP, through one listener of this process (Addr). Close it to
// release the listener and connections.
func NewTCPNetwork() (*Network, error) { return NewTCPPeerNetwork("") }

// NewTCPPeerNetwork is NewTCPNetwork for nodes spread over two processes:
// messages to the nodes of this process (those that receive here: a
// Coordinator, a Participant, a Serve) go through this process's
// listener, and all others to the process listening at peer, which runs
// its own network with this one's Addr as its peer.
func NewTCPPeerNetwork(peer string) (*Network, error) {
	n := NewNetwork(0)
	t, err := newTCPTransport(n, peer)
	if err != nil {
		return nil, err
	}
	n.tcp = t
	return n, nil
}

// SetPeer sets (or changes) the peer process of a TCP network, for a
// network created before its peer's address was known.
func (n *Network) SetPeer(addr string) {
	if n.tcp != nil {
		n.tcp.mu.Lock()
		n.tcp.peer = addr
		n.tcp.mu.Unlock()
	}
}

// Addr is the address of a TCP network's listener ("" for an in-process
// network).
func (n *Network) Addr() string {
	if n.tcp == nil {
		return ""
	}
	return n.tcp.ln.Addr().String()
}

// local reports whether node receives in this process.
func (n *Network) local(node string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	_, ok := n.boxes[node]
	return ok
}

// Close releases a TCP network's listeners and connections (a no-op for
// an in-process network). Messages in flight are dropped.
func (n *Network) Close() error {
	if n.tcp != nil {
		return n.tcp.close()
	}
	return nil
}

// Send delivers m to node to (fire and forget, like every message here).
func (n *Network) Send(to string, m Message) { n.send(to, m) }

// Serve calls handle with every message delivered to node, in order,
// until ctx ends. handle runs on Serve's goroutine.
func (n *Network) Serve(ctx context.Context, node string, handle func(Message)) error {
	b := n.box(node)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-b.wake:
		}
		for _, m := range b.take() {
			handle(m)
		}
	}
}

// Crash makes node unreachable: its messages in flight and later ones, to
// or from it, are dropped until Restart.
func (n *Network) Crash(node string) {
	n.mu.Lock()
	n.down[node] = true
	n.mu.Unlock()
}

// Restart makes node reachable again.
func (n *Network) Restart(node string) {
	n.mu.Lock()
	delete(n.down, node)
	n.mu.Unlock()
}

// Sent is the number of messages sent so far.
func (n *Network) Sent() int64 { return n.sent.Load() }

func (n *Network) box(node string) *mailbox {
	n.mu.Lock()
	defer n.mu.Unlock()
	b := n.boxes[node]
	if b == nil {
		b = &mailbox{wake: make(chan struct{}, 1)}
		n.boxes[node] = b
	}
	return b
}

// deliver puts a message that arrived over TCP into node's mailbox.
func (n *Network) deliver(to string, m Message) {
	if n.isDown(to) {
		return
	}
	n.box(to).put(m)
}

func (n *Network) isDown(node string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.down[node]
}

// send delivers m to node to after the one-way delay.
func (n *Network) send(to string, m Message) {
	if n.isDown(m.From) {
		return
	}
	n.sent.Add(1)
	if n.tcp != nil {
		n.tcp.send(to, m)
		return
	}
	deliver := func() {
		if n.isDown(to) {
			return
		}
		n.box(to).put(m)
	}
	if n.delay <= 0 {
		deliver()
		return
	}
	time.AfterFunc(n.delay, deliver)
}

// mailbox is an unbounded queue with a wake-up channel.
type mailbox struct {
	mu   sync.Mutex
	q    []Message
	wake chan struct{}
}

func (b *mailbox) put(m Message) {
	b.mu.Lock()
	b.q = append(b.q, m)
	b.mu.Unlock()
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

func (b *mailbox) take() []Message {
	b.mu.Lock()
	defer b.mu.Unlock()
	q := b.q
	b.q = nil
	return q
}
