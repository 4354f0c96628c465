package storage

import "github.com/wormspace/wormspace/worm/paxos"

// Exports for the external tests (package storage_test), which may import
// worm/storage/simfs (it imports this package, so tests inside it cannot).

type Workload = workload

func NewWorkload(seed, segs uint64) *Workload { return newWorkload(seed, segs) }

// Step handles random requests until some produce records and returns
// them (valid until the next Step).
func (w *workload) Step() []paxos.Record { return w.step() }

// Acceptor is the workload's acceptor; SetAcceptor replaces it (with one
// recovered after a crash).
func (w *workload) Acceptor() *paxos.Acceptor     { return w.acc }
func (w *workload) SetAcceptor(a *paxos.Acceptor) { w.acc = a }

func Canon(acc *paxos.Acceptor) string { return canon(acc) }

const TestSegSize = testSegSize

// SeedFlag is -seed.
var SeedFlag = seedFlag
