package wire

import "github.com/wormspace/wormspace/worm/paxos"

// ControlOp names a control request: the membership changes that
// replace a wormserver (worm/client's Replace drives them, worm/server
// answers them). Control requests travel in FrameControl frames, outside
// the Paxos requests, and are answered in order, one at a time.
type ControlOp uint8

const (
	controlInvalid ControlOp = iota
	// CtlMembership asks for the server's Membership. A FrameControl the
	// server sends with id 0 is an unsolicited CtlMembership reply: its
	// membership changed.
	CtlMembership
	// CtlSeal seals Epoch: the server persists that it serves Epoch no
	// more and that Config (Epoch's successor, or for a member catching
	// up after missed changes a later configuration) is the one it joins
	// next, then refuses every request of Epoch. Only an active or sealed
	// server of Epoch seals it; sealing again with the same Config is a
	// no-op, with a later one re-points a sealed member.
	CtlSeal
	// CtlActivate makes the server serve Config: a sealed member of
	// Config.Epoch-1 that is a member of Config, or a joining server whose
	// transfer into Config is installed.
	CtlActivate
	// CtlExport asks for the chunk of the server's acceptor state that
	// starts at Cursor, of about MaxBytes, for a transfer out of sealed
	// epoch Epoch: the server must have sealed Epoch (or be past it).
	CtlExport
	// CtlInstall merges Records (exported by members of the sealed
	// epoch) into a joining server's state, for Config.
	CtlInstall
	// CtlInstallDone tells a joining server that the state of a read
	// quorum of the sealed epoch is installed in it, for Config.
	CtlInstallDone
	controlOpCount
)

var controlOpNames = [...]string{"invalid", "membership", "seal", "activate", "export", "install", "install-done"}

func (o ControlOp) String() string {
	if o < controlOpCount {
		return controlOpNames[o]
	}
	return "control(" + itoa(uint64(o)) + ")"
}

// ControlStatus is a server's verdict on a control request.
type ControlStatus uint8

const (
	// CtlOK: done (or already done).
	CtlOK ControlStatus = iota
	// CtlRefused: the server's membership does not allow it (the reply's
	// Membership and Text say why); nothing changed.
	CtlRefused
	// CtlFailed: the server could not do it (storage); Text explains.
	CtlFailed
	// CtlInvalid: the request is malformed or unknown; Text explains.
	CtlInvalid
	controlStatusCount
)

var controlStatusNames = [...]string{"ok", "refused", "failed", "invalid"}

func (s ControlStatus) String() string {
	if s < controlStatusCount {
		return controlStatusNames[s]
	}
	return "status(" + itoa(uint64(s)) + ")"
}

// Control is a control request.
//
// Ownership: DecodeControl makes record values alias the payload.
type Control struct {
	Op ControlOp
	// Epoch: CtlSeal: the epoch to seal; CtlExport: the sealed epoch the
	// transfer is out of.
	Epoch uint64
	// Config: CtlSeal: the next configuration; CtlActivate, CtlInstall,
	// CtlInstallDone: the configuration joined.
	Config Config
	// Cursor and MaxBytes: CtlExport.
	Cursor   paxos.ExportCursor
	MaxBytes uint32
	// Records: CtlInstall.
	Records []paxos.Record
}

// ControlReply is the answer to a Control (or, with id 0, a membership
// push).
//
// Ownership: DecodeControlReply makes record values alias the payload.
type ControlReply struct {
	Op     ControlOp
	Status ControlStatus
	Text   string
	// Membership is the server's membership after the request.
	Membership Membership
	// Records, Next and Done: CtlExport: the chunk, where the next one
	// starts, and whether this one reached the end.
	Records []paxos.Record
	Next    paxos.ExportCursor
	Done    bool
	// Conflicts: CtlInstall: records that carried another value at a
	// ballot the server already held (paxos.ConflictError); it kept its
	// own.
	Conflicts uint32
}

// recordFixed is the fixed part of an encoded record: kind, seg, off,
// ballot, value length.
const recordFixed = 1 + 8 + 4 + 16 + 4

// RecordSize is the encoded size of r in a control frame.
func RecordSize(r *paxos.Record) int { return recordFixed + len(r.Value) }

// ControlOverhead bounds the bytes of a control frame other than its
// records' (header, fixed fields, a full membership and a 1 KiB text):
// an export chunk of at most MaxFrame - ControlOverhead record bytes
// always fits in a frame.
const ControlOverhead = HeaderSize + 64 + membershipSize + maxErrorText

func appendRecords(dst []byte, recs []paxos.Record) []byte {
	dst = le.AppendUint32(dst, uint32(len(recs)))
	for i := range recs {
		r := &recs[i]
		dst = append(dst, byte(r.Kind))
		dst = le.AppendUint64(dst, r.Seg)
		dst = le.AppendUint32(dst, r.Off)
		dst = appendBallot(dst, r.Ballot)
		dst = appendBytes(dst, r.Value)
	}
	return dst
}

func (d *decoder) records(maxValue int, recs []paxos.Record) ([]paxos.Record, error) {
	n, ok := d.count(recordFixed)
	if !ok {
		return recs[:0], malformed("control frame claims more records than its payload holds")
	}
	if cap(recs) < n {
		recs = make([]paxos.Record, n)
	}
	recs = recs[:n]
	for i := range recs {
		r := &recs[i]
		r.Kind = paxos.RecordKind(d.u8())
		r.Seg = d.u64()
		r.Off = d.u32()
		r.Ballot = d.ballot()
		v, err := d.value(maxValue)
		if err != nil {
			return recs[:0], err
		}
		r.Value = v
		if !r.Kind.Valid() {
			return recs[:0], malformed("unknown record kind %d", uint8(r.Kind))
		}
	}
	return recs, nil
}

// AppendControl appends a control request frame with the given id. It
// panics on a configuration over the limits or a value of 4 GiB (callers
// validate).
func AppendControl(dst []byte, id uint64, c *Control) []byte {
	start := len(dst)
	dst = appendHeader(dst, FrameControl, id)
	dst = append(dst, byte(c.Op))
	dst = le.AppendUint64(dst, c.Epoch)
	dst = appendConfig(dst, &c.Config)
	dst = le.AppendUint64(dst, c.Cursor.Seg)
	dst = le.AppendUint64(dst, c.Cursor.Pos)
	dst = le.AppendUint32(dst, c.MaxBytes)
	dst = appendRecords(dst, c.Records)
	return finish(dst, start)
}

// DecodeControl decodes a control request payload into c, reusing
// c.Records. Record values alias payload and may be at most maxValue
// bytes (<= 0: DefaultMaxValue).
func DecodeControl(payload []byte, maxValue int, c *Control) error {
	maxValue = orDefault(maxValue, DefaultMaxValue)
	d := decoder{b: payload}
	c.Op = ControlOp(d.u8())
	c.Epoch = d.u64()
	cfg, err := d.config()
	if err != nil {
		return err
	}
	c.Config = cfg
	c.Cursor.Seg = d.u64()
	c.Cursor.Pos = d.u64()
	c.MaxBytes = d.u32()
	if d.bad {
		return errTruncated
	}
	if c.Op == controlInvalid || c.Op >= controlOpCount {
		return malformed("unknown control op %d", uint8(c.Op))
	}
	if c.Records, err = d.records(maxValue, c.Records); err != nil {
		return err
	}
	if len(d.b) != 0 {
		return malformed("%d trailing bytes after a control request", len(d.b))
	}
	return nil
}

// AppendControlReply appends a control reply frame with the given id (0:
// a membership push). Text longer than 1 KiB is cut.
func AppendControlReply(dst []byte, id uint64, r *ControlReply) []byte {
	start := len(dst)
	dst = appendHeader(dst, FrameControl, id)
	dst = append(dst, byte(r.Op), byte(r.Status))
	var f byte
	if r.Done {
		f |= 1
	}
	dst = append(dst, f)
	dst = le.AppendUint32(dst, r.Conflicts)
	dst = le.AppendUint64(dst, r.Next.Seg)
	dst = le.AppendUint64(dst, r.Next.Pos)
	dst = appendMembership(dst, &r.Membership)
	text := r.Text
	if len(text) > maxErrorText {
		text = text[:maxErrorText]
	}
	dst = le.AppendUint32(dst, uint32(len(text)))
	dst = append(dst, text...)
	dst = appendRecords(dst, r.Records)
	return finish(dst, start)
}

// DecodeControlReply decodes a control reply payload into r, reusing
// r.Records. Record values alias payload.
func DecodeControlReply(payload []byte, maxValue int, r *ControlReply) error {
	maxValue = orDefault(maxValue, DefaultMaxValue)
	d := decoder{b: payload}
	r.Op = ControlOp(d.u8())
	r.Status = ControlStatus(d.u8())
	f := d.u8()
	r.Conflicts = d.u32()
	r.Next.Seg = d.u64()
	r.Next.Pos = d.u64()
	if d.bad {
		return errTruncated
	}
	if r.Op == controlInvalid || r.Op >= controlOpCount {
		return malformed("unknown control op %d", uint8(r.Op))
	}
	if r.Status >= controlStatusCount {
		return malformed("unknown control status %d", uint8(r.Status))
	}
	if f&^1 != 0 {
		return malformed("unknown control reply flags %#x", f)
	}
	r.Done = f&1 != 0
	m, err := d.membership()
	if err != nil {
		return err
	}
	r.Membership = m
	t := d.bytes(d.u32())
	if d.bad {
		return errTruncated
	}
	if len(t) > maxErrorText {
		return malformed("control reply text of %d bytes (at most %d)", len(t), maxErrorText)
	}
	r.Text = string(t)
	if r.Records, err = d.records(maxValue, r.Records); err != nil {
		return err
	}
	if len(d.b) != 0 {
		return malformed("%d trailing bytes after a control reply", len(d.b))
	}
	return nil
}
