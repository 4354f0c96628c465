package wire

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

const (
	// Magic opens every handshake message.
	Magic = "WORM"
	// Version is the protocol version this package speaks. Peers must speak
	// the same version; there is no negotiation. Version 2 added
	// configuration epochs to the hellos (ClientHello.Epoch,
	// ServerHello.Membership) and control frames.
	Version uint16 = 2

	// MinKeySize is the minimum length of a cluster key.
	MinKeySize = 32
	// NonceSize is the size of each side's handshake nonce.
	NonceSize = 32
	// ProofSize is the size of an authentication proof (HMAC-SHA256).
	ProofSize = sha256.Size
	// MaxIdentity bounds ClientHello.ID and ServerHello.Cluster.
	MaxIdentity = 256

	// FlagAuth, in ClientHello.Flags: the client holds the cluster key and
	// will prove it. In ServerHello.Flags: the hello carries the server's
	// proof. The handshake functions set and clear it themselves.
	FlagAuth uint32 = 1 << 0
	// Bits 1<<8 and 1<<9 of ClientHello.Flags are taken by the
	// chain-register baseline (apps/chain: a chain client, a replica's
	// link to its successor), which reuses this handshake; wormservers
	// ignore them. New flags of this protocol use bits below 8.

	// handshake message header: magic, u16 version, u8 type, u16 body size.
	hsHeader = 4 + 2 + 1 + 2
	// maxHandshakeBody bounds the body of a handshake message a server
	// reads (a client hello, a proof: at most about 300 bytes), before it
	// knows whom it talks to.
	maxHandshakeBody = 2048
	// maxServerHelloBody bounds the body of a server hello, which carries
	// the server's membership (two configurations of up to 64 members):
	// about 400 bytes plus membershipSize.
	maxServerHelloBody = 512 + membershipSize
	// errorWriteTimeout bounds the best-effort write of an error message
	// to a peer that may not be reading, so a failing handshake cannot
	// hang on it.
	errorWriteTimeout = time.Second
)

// handshake message types
const (
	msgClientHello = 1 + iota
	msgServerHello
	msgClientProof
	msgError
)

// Labels separate the two proofs, so that neither can be reflected as the
// other.
const (
	serverProofLabel = "WORM server proof\x00"
	clientProofLabel = "WORM client proof\x00"
)

// ClientHello is the client's first message.
type ClientHello struct {
	// Version is the client's protocol version (set by ClientHandshake).
	Version uint16
	// Flags: FlagAuth (managed by the handshake); other bits are reserved,
	// sent as given and ignored by this version.
	Flags uint32
	// Nonce is fresh randomness (set by ClientHandshake).
	Nonce [NonceSize]byte
	// ID is the client's identity (what Alloc records), at most
	// MaxIdentity bytes. It is authenticated as part of the transcript
	// when a key is used, but any key holder may claim any ID.
	ID string
	// Epoch is the configuration epoch the client issues its operations
	// under on this connection (0: the initial configuration). The server
	// binds the connection to it and answers its requests only while it
	// serves that epoch (paxos.StatusSealed otherwise).
	Epoch uint64
}

// ServerHello is the server's answer: who it is and the limits of the
// connection.
type ServerHello struct {
	// Version is the server's protocol version (set by ServerHandshake).
	Version uint16
	// Flags: FlagAuth (managed by the handshake); other bits reserved.
	Flags uint32
	// AcceptorID is the wormserver's acceptor id.
	AcceptorID uint32
	// Cluster is the cluster name, at most MaxIdentity bytes. A client
	// should refuse a server of another cluster.
	Cluster string
	// SegmentSize is the number of data registers per segment.
	SegmentSize uint32
	// MaxValue and MaxFrame are the server's limits; zero means the
	// defaults (ServerHandshake fills them in). The client must encode
	// within them and should read frames up to MaxFrame.
	MaxValue uint32
	MaxFrame uint32
	// Nonce is fresh randomness (set by ServerHandshake).
	Nonce [NonceSize]byte
	// Membership is where the server stands in the sequence of
	// configurations (the zero value: active in epoch 0, the initial
	// configuration). A client learns newer configurations from it.
	Membership Membership
}

// checkKey validates a cluster key; nil means no authentication.
func checkKey(key []byte) error {
	if key != nil && len(key) < MinKeySize {
		return fmt.Errorf("wire: cluster key of %d bytes is shorter than %d: %w", len(key), MinKeySize, ErrAuth)
	}
	return nil
}

func appendHSHeader(dst []byte, typ byte) []byte {
	dst = append(dst, Magic...)
	dst = le.AppendUint16(dst, Version)
	dst = append(dst, typ)
	return le.AppendUint16(dst, 0) // patched by hsFinish
}

func hsFinish(dst []byte) []byte {
	le.PutUint16(dst[7:], uint16(len(dst)-hsHeader))
	return dst
}

func appendString16(dst []byte, s string) []byte {
	dst = le.AppendUint16(dst, uint16(len(s)))
	return append(dst, s...)
}

func encodeClientHello(h *ClientHello) ([]byte, error) {
	if len(h.ID) > MaxIdentity {
		return nil, fmt.Errorf("wire: client identity of %d bytes exceeds %d", len(h.ID), MaxIdentity)
	}
	b := appendHSHeader(nil, msgClientHello)
	b = le.AppendUint32(b, h.Flags)
	b = append(b, h.Nonce[:]...)
	b = appendString16(b, h.ID)
	b = le.AppendUint64(b, h.Epoch)
	return hsFinish(b), nil
}

// encodeServerHello encodes h; with a key it appends the server's proof
// over clientHello and the message itself.
func encodeServerHello(h *ServerHello, clientHello, key []byte) ([]byte, error) {
	if len(h.Cluster) > MaxIdentity {
		return nil, fmt.Errorf("wire: cluster name of %d bytes exceeds %d", len(h.Cluster), MaxIdentity)
	}
	if err := h.Membership.validate(); err != nil {
		return nil, err
	}
	b := appendHSHeader(nil, msgServerHello)
	b = le.AppendUint32(b, h.Flags)
	b = le.AppendUint32(b, h.AcceptorID)
	b = appendString16(b, h.Cluster)
	b = le.AppendUint32(b, h.SegmentSize)
	b = le.AppendUint32(b, h.MaxValue)
	b = le.AppendUint32(b, h.MaxFrame)
	b = append(b, h.Nonce[:]...)
	b = appendMembership(b, &h.Membership)
	if h.Flags&FlagAuth != 0 {
		// The length field counts the proof, so patch it before the MAC.
		le.PutUint16(b[7:], uint16(len(b)+ProofSize-hsHeader))
		b = append(b, proof(key, serverProofLabel, clientHello, b)...)
		return b, nil
	}
	return hsFinish(b), nil
}

func encodeHSError(code Code, text string) []byte {
	if len(text) > maxErrorText {
		text = text[:maxErrorText]
	}
	b := appendHSHeader(nil, msgError)
	b = append(b, byte(code))
	b = append(b, text...)
	return hsFinish(b)
}

func proof(key []byte, label string, parts ...[]byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(label))
	for _, p := range parts {
		m.Write(p)
	}
	return m.Sum(nil)
}

// hsMsg is one handshake message read from the wire.
type hsMsg struct {
	version uint16
	typ     byte
	raw     []byte // the whole message, header included (the transcript)
	body    []byte
}

// readHSMsg reads one handshake message whose body is at most maxBody
// bytes. A peer of another version is reported as a *VersionError
// whatever the message (the header layout is frozen across versions); an
// error message becomes a *RemoteError.
func readHSMsg(r io.Reader, maxBody int) (hsMsg, error) {
	var h [hsHeader]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return hsMsg{}, fmt.Errorf("wire: reading handshake: %w", err)
	}
	m, n, err := parseHSHeader(h[:], maxBody)
	if err != nil {
		return hsMsg{}, err
	}
	m.raw = make([]byte, hsHeader+n)
	copy(m.raw, h[:])
	if _, err := io.ReadFull(r, m.raw[hsHeader:]); err != nil {
		return hsMsg{}, fmt.Errorf("wire: reading handshake: %w", unexpected(err))
	}
	m.body = m.raw[hsHeader:]
	if m.typ == msgError {
		re, err := DecodeError(m.body)
		if err != nil {
			return hsMsg{}, err
		}
		if m.version != Version {
			return hsMsg{}, fmt.Errorf("%w (%w)", &VersionError{Local: Version, Remote: m.version}, re)
		}
		return hsMsg{}, re
	}
	if m.version != Version {
		return m, &VersionError{Local: Version, Remote: m.version}
	}
	return m, nil
}

func parseHSHeader(h []byte, maxBody int) (hsMsg, int, error) {
	if string(h[:4]) != Magic {
		return hsMsg{}, 0, malformed("not a WormSpace peer: handshake starts with %q, want %q", h[:4], Magic)
	}
	m := hsMsg{version: le.Uint16(h[4:]), typ: h[6]}
	n := int(le.Uint16(h[7:]))
	if n > maxBody {
		return hsMsg{}, 0, &FrameError{Reason: "handshake message of " + itoa(uint64(n)) + " bytes exceeds " + itoa(uint64(maxBody)), Err: ErrFrameTooLarge}
	}
	if m.typ < msgClientHello || m.typ > msgError {
		return hsMsg{}, 0, malformed("unknown handshake message type %d", m.typ)
	}
	return m, n, nil
}

func decodeClientHello(m hsMsg) (ClientHello, error) {
	if m.typ != msgClientHello {
		return ClientHello{}, malformed("handshake message type %d where a client hello belongs", m.typ)
	}
	d := decoder{b: m.body}
	h := ClientHello{Version: m.version, Flags: d.u32()}
	copy(h.Nonce[:], d.bytes(NonceSize))
	h.ID = string(d.bytes(uint32(d.u16())))
	h.Epoch = d.u64()
	if d.bad {
		return ClientHello{}, malformed("truncated client hello")
	}
	if len(h.ID) > MaxIdentity {
		return ClientHello{}, malformed("client identity of %d bytes exceeds %d", len(h.ID), MaxIdentity)
	}
	if len(d.b) != 0 {
		return ClientHello{}, malformed("%d trailing bytes after a client hello", len(d.b))
	}
	return h, nil
}

// decodeServerHello decodes a server hello; proof is the server's proof
// when FlagAuth is set.
func decodeServerHello(m hsMsg) (h ServerHello, proof []byte, err error) {
	if m.typ != msgServerHello {
		return ServerHello{}, nil, malformed("handshake message type %d where a server hello belongs", m.typ)
	}
	d := decoder{b: m.body}
	h.Version = m.version
	h.Flags = d.u32()
	h.AcceptorID = d.u32()
	h.Cluster = string(d.bytes(uint32(d.u16())))
	h.SegmentSize = d.u32()
	h.MaxValue = d.u32()
	h.MaxFrame = d.u32()
	copy(h.Nonce[:], d.bytes(NonceSize))
	ms, err := d.membership()
	if err != nil {
		if d.bad {
			return ServerHello{}, nil, malformed("truncated server hello")
		}
		return ServerHello{}, nil, err
	}
	h.Membership = ms
	if h.Flags&FlagAuth != 0 {
		proof = d.bytes(ProofSize)
	}
	if d.bad {
		return ServerHello{}, nil, malformed("truncated server hello")
	}
	if len(h.Cluster) > MaxIdentity {
		return ServerHello{}, nil, malformed("cluster name of %d bytes exceeds %d", len(h.Cluster), MaxIdentity)
	}
	if len(d.b) != 0 {
		return ServerHello{}, nil, malformed("%d trailing bytes after a server hello", len(d.b))
	}
	return h, proof, nil
}

func decodeClientProof(m hsMsg) ([]byte, error) {
	if m.typ != msgClientProof {
		return nil, malformed("handshake message type %d where a client proof belongs", m.typ)
	}
	if len(m.body) != 0 && len(m.body) != ProofSize {
		return nil, malformed("client proof of %d bytes", len(m.body))
	}
	return m.body, nil
}

func (d *decoder) u16() uint16 {
	if len(d.b) < 2 {
		d.bad = true
		d.b = nil
		return 0
	}
	v := le.Uint16(d.b)
	d.b = d.b[2:]
	return v
}

// deadline applies ctx to conn for the duration of a handshake: its
// deadline, and its cancellation (which moves the deadline into the past).
// The returned done must be called with the handshake's result; it clears
// the deadline and returns the result, wrapped with ctx's error when ctx
// ended (a handshake during which ctx ended fails, since the connection's
// deadline may have been moved).
func deadline(ctx context.Context, conn net.Conn) (done func(error) error, err error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	dl, hasDL := ctx.Deadline()
	if err := conn.SetDeadline(dl); err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	return func(err error) error {
		stopped := stop()
		// An error here means the connection is already closed, which the
		// next read or write reports.
		conn.SetDeadline(time.Time{})
		cerr := ctx.Err()
		if cerr == nil && hasDL && errors.Is(err, os.ErrDeadlineExceeded) && !time.Now().Before(dl) {
			// The connection's deadline fired a moment before ctx's timer.
			cerr = context.DeadlineExceeded
		}
		switch {
		case cerr == nil && stopped:
			return err
		case err == nil:
			return fmt.Errorf("wire: handshake: %w", cerr)
		default:
			return fmt.Errorf("wire: handshake: %w (%w)", cerr, err)
		}
	}, nil
}

// sendError writes a handshake error message, best effort and bounded in
// time.
func sendError(conn net.Conn, code Code, text string) {
	conn.SetWriteDeadline(time.Now().Add(errorWriteTimeout))
	conn.Write(encodeHSError(code, text))
}

// ClientHandshake runs the client side of the handshake on conn, the first
// thing on a new connection: it sends hello (with a fresh nonce), reads
// and checks the server's hello, and sends the client's proof. With a
// non-nil key (at least MinKeySize bytes) the client proves knowledge of
// it and requires the server to prove it too; with a nil key it offers no
// authentication and a keyed server refuses it (ErrAuth).
//
// ctx bounds the handshake (through conn's deadlines, which are cleared on
// return). On error the caller closes conn. On success the connection
// speaks frames in both directions: wrap it in a Reader and a Writer with
// the limits of the returned ServerHello.
func ClientHandshake(ctx context.Context, conn net.Conn, hello ClientHello, key []byte) (ServerHello, error) {
	if err := checkKey(key); err != nil {
		return ServerHello{}, err
	}
	done, err := deadline(ctx, conn)
	if err != nil {
		return ServerHello{}, fmt.Errorf("wire: handshake: %w", err)
	}
	sh, err := clientHandshake(conn, hello, key)
	if err = done(err); err != nil {
		return ServerHello{}, err
	}
	return sh, nil
}

func clientHandshake(conn net.Conn, hello ClientHello, key []byte) (ServerHello, error) {
	hello.Version = Version
	rand.Read(hello.Nonce[:])
	hello.Flags &^= FlagAuth
	if key != nil {
		hello.Flags |= FlagAuth
	}
	ch, err := encodeClientHello(&hello)
	if err != nil {
		return ServerHello{}, err
	}
	if _, err := conn.Write(ch); err != nil {
		return ServerHello{}, fmt.Errorf("wire: sending client hello: %w", err)
	}
	m, err := readHSMsg(conn, maxServerHelloBody)
	if err != nil {
		var ve *VersionError
		if errors.As(err, &ve) && m.raw != nil {
			sendError(conn, CodeVersion, ve.Error())
		}
		return ServerHello{}, err
	}
	sh, sproof, err := decodeServerHello(m)
	if err != nil {
		sendError(conn, CodeMalformed, err.Error())
		return ServerHello{}, err
	}
	var cproof []byte
	if key != nil {
		if sh.Flags&FlagAuth == 0 {
			err := fmt.Errorf("wire: server %d did not authenticate itself (it has no cluster key): %w", sh.AcceptorID, ErrAuth)
			sendError(conn, CodeAuth, "client requires authentication and the server has no cluster key")
			return ServerHello{}, err
		}
		want := proof(key, serverProofLabel, ch, m.raw[:len(m.raw)-ProofSize])
		if !hmac.Equal(sproof, want) {
			sendError(conn, CodeAuth, "server authentication failed")
			return ServerHello{}, fmt.Errorf("wire: server %d failed to prove the cluster key (wrong key, replay or tampering): %w", sh.AcceptorID, ErrAuth)
		}
		cproof = proof(key, clientProofLabel, ch, m.raw)
	}
	b := appendHSHeader(nil, msgClientProof)
	b = hsFinish(append(b, cproof...))
	if _, err := conn.Write(b); err != nil {
		return ServerHello{}, fmt.Errorf("wire: sending client proof: %w", err)
	}
	if sh.MaxValue == 0 {
		sh.MaxValue = DefaultMaxValue
	}
	if sh.MaxFrame == 0 {
		sh.MaxFrame = DefaultMaxFrame
	}
	return sh, nil
}

// ServerHandshake runs the server side of the handshake on conn: it reads
// the client's hello, answers with hello (its nonce is filled in; zero
// limits become the defaults) and, with a non-nil key, verifies the
// client's proof. It refuses, with an error message the client reports:
// another protocol version (ErrVersion), a client without the key when
// key is non-nil ("authentication required", ErrAuth), a wrong proof
// (ErrAuth). A failed proof is reported to the client as an error frame,
// since by then the client speaks frames.
//
// ctx bounds the handshake as for ClientHandshake. On error the caller
// closes conn.
func ServerHandshake(ctx context.Context, conn net.Conn, hello ServerHello, key []byte) (ClientHello, error) {
	if err := checkKey(key); err != nil {
		return ClientHello{}, err
	}
	done, err := deadline(ctx, conn)
	if err != nil {
		return ClientHello{}, fmt.Errorf("wire: handshake: %w", err)
	}
	ch, err := serverHandshake(conn, hello, key)
	if err = done(err); err != nil {
		return ClientHello{}, err
	}
	return ch, nil
}

func serverHandshake(conn net.Conn, hello ServerHello, key []byte) (ClientHello, error) {
	m, err := readHSMsg(conn, maxHandshakeBody)
	if err != nil {
		var ve *VersionError
		var re *RemoteError
		if errors.As(err, &ve) && !errors.As(err, &re) {
			sendError(conn, CodeVersion, fmt.Sprintf("protocol version mismatch: client speaks version %d, server speaks version %d", ve.Remote, ve.Local))
		} else if errors.Is(err, ErrMalformed) || errors.Is(err, ErrFrameTooLarge) {
			sendError(conn, CodeOf(err), err.Error())
		}
		return ClientHello{}, err
	}
	ch, err := decodeClientHello(m)
	if err != nil {
		sendError(conn, CodeMalformed, err.Error())
		return ClientHello{}, err
	}
	if key != nil && ch.Flags&FlagAuth == 0 {
		sendError(conn, CodeAuth, "authentication required: this server needs the cluster key")
		return ClientHello{}, fmt.Errorf("wire: client %q offered no authentication: authentication required: %w", ch.ID, ErrAuth)
	}
	hello.Version = Version
	rand.Read(hello.Nonce[:])
	hello.Flags &^= FlagAuth
	if key != nil {
		hello.Flags |= FlagAuth
	}
	if hello.MaxValue == 0 {
		hello.MaxValue = DefaultMaxValue
	}
	if hello.MaxFrame == 0 {
		hello.MaxFrame = DefaultMaxFrame
	}
	sh, err := encodeServerHello(&hello, m.raw, key)
	if err != nil {
		return ClientHello{}, err
	}
	if _, err := conn.Write(sh); err != nil {
		return ClientHello{}, fmt.Errorf("wire: sending server hello: %w", err)
	}
	pm, err := readHSMsg(conn, maxHandshakeBody)
	if err != nil {
		return ClientHello{}, err
	}
	cproof, err := decodeClientProof(pm)
	if err != nil {
		sendFrameError(conn, CodeMalformed, err.Error())
		return ClientHello{}, err
	}
	if key != nil {
		want := proof(key, clientProofLabel, m.raw, sh)
		if !hmac.Equal(cproof, want) {
			sendFrameError(conn, CodeAuth, "client authentication failed")
			return ClientHello{}, fmt.Errorf("wire: client %q failed to prove the cluster key (wrong key, replay or tampering): %w", ch.ID, ErrAuth)
		}
	}
	return ch, nil
}

// sendFrameError writes an error frame, best effort and bounded in time.
func sendFrameError(conn net.Conn, code Code, text string) {
	conn.SetWriteDeadline(time.Now().Add(errorWriteTimeout))
	conn.Write(AppendErrorFrame(nil, code, text))
}
