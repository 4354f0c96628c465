// Package twopc is the baseline WormTX is compared with: classic
// two-phase commit with presumed abort, behind the same interfaces
// (wormtx.TM for the coordinator, wormtx.Resource for the participants'
// state), so one harness runs both and compares latency and message
// delays.
//
// # Usage
//
//	net := twopc.NewNetwork(oneWay)          // in-process messages
//	co := twopc.NewCoordinator(net, twopc.CoordinatorConfig{
//		Name: "coord", Log: space, LogSeg: 1 << 30})
//	co.EnsureLog(ctx, 1)
//	go co.Run(ctx)
//	p := twopc.NewParticipant(net, ledger, twopc.ParticipantConfig{Name: "alice"})
//	go p.Run(ctx)
//	id, _ := co.Begin(ctx, []string{"alice", "bob"}, payload)
//	o, _ := co.Await(ctx, id)
//
// # Protocol
//
// Begin sends prepare to every participant (delay 1); each prepares its
// Resource and sends its vote (delay 2); on all yes, or one no, or a vote
// timeout, the coordinator forces its decision to its log and sends it
// (delay 3). Counting the client's request, four message delays, like
// WormTX. The log is one write-once register per transaction in segments
// of the coordinator's own, written with WriteUnsafe (the coordinator is
// its only writer); pass an undelayed Space to model a local disk.
//
// A participant that voted yes may not decide alone: it asks the
// coordinator periodically and waits. If the coordinator crashes after
// the prepares, its participants are blocked, holding their locks, until
// a coordinator on the same log recovers and answers (with the logged
// decision, or abort when none was logged: presumed abort, itself logged
// with capture+write so an ambiguous earlier write cannot resurface).
// Participant.Await reports ErrInDoubt when a bounded wait ends in that
// state. Cooperative termination among participants is not implemented:
// it cannot help when every participant voted yes, which is the case the
// tests show.
//
// This package imports the standard library, package worm and
// apps/wormtx. It must never import worm/paxos, worm/wire, worm/server,
// worm/client or worm/storage.
package twopc
