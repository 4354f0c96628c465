package server

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wormspace/wormspace/worm/paxos"
	"github.com/wormspace/wormspace/worm/wire"
)

func rawHeader(length uint32, typ byte, id uint64) []byte {
	b := binary.LittleEndian.AppendUint32(nil, length)
	b = append(b, typ)
	return binary.LittleEndian.AppendUint64(b, id)
}

// expectErrorFrame reads until the error frame and checks it matches
// want, then that the server closed the connection.
func expectErrorFrame(t *testing.T, c *testClient, want error) {
	t.Helper()
	for {
		f, err := c.next(5 * time.Second)
		if err != nil {
			t.Fatalf("reading the error frame: %v", err)
		}
		if f.typ == wire.FrameResponse {
			continue // replies to earlier good requests may precede it
		}
		if f.typ != wire.FrameErr || !errors.Is(f.err, want) {
			t.Fatalf("got %v %+v, want an error frame matching %v", f.typ, f.err, want)
		}
		break
	}
	if _, err := c.next(5 * time.Second); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("after the error frame: %v, want the connection closed", err)
	}
}

// Each kind of bad input after the handshake gets an error frame and
// closes that connection only; a well-behaved client keeps working.
func TestBadFrames(t *testing.T) {
	frameTooLarge := rawHeader(wire.DefaultMaxFrame+1, byte(wire.FrameRequest), 1)
	unknownType := rawHeader(9, 77, 1)
	responseFrame := wire.AppendResponse(nil, 1, &paxos.Response{Kind: paxos.KindRead})
	badKind := wire.AppendRequest(nil, 1, &paxos.Request{Kind: paxos.KindRead})
	badKind[wire.HeaderSize] = 200
	bigValue := wire.AppendRequest(nil, 1, accept(1, 0, make([]byte, 2048)))
	trailing := wire.AppendRequest(nil, 1, &paxos.Request{Kind: paxos.KindRead})
	trailing = append(trailing, 0)
	binary.LittleEndian.PutUint32(trailing, uint32(len(trailing)-4))
	cases := []struct {
		name   string
		bytes  []byte
		want   error
		reason int
	}{
		{"oversize length prefix", frameTooLarge, wire.ErrFrameTooLarge, badTooLarge},
		{"unknown frame type", unknownType, wire.ErrMalformed, badMalformed},
		{"response frame from a client", responseFrame, wire.ErrMalformed, badFrameType},
		{"unknown request kind", badKind, wire.ErrMalformed, badMalformed},
		{"value over the limit", bigValue, wire.ErrFrameTooLarge, badTooLarge},
		{"trailing bytes", trailing, wire.ErrMalformed, badMalformed},
		{"garbage", bytes.Repeat([]byte{0x03, 0, 0, 0}, 64), wire.ErrMalformed, badMalformed},
	}
	ts := startServer(t, nil, false, func(c *Config) { c.MaxValue = 1024 })
	good := ts.dial()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := ts.srv.m.badInput[tc.reason].Load()
			c := ts.dial()
			// A good request first: the connection was fine until now.
			c.roundTrip(5, &paxos.Request{Kind: paxos.KindRead, Seg: 1})
			if _, err := c.nc.Write(tc.bytes); err != nil {
				t.Fatal(err)
			}
			expectErrorFrame(t, c, tc.want)
			if got := ts.srv.m.badInput[tc.reason].Load(); got != before+1 {
				t.Fatalf("bad input %s counted %d times, want %d", badReasonNames[tc.reason], got, before+1)
			}
			good.works()
		})
	}
}

// A frame cut short by the client closing is dropped without disturbing
// anyone else.
func TestTruncatedFrameThenClose(t *testing.T) {
	ts := startServer(t, nil, false, nil)
	good := ts.dial()
	c := ts.dial()
	b := rawHeader(100, byte(wire.FrameRequest), 1)
	c.nc.Write(append(b, make([]byte, 20)...))
	c.nc.Close()
	eventually(t, "the truncated frame to be counted", func() bool { return ts.srv.m.badInput[badMalformed].Load() == 1 })
	eventually(t, "the connection to be released", func() bool { return ts.srv.nconns.Load() == 1 })
	good.works()
}

// Bytes that are not a handshake, a silent client, a wrong key and a
// missing key are all refused at the handshake.
func TestHandshakeRefusals(t *testing.T) {
	key := bytes.Repeat([]byte("k"), 32)
	ts := startServer(t, nil, false, func(c *Config) { c.Key = key; c.HandshakeTimeout = 200 * time.Millisecond })
	good, err := ts.dialKey(key)
	if err != nil {
		t.Fatal(err)
	}
	defer good.nc.Close()

	// HTTP at a wormserver.
	nc, err := ts.rawDial()
	if err != nil {
		t.Fatal(err)
	}
	nc.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	reply, _ := io.ReadAll(nc)
	nc.Close()
	if !bytes.HasPrefix(reply, []byte(wire.Magic)) {
		t.Fatalf("answer to HTTP: %q, want a handshake error message", reply)
	}

	// A client that never speaks is cut off after the handshake timeout.
	silent, err := ts.rawDial()
	if err != nil {
		t.Fatal(err)
	}
	silent.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(silent); err != nil {
		t.Fatalf("silent client: %v, want the server to close", err)
	}
	silent.Close()

	// Wrong key, no key.
	if _, err := ts.dialKey(bytes.Repeat([]byte("x"), 32)); !errors.Is(err, wire.ErrAuth) {
		t.Fatalf("wrong key: %v, want ErrAuth", err)
	}
	if _, err := ts.dialKey(nil); !errors.Is(err, wire.ErrAuth) {
		t.Fatalf("no key: %v, want ErrAuth", err)
	}
	m := &ts.srv.m
	eventually(t, "the failures to be counted", func() bool {
		return m.handshake[hsMalformed].Load() == 1 && m.handshake[hsTimeout].Load() == 1 && m.handshake[hsAuth].Load() == 2
	})
	good.works()
}

// Connections over MaxConns are refused with a message; established ones
// keep working; a freed place is reusable.
func TestConnectionFlood(t *testing.T) {
	const max = 4
	ts := startServer(t, nil, false, func(c *Config) { c.MaxConns = max })
	var clients []*testClient
	for range max {
		clients = append(clients, ts.dial())
	}
	_, err := ts.dialKey(nil)
	var re *wire.RemoteError
	if !errors.As(err, &re) || !strings.Contains(re.Text, "too many connections") {
		t.Fatalf("connection over MaxConns: %v, want a refusal", err)
	}
	// A flood of raw connections.
	var wg sync.WaitGroup
	for range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nc, err := ts.rawDial()
			if err != nil {
				return
			}
			nc.SetReadDeadline(time.Now().Add(3 * time.Second))
			io.Copy(io.Discard, nc)
			nc.Close()
		}()
	}
	for _, c := range clients {
		c.works()
	}
	wg.Wait()
	if n := ts.srv.m.handshake[hsRefused].Load(); n < 50 {
		t.Fatalf("%d refusals counted", n)
	}
	for _, c := range clients {
		c.works()
	}
	clients[0].nc.Close()
	eventually(t, "the closed connection to free its place", func() bool { return ts.srv.nconns.Load() == max-1 })
	ts.dial().works()
}

// A client that sends requests and never reads its replies throttles only
// itself: the server stops reading it once its output is over the cap,
// its memory stays bounded, and another client is served meanwhile.
func TestSlowReaderIsThrottled(t *testing.T) {
	const maxPending, maxInflight = 64 << 10, 32
	ts := startServer(t, nil, false, func(c *Config) { c.MaxPending = maxPending; c.MaxInflight = maxInflight })
	good := ts.dial()
	value := bytes.Repeat([]byte("v"), 4096)
	good.roundTrip(1, accept(1, 0, value))

	slow := ts.dial()
	slow.nc.(*net.TCPConn).SetReadBuffer(4096)
	read := wire.AppendRequest(nil, 1, &paxos.Request{Kind: paxos.KindRead, Seg: 1, Off: 0})
	batch := bytes.Repeat(read, 1000)
	stopWriting := make(chan struct{})
	wrote := make(chan int, 1)
	go func() {
		n := 0
		for {
			select {
			case <-stopWriting:
				wrote <- n
				return
			default:
			}
			slow.nc.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
			k, _ := slow.nc.Write(batch)
			n += k / len(read)
		}
	}()
	var sc *conn
	eventually(t, "the slow connection to be throttled", func() bool {
		ts.srv.mu.Lock()
		defer ts.srv.mu.Unlock()
		for c := range ts.srv.conns {
			if c.remote == slow.nc.LocalAddr().String() {
				sc = c
			}
		}
		if sc == nil {
			return false
		}
		sc.mu.Lock()
		defer sc.mu.Unlock()
		return sc.readerWaiting && len(sc.out)+sc.writing >= maxPending
	})
	// The kernel's socket buffers absorb some output first: wait until
	// the server has stopped reading the slow client altogether.
	reads := func() uint64 { return ts.srv.m.requests[paxos.KindRead][paxos.StatusOK].Load() }
	served := reads()
	for stable := 0; stable < 5; {
		time.Sleep(20 * time.Millisecond)
		if n := reads(); n != served {
			served, stable = n, 0
		} else {
			stable++
		}
	}
	for range 50 {
		good.works()
	}
	if got := reads(); got != served+50 {
		t.Fatalf("the throttled connection was still read: %d reads served, want %d", got, served+50)
	}
	close(stopWriting)
	sent := <-wrote
	if served >= uint64(sent) {
		t.Fatalf("served %d of %d reads: no backpressure", served, sent)
	}
	// Bound: the cap, plus one reply per request in flight, plus what the
	// writer holds.
	reply := len(wire.AppendResponse(nil, 1, &paxos.Response{Kind: paxos.KindRead, Reg: paxos.RegState{HasValue: true, Accepted: ballot(1), Value: value}}))
	bound := maxPending + maxInflight*reply
	if p := sc.peakOutput(); p > bound {
		t.Fatalf("slow connection buffered %d bytes, bound %d", p, bound)
	}
	t.Logf("slow client sent %d reads, server served %d, peak output %d bytes (bound %d)", sent, served, sc.peakOutput(), bound)
}
