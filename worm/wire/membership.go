package wire

import (
	"fmt"
	"slices"
	"strconv"
)

// Limits of a configuration on the wire.
const (
	// MaxMembers bounds a configuration's members (the client's limit of
	// 64 acceptors).
	MaxMembers = 64
	// MaxAddr bounds a member's address ("host:port").
	MaxAddr = 255
)

// Member is one wormserver of a configuration: its acceptor id and the
// address clients dial.
type Member struct {
	ID   uint32
	Addr string
}

// Config is a configuration: an epoch and its members, in the order their
// acceptor indices follow. Epoch 0 is the initial configuration, whose
// members only clients know (their list of servers); its Members are
// empty.
type Config struct {
	Epoch   uint64
	Members []Member
}

// Validate reports a configuration that cannot be served: no members, too
// many, a zero or repeated acceptor id, an empty, oversize or repeated
// address.
func (c Config) Validate() error {
	if len(c.Members) == 0 || len(c.Members) > MaxMembers {
		return fmt.Errorf("wire: configuration %d has %d members (want 1..%d)", c.Epoch, len(c.Members), MaxMembers)
	}
	for i, m := range c.Members {
		if m.ID == 0 {
			return fmt.Errorf("wire: configuration %d: member %q has acceptor id 0", c.Epoch, m.Addr)
		}
		if m.Addr == "" || len(m.Addr) > MaxAddr {
			return fmt.Errorf("wire: configuration %d: member %d has an address of %d bytes (want 1..%d)", c.Epoch, m.ID, len(m.Addr), MaxAddr)
		}
		for _, o := range c.Members[:i] {
			if o.ID == m.ID || o.Addr == m.Addr {
				return fmt.Errorf("wire: configuration %d lists acceptor %d (%s) twice", c.Epoch, m.ID, m.Addr)
			}
		}
	}
	return nil
}

// Equal reports whether c and d are the same configuration.
func (c Config) Equal(d Config) bool {
	return c.Epoch == d.Epoch && slices.Equal(c.Members, d.Members)
}

// Has reports whether acceptor id is a member of c.
func (c Config) Has(id uint32) bool {
	for _, m := range c.Members {
		if m.ID == id {
			return true
		}
	}
	return false
}

func (c Config) String() string {
	s := "epoch " + strconv.FormatUint(c.Epoch, 10) + " ["
	for i, m := range c.Members {
		if i > 0 {
			s += " "
		}
		s += strconv.FormatUint(uint64(m.ID), 10) + "@" + m.Addr
	}
	return s + "]"
}

// Clone returns a copy of c that shares nothing with it.
func (c Config) Clone() Config {
	return Config{Epoch: c.Epoch, Members: slices.Clone(c.Members)}
}

// MemberState is where a wormserver stands in the sequence of
// configurations.
type MemberState uint8

const (
	// StateActive: the server serves the operations of Membership.Epoch.
	StateActive MemberState = iota
	// StateSealed: the server sealed Membership.Epoch for a membership
	// change and refuses its operations (StatusSealed); Membership.Next is
	// the configuration that succeeds it, which the server serves once
	// activated (if it is a member of it).
	StateSealed
	// StateJoining: a new server that serves nothing until a state
	// transfer into it is complete and it is activated in
	// Membership.Next.
	StateJoining
	memberStateCount
)

var memberStateNames = [...]string{"active", "sealed", "joining"}

func (s MemberState) String() string {
	if s < memberStateCount {
		return memberStateNames[s]
	}
	return "state(" + itoa(uint64(s)) + ")"
}

// Membership is what a wormserver knows of the configurations. It
// announces it in its hello, answers it to control requests and pushes it
// (a control frame with id 0) to its connections when it changes.
type Membership struct {
	State MemberState
	// Epoch: the epoch the server serves (active) or sealed (sealed); 0
	// for a joining server.
	Epoch uint64
	// Members of Epoch, as its configuration lists them (empty for epoch
	// 0, whose members only clients know).
	Members []Member
	// Next: sealed: the configuration that succeeds Epoch; joining: the
	// configuration the server is being installed into (epoch 0 while no
	// transfer has begun).
	Next Config
	// Installed: joining: a complete state transfer into Next was
	// installed, so the server may be activated in it.
	Installed bool
}

// validate reports a membership that cannot be encoded.
func (m Membership) validate() error {
	if m.State >= memberStateCount {
		return fmt.Errorf("wire: unknown member state %d", uint8(m.State))
	}
	for _, ms := range [][]Member{m.Members, m.Next.Members} {
		if len(ms) > MaxMembers {
			return fmt.Errorf("wire: configuration of %d members (at most %d)", len(ms), MaxMembers)
		}
		for _, x := range ms {
			if len(x.Addr) > MaxAddr {
				return fmt.Errorf("wire: member address of %d bytes (at most %d)", len(x.Addr), MaxAddr)
			}
		}
	}
	return nil
}

// Serves reports whether the server answers operations issued under
// epoch.
func (m Membership) Serves(epoch uint64) bool { return m.State == StateActive && m.Epoch == epoch }

// Current returns the newest configuration the membership names: Next
// once sealed, else the served one.
func (m Membership) Current() Config {
	if m.State != StateActive {
		return m.Next
	}
	return Config{Epoch: m.Epoch, Members: m.Members}
}

// Clone returns a copy of m that shares nothing with it.
func (m Membership) Clone() Membership {
	m.Members = slices.Clone(m.Members)
	m.Next = m.Next.Clone()
	return m
}

// Equal reports whether m and o are the same.
func (m Membership) Equal(o Membership) bool {
	return m.State == o.State && m.Epoch == o.Epoch && slices.Equal(m.Members, o.Members) && m.Next.Equal(o.Next) && m.Installed == o.Installed
}

func (m Membership) String() string {
	switch m.State {
	case StateActive:
		if m.Epoch == 0 && len(m.Members) == 0 {
			return "active in epoch 0 (the initial configuration)"
		}
		return "active in " + Config{Epoch: m.Epoch, Members: m.Members}.String()
	case StateSealed:
		return "sealed epoch " + strconv.FormatUint(m.Epoch, 10) + ", next " + m.Next.String()
	case StateJoining:
		s := "joining"
		if m.Next.Epoch != 0 {
			s += " " + m.Next.String()
		}
		if m.Installed {
			s += " (installed)"
		}
		return s
	}
	return m.State.String()
}

func appendMembers(dst []byte, ms []Member) []byte {
	dst = append(dst, byte(len(ms)))
	for _, m := range ms {
		if len(m.Addr) > MaxAddr {
			panic("wire: member address over MaxAddr")
		}
		dst = le.AppendUint32(dst, m.ID)
		dst = append(dst, byte(len(m.Addr)))
		dst = append(dst, m.Addr...)
	}
	return dst
}

// appendMembership encodes m: u8 state | u8 flags (1: installed) | u64
// epoch | members | u64 next epoch | next members, members being u8 n and
// n × (u32 id | u8 length | address). It panics on a membership over the
// limits (callers validate).
func appendMembership(dst []byte, m *Membership) []byte {
	if len(m.Members) > MaxMembers || len(m.Next.Members) > MaxMembers {
		panic("wire: membership over the limits")
	}
	dst = append(dst, byte(m.State))
	var f byte
	if m.Installed {
		f |= 1
	}
	dst = append(dst, f)
	dst = le.AppendUint64(dst, m.Epoch)
	dst = appendMembers(dst, m.Members)
	return appendConfig(dst, &m.Next)
}

// members decodes a member list; it reports false for one over
// MaxMembers (a truncated list sets d.bad).
func (d *decoder) members() ([]Member, bool) {
	n := int(d.u8())
	if d.bad || n == 0 {
		return nil, true
	}
	if n > MaxMembers || n*(4+1) > len(d.b) {
		if n <= MaxMembers {
			d.bad = true
		}
		return nil, n <= MaxMembers
	}
	ms := make([]Member, 0, n)
	for i := 0; i < n && !d.bad; i++ {
		id := d.u32()
		addr := d.bytes(uint32(d.u8()))
		ms = append(ms, Member{ID: id, Addr: string(addr)})
	}
	return ms, true
}

func (d *decoder) config() (Config, error) {
	var c Config
	c.Epoch = d.u64()
	ms, ok := d.members()
	if !ok {
		return Config{}, malformed("configuration of more than %d members", MaxMembers)
	}
	c.Members = ms
	return c, nil
}

func appendConfig(dst []byte, c *Config) []byte {
	if len(c.Members) > MaxMembers {
		panic("wire: configuration over the limits")
	}
	dst = le.AppendUint64(dst, c.Epoch)
	return appendMembers(dst, c.Members)
}

func (d *decoder) membership() (Membership, error) {
	var m Membership
	m.State = MemberState(d.u8())
	f := d.u8()
	m.Epoch = d.u64()
	ms, ok := d.members()
	if !ok {
		return Membership{}, malformed("configuration of more than %d members", MaxMembers)
	}
	m.Members = ms
	next, err := d.config()
	if err != nil {
		return Membership{}, err
	}
	m.Next = next
	if d.bad {
		return Membership{}, errTruncated
	}
	if m.State >= memberStateCount {
		return Membership{}, malformed("unknown member state %d", uint8(m.State))
	}
	if f&^1 != 0 {
		return Membership{}, malformed("unknown membership flags %#x", f)
	}
	m.Installed = f&1 != 0
	return m, nil
}

// membershipSize bounds the encoded size of a membership.
const membershipSize = 1 + 1 + 8 + 1 + MaxMembers*(4+1+MaxAddr) + 8 + 1 + MaxMembers*(4+1+MaxAddr)
