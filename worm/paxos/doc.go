// Package paxos is the pure protocol core of WormSpace: one single-decree
// Paxos instance per write-once register, with range promises per segment.
//
// It does no I/O, reads no clock and starts no goroutines. Transport and
// storage are injected by the caller:
//
//   - Acceptor is the wormserver's state machine. Handle applies a Request
//     and fills a Response; it returns the Records that must be durable
//     before the Response may leave the server. Apply replays Records
//     after a restart.
//   - Proposer and its operations (Op) are the client's state machines:
//     an Op emits Requests (Outbox), consumes Responses (Step), learns of
//     unreachable acceptors (Fail) and of deadlines (Expire), and ends with
//     a Result. The client library (worm/client) drives Ops over TCP; the
//     deterministic simulator (worm/sim) drives the very same Ops over a
//     seeded, faulty network.
//   - Exporter and Acceptor.Install are the state transfer that replaces
//     a wormserver (transfer.go): an acceptor's state streamed as Records
//     in bounded chunks, merged into a new acceptor as a lattice join.
//     RecordMembership keeps the server's membership with the state, opaque
//     to the acceptor.
//
// Because everything here is deterministic, a scenario is a sequence of
// messages; tests replay them step by step (testdata/*.txt).
//
// This package imports only the standard library and package worm; it must
// never import worm/wire, worm/storage, worm/server, worm/client or
// anything that does I/O.
package paxos
