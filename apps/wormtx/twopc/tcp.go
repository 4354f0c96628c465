package twopc

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"

	"github.com/wormspace/wormspace/apps/wormtx"
)

// tcpTransport carries a Network's messages over loopback TCP: one
// listener per receiving node, one connection per destination, frames of
// a 4-byte length and an encoded Message.
type tcpTransport struct {
	n *Network

	mu     sync.Mutex
	closed bool
	lns    map[string]net.Listener // node -> its listener
	outs   map[string]*tcpOut      // destination node -> connection
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

type tcpOut struct {
	mu sync.Mutex
	c  net.Conn
	w  *bufio.Writer
}

func newTCPTransport(n *Network) *tcpTransport {
	return &tcpTransport{n: n, lns: map[string]net.Listener{}, outs: map[string]*tcpOut{}, conns: map[net.Conn]struct{}{}}
}

// listen gives node a listener (once) whose connections feed its mailbox.
func (t *tcpTransport) listen(node string) net.Listener {
	t.mu.Lock()
	defer t.mu.Unlock()
	if l := t.lns[node]; l != nil || t.closed {
		return l
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(fmt.Sprintf("twopc: cannot listen on loopback: %v", err))
	}
	t.lns[node] = l
	t.wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			if !t.track(c) {
				c.Close()
				return
			}
			t.wg.Go(func() { t.read(node, c) })
		}
	})
	return l
}

func (t *tcpTransport) track(c net.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	t.conns[c] = struct{}{}
	return true
}

func (t *tcpTransport) read(node string, c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	var hdr [4]byte
	var buf []byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return
		}
		n := binary.LittleEndian.Uint32(hdr[:])
		if n > 1<<24 {
			return
		}
		if cap(buf) < int(n) {
			buf = make([]byte, n)
		}
		buf = buf[:n]
		if _, err := io.ReadFull(r, buf); err != nil {
			return
		}
		m, err := decodeMessage(buf)
		if err != nil {
			return
		}
		t.n.deliver(node, m)
	}
}

// send writes m to node to's listener, dialling it on first use. A
// failure drops the message (the protocols time out on lost messages).
func (t *tcpTransport) send(to string, m Message) {
	l := t.listen(to)
	if l == nil {
		return
	}
	t.mu.Lock()
	o := t.outs[to]
	if o == nil {
		o = &tcpOut{}
		t.outs[to] = o
	}
	t.mu.Unlock()
	frame := encodeMessage(m)
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.c == nil {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			return
		}
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetNoDelay(true)
		}
		if !t.track(c) {
			c.Close()
			return
		}
		o.c, o.w = c, bufio.NewWriter(c)
	}
	if _, err := o.w.Write(frame); err == nil {
		err = o.w.Flush()
		if err == nil {
			return
		}
	}
	o.c.Close()
	o.c = nil
}

func (t *tcpTransport) close() error {
	t.mu.Lock()
	t.closed = true
	var errs []error
	for _, l := range t.lns {
		errs = append(errs, l.Close())
	}
	for c := range t.conns {
		c.Close()
	}
	t.mu.Unlock()
	t.wg.Wait()
	return errors.Join(errs...)
}

// encodeMessage returns a frame: u32 length, then kind, yes, outcome
// (u8 each), tx (u64), from (u16 length and bytes), the descriptor
// (MarshalDescriptor, the rest; empty when it has no participants).
func encodeMessage(m Message) []byte {
	b := make([]byte, 4, 64)
	b = append(b, byte(m.Kind), b2u(m.Yes), byte(m.Outcome))
	b = binary.LittleEndian.AppendUint64(b, uint64(m.Tx))
	b = binary.LittleEndian.AppendUint16(b, uint16(len(m.From)))
	b = append(b, m.From...)
	if len(m.Desc.Participants) > 0 {
		b = append(b, wormtx.MarshalDescriptor(m.Desc)...)
	}
	binary.LittleEndian.PutUint32(b, uint32(len(b)-4))
	return b
}

var errBadMessage = errors.New("twopc: malformed message")

func decodeMessage(b []byte) (Message, error) {
	if len(b) < 13 {
		return Message{}, errBadMessage
	}
	m := Message{Kind: Kind(b[0]), Yes: b[1] != 0, Outcome: wormtx.Outcome(b[2]), Tx: wormtx.TxID(binary.LittleEndian.Uint64(b[3:]))}
	n := int(binary.LittleEndian.Uint16(b[11:]))
	if len(b) < 13+n {
		return Message{}, errBadMessage
	}
	m.From = string(b[13 : 13+n])
	if rest := b[13+n:]; len(rest) > 0 {
		d, err := wormtx.UnmarshalDescriptor(rest)
		if err != nil {
			return Message{}, fmt.Errorf("%w: %w", errBadMessage, err)
		}
		m.Desc = d
	}
	return m, nil
}

func b2u(b bool) byte {
	if b {
		return 1
	}
	return 0
}
