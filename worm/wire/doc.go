// Package wire is the WormSpace wire protocol between clients (Paxos
// proposers, worm/client) and wormservers (acceptors, worm/server): a
// versioned handshake followed by length-prefixed binary frames over one
// stream connection (any net.Conn: kernel TCP, gVisor netstack, net.Pipe).
// Many requests are in flight at once on one connection: the client tags
// each with a request ID of its choosing and the server echoes it in the
// response, in whatever order the responses become ready. There is no
// lock-step RPC.
//
// # Using it
//
// A client dials, runs ClientHandshake, then wraps the connection:
//
//	sh, err := wire.ClientHandshake(ctx, conn, wire.ClientHello{ID: myID}, key)
//	r := wire.NewReader(conn, int(sh.MaxFrame))
//	w := wire.NewWriter(conn, int(sh.MaxFrame), int(sh.MaxValue))
//
// Its sender goroutine encodes queued requests with w.WriteRequest and
// calls w.Flush when the queue is empty, so a burst leaves in one write.
// Its receiver goroutine loops on r.Next and decodes each FrameResponse
// payload with DecodeResponse into a reused paxos.Response, then matches
// the ID to the waiting operation; FramePush frames carry KindNotify
// responses (ID 0); a FrameErr frame is decoded with DecodeError and ends
// the connection. A server does the mirror image with ServerHandshake,
// DecodeRequest, WriteResponse and WritePush. When Next or a decoder
// reports an error, the receiver sends an error frame (Writer.WriteError)
// and closes the connection: after a framing error the stream cannot be
// resynchronised.
//
// # Handshake
//
// Every handshake message starts with a 9-byte header whose layout is
// frozen across protocol versions, so that a mismatch is always reported
// with both version numbers:
//
//	+------+------+------+------+---------+------+-----------+----------
//	| 'W'  | 'O'  | 'R'  | 'M'  | version | type | body size | body ...
//	+------+------+------+------+---------+------+-----------+----------
//	  0      1      2      3      4..5 u16  6 u8   7..8 u16    9..
//
// Message types and bodies (all integers little-endian; strings are a u16
// length and bytes; a server reads bodies of at most 2 KiB, a client
// server hellos of at most about 34 KiB):
//
//	1 client hello  u32 flags | nonce[32] | string client id (<= 256 bytes)
//	                | u64 epoch
//	2 server hello  u32 flags | u32 acceptor id | string cluster (<= 256)
//	                | u32 segment size | u32 max value | u32 max frame
//	                | nonce[32] | membership
//	                | proof[32] (only when flags has FlagAuth)
//	3 client proof  proof[32], or empty without a key
//	4 error         u8 Code | text   (the sender closes after it)
//
//	membership      u8 state (0 active, 1 sealed, 2 joining) | u8 flags
//	                (1: installed) | u64 epoch | members | u64 next epoch
//	                | next members
//	members         u8 n (<= 64) | n × (u32 acceptor id | u8 length | address)
//
// # Configurations and epochs
//
// The wormservers of a cluster form a configuration with an epoch number
// (Config); epoch 0 is the initial one, whose members only the clients
// know. A client names in its hello the epoch it issues operations under
// (ClientHello.Epoch) and the server binds the connection to it: it
// answers that connection's requests only while it serves that epoch, and
// refuses them otherwise with paxos.StatusSealed, which changed nothing.
// The server hello says where the server stands (Membership: active in an
// epoch, sealed with the configuration that succeeds it, or joining), so a
// client learns a newer configuration from any member it reaches; a server
// pushes its membership (a FrameControl with id 0) to its connections when
// it changes. Binding once per connection keeps the epoch out of every
// request. Control requests (FrameControl, control.go) seal an epoch,
// stream a sealed member's state out and into a new member, and activate
// the next configuration; worm/client documents the procedure.
//
// The sequence is client hello → server hello → client proof; then both
// sides speak frames. The server refuses with an error message (instead of
// its hello) a client of another version (CodeVersion, naming both
// versions) and, when it has a key, a client that offers none
// (CodeAuth, "authentication required"). The client refuses a server
// whose proof is wrong or missing when the client has a key (it sends an
// error message instead of its proof). A wrong client proof is answered
// with an error frame, since the client already speaks frames.
//
// # Authentication
//
// With a pre-shared cluster key (at least 32 bytes), each side proves it
// knows the key with HMAC-SHA256 over the transcript, which contains both
// fresh 32-byte nonces:
//
//	server proof = HMAC(key, "WORM server proof\x00" || client hello || server hello up to its proof)
//	client proof = HMAC(key, "WORM client proof\x00" || client hello || server hello)
//
// (each message as sent, header included). A replayed handshake fails
// because the other side's nonce is fresh; a tampered message fails
// because the proofs cover every byte of both hellos; the distinct labels
// keep one side's proof from being reflected as the other's.
//
// The key authenticates peers and nothing else: no session key is
// derived, and frames after the handshake are neither encrypted nor
// integrity-protected. The network between clients and wormservers is
// assumed private (a cluster network, a VPN); an attacker on the path can
// read values and, after the handshake, inject or alter frames. Keys and
// identities are only as trustworthy as that assumption.
//
// # Frames
//
//	+-----------+------+-----------+------------------------------
//	| length    | type | id        | payload ...
//	+-----------+------+-----------+------------------------------
//	  0..3 u32    4 u8   5..12 u64   13 .. 4+length
//
// length counts the type, id and payload (9 + len(payload)). Types:
// FrameRequest (1, payload: a paxos.Request), FrameResponse (2, a
// paxos.Response to the request with the same id), FramePush (3, a
// KindNotify response, id 0: the notify section names the run of
// registers that accepted a value, count 0 meaning "notifications were
// dropped", and the regs section the accepted ballot and value of those
// registers of the run whose values the server sends), FrameErr (4, u8
// Code and text, id 0, the sender closes the connection after it),
// FrameControl (5, a Control request from a client, or a ControlReply
// from the server: the answer to the request with the same id, or with
// id 0 a membership push).
//
// Request payload (fixed 37 bytes, then the values):
//
//	u8 kind | u64 seg | u32 off | u64 ballot round | u64 ballot node
//	| u32 count | u32 n | n × (u32 length | value bytes)
//
// Response payload: u8 kind | u8 status | u8 sections, then each section
// whose bit is set, in this order (a section is sent only when its fields
// are non-zero, so the payload of an Accepted reply for one register is
// 9 bytes):
//
//	bit 0 promised   u64 round | u64 node
//	bit 1 reg        one register state
//	bit 2 regs       u32 n | n register states
//	bit 3 contended  u32 n | n × u32 offset
//	bit 4 results    u32 n | n register results
//	bit 5 notify     u64 seg | u32 off | u32 count
//	bit 6 text       u32 n | n bytes
//
//	register state   u32 off | u8 flags | [ballot accepted] | [u32 n | value]
//	register result  u8 status | u8 flags | [ballot promised] | [ballot accepted] | [u32 n | value]
//
// Control request and reply payloads (fixed layouts, no sections):
//
//	control        u8 op | u64 epoch | u64 config epoch | members
//	               | u64 cursor seg | u64 cursor pos | u32 max bytes | records
//	control reply  u8 op | u8 status | u8 flags (1: done) | u32 conflicts
//	               | u64 next seg | u64 next pos | membership
//	               | u32 n | text (<= 1 KiB) | records
//	records        u32 n | n × (u8 kind | u64 seg | u32 off | u64 round
//	               | u64 node | u32 length | value)
//
// flags: 1 HasValue, 2 Decided, 4 accepted ballot follows, 8 value follows
// (Value != nil), 16 promised ballot follows (results only). Fixed-width
// little-endian integers were chosen over uvarints: ballot nodes are
// random 64-bit numbers (10 bytes as uvarints) and fixed fields decode
// without branches.
//
// # Limits
//
// A frame's length field may not exceed the maximum frame size (default
// DefaultMaxFrame, 4 MiB + 64 KiB) and a value the maximum value size
// (default DefaultMaxValue, 1 MiB); the server announces both in its hello
// and the client encodes within them. Reader.Next refuses an oversize
// length from the 4-byte prefix alone, before allocating. Every count in
// a payload is checked against the bytes that remain before anything is
// allocated for it; unknown frame types, kinds, statuses, section bits or
// flag bits and trailing bytes are errors (ErrMalformed). Writer refuses
// to encode over the limits (ErrFrameTooLarge, ErrValueTooLarge) without
// buffering anything, so the connection stays usable.
//
// # Ownership
//
// Reader.Next returns a payload that aliases the Reader's buffer and is
// valid only until the next call to Next. DecodeRequest and DecodeResponse
// reuse the slices of the Request or Response they fill (Values, Regs,
// Contended, Results) and make every value alias the payload: a decoded
// message is therefore valid only until the next Next, and whoever keeps
// a value beyond that copies it (paxos.Response.Clone does). A zero-length
// slice may come back nil or empty; a zero-length value that was non-nil
// comes back non-nil. Text is always copied. AppendRequest,
// AppendResponse and the Writer copy everything they are given; the
// message may be reused as soon as they return.
//
// In steady state (reused buffers, Request and Response), encoding and
// decoding allocate nothing; see the benchmarks.
//
// This package imports only the standard library, worm and worm/paxos; it
// must never import worm/client, worm/server or worm/storage.
package wire
