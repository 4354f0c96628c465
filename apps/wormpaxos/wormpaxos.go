package wormpaxos

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Policy selects how a replica obtains the right to write a log slot. All
// policies share one code path (lease acquisition, slot write, learning,
// hole filling); the policy only decides which segments a replica may
// write commands into and how it captures them.
type Policy uint8

const (
	// Sticky: a single leader. A replica that has commands to propose and
	// does not lead takes over: it captures the segment at the log's
	// frontier (CaptureSegment, one round), fills every empty register of
	// segments it did not allocate with no-ops, and then writes commands
	// only into segments whose Alloc it won (the metadata names the
	// leader), one Write per batch.
	Sticky Policy = iota + 1
	// Rotating: Mencius-style. Log position i belongs to replica
	// i mod Replicas; replica r's positions fill the segments with
	// (seg-LogBase) mod Replicas == r in order (see the package doc for
	// the layout). An owner that learns that a later position holds
	// commands while its own below it are unused fills them with no-ops
	// at once (skip); a dead owner's positions are captured and filled by
	// the others after HoleTimeout.
	Rotating
	// Leaderless: every batch goes to the next free slot with a per-slot
	// Capture and Write (two round trips).
	Leaderless
)

func (p Policy) String() string {
	switch p {
	case Sticky:
		return "sticky"
	case Rotating:
		return "rotating"
	case Leaderless:
		return "leaderless"
	}
	return fmt.Sprintf("Policy(%d)", uint8(p))
}

// ParsePolicy parses the names printed by Policy.String.
func ParsePolicy(s string) (Policy, error) {
	for _, p := range []Policy{Sticky, Rotating, Leaderless} {
		if p.String() == s {
			return p, nil
		}
	}
	return 0, fmt.Errorf("wormpaxos: unknown policy %q", s)
}

// Command is one client command. (Client, Seq) identifies it: a client
// issues strictly increasing sequence numbers, has at most one command
// outstanding, and retries a command with the same (Client, Seq) — to this
// replica or another — until it gets an answer. Replicas apply each
// (Client, Seq) at most once and answer retries with the cached result.
type Command struct {
	Client string
	Seq    uint64
	Op     []byte // opaque to the replica; passed to StateMachine.Apply
}

// StateMachine is the deterministic application a Replica replicates.
//
// Ownership and ordering: the Replica owns it after New and calls its
// methods from one goroutine at a time (under the replica's lock), Apply in
// log order. Apply must be deterministic: the same sequence of ops gives
// the same results and the same Snapshot bytes on every replica. Apply
// returns the result handed back to the proposer; Query answers a read-only
// query against the current state and must not modify it. The slices
// passed in are not retained by the replica after the call; the slices
// returned belong to the replica.
//
// Failure contract: Apply and Query cannot fail (a malformed op should
// yield an error result, deterministically). Snapshot errors abort that
// snapshot; Restore errors stop Run (the replica cannot catch up).
type StateMachine interface {
	Apply(op []byte) []byte
	Query(q []byte) []byte
	Snapshot() ([]byte, error)
	Restore(snapshot []byte) error
}

// Applied is what Config.OnApply observes for every command of the log.
type Applied struct {
	Index  uint64 // log position of the register that holds the command
	Cmd    Command
	Dup    bool   // (Client, Seq) was not newer than the client's last: skipped
	Result []byte // Apply's result (nil when Dup)
}

// Stats counts what a replica did since New. Fields are cumulative.
type Stats struct {
	Applied   uint64 // log positions applied (commands and no-ops)
	Commands  uint64 // commands applied
	Dups      uint64 // commands skipped as duplicates of an applied (client, seq)
	Noops     uint64 // no-op positions applied
	Writes    uint64 // batch writes that were chosen
	Retries   uint64 // batch placements that had to move to another slot
	Leases    uint64 // segments captured for writing (Sticky, Rotating)
	Fills     uint64 // holes captured and filled after HoleTimeout
	Skips     uint64 // Rotating: skips of own unused positions with no-ops
	Snapshots uint64 // snapshots stored in WormSpace
	Restores  uint64 // snapshots installed
}

// Config configures a Replica. Zero values take the documented defaults.
type Config struct {
	// Policy: Sticky, Rotating or Leaderless. Required.
	Policy Policy
	// LogBase is the first segment of the log: log position i lives in
	// register FlatAddr(LogBase*SegmentSize + i). Every replica of one
	// log must use the same LogBase, SnapshotBase and Replicas.
	LogBase uint64
	// Replicas is the number of replicas (Rotating: the rotation length).
	// Default 1.
	Replicas int
	// Index is this replica's index in [0, Replicas) (Rotating).
	Index int
	// MaxBatch caps the commands encoded in one register. Default 1024; 1
	// disables batching.
	MaxBatch int
	// MaxBatchBytes caps a batch's encoded size (a single larger command
	// still goes, alone). Default 64 KiB.
	MaxBatchBytes int
	// Pipeline is the number of batch writes a replica keeps in flight.
	// Batching is adaptive: with a write in flight, the next batch is
	// written only once it is full (MaxBatch or MaxBatchBytes), otherwise
	// when a write returns, so batches grow with the load. Default 4.
	Pipeline int
	// ReadAhead is how many registers a learner that is behind (a later
	// register is known written) reads concurrently. Default 32.
	ReadAhead int
	// HoleTimeout is how long a learner waits at an empty register while a
	// later one is known written before it captures the hole and fills it
	// with a no-op. Default 250ms.
	HoleTimeout time.Duration
	// PollInterval is the read fallback when no Listen notification
	// arrives. Default 50ms.
	PollInterval time.Duration
	// SnapshotEvery: take a snapshot after this many log positions since
	// the last one, store it in WormSpace and trim the log below it. 0
	// disables snapshots (and trimming).
	SnapshotEvery uint64
	// SnapshotBase is the first segment of the snapshot area. Default
	// LogBase + 1<<40.
	SnapshotBase uint64
	// ChunkSize is the register size used for snapshot chunks. Default
	// 16 KiB.
	ChunkSize int
	// Logger receives diagnostics. Default slog.Default().
	Logger *slog.Logger
	// Forward (Sticky), when set, sends a command to the replica whose ID
	// is leader; the receiving end must call that replica's ProposeLocal.
	// When it fails, the proposing replica takes the lead itself. Without
	// Forward, every replica asked to propose takes the lead.
	Forward func(ctx context.Context, leader string, cmd Command) ([]byte, error)
	// OnApply, when set, observes every command in log order, under the
	// replica's lock (it must not call the Replica). For tests and
	// metrics.
	OnApply func(Applied)
}

func (c *Config) fill() error {
	switch c.Policy {
	case Sticky, Rotating, Leaderless:
	default:
		return fmt.Errorf("%w: policy %v", ErrConfig, c.Policy)
	}
	if c.Replicas <= 0 {
		c.Replicas = 1
	}
	if c.Index < 0 || c.Index >= c.Replicas {
		return fmt.Errorf("%w: index %d of %d replicas", ErrConfig, c.Index, c.Replicas)
	}
	if c.MaxBatch <= 0 {
		c.MaxBatch = 1024
	}
	if c.MaxBatchBytes <= 0 {
		c.MaxBatchBytes = 64 << 10
	}
	if c.Pipeline <= 0 {
		c.Pipeline = 4
	}
	if c.ReadAhead <= 0 {
		c.ReadAhead = 32
	}
	if c.HoleTimeout <= 0 {
		c.HoleTimeout = 250 * time.Millisecond
	}
	if c.PollInterval <= 0 {
		c.PollInterval = 50 * time.Millisecond
	}
	if c.SnapshotBase == 0 {
		c.SnapshotBase = c.LogBase + 1<<40
	}
	if c.ChunkSize <= 0 {
		c.ChunkSize = 16 << 10
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Errors.
var (
	// ErrConfig: an invalid Config.
	ErrConfig = errors.New("wormpaxos: invalid config")
	// ErrInvalid: a malformed command (no client identity, zero Seq).
	ErrInvalid = errors.New("wormpaxos: invalid command")
	// ErrStale: the client has already issued a later sequence number; the
	// result of this one is no longer kept. The command was applied at
	// most once.
	ErrStale = errors.New("wormpaxos: stale sequence number")
	// ErrStopped: the replica's Run has returned.
	ErrStopped = errors.New("wormpaxos: replica stopped")
	// ErrRunning: Run was called twice.
	ErrRunning = errors.New("wormpaxos: replica already running")
	// ErrCorrupt: a register of the log or snapshot area holds a value this
	// package did not write. The replica cannot continue.
	ErrCorrupt = errors.New("wormpaxos: corrupt log entry")
	// ErrSnapshotTooLarge: a snapshot does not fit in one segment of
	// ChunkSize registers.
	ErrSnapshotTooLarge = errors.New("wormpaxos: snapshot too large")
)

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// backoff returns a jittered delay for the i-th retry.
func backoff(i int) time.Duration {
	if i > 8 {
		i = 8
	}
	base := time.Millisecond << uint(i)
	return base/2 + time.Duration(randN(int64(base/2)+1))
}
