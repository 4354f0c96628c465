package twopc

import (
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
}

// Network delivers messages between named nodes in one process, each after
// a fixed one-way delay, and drops messages from or to a crashed node. It
// stands for the network the baseline would use, so that message delays
// are comparable with WormTX over a Space with the same delay.
type Network struct {
	delay time.Duration
	sent  atomic.Int64

	mu    sync.Mutex
	boxes map[string]*mailbox
	down  map[string]bool
}

// NewNetwork returns a network whose messages take oneWay to arrive.
func NewNetwork(oneWay time.Duration) *Network {
	return &Network{delay: oneWay, boxes: map[string]*mailbox{}, down: map[string]bool{}}
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
