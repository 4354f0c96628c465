package twopc

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"

	"github.com/wormspace/wormspace/apps/wormtx"
	"github.com/wormspace/wormspace/worm/sockio"
)

// tcpTransport carries a Network's messages over loopback TCP: one
// listener per process, one connection per destination process, frames of
// a 4-byte length and an encoded Message with its destination node.
type tcpTransport struct {
	n      *Network
	ln     net.Listener
	mu     sync.Mutex
	peer   string // the other process's listener ("": none)
	closed bool
	outs   map[string]*tcpOut // destination address -> connection
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

// tcpOut is the connection to one process.
type tcpOut struct {
	mu      sync.Mutex
	c       net.Conn // nil until dialled, and after a failed write
	w       io.Writer
	out     []byte // frames not yet written
	spare   []byte // the other buffer of the double-buffered out
	writing bool   // a sender is writing: it writes out before it returns
}

func newTCPTransport(n *Network, peer string) (*tcpTransport, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("twopc: listen on loopback: %w", err)
	}
	t := &tcpTransport{n: n, ln: ln, peer: peer, outs: map[string]*tcpOut{}, conns: map[net.Conn]struct{}{}}
	t.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if !t.track(c) {
				c.Close()
				return
			}
			t.wg.Go(func() { t.read(c) })
		}
	})
	return t, nil
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

func (t *tcpTransport) read(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(sockio.ReadWriter(c))
	var hdr [4]byte
	var buf []byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return
		}
		n := binary.LittleEndian.Uint32(hdr[:])
		if n > 1<<24 {
			slog.Warn("twopc: dropping a connection: message too large", "from", c.RemoteAddr(), "bytes", n)
			return
		}
		if cap(buf) < int(n) {
			buf = make([]byte, n)
		}
		buf = buf[:n]
		if _, err := io.ReadFull(r, buf); err != nil {
			return
		}
		to, m, err := decodeMessage(buf)
		if err != nil {
			slog.Warn("twopc: dropping a connection", "from", c.RemoteAddr(), "err", err)
			return
		}
		t.n.deliver(to, m)
	}
}

// send writes m for node to: to this process's listener when to receives
// here (or there is no peer), else to the peer's. A failure drops the
// message (the protocols time out on lost messages). Concurrent senders
// to one process share system calls: a sender that finds another writing
// leaves its frame in the buffer, and the writer takes it in its next
// write before it returns.
func (t *tcpTransport) send(to string, m Message) {
	addr := t.ln.Addr().String()
	t.mu.Lock()
	peer := t.peer
	t.mu.Unlock()
	if peer != "" && !t.n.local(to) {
		addr = peer
	}
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return
	}
	o := t.outs[addr]
	if o == nil {
		o = &tcpOut{}
		t.outs[addr] = o
	}
	t.mu.Unlock()
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.c == nil {
		c, err := net.Dial("tcp", addr)
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
		o.c, o.w = c, sockio.ReadWriter(c)
	}
	o.out = appendMessage(o.out, to, m)
	if o.writing {
		return
	}
	o.writing = true
	for len(o.out) > 0 {
		b, c, w := o.out, o.c, o.w
		o.out, o.spare = o.spare[:0], nil
		o.mu.Unlock()
		_, err := w.Write(b)
		o.mu.Lock()
		if cap(b) <= 1<<20 {
			o.spare = b[:0]
		}
		if err != nil {
			c.Close()
			o.c, o.w = nil, nil
			o.out = o.out[:0]
			break
		}
	}
	o.writing = false
}

func (t *tcpTransport) close() error {
	t.mu.Lock()
	t.closed = true
	err := t.ln.Close()
	for c := range t.conns {
		c.Close()
	}
	t.mu.Unlock()
	t.wg.Wait()
	return err
}

// encodeMessage returns a frame: u32 length, then the destination node
// (u16 length and bytes), kind, yes, outcome (u8 each), tx (u64), hint
// (u64), from (u16 length and bytes), the descriptor (MarshalDescriptor, the rest;
// empty when it has no participants).
func encodeMessage(to string, m Message) []byte { return appendMessage(make([]byte, 0, 64), to, m) }

// appendMessage appends m's frame (see encodeMessage) to b.
func appendMessage(b []byte, to string, m Message) []byte {
	start := len(b)
	b = append(b, 0, 0, 0, 0)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(to)))
	b = append(b, to...)
	b = append(b, byte(m.Kind), b2u(m.Yes), byte(m.Outcome))
	b = binary.LittleEndian.AppendUint64(b, uint64(m.Tx))
	b = binary.LittleEndian.AppendUint64(b, m.Hint)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(m.From)))
	b = append(b, m.From...)
	if len(m.Desc.Participants) > 0 {
		b = append(b, wormtx.MarshalDescriptor(m.Desc)...)
	}
	binary.LittleEndian.PutUint32(b[start:], uint32(len(b)-start-4))
	return b
}

var errBadMessage = errors.New("twopc: malformed message")

func decodeMessage(b []byte) (string, Message, error) {
	str := func() (string, bool) {
		if len(b) < 2 {
			return "", false
		}
		n := int(binary.LittleEndian.Uint16(b))
		if len(b) < 2+n {
			return "", false
		}
		s := string(b[2 : 2+n])
		b = b[2+n:]
		return s, true
	}
	to, ok := str()
	if !ok || len(b) < 19 {
		return "", Message{}, errBadMessage
	}
	// Kinds stay open (a harness adds its own on the same network);
	// the rest has one encoding.
	m := Message{Kind: Kind(b[0]), Yes: b[1] == 1, Outcome: wormtx.Outcome(b[2]), Tx: wormtx.TxID(binary.LittleEndian.Uint64(b[3:])),
		Hint: binary.LittleEndian.Uint64(b[11:])}
	switch {
	case m.Kind == 0:
		return "", Message{}, fmt.Errorf("%w: kind 0", errBadMessage)
	case b[1] > 1:
		return "", Message{}, fmt.Errorf("%w: vote byte %d", errBadMessage, b[1])
	case m.Outcome > wormtx.Abort:
		return "", Message{}, fmt.Errorf("%w: outcome %d", errBadMessage, b[2])
	case m.Kind == MsgDecision && m.Outcome == wormtx.Pending:
		return "", Message{}, fmt.Errorf("%w: a decision without an outcome", errBadMessage)
	}
	b = b[19:]
	if m.From, ok = str(); !ok {
		return "", Message{}, errBadMessage
	}
	if len(b) > 0 {
		d, err := wormtx.UnmarshalDescriptor(b)
		if err != nil {
			return "", Message{}, fmt.Errorf("%w: %w", errBadMessage, err)
		}
		m.Desc = d
	}
	return to, m, nil
}

func b2u(b bool) byte {
	if b {
		return 1
	}
	return 0
}
