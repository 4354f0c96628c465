// Package sim is a deterministic simulator for WormSpace: the real
// protocol core and the real storage, over a simulated network and
// simulated disks.
//
// It runs the real acceptors (paxos.Acceptor), each persisting through
// the real storage log (worm/storage) on its own simulated disk
// (worm/storage/simfs), and the real client operations (paxos.Op), all
// driven by one seeded random source. Messages are delivered in random
// order, dropped, duplicated and retransmitted; partitions cut links one
// way or both. Acceptors reply only once storage reported their records
// durable, their group commits interleave with everything else, and they
// compact their logs. They crash by power failure (the disk keeps a
// seeded choice of what was not synced: nothing, everything, a prefix, a
// torn write, pages in any order, and a prefix of the directory's
// changes) or by process crash (the page cache survives), between steps
// or in the middle of a sync, a compaction or a recovery; they restart
// through the real recovery code. Disks may also fill up or fail writes
// and fsyncs with EIO.
//
// After every step the simulator checks the invariants of the reference
// (section 4) over what the acceptors accepted: agreement (one value per
// register, whatever quorum), validity (only written values are chosen)
// and one value per ballot (but for ballot 0 under UnsafeContention,
// where several unsafe writers each leave their own). After every recovery it checks durability:
// the recovered state is a state the acceptor went through, at least as
// recent as every reply it sent and everything storage reported durable.
// At the end it cuts every acceptor's power once more, recovers it, checks
// that every chosen register is still held by a majority, and checks every
// operation's outcome against what was chosen.
//
// A run is a pure function of its Config: a failing seed replays exactly,
// and the failure names the command that replays it.
//
// This package must never import worm/wire, worm/server, worm/client or
// anything that does real I/O; worm/storage runs here only over simfs.
package sim

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"

	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/paxos"
)

// Config describes one simulation run.
type Config struct {
	// Name names the configuration in the replay command of a violation.
	Name      string
	Seed      uint64
	Acceptors int // 3 or 5
	Clients   int
	Segments  int    // segments in play (1..)
	SegSize   uint32 // registers per segment
	Ops       int    // operations per client
	// ValueSize pads the values clients write to this many bytes (the
	// state, and so the log, grows with it).
	ValueSize int
	// Fault probabilities per step.
	Drop, Dup, Crash, Nudge, Expire float64
	// MaxDown bounds how many acceptors may be down at once (a minority
	// keeps the system live; more tests unavailability). An acceptor with
	// a crash armed counts as down.
	MaxDown int
	// Trim enables trim operations.
	Trim bool
	// Partition is the per-step probability that the network's partition
	// changes: either every cut heals, or the links between one acceptor
	// and a random subset of clients are cut, in one direction (requests
	// or responses lost: one-way drops) or both. Messages crossing a cut
	// are lost when they would be delivered.
	Partition float64

	// PowerLoss is the fraction of crashes that are power failures (the
	// disk keeps a seeded choice of its unsynced state); the others are
	// process crashes (the page cache survives, only the process's memory
	// is lost).
	PowerLoss float64
	// MidOp is the fraction of crashes armed to strike during one of the
	// acceptor's next few disk operations (inside a sync, a compaction, a
	// preallocation) instead of between steps; half as often, a crash is
	// armed to strike during a recovery.
	MidOp float64
	// Sync is the per-step probability that an acceptor with replies
	// waiting runs its group commit (lower: larger groups, more unsynced
	// state for crashes to tear).
	Sync float64
	// Compact is the per-step probability that a random acceptor compacts
	// its log whatever ShouldCompact says (besides the compactions
	// ShouldCompact asks for after trims).
	Compact float64
	// DiskCapacity, when positive, is the size of each acceptor's disk in
	// bytes: storage refuses requests it cannot store.
	DiskCapacity int64
	// WriteErr and SyncErr are the probabilities that a disk write or an
	// fsync fails with EIO.
	WriteErr, SyncErr float64
	// UnsafeContention lets every client WriteUnsafe any register, each
	// with its own value, against WriteUnsafe's contract (one designated
	// writer per register): the register must stay write-once and every
	// outcome true all the same (see worm/paxos/zero.go). Ballot 0 then
	// carries several values, one of which at most reaches a quorum.
	UnsafeContention bool

	// Control, when set, breaks durability on purpose (see Control); the
	// controls' tests require that some seed finds a violation.
	Control Control

	// Trace, when set, receives one line per step and per storage event.
	Trace func(string)
}

// Control is a deliberately broken variant of the system under test.
type Control string

const (
	// ControlVolatile runs storage with Options.Volatile: Sync does not
	// fsync, so replies leave before their records are durable.
	ControlVolatile Control = "volatile-storage"
	// ControlReplyBeforeSync releases every reply at once, without
	// waiting for a Sync (an engine that forgets the durability rule).
	ControlReplyBeforeSync Control = "reply-before-sync"
	// ControlOwnRecordsOnly makes a reply wait only for its own request's
	// records: a reply that changes nothing (a read, a nack) leaves at
	// once, though it may reveal another request's records that are not
	// durable yet (the engine's rule is that a reply waits for everything
	// appended before it was computed).
	ControlOwnRecordsOnly Control = "own-records-only"
	// ControlUnsyncedRecovery ignores the fsyncs storage issues while it
	// recovers (Open), as storage did before the simulator found that a
	// process crash can leave the page cache holding writes that never
	// reached the device, which the restarted acceptor answers from.
	ControlUnsyncedRecovery Control = "unsynced-recovery"
	// ControlLyingDisk gives storage disks whose fsync succeeds without
	// making anything durable.
	ControlLyingDisk Control = "lying-fsync"
	// ControlNoDirSync gives storage disks whose directory fsync succeeds
	// without making names durable.
	ControlNoDirSync Control = "lying-dir-fsync"
)

// DefaultConfig is a moderately faulty 3-acceptor run.
func DefaultConfig(seed uint64) Config {
	return Config{Name: "default", Seed: seed, Acceptors: 3, Clients: 3, Segments: 2, SegSize: 4, Ops: 25,
		Drop: 0.05, Dup: 0.05, Crash: 0.01, Nudge: 0.05, Expire: 0.003, MaxDown: 1, Trim: true,
		PowerLoss: 0.6, MidOp: 0.3, Sync: 0.3, Compact: 0.005}
}

// Stats summarise a run.
type Stats struct {
	Steps, Delivered, Dropped, Duplicated, Expired, Partitions, Cut int
	// Crashes counts acceptors taken down: PowerLosses and Kills between
	// steps, MidOpCrashes inside a storage operation. RecoveryCrashes
	// struck during a recovery; Restarts are recoveries that succeeded.
	Crashes, PowerLosses, Kills, MidOpCrashes, RecoveryCrashes, Restarts int
	// Storage: group commits, compactions (and failed ones), torn tails
	// recovery cut, incomplete generations it discarded, requests refused
	// for lack of room, engines stopped by a storage failure.
	Syncs, Compactions, CompactFailed, TornTails, Discarded, Refused, StorageFailures int
	Ops                                                                               map[string]int
	Errors                                                                            map[string]int
}

// Add adds o's counts to s.
func (s *Stats) Add(o Stats) {
	s.Steps += o.Steps
	s.Delivered += o.Delivered
	s.Dropped += o.Dropped
	s.Duplicated += o.Duplicated
	s.Expired += o.Expired
	s.Partitions += o.Partitions
	s.Cut += o.Cut
	s.Crashes += o.Crashes
	s.PowerLosses += o.PowerLosses
	s.Kills += o.Kills
	s.MidOpCrashes += o.MidOpCrashes
	s.RecoveryCrashes += o.RecoveryCrashes
	s.Restarts += o.Restarts
	s.Syncs += o.Syncs
	s.Compactions += o.Compactions
	s.CompactFailed += o.CompactFailed
	s.TornTails += o.TornTails
	s.Discarded += o.Discarded
	s.Refused += o.Refused
	s.StorageFailures += o.StorageFailures
	if s.Ops == nil {
		s.Ops, s.Errors = map[string]int{}, map[string]int{}
	}
	for k, v := range o.Ops {
		s.Ops[k] += v
	}
	for k, v := range o.Errors {
		s.Errors[k] += v
	}
}

func (s Stats) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "steps=%d delivered=%d dropped=%d dup=%d expired=%d partitions=%d cut=%d crashes=%d (power=%d kill=%d mid-op=%d) recovery-crashes=%d restarts=%d syncs=%d compactions=%d (failed %d) torn-tails=%d discarded-gens=%d refused=%d storage-failures=%d ops=",
		s.Steps, s.Delivered, s.Dropped, s.Duplicated, s.Expired, s.Partitions, s.Cut, s.Crashes, s.PowerLosses, s.Kills, s.MidOpCrashes,
		s.RecoveryCrashes, s.Restarts, s.Syncs, s.Compactions, s.CompactFailed, s.TornTails, s.Discarded, s.Refused, s.StorageFailures)
	keys := make([]string, 0, len(s.Ops))
	for k := range s.Ops {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "%s:%d ", k, s.Ops[k])
	}
	return b.String()
}

type message struct {
	toAcceptor bool
	acceptor   int // destination (request) or source (response)
	client     int
	op         *simOp
	tag        uint64
	req        paxos.Request
	resp       paxos.Response
}

// simOp is one client operation and its observed outcome.
type simOp struct {
	client     int
	kind       string
	addr       worm.Addr
	value      []byte
	values     [][]byte
	token      worm.Token
	op         *paxos.Op
	start, end int
	res        paxos.Result
}

type clientState struct {
	p      *paxos.Proposer
	cur    *simOp
	left   int
	tokens map[worm.Addr]worm.Token
	segTok map[uint64]worm.Token
}

// Sim is one simulation in progress.
type Sim struct {
	cfg     Config
	rng     *rand.Rand
	accs    []*node
	clients []*clientState
	net     []*message
	cut     map[[2]int]uint8 // (client, acceptor) -> cut directions
	step    int
	ops     []*simOp
	stats   Stats
	// chosen records, per register, the first value seen chosen (a
	// majority of acceptors accepted it at one ballot) and when.
	chosen  map[worm.Addr]chosenAt
	trimmed map[uint64]int // segment -> step at which some acceptor trimmed it
	values  map[string]bool
	// tokValue: the value first written with each (register, token).
	tokValue map[tokKey][]byte
	accepted map[ballotKey]*acceptance
	final    bool // the final check runs
}

type chosenAt struct {
	value []byte
	step  int
}

// Violation is an invariant failure; its message names the command that
// replays it.
type Violation struct {
	Config   string
	Seed     uint64
	Step     int
	Property string // agreement, validity, ballot, durability, chosen-lost, recovery, records, outcome, progress
	What     string
}

func (v *Violation) Error() string {
	return fmt.Sprintf("sim %s seed %d step %d: %s: %s (replay: go test ./worm/sim -run TestSeed -seed %d -config %s -v)",
		v.Config, v.Seed, v.Step, v.Property, v.What, v.Seed, v.Config)
}

// New prepares a run: every acceptor gets a fresh disk with an
// initialised data directory.
func New(cfg Config) *Sim {
	s := &Sim{cfg: cfg, rng: rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)),
		chosen: map[worm.Addr]chosenAt{}, trimmed: map[uint64]int{}, values: map[string]bool{}, tokValue: map[tokKey][]byte{}, accepted: map[ballotKey]*acceptance{}}
	s.stats.Ops, s.stats.Errors = map[string]int{}, map[string]int{}
	for i := 0; i < cfg.Acceptors; i++ {
		s.accs = append(s.accs, s.newNode(i))
	}
	for c := 0; c < cfg.Clients; c++ {
		p := paxos.NewProposer(uint64(c+1), fmt.Sprintf("client-%d", c), cfg.Acceptors, cfg.SegSize)
		s.clients = append(s.clients, &clientState{p: p, left: cfg.Ops, tokens: map[worm.Addr]worm.Token{}, segTok: map[uint64]worm.Token{}})
	}
	return s
}

// Run executes the simulation to completion and checks it.
func Run(cfg Config) (Stats, error) {
	s := New(cfg)
	err := s.Run()
	return s.stats, err
}

func (s *Sim) trace(format string, args ...any) {
	if s.cfg.Trace != nil {
		s.cfg.Trace(fmt.Sprintf("%5d ", s.step) + fmt.Sprintf(format, args...))
	}
}

func (s *Sim) violation(property, format string, args ...any) error {
	return &Violation{Config: s.cfg.Name, Seed: s.cfg.Seed, Step: s.step, Property: property, What: fmt.Sprintf(format, args...)}
}

// Run drives the simulation until every client has finished its
// operations, then runs the final checks.
func (s *Sim) Run() error {
	const maxSteps = 2_000_000
	for s.step = 0; s.step < maxSteps; s.step++ {
		s.stats.Steps++
		active := false
		for ci, c := range s.clients {
			if c.cur == nil && c.left > 0 {
				s.startOp(ci)
			}
			if c.cur != nil {
				active = true
			}
		}
		if !active {
			break
		}
		if err := s.event(); err != nil {
			return err
		}
		if err := s.checkChosen(); err != nil {
			return err
		}
	}
	if s.step >= maxSteps {
		return s.violation("progress", "no progress after %d steps", maxSteps)
	}
	if err := s.finalCheck(); err != nil {
		return err
	}
	return s.checkOutcomes()
}

// ---------------------------------------------------------------------------
// Workload

func (s *Sim) randAddr() worm.Addr {
	return worm.Addr{Seg: uint64(s.rng.IntN(s.cfg.Segments)), Off: uint32(s.rng.IntN(int(s.cfg.SegSize)))}
}

func (s *Sim) newValue(ci int) []byte {
	v := s.pad(fmt.Appendf(nil, "c%d-v%d", ci, len(s.ops)))
	s.values[string(v)] = true
	return v
}

// pad extends v to Config.ValueSize bytes.
func (s *Sim) pad(v []byte) []byte {
	for len(v) < s.cfg.ValueSize {
		v = append(v, '.')
	}
	return v
}

// valueFor returns the value client ci writes to addr with tok: a token
// carries at most one value per register (the caller contract of
// Space.Write), so a client that writes again with the same token retries
// its first value.
func (s *Sim) valueFor(ci int, addr worm.Addr, tok worm.Token) []byte {
	k := tokKey{addr, tok}
	if v, ok := s.tokValue[k]; ok {
		return v
	}
	v := s.newValue(ci)
	s.tokValue[k] = v
	return v
}

type tokKey struct {
	addr worm.Addr
	tok  worm.Token
}

func (s *Sim) startOp(ci int) {
	c := s.clients[ci]
	c.left--
	o := &simOp{client: ci, start: s.step}
	p := c.p
	r := s.rng.Float64()
	switch {
	case r < 0.12:
		o.kind = "alloc"
		o.addr = worm.Addr{Seg: uint64(s.rng.IntN(s.cfg.Segments)), Off: worm.MetaOffset}
		o.value = s.newValue(ci)
		s.values[string(paxos.EncodeSegmentInfo(p.ID(), o.value))] = true
		o.op = p.Alloc(o.addr.Seg, o.value)
	case r < 0.30:
		o.kind = "capture"
		o.addr = s.randAddr()
		o.op = p.Capture(o.addr)
	case r < 0.37:
		o.kind = "capture-seg"
		o.addr = worm.Addr{Seg: uint64(s.rng.IntN(s.cfg.Segments))}
		o.op = p.CaptureSegment(o.addr.Seg)
	case r < 0.57:
		o.kind = "write"
		o.addr = s.randAddr()
		tok, ok := c.tokens[o.addr]
		if st, sok := c.segTok[o.addr.Seg]; sok && (!ok || tok.Less(st)) {
			tok, ok = st, true
		}
		if !ok {
			o.kind = "read"
			o.op = p.Read(o.addr)
			break
		}
		o.token = tok
		o.value = s.valueFor(ci, o.addr, tok)
		o.op = p.Write(o.addr.Seg, o.addr.Off, tok, [][]byte{o.value})
	case r < 0.63:
		o.kind = "batch"
		seg := uint64(s.rng.IntN(s.cfg.Segments))
		tok, ok := c.segTok[seg]
		if !ok {
			o.kind = "capture-seg"
			o.addr = worm.Addr{Seg: seg}
			o.op = p.CaptureSegment(seg)
			break
		}
		off := uint32(s.rng.IntN(int(s.cfg.SegSize)))
		n := 1 + s.rng.IntN(int(s.cfg.SegSize-off))
		o.addr, o.token = worm.Addr{Seg: seg, Off: off}, tok
		for i := 0; i < n; i++ {
			o.values = append(o.values, s.valueFor(ci, worm.Addr{Seg: seg, Off: off + uint32(i)}, tok))
		}
		o.op = p.Write(seg, off, tok, o.values)
	case r < 0.68:
		// Unsafe writes need a single designated writer per register,
		// writing one value (a WormTX vote): client off%clients owns
		// register off, and always writes the same value there. With
		// UnsafeContention every client writes every register, each
		// with its own value.
		o.kind = "unsafe"
		o.addr = s.randAddr()
		if s.cfg.UnsafeContention {
			o.value = s.pad(fmt.Appendf(nil, "u-%v-c%d", o.addr, ci))
			s.values[string(o.value)] = true
			o.op = p.Write(o.addr.Seg, o.addr.Off, worm.Token{}, [][]byte{o.value})
			break
		}
		o.addr.Off = o.addr.Off - o.addr.Off%uint32(len(s.clients)) + uint32(ci)
		if o.addr.Off >= s.cfg.SegSize {
			o.kind = "read"
			o.addr = s.randAddr()
			o.op = p.Read(o.addr)
			break
		}
		o.value = s.pad(fmt.Appendf(nil, "u-%v", o.addr))
		s.values[string(o.value)] = true
		o.op = p.Write(o.addr.Seg, o.addr.Off, worm.Token{}, [][]byte{o.value})
	case r < 0.70 && s.cfg.Trim:
		o.kind = "trim"
		o.addr = worm.Addr{Seg: uint64(s.rng.IntN(s.cfg.Segments))}
		o.op = p.Trim(o.addr.Seg)
	default:
		o.kind = "read"
		o.addr = s.randAddr()
		o.op = p.Read(o.addr)
	}
	c.cur = o
	s.ops = append(s.ops, o)
	s.stats.Ops[o.kind]++
	s.trace("client %d starts %s %v", ci, o.kind, o.addr)
	s.flush(o)
}

// flush moves an op's outbox into the network and completes it if done.
//
// Like the client library's driver, it cannot send to an acceptor that is
// down (its connection is broken): such requests are reported to the op
// as unsent at once.
func (s *Sim) flush(o *simOp) {
	for {
		type unsent struct {
			i   int
			tag uint64
		}
		var failed []unsent
		for _, out := range o.op.TakeOutbox() {
			for i := 0; i < s.cfg.Acceptors; i++ {
				if out.To != paxos.All && out.To != i {
					continue
				}
				if s.accs[i].down {
					if out.Tag != 0 {
						failed = append(failed, unsent{i, out.Tag})
					}
					continue
				}
				s.net = append(s.net, &message{toAcceptor: true, acceptor: i, client: o.client, op: o, tag: out.Tag, req: cloneReq(out.Req)})
			}
		}
		if len(failed) == 0 {
			break
		}
		for _, f := range failed {
			s.trace("  unsent to down acceptor %d tag=%d", f.i, f.tag)
			o.op.Unsent(f.i, f.tag)
		}
	}
	if o.op.Done() && s.clients[o.client].cur == o {
		o.end = s.step
		o.res = o.op.Result()
		c := s.clients[o.client]
		c.cur = nil
		if o.res.Err != nil {
			s.stats.Errors[errKind(o.res.Err)]++
		}
		switch o.kind {
		case "capture":
			if o.res.Err == nil {
				c.tokens[o.addr] = o.res.Token
			}
		case "capture-seg":
			if o.res.Err == nil {
				c.segTok[o.addr.Seg] = o.res.Token
			}
		}
		s.trace("client %d done %s %v -> %v", o.client, o.kind, o.addr, describe(o.res))
	}
}

// ---------------------------------------------------------------------------
// Events

// link directions a partition can cut.
const (
	cutRequests  = 1 << iota // client -> acceptor
	cutResponses             // acceptor -> client
)

// repartition heals every cut, or cuts the links between one acceptor and
// some clients.
func (s *Sim) repartition() {
	if len(s.cut) > 0 && s.rng.IntN(2) == 0 {
		s.cut = nil
		s.trace("partition healed")
		return
	}
	if s.cut == nil {
		s.cut = map[[2]int]uint8{}
	}
	a := s.rng.IntN(s.cfg.Acceptors)
	dir := uint8(1 + s.rng.IntN(3))
	for c := range s.clients {
		if s.rng.IntN(2) == 0 {
			s.cut[[2]int{c, a}] |= dir
		}
	}
	s.stats.Partitions++
	s.trace("partition: acceptor %d cut from some clients (directions %b): %v", a, dir, s.cut)
}

// severed reports whether m crosses a cut link.
func (s *Sim) severed(m *message) bool {
	d := s.cut[[2]int{m.client, m.acceptor}]
	if m.toAcceptor {
		return d&cutRequests != 0
	}
	return d&cutResponses != 0
}

func (s *Sim) event() error {
	r := s.rng.Float64()
	cfg := s.cfg
	if cfg.Partition > 0 && s.rng.Float64() < cfg.Partition {
		s.repartition()
	}
	switch {
	case r < cfg.Crash:
		return s.crashOrRestart()
	case r < cfg.Crash+cfg.Expire:
		if o := s.randomActive(); o != nil {
			s.stats.Expired++
			s.trace("expire client %d %s", o.client, o.kind)
			o.op.Expire()
			s.flush(o)
		}
		return nil
	case r < cfg.Crash+cfg.Expire+cfg.Nudge:
		if o := s.randomActive(); o != nil {
			o.op.Nudge()
			s.flush(o)
		}
		return nil
	case r < cfg.Crash+cfg.Expire+cfg.Nudge+cfg.Compact:
		if i := s.rng.IntN(len(s.accs)); s.accs[i].up() {
			s.compact(i, true)
		}
		return nil
	case r < cfg.Crash+cfg.Expire+cfg.Nudge+cfg.Compact+cfg.Sync:
		if i, ok := s.syncCandidate(); ok {
			return s.syncNode(i)
		}
	}
	if len(s.net) == 0 {
		// Nothing in flight: replies may wait for a group commit; else
		// the op is waiting for lost messages: retransmit (TCP would), or
		// let a down acceptor come back.
		if i, ok := s.syncCandidate(); ok {
			return s.syncNode(i)
		}
		if o := s.randomActive(); o != nil {
			pend := o.op.Pending()
			if len(pend) == 0 {
				o.op.Nudge()
				s.flush(o)
				if len(o.op.Pending()) == 0 && !o.op.Done() {
					o.op.Expire()
					s.stats.Expired++
					s.flush(o)
				}
				return nil
			}
			for _, out := range pend {
				s.net = append(s.net, &message{toAcceptor: true, acceptor: out.To, client: o.client, op: o, tag: out.Tag, req: cloneReq(out.Req)})
			}
			for i, a := range s.accs {
				if (a.down || a.failed != nil) && s.rng.IntN(4) == 0 {
					if err := s.reboot(i); err != nil {
						return err
					}
				}
			}
		}
		return nil
	}
	i := s.rng.IntN(len(s.net))
	m := s.net[i]
	x := s.rng.Float64()
	switch {
	case s.severed(m):
		s.stats.Cut++
		s.remove(i)
		return nil
	case x < cfg.Drop:
		s.stats.Dropped++
		s.remove(i)
		return nil
	case x < cfg.Drop+cfg.Dup:
		s.stats.Duplicated++
		d := *m
		s.net = append(s.net, &d)
	default:
		s.remove(i)
	}
	s.stats.Delivered++
	return s.deliver(m)
}

// up reports whether the acceptor's process runs with working storage.
func (a *node) up() bool { return !a.down && a.failed == nil }

// syncCandidate picks an acceptor whose engine has a group commit to do.
func (s *Sim) syncCandidate() (int, bool) {
	var cands []int
	for i, a := range s.accs {
		if a.up() && (len(a.waiting) > 0 || a.syncWanted) {
			cands = append(cands, i)
		}
	}
	if len(cands) == 0 {
		return 0, false
	}
	return cands[s.rng.IntN(len(cands))], true
}

func (s *Sim) remove(i int) {
	s.net[i] = s.net[len(s.net)-1]
	s.net = s.net[:len(s.net)-1]
}

func (s *Sim) randomActive() *simOp {
	var act []*simOp
	for _, c := range s.clients {
		if c.cur != nil {
			act = append(act, c.cur)
		}
	}
	if len(act) == 0 {
		return nil
	}
	return act[s.rng.IntN(len(act))]
}

func (s *Sim) deliver(m *message) error {
	if m.toAcceptor {
		if s.accs[m.acceptor].down {
			return nil
		}
		return s.handle(m.acceptor, m)
	}
	o := m.op
	if s.clients[o.client].cur != o {
		return nil // the op finished; late answer
	}
	o.op.Step(m.acceptor, m.tag, &m.resp)
	s.flush(o)
	return nil
}

// crashOrRestart picks an acceptor: one that is down (or whose storage
// failed) restarts; one that is up crashes, now or (MidOp) during one of
// its next disk operations, unless MaxDown acceptors are down already.
func (s *Sim) crashOrRestart() error {
	i := s.rng.IntN(len(s.accs))
	a := s.accs[i]
	if a.down || a.failed != nil {
		return s.reboot(i)
	}
	if a.disk.Armed() {
		// Its armed crash never came (the acceptor was idle): now.
		s.crash(i, s.rng.Float64() < s.cfg.PowerLoss)
		return nil
	}
	down := 0
	for _, b := range s.accs {
		if b.down || b.disk.Armed() {
			down++
		}
	}
	if down >= s.cfg.MaxDown {
		return nil
	}
	power := s.rng.Float64() < s.cfg.PowerLoss
	if s.rng.Float64() < s.cfg.MidOp {
		s.trace("acceptor %d: crash armed (power failure %v)", i, power)
		a.disk.ArmCrash(1+s.rng.IntN(6), power)
		return nil
	}
	s.crash(i, power)
	return nil
}

// reboot restarts acceptor i: a down one recovers; one whose storage
// failed is restarted by its supervisor (a process restart).
func (s *Sim) reboot(i int) error {
	a := s.accs[i]
	if !a.down {
		s.crash(i, false)
	}
	return s.restart(i, s.rng.Float64() < s.cfg.MidOp/2)
}

// ---------------------------------------------------------------------------
// Invariants

// recordAccepts notes which acceptor durably accepted which (register,
// ballot, value). Paxos's "chosen" is historical: a value is chosen once a
// majority has accepted it at one ballot, even if some of those acceptors
// later accept a higher ballot (which, by Paxos, carries the same value).
func (s *Sim) recordAccepts(acceptor int, recs []paxos.Record) error {
	for _, rec := range recs {
		if rec.Kind != paxos.RecordAccept {
			continue
		}
		k := ballotKey{addr: worm.Addr{Seg: rec.Seg, Off: rec.Off}, b: rec.Ballot}
		if rec.Ballot.IsZero() && s.cfg.UnsafeContention {
			// Several unsafe writers: ballot 0 carries several values.
			k.zeroValue = string(rec.Value)
		}
		a := s.accepted[k]
		if a == nil {
			a = &acceptance{value: bytes.Clone(rec.Value)}
			s.accepted[k] = a
		} else if !bytes.Equal(a.value, rec.Value) {
			return s.violation("ballot", "register %v holds %q and %q at one ballot %v", k.addr, a.value, rec.Value, k.b)
		}
		a.by |= 1 << acceptor
	}
	return nil
}

type ballotKey struct {
	addr      worm.Addr
	b         worm.Ballot
	zeroValue string // the value, at ballot 0 under UnsafeContention
}

type acceptance struct {
	value []byte
	by    uint64
}

// checkChosen checks agreement and validity over everything accepted so
// far.
func (s *Sim) checkChosen() error {
	q := s.cfg.Acceptors/2 + 1
	for k, a := range s.accepted {
		if popcount(a.by) < q {
			continue
		}
		if _, t := s.trimmed[k.addr.Seg]; t {
			continue
		}
		if prev, ok := s.chosen[k.addr]; ok {
			if !bytes.Equal(prev.value, a.value) {
				return s.violation("agreement", "register %v chose %q at step %d and now %q at ballot %v", k.addr, prev.value, prev.step, a.value, k.b)
			}
			continue
		}
		if !s.values[string(a.value)] {
			return s.violation("validity", "register %v chose %q, which no client wrote", k.addr, a.value)
		}
		s.chosen[k.addr] = chosenAt{value: a.value, step: s.step}
	}
	return nil
}

func popcount(x uint64) int {
	n := 0
	for ; x != 0; x &= x - 1 {
		n++
	}
	return n
}

// checkOutcomes compares every finished operation with the chosen values.
func (s *Sim) checkOutcomes() error {
	for _, o := range s.ops {
		if err := s.checkOutcome(o); err != nil {
			return err
		}
	}
	return nil
}

func (s *Sim) trimmedBefore(seg uint64, step int) bool {
	t, ok := s.trimmed[seg]
	return ok && t <= step
}

// retriedLater reports whether the client of o wrote v to a again in a
// later operation. ErrPreempted means that one call certainly had no
// effect; an identical retry with the same token (values are per client,
// register and token) may still succeed through an acceptor the first call
// could not reach, so a chosen v is then no contradiction.
func (s *Sim) retriedLater(o *simOp, a worm.Addr, v []byte) bool {
	for _, p := range s.ops {
		if p.client != o.client || p.start <= o.end {
			continue
		}
		switch p.kind {
		case "write", "unsafe":
			if p.addr == a && bytes.Equal(p.value, v) {
				return true
			}
		case "batch":
			if a.Seg == p.addr.Seg && a.Off >= p.addr.Off && int(a.Off-p.addr.Off) < len(p.values) && bytes.Equal(p.values[a.Off-p.addr.Off], v) {
				return true
			}
		}
	}
	return false
}

func (s *Sim) checkOutcome(o *simOp) error {
	err := o.res.Err
	if isErr(err, worm.ErrTrimmed) {
		if !s.trimmedBefore(o.addr.Seg, o.end) {
			return s.violation("outcome", "%s %v by client %d answered trimmed, but no acceptor had trimmed it", o.kind, o.addr, o.client)
		}
		return nil
	}
	if _, t := s.trimmed[o.addr.Seg]; t {
		return nil // values of trimmed segments are gone; nothing to compare
	}
	ch, chosen := s.chosen[o.addr]
	switch o.kind {
	case "read":
		if err == nil {
			if !chosen || !bytes.Equal(ch.value, o.res.Value) || ch.step > o.end {
				return s.violation("outcome", "read %v by client %d returned %q; chosen: %v", o.addr, o.client, o.res.Value, fmtChosen(ch, chosen))
			}
		}
		if isErr(err, worm.ErrEmpty) && chosen && ch.step < o.start {
			return s.violation("outcome", "read %v by client %d returned empty at [%d,%d], but %q was chosen at step %d", o.addr, o.client, o.start, o.end, ch.value, ch.step)
		}
	case "write", "unsafe":
		if err == nil && (!chosen || !bytes.Equal(ch.value, o.value)) {
			return s.violation("outcome", "%s %v of %q by client %d succeeded; chosen: %v", o.kind, o.addr, o.value, o.client, fmtChosen(ch, chosen))
		}
		if v, ok := worm.WrittenValue(err); ok && (!chosen || !bytes.Equal(v, ch.value)) {
			return s.violation("outcome", "%s %v by client %d answered written(%q); chosen: %v", o.kind, o.addr, o.client, v, fmtChosen(ch, chosen))
		}
		if isErr(err, worm.ErrPreempted) && chosen && bytes.Equal(ch.value, o.value) && !s.retriedLater(o, o.addr, o.value) {
			return s.violation("outcome", "%s %v of %q by client %d answered preempted, but its value was chosen", o.kind, o.addr, o.value, o.client)
		}
	case "batch":
		var be *worm.BatchError
		for i, v := range o.values {
			a := worm.Addr{Seg: o.addr.Seg, Off: o.addr.Off + uint32(i)}
			ch, chosen := s.chosen[a]
			var e error
			if err != nil {
				if asBatch(err, &be) {
					e = be.Errs[i]
				} else {
					e = err
				}
			}
			if e == nil && (!chosen || !bytes.Equal(ch.value, v)) {
				return s.violation("outcome", "batch register %v of %q by client %d succeeded; chosen: %v", a, v, o.client, fmtChosen(ch, chosen))
			}
			if isErr(e, worm.ErrPreempted) && chosen && bytes.Equal(ch.value, v) && !s.retriedLater(o, a, v) {
				return s.violation("outcome", "batch register %v of %q by client %d preempted, but chosen", a, v, o.client)
			}
		}
	case "capture":
		if err == nil && chosen && ch.step < o.start {
			return s.violation("outcome", "capture %v by client %d returned a token, but %q was chosen at step %d", o.addr, o.client, ch.value, ch.step)
		}
		if v, ok := worm.WrittenValue(err); ok && (!chosen || !bytes.Equal(v, ch.value)) {
			return s.violation("outcome", "capture %v by client %d answered written(%q); chosen: %v", o.addr, o.client, v, fmtChosen(ch, chosen))
		}
	case "capture-seg":
		if err == nil {
			for _, e := range o.res.Capture.Written {
				a := worm.Addr{Seg: o.addr.Seg, Off: e.Off}
				ch, chosen := s.chosen[a]
				if !chosen || !bytes.Equal(ch.value, e.Value) {
					return s.violation("outcome", "capture-seg %d by client %d lists %v=%q; chosen: %v", o.addr.Seg, o.client, a, e.Value, fmtChosen(ch, chosen))
				}
			}
		}
	case "alloc":
		if err == nil {
			if !chosen {
				return s.violation("outcome", "alloc %d by client %d returned owner %q but nothing is chosen", o.addr.Seg, o.client, o.res.Info.Owner)
			}
			owner, _, _ := paxos.DecodeSegmentInfo(ch.value)
			if owner != o.res.Info.Owner {
				return s.violation("outcome", "alloc %d by client %d: owner %q, chosen owner %q", o.addr.Seg, o.client, o.res.Info.Owner, owner)
			}
			if o.res.Info.Won != (owner == fmt.Sprintf("client-%d", o.client)) {
				return s.violation("outcome", "alloc %d by client %d: Won=%v with owner %q", o.addr.Seg, o.client, o.res.Info.Won, owner)
			}
		}
	}
	return nil
}

func fmtChosen(c chosenAt, ok bool) string {
	if !ok {
		return "nothing"
	}
	return fmt.Sprintf("%q at step %d", c.value, c.step)
}

// ---------------------------------------------------------------------------
// helpers

func cloneReq(r paxos.Request) paxos.Request {
	c := r
	if r.Values != nil {
		c.Values = make([][]byte, len(r.Values))
		for i, v := range r.Values {
			c.Values[i] = bytes.Clone(v)
		}
	}
	return c
}

func describe(r paxos.Result) string {
	if r.Err != nil {
		return r.Err.Error()
	}
	if r.Value != nil {
		return fmt.Sprintf("value %q", r.Value)
	}
	return "ok token " + r.Token.String()
}
