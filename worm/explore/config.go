package explore

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/wormspace/wormspace/worm/paxos"
)

// OpKind names one step of a client's script.
type OpKind uint8

const (
	// Capture captures the register; a token it returns is remembered for
	// the client's next Write.
	Capture OpKind = iota + 1
	// Write writes Value with the token of the client's latest successful
	// Capture. Without such a token the step is skipped.
	Write
	// WriteUnsafe writes Value at ballot 0 (single designated writer).
	WriteUnsafe
	// Read reads the register.
	Read
)

var opNames = [...]string{"?", "capture", "write", "write-unsafe", "read"}

func (k OpKind) String() string {
	if int(k) < len(opNames) {
		return opNames[k]
	}
	return fmt.Sprintf("op(%d)", uint8(k))
}

// Action is one step of a script.
type Action struct {
	Op    OpKind
	Value string // Write, WriteUnsafe
	// Retries: a Write or WriteUnsafe that ends in worm.ErrUnknownOutcome
	// is reissued identically (same token, same value) up to Retries times.
	Retries int
}

func (a Action) String() string {
	if a.Op == Write || a.Op == WriteUnsafe {
		return fmt.Sprintf("%s(%q)", a.Op, a.Value)
	}
	return a.Op.String()
}

// Client is one proposer with its own paxos.Proposer running Script
// sequentially, one operation at a time.
type Client struct {
	Name string // defaults to "A", "B", "C", ...
	// Node is the proposer's ballot node; 0 means index+1. Proposers must
	// have distinct nodes: giving two clients the same node breaks that
	// contract on purpose (a control).
	Node   uint64
	Script []Action
}

// AcceptorModel is what the explorer needs of an acceptor.
// *paxos.Acceptor implements it; the broken controls of this package wrap
// one. Snapshot must describe the whole state that Handle depends on:
// it is the acceptor's part of the state fingerprint.
type AcceptorModel interface {
	Handle(req *paxos.Request, resp *paxos.Response, recs []paxos.Record) []paxos.Record
	Apply(rec paxos.Record) error
	Snapshot(emit func(paxos.Record) error) error
}

// Config is one exploration: clients, acceptors and fault bounds. Every
// bound counts events along one path (one execution), not per state.
type Config struct {
	Clients   []Client
	Acceptors int // default 3

	// Reorders bounds the deliveries that overtake an earlier message of
	// the same channel (client to acceptor, or acceptor to client; the
	// real transport is one TCP connection each way). Unbounded (-1):
	// any message in flight may be delivered next.
	Reorders int
	Drops    int // messages lost silently
	Dups     int // messages delivered twice (the copy stays in flight)
	Nudges   int // Op.Nudge calls (only while the op has stragglers)
	Expires  int // Op.Expire calls
	Breaks   int // connection breaks: client c loses its traffic with acceptor i and gets Op.Fail(i)
	Crashes  int // acceptor crashes (a minority down at a time); restarts are unbounded

	// SkipDecides drops every KindDecide at its sender: acceptors never
	// mark a register decided. A reduction (decides multiply the
	// interleavings) that loses the behaviours where a decided mark
	// matters; off by default.
	SkipDecides bool

	// Exact turns off the reductions that rely on how an Op treats its
	// inputs (package doc, "Reductions"): client states are then told
	// apart by their exact input sequences. For cross-checking.
	Exact bool

	// MaxAttempts is every proposer's paxos.Proposer.MaxAttempts
	// (default 2: one retry after a preempted phase 1).
	MaxAttempts int
	// NewAcceptor builds acceptor i's state machine (default
	// paxos.NewAcceptor with one register per segment).
	NewAcceptor func(i int) AcceptorModel
	// MaxStates aborts the exploration with ErrStateLimit (default 20M).
	MaxStates int
	// Progress, when set, is called every 2^17 states.
	Progress func(Result)
}

// Unbounded as Config.Reorders lets any message overtake any other.
const Unbounded = -1

// ErrStateLimit: the exploration stopped at Config.MaxStates; the Result
// covers what was explored, which is not every reachable state.
var ErrStateLimit = errors.New("explore: state limit reached; the exploration is incomplete")

// ConfigError reports an unusable Config.
type ConfigError struct{ What string }

func (e *ConfigError) Error() string { return "explore: bad config: " + e.What }

func (c *Config) normalize() error {
	if c.Acceptors == 0 {
		c.Acceptors = 3
	}
	if c.Acceptors < 1 || c.Acceptors > 7 {
		return &ConfigError{fmt.Sprintf("%d acceptors (want 1..7)", c.Acceptors)}
	}
	if len(c.Clients) == 0 || len(c.Clients) > 8 {
		return &ConfigError{fmt.Sprintf("%d clients (want 1..8)", len(c.Clients))}
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = 2
	}
	if c.MaxStates == 0 {
		c.MaxStates = 20_000_000
	}
	if c.NewAcceptor == nil {
		c.NewAcceptor = func(int) AcceptorModel { return paxos.NewAcceptor(segSize) }
	}
	clients := make([]Client, len(c.Clients))
	names := map[string]bool{}
	for i, cl := range c.Clients {
		if cl.Name == "" {
			cl.Name = string(rune('A' + i))
		}
		if names[cl.Name] {
			return &ConfigError{"duplicate client name " + cl.Name}
		}
		names[cl.Name] = true
		if cl.Node == 0 {
			cl.Node = uint64(i + 1)
		}
		for _, a := range cl.Script {
			if a.Op < Capture || a.Op > Read {
				return &ConfigError{fmt.Sprintf("client %s: unknown op %d", cl.Name, a.Op)}
			}
			if (a.Op == Write || a.Op == WriteUnsafe) && a.Value == "" {
				return &ConfigError{fmt.Sprintf("client %s: %s without a value", cl.Name, a.Op)}
			}
		}
		clients[i] = cl
	}
	c.Clients = clients
	if c.Reorders < Unbounded || c.Drops < 0 || c.Dups < 0 || c.Nudges < 0 || c.Expires < 0 || c.Breaks < 0 || c.Crashes < 0 {
		return &ConfigError{"negative bound"}
	}
	return nil
}

// Result summarises an exploration.
type Result struct {
	States      int // distinct states (fingerprints) reached
	Transitions int // events executed, including those reaching known states
	MaxDepth    int // longest path from the initial state, in events
	Terminal    int // states without any enabled event
	Replays     int // client replays from scratch needed to expand states
	Elapsed     time.Duration
	// Chosen counts terminal states by the value chosen in them ("" for
	// none): which races the bounds let each side win.
	Chosen map[string]int
	// Outcomes counts, per "client step: outcome", the transitions in
	// which an operation finished so: what the exploration covered.
	Outcomes map[string]int
}

// StatesPerSecond is States / Elapsed.
func (r Result) StatesPerSecond() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.States) / r.Elapsed.Seconds()
}

func (r Result) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "states=%d transitions=%d depth=%d terminal=%d replays=%d in %v (%.0f states/s) chosen=%v",
		r.States, r.Transitions, r.MaxDepth, r.Terminal, r.Replays, r.Elapsed.Round(time.Millisecond), r.StatesPerSecond(), r.Chosen)
	return b.String()
}

// OutcomeList returns the covered outcomes, sorted, one per line.
func (r Result) OutcomeList() string {
	keys := make([]string, 0, len(r.Outcomes))
	for k := range r.Outcomes {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s (%d)\n", k, r.Outcomes[k])
	}
	return b.String()
}

// EventKind names an explored event.
type EventKind uint8

const (
	// Deliver a message in flight (request to an acceptor, response to an
	// op). Any message may be delivered next: this gives every reordering.
	Deliver EventKind = iota + 1
	// DeliverDup delivers a message and keeps a copy in flight.
	DeliverDup
	// Drop loses a message in flight.
	Drop
	// Nudge calls Op.Nudge on a client's current op.
	Nudge
	// Expire calls Op.Expire on a client's current op.
	Expire
	// Break breaks the connection between a client and an acceptor: their
	// messages in flight are lost and the op gets Op.Fail.
	Break
	// Crash takes an acceptor down: messages to and from it are lost and
	// every op gets Op.Fail; requests sent while it is down fail at once.
	Crash
	// Restart rebuilds a crashed acceptor from its durable records.
	Restart
)

var eventNames = [...]string{"?", "deliver", "deliver+dup", "drop", "nudge", "expire", "break", "crash", "restart"}

func (k EventKind) String() string {
	if int(k) < len(eventNames) {
		return eventNames[k]
	}
	return fmt.Sprintf("event(%d)", uint8(k))
}

// Event is one step of a trace. Msg identifies a message by its canonical
// text (also its human-readable form); Client and Acceptor index
// Config.Clients and the acceptors.
type Event struct {
	Kind     EventKind
	Msg      string
	Client   int
	Acceptor int
	// Effect describes what the event did (responses, finished ops);
	// filled by the explorer, ignored by Replay.
	Effect string
}

func (e Event) describe(cfg *Config) string {
	switch e.Kind {
	case Deliver, DeliverDup, Drop:
		return e.Kind.String() + " " + e.Msg
	case Nudge, Expire:
		return e.Kind.String() + " " + cfg.Clients[e.Client].Name
	case Break:
		return fmt.Sprintf("break %s-acc%d", cfg.Clients[e.Client].Name, e.Acceptor)
	default:
		return fmt.Sprintf("%s acc%d", e.Kind, e.Acceptor)
	}
}

// Violation is a reachable state that breaks a property. Trace is the
// path from the initial state; Replay(cfg, v.Trace) reaches it again.
type Violation struct {
	Property string // agreement, validity, one-value-per-ballot, p2b, decided, outcome, durability, progress, panic
	What     string
	Trace    []Event
	text     []string
}

func (v *Violation) Error() string {
	return fmt.Sprintf("explore: %s violated after %d events: %s", v.Property, len(v.Trace), v.What)
}

// TraceString renders the trace, one numbered event per line, with the
// effect of each.
func (v *Violation) TraceString() string {
	var b strings.Builder
	for i, line := range v.text {
		fmt.Fprintf(&b, "%3d. %s\n", i+1, line)
	}
	fmt.Fprintf(&b, "  => %s: %s\n", v.Property, v.What)
	return b.String()
}
