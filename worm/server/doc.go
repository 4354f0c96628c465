// Package server is the wormserver: one process is one Paxos acceptor for
// the whole WormSpace, persistent in its data directory, serving the
// worm/wire protocol to clients (proposers and learners).
//
// # Assembling a server
//
// A wormserver is built bottom-up, each layer owning the one below:
//
//	log := storage.Open(dir)                  // worm/storage: a durable Log (wormd does this)
//	acc := paxos.NewAcceptor(segSize)         // replayed from log's records
//	eng := server.NewEngine(acc, log, logger, nil)
//	srv, err := server.New(server.Config{Engine: eng, AcceptorID: id, Cluster: name, Key: key})
//	go srv.Serve(tcpListener)                 // any net.Listener: kernel TCP,
//	go srv.Serve(netstackListener)            // gVisor netstack, net.Pipe
//	http.Handle("/metrics", srv.Metrics())
//	...
//	srv.Shutdown(ctx)                         // then eng.Close(), then log.Close()
//
// The Engine knows nothing of sockets: it serialises requests into the
// pure acceptor (worm/paxos), appends the records each request produces
// to the Log, and releases each response through a Replier only once the
// Log is durable up to every record appended before the response was
// computed (a response may reveal earlier, not yet durable changes).
// Concurrent requests share one Log.Sync (group commit): while one sync
// runs, the next batch accumulates. With a Log that fsyncs, the sync that
// starts a burst of requests waits, up to half a sync's duration, for the
// followers that recent bursts had (adaptive group commit, gather.go;
// Engine.SetGroupCommit, wormd -group-commit): requests released a
// little apart, like the votes of a WormTX transaction's participants,
// then share one fsync instead of two, and a client alone never waits.
//
// The Server speaks the wire protocol over the Engine. Per connection, a
// reader goroutine runs the handshake (bounded by HandshakeTimeout), then
// decodes request frames into one reused paxos.Request and hands them to
// the Engine tagged with a slot number that remembers the client's request
// id; replies are encoded into an output buffer that leaves in one write
// whatever was released together. When the reader has dispatched every
// request it received and no write is in progress, it writes that buffer
// itself before it reads again, saving a hand-off (a client waiting for
// each reply); otherwise a writer goroutine sends it. The request path
// allocates nothing in steady state (see BenchmarkPipelinedRead and
// BenchmarkRoundTrip).
//
// # Guarantees
//
//   - A reply leaves only after the sync that covers every record appended
//     before it; a sync failure means the waiting replies are never sent
//     (their clients time out: unknown outcome, the truth) and every later
//     request is answered StatusError.
//   - Replies carry the request's id and come back in whatever order they
//     become ready. KindDecide is never answered.
//   - KindListen(Seg) subscribes the connection to write notifications of
//     Seg (StatusOK; StatusTrimmed for a trimmed segment); KindUnlisten
//     ends it; closing the connection ends all of them. A notification is
//     a FramePush carrying a KindNotify response (Seg, Off, Count): the
//     registers [Off, Off+Count) accepted a value, and Regs holds the
//     accepted ballot and value of each of them whose value is at most
//     1 KiB (larger ones are announced without value). It is emitted only
//     once that value is durable and after the accept's reply was
//     released. One acceptor's notification says what it accepted, not
//     what is chosen: a listener learns a value as chosen when a quorum
//     reported it at one ballot (worm/client), or reads. After the Listen
//     reply the server replays the notifications of the segment's recent
//     small writes (a bounded cache), so that a subscriber learns the
//     writes that raced with its subscription too.
//   - Lost marker: a push with Count == 0 (and Off == 0) means that
//     notifications of Seg were dropped because the connection's output
//     was over its cap; the listener should rescan the segment. It is sent
//     once the connection's output has drained below half the cap.
//   - KindStatus is answered StatusOK with a JSON document in Text (see
//     Server.Status); Metrics serves Prometheus text format.
//   - Configurations (membership.go): a connection is bound to the epoch
//     of its client's hello, and requests of an epoch the server does not
//     serve (sealed for a membership change, or not yet joined) are
//     answered StatusSealed with nothing changed. Control frames seal an
//     epoch, export a sealed member's state, install it into a joining
//     member (wormd -join) and activate the next configuration; each
//     change is recorded with the acceptor's state before its reply, and
//     pushed to the connections.
//
// # Limits, and what a client sees on bad input
//
// Each connection may have MaxInflight requests read but unanswered and
// MaxPending bytes held for its replies (queued output, and responses the
// Engine holds until a sync); at either, the server stops reading that
// connection until its writes drain (backpressure through TCP: the
// connection stays open), so a client that does not read its replies
// throttles only itself. All connections together hold at most
// MaxPendingTotal bytes for replies: a reader that has read a request
// waits for room for the largest reply before dispatching it. A
// connection's memory is bounded by about MaxPending + one reply, plus the
// wire Reader's 64 KiB buffer and one frame of MaxFrame. A write that
// makes no progress within WriteTimeout closes the connection (a watchdog
// looks at the writes in flight; no deadline is armed per write); while
// connections wait for room in MaxPendingTotal, the shorter
// PressureTimeout applies, so that clients that stopped reading give
// their bytes back. Throttling, the bytes held and these closes are in the
// metrics; the closes and a full budget are logged.
//
//   - A frame that is malformed, of an unknown type, of a type a client may
//     not send, longer than MaxFrame (judged from its length prefix), or
//     carrying a value over MaxValue: the client receives a wire error
//     frame (CodeMalformed or CodeFrameTooLarge) after the replies already
//     queued, and the connection is closed; its requests still in flight
//     are not answered. A stream that ends inside a frame is closed
//     silently.
//   - A handshake that is not WormSpace, of another version, without the
//     cluster key when the server has one, with a wrong key or replayed:
//     refused by worm/wire's handshake with its error message.
//   - Over MaxConns: the connection is answered with a handshake error
//     message (CodeOther, "too many connections") and closed, so the
//     client's ClientHandshake returns a *wire.RemoteError.
//   - A response too large for MaxFrame (a PrepareSeg of a segment holding
//     more data than a frame): StatusError with an explanation.
//   - Shutdown: after the replies in flight, a CodeShutdown error frame
//     (wire.ErrShutdown), then the connection closes.
//
// Every other client keeps being served. Each such event is logged once
// with slog, rate-limited (10 per second per kind, with a count of those
// suppressed), and counted in the metrics.
//
// This package must never import worm/client (the server side knows only
// worm/wire and worm/paxos) nor worm/storage (wormd glues storage in
// through the Log interface).
package server
