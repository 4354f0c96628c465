package wire

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wormspace/wormspace/worm/paxos"
)

var (
	keyA = bytes.Repeat([]byte("A"), 32)
	keyB = bytes.Repeat([]byte("B"), 48)
)

var testServerHello = ServerHello{AcceptorID: 3, Cluster: "test-cluster", SegmentSize: 1024, MaxValue: 1 << 16, MaxFrame: 1 << 20,
	Membership: Membership{State: StateSealed, Epoch: 4,
		Members: []Member{{1, "10.0.0.1:7070"}, {2, "10.0.0.2:7070"}, {3, "10.0.0.3:7070"}},
		Next:    Config{Epoch: 5, Members: []Member{{1, "10.0.0.1:7070"}, {2, "10.0.0.2:7070"}, {4, "[fd00::4]:7070"}}}}}

type result[T any] struct {
	v   T
	err error
}

// handshakes is what pair saw on each side.
type handshakes struct {
	sh     ServerHello // the client's view of the server
	cerr   error       // the client's handshake error
	ch     ClientHello // the server's view of the client
	serr   error       // the server's handshake error
	cc, sc net.Conn    // client and server ends, for further use
}

// pair runs both handshakes over net.Pipe; the conns are returned for
// further use (closed at test end).
func pair(t *testing.T, ckey, skey []byte) handshakes {
	t.Helper()
	cc, sc := net.Pipe()
	t.Cleanup(func() { cc.Close(); sc.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv := make(chan result[ClientHello], 1)
	go func() {
		ch, err := ServerHandshake(ctx, sc, testServerHello, skey)
		if err != nil {
			// As a real server does: close, so a client that believes it
			// succeeded sees the end of the connection.
			sc.Close()
		}
		srv <- result[ClientHello]{ch, err}
	}()
	sh, cerr := ClientHandshake(ctx, cc, ClientHello{ID: "client-7", Epoch: 5}, ckey)
	if cerr != nil {
		cc.Close()
	}
	r := <-srv
	return handshakes{sh: sh, cerr: cerr, ch: r.v, serr: r.err, cc: cc, sc: sc}
}

func TestHandshakeSuccess(t *testing.T) {
	for _, tc := range []struct {
		name string
		key  []byte
	}{{"no key", nil}, {"key", keyA}} {
		t.Run(tc.name, func(t *testing.T) {
			h := pair(t, tc.key, tc.key)
			sh, cerr, ch, serr, cc, sc := h.sh, h.cerr, h.ch, h.serr, h.cc, h.sc
			if cerr != nil || serr != nil {
				t.Fatalf("client %v, server %v", cerr, serr)
			}
			want := testServerHello
			want.Version = Version
			want.Nonce = sh.Nonce
			if tc.key != nil {
				want.Flags = FlagAuth
			}
			if !reflect.DeepEqual(sh, want) {
				t.Fatalf("server hello %+v, want %+v", sh, want)
			}
			if ch.ID != "client-7" || ch.Epoch != 5 || ch.Version != Version || (ch.Flags&FlagAuth != 0) != (tc.key != nil) {
				t.Fatalf("client hello %+v", ch)
			}
			if ch.Nonce == ([NonceSize]byte{}) || sh.Nonce == ([NonceSize]byte{}) || ch.Nonce == sh.Nonce {
				t.Fatal("nonces not fresh")
			}
			// Frames flow both ways afterwards, and no deadline is left.
			go func() {
				w := NewWriter(cc, int(sh.MaxFrame), int(sh.MaxValue))
				w.WriteRequest(5, &paxos.Request{Kind: paxos.KindRead, Seg: 1})
				w.Flush()
			}()
			f, err := NewReader(sc, 0).Next()
			if err != nil || f.ID != 5 {
				t.Fatalf("frame after handshake: %v %v", f, err)
			}
		})
	}
}

func TestHandshakeDefaults(t *testing.T) {
	cc, sc := net.Pipe()
	defer cc.Close()
	defer sc.Close()
	go ServerHandshake(context.Background(), sc, ServerHello{AcceptorID: 1}, nil)
	sh, err := ClientHandshake(context.Background(), cc, ClientHello{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if sh.MaxFrame != DefaultMaxFrame || sh.MaxValue != DefaultMaxValue {
		t.Fatalf("limits %d %d", sh.MaxFrame, sh.MaxValue)
	}
}

func TestHandshakeWrongKey(t *testing.T) {
	h := pair(t, keyA, keyB)
	cerr, serr := h.cerr, h.serr
	if !errors.Is(cerr, ErrAuth) || !strings.Contains(cerr.Error(), "failed to prove") {
		t.Fatalf("client: %v", cerr)
	}
	var re *RemoteError
	if !errors.Is(serr, ErrAuth) || !errors.As(serr, &re) {
		t.Fatalf("server: %v, want the client's refusal", serr)
	}
}

func TestHandshakeKeyMismatchPresence(t *testing.T) {
	t.Run("client without key", func(t *testing.T) {
		h := pair(t, nil, keyA)
		cerr, serr := h.cerr, h.serr
		var re *RemoteError
		if !errors.As(cerr, &re) || !errors.Is(cerr, ErrAuth) || !strings.Contains(cerr.Error(), "authentication required") {
			t.Fatalf("client: %v", cerr)
		}
		if !errors.Is(serr, ErrAuth) {
			t.Fatalf("server: %v", serr)
		}
	})
	t.Run("server without key", func(t *testing.T) {
		h := pair(t, keyA, nil)
		cerr, serr := h.cerr, h.serr
		if !errors.Is(cerr, ErrAuth) || !strings.Contains(cerr.Error(), "did not authenticate") {
			t.Fatalf("client: %v", cerr)
		}
		if !errors.Is(serr, ErrAuth) {
			t.Fatalf("server: %v", serr)
		}
	})
	t.Run("short key", func(t *testing.T) {
		_, err := ClientHandshake(context.Background(), nil, ClientHello{}, []byte("short"))
		if !errors.Is(err, ErrAuth) {
			t.Fatal(err)
		}
		_, err = ServerHandshake(context.Background(), nil, ServerHello{}, make([]byte, 31))
		if !errors.Is(err, ErrAuth) {
			t.Fatal(err)
		}
	})
}

// rawServer runs ServerHandshake on one end of a pipe and returns the
// other end for a hand-written client.
func rawServer(t *testing.T, key []byte) (net.Conn, <-chan error) {
	cc, sc := net.Pipe()
	t.Cleanup(func() { cc.Close(); sc.Close() })
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := ServerHandshake(ctx, sc, testServerHello, key)
		sc.Close()
		done <- err
	}()
	return cc, done
}

// rawClient runs ClientHandshake on one end of a pipe.
func rawClient(t *testing.T, key []byte) (net.Conn, <-chan error) {
	cc, sc := net.Pipe()
	t.Cleanup(func() { cc.Close(); sc.Close() })
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := ClientHandshake(ctx, cc, ClientHello{ID: "c"}, key)
		cc.Close()
		done <- err
	}()
	return sc, done
}

func mustRead(t *testing.T, c net.Conn) hsMsg {
	t.Helper()
	m, err := readHSMsg(c, maxServerHelloBody)
	if err != nil {
		t.Fatalf("reading handshake message: %v", err)
	}
	return m
}

// readErrorFrame reads the error frame a server sends after a bad proof.
func readErrorFrame(t *testing.T, c net.Conn) *RemoteError {
	t.Helper()
	f, err := NewReader(c, 0).Next()
	if err != nil || f.Type != FrameErr {
		t.Fatalf("want an error frame: %v %v", f.Type, err)
	}
	re, err := DecodeError(f.Payload)
	if err != nil {
		t.Fatal(err)
	}
	return re
}

func TestHandshakeServerRejectsWrongProof(t *testing.T) {
	c, done := rawServer(t, keyA)
	ch, _ := encodeClientHello(&ClientHello{Version: Version, Flags: FlagAuth, Nonce: [32]byte{1}, ID: "evil"})
	c.Write(ch)
	sh := mustRead(t, c)
	bad := proof(keyB, clientProofLabel, ch, sh.raw) // right transcript, wrong key
	c.Write(hsFinish(append(appendHSHeader(nil, msgClientProof), bad...)))
	if re := readErrorFrame(t, c); !errors.Is(re, ErrAuth) {
		t.Fatalf("client got %v", re)
	}
	if err := <-done; !errors.Is(err, ErrAuth) {
		t.Fatalf("server: %v", err)
	}
}

// TestHandshakeReplay records a successful session and replays each
// side's messages against a fresh peer: the fresh nonce defeats it.
func TestHandshakeReplay(t *testing.T) {
	// Record a real session from the client's side.
	c, done := rawServer(t, keyA)
	ch, _ := encodeClientHello(&ClientHello{Version: Version, Flags: FlagAuth, Nonce: [32]byte{9}, ID: "c"})
	c.Write(ch)
	sh := mustRead(t, c)
	cp := hsFinish(append(appendHSHeader(nil, msgClientProof), proof(keyA, clientProofLabel, ch, sh.raw)...))
	c.Write(cp)
	if err := <-done; err != nil {
		t.Fatalf("recorded session failed: %v", err)
	}

	t.Run("client proof", func(t *testing.T) {
		c, done := rawServer(t, keyA)
		c.Write(ch)
		sh2 := mustRead(t, c)
		if bytes.Equal(sh2.raw, sh.raw) {
			t.Fatal("server hello repeated: nonce not fresh")
		}
		c.Write(cp) // the old proof
		if re := readErrorFrame(t, c); !errors.Is(re, ErrAuth) {
			t.Fatalf("client got %v", re)
		}
		if err := <-done; !errors.Is(err, ErrAuth) {
			t.Fatalf("server accepted a replayed proof: %v", err)
		}
	})
	t.Run("server hello", func(t *testing.T) {
		s, done := rawClient(t, keyA)
		mustRead(t, s)  // the client's fresh hello
		s.Write(sh.raw) // the old server hello, valid for the old client nonce
		m, err := readHSMsg(s, maxServerHelloBody)
		if !errors.Is(err, ErrAuth) {
			t.Fatalf("client sent %v, %v; want its refusal", m.typ, err)
		}
		if err := <-done; !errors.Is(err, ErrAuth) {
			t.Fatalf("client accepted a replayed server hello: %v", err)
		}
	})
}

// mitm relays between a client and a server, letting f rewrite each
// message in the direction client→server (up) or server→client.
func mitm(t *testing.T, tamperUp, tamperDown func(msg []byte)) (cerr, serr error) {
	cc, m1 := net.Pipe()
	m2, sc := net.Pipe()
	defer func() { cc.Close(); m1.Close(); m2.Close(); sc.Close() }()
	relay := func(from, to net.Conn, tamper func([]byte)) {
		for {
			m, err := readHSMsg(from, maxServerHelloBody)
			if err != nil && m.raw == nil {
				var re *RemoteError
				if errors.As(err, &re) {
					to.Write(encodeHSError(re.Code, re.Text))
					continue
				}
				to.Close()
				return
			}
			if tamper != nil {
				tamper(m.raw)
			}
			to.Write(m.raw)
		}
	}
	go relay(m1, m2, tamperUp)
	go relay(m2, m1, tamperDown)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() {
		_, serr = ServerHandshake(ctx, sc, testServerHello, keyA)
		sc.Close()
	})
	_, cerr = ClientHandshake(ctx, cc, ClientHello{ID: "honest"}, keyA)
	cc.Close()
	wg.Wait()
	return cerr, serr
}

func TestHandshakeTampered(t *testing.T) {
	cerr, serr := mitm(t, nil, nil)
	if cerr != nil || serr != nil {
		t.Fatalf("untampered relay: client %v, server %v", cerr, serr)
	}
	t.Run("server hello", func(t *testing.T) {
		cerr, _ := mitm(t, nil, func(m []byte) {
			if m[6] == msgServerHello {
				m[hsHeader+4] ^= 1 // acceptor id
			}
		})
		if !errors.Is(cerr, ErrAuth) {
			t.Fatalf("client accepted a tampered server hello: %v", cerr)
		}
	})
	t.Run("client hello", func(t *testing.T) {
		cerr, serr := mitm(t, func(m []byte) {
			if m[6] == msgClientHello {
				m[len(m)-1] ^= 1 // last byte of the identity
			}
		}, nil)
		if !errors.Is(cerr, ErrAuth) {
			t.Fatalf("client accepted a server hello over a tampered client hello: %v", cerr)
		}
		if serr == nil {
			t.Fatal("server completed a tampered handshake")
		}
	})
	t.Run("downgrade auth flag", func(t *testing.T) {
		cerr, serr := mitm(t, func(m []byte) {
			if m[6] == msgClientHello {
				m[hsHeader] &^= byte(FlagAuth)
			}
		}, nil)
		if !errors.Is(cerr, ErrAuth) || !errors.Is(serr, ErrAuth) {
			t.Fatalf("client %v, server %v", cerr, serr)
		}
	})
}

func TestHandshakeVersionMismatch(t *testing.T) {
	newer, newest := Version+1, Version+2
	t.Run("newer client", func(t *testing.T) {
		c, done := rawServer(t, nil)
		ch, _ := encodeClientHello(&ClientHello{Nonce: [32]byte{1}})
		le.PutUint16(ch[4:], newer)
		c.Write(ch)
		// This test client decodes with this package's version, so it
		// sees the server's refusal as a RemoteError with CodeVersion.
		_, err := readHSMsg(c, maxServerHelloBody)
		var re *RemoteError
		if !errors.As(err, &re) || !errors.Is(err, ErrVersion) {
			t.Fatalf("client got %v", err)
		}
		var ve *VersionError
		if want := fmt.Sprintf("client speaks version %d, server speaks version %d", newer, Version); !strings.Contains(err.Error(), want) {
			t.Fatalf("error does not name both versions (%q): %v", want, err)
		}
		err = <-done
		if !errors.As(err, &ve) || ve.Local != Version || ve.Remote != newer {
			t.Fatalf("server: %v", err)
		}
	})
	t.Run("newer server", func(t *testing.T) {
		s, done := rawClient(t, nil)
		m := mustRead(t, s)
		sh, _ := encodeServerHello(&ServerHello{}, m.raw, nil)
		le.PutUint16(sh[4:], newest)
		s.Write(sh)
		if _, err := readHSMsg(s, maxServerHelloBody); !errors.Is(err, ErrVersion) {
			t.Fatalf("server got %v", err)
		}
		err := <-done
		var ve *VersionError
		if !errors.As(err, &ve) || ve.Local != Version || ve.Remote != newest || !strings.Contains(err.Error(), fmt.Sprintf("version %d", Version)) || !strings.Contains(err.Error(), fmt.Sprintf("version %d", newest)) {
			t.Fatalf("client: %v", err)
		}
	})
	t.Run("newer server refuses", func(t *testing.T) {
		// A newer server refuses us with its own error message.
		s, done := rawClient(t, nil)
		mustRead(t, s)
		e := encodeHSError(CodeVersion, fmt.Sprintf("protocol version mismatch: client speaks version %d, server speaks version %d", Version, newest))
		le.PutUint16(e[4:], newest)
		s.Write(e)
		err := <-done
		var ve *VersionError
		if !errors.As(err, &ve) || ve.Remote != newest || !strings.Contains(err.Error(), fmt.Sprintf("server speaks version %d", newest)) {
			t.Fatalf("client: %v", err)
		}
	})
}

func TestHandshakeNotWorm(t *testing.T) {
	c, done := rawServer(t, nil)
	go c.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
	if err := <-done; !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "not a WormSpace peer") {
		t.Fatalf("server: %v", err)
	}
}

func TestHandshakeSlowPeer(t *testing.T) {
	for _, side := range []string{"server", "client"} {
		t.Run(side, func(t *testing.T) {
			a, b := net.Pipe()
			defer a.Close()
			defer b.Close()
			go io.Copy(io.Discard, b) // the peer reads but never answers
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer cancel()
			start := time.Now()
			var err error
			if side == "server" {
				_, err = ServerHandshake(ctx, a, testServerHello, keyA)
			} else {
				_, err = ClientHandshake(ctx, a, ClientHello{}, keyA)
			}
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("err %v, want the context deadline", err)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Fatalf("took %v", d)
			}
		})
	}
	t.Run("cancel", func(t *testing.T) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(50*time.Millisecond, cancel)
		_, err := ServerHandshake(ctx, a, testServerHello, nil)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err %v, want context.Canceled", err)
		}
	})
}

func TestHandshakeLimits(t *testing.T) {
	cc, sc := net.Pipe()
	defer cc.Close()
	defer sc.Close()
	go io.Copy(io.Discard, sc)
	if _, err := ClientHandshake(context.Background(), cc, ClientHello{ID: strings.Repeat("x", MaxIdentity+1)}, nil); err == nil {
		t.Fatal("oversize identity accepted")
	}
	// An oversize handshake body is refused from the header.
	c, done := rawServer(t, nil)
	h := appendHSHeader(nil, msgClientHello)
	le.PutUint16(h[7:], 0xffff)
	go c.Write(h)
	if err := <-done; !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("server: %v", err)
	}
}
