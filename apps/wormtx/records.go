package wormtx

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/wormspace/wormspace/apps/wormtx/internal/forcefile"
	"github.com/wormspace/wormspace/worm"
)

// Votes that carry their prepare record.
//
// A participant must not forget a yes vote that may become chosen: after
// a restart it has to find the transaction, take its locks again and
// apply the outcome. The Resource contract therefore asks Prepare to
// record the vote durably before it is cast, which puts a local log force
// on every transaction's critical path, before the vote's own write to
// the wormservers (2PC pays the same force). A participant whose
// Resource is Restorable, taking prepares in shared segments tied to its
// participant set (CoordinatorConfig.SetSegments), skips that force:
//
//   - its yes vote carries the prepare record (voteRecord: the
//     transaction's payload and the Resource's bytes), so the vote
//     register itself is the durable prepare, forced by the wormservers'
//     acceptance of the vote;
//   - before its first vote in a segment it records the segment in its
//     SegmentLog (durably, once per segment: a segment holds many
//     transactions, so this stays off nearly every critical path);
//   - after a restart (Run), for every recorded segment not yet trimmed,
//     it settles each of its own vote registers, which in a set segment
//     are every slot's i-th (i its place in the set): a yes that reached
//     any acceptor of the capture's quorum comes back with its record
//     and is restored (Restorable.Restore) and handled to its outcome;
//     every other register is fenced (capture and write of valFenced,
//     which counts as no), so a vote in flight at the crash can no
//     longer be chosen. A fenced vote also stands for the participant's
//     acknowledgement: it holds nothing of that transaction.
//
// Only the participant's own registers are touched. Slots its fence
// reached before their coordinator handed them out abort at once; the
// coordinator, which hears every write in its segment, moves on to a new
// segment when it sees a chosen register in a slot it has not handed out.
// A prepare that still reaches the restarted participant in a segment it
// fenced takes no locks: its vote there is chosen already, and a fenced
// vote is its acknowledgement, so the segment may be trimmed without it.

// Restorable is a Recoverable Resource whose prepare need not be durable
// before the vote, when the vote can carry it (see above).
//
// PrepareRecord is Prepare without the durability: it validates and
// locks, and returns the vote and, for yes, the bytes Restore needs to
// take the same locks again (the transaction's descriptor is kept by the
// protocol: Restore receives it). Like Prepare, it returns the same vote
// and record for the same transaction on every call while the process
// lives. Restore re-establishes the prepared state of a transaction found
// voted yes after a restart; Apply follows with its outcome. Restore must
// accept a transaction that was already applied (and then take nothing).
// Apply must be durable when it returns: the participant then
// acknowledges, and once every participant has, the coordinator trims the
// segment and the vote with its record is gone.
type Restorable interface {
	Recoverable
	PrepareRecord(ctx context.Context, tx TxID, d Descriptor) (yes bool, record []byte, err error)
	Restore(ctx context.Context, tx TxID, d Descriptor, record []byte) error
}

// SegmentLog is a participant's durable list of the set segments it may
// have voted in with records (ParticipantConfig.Segments). Add returns
// once seg is durable; Segments lists what was added and not removed;
// Remove forgets seg (durability optional: a segment listed again after
// a restart is found trimmed and removed again). Safe for concurrent use.
type SegmentLog interface {
	Add(ctx context.Context, seg uint64) error
	Segments(ctx context.Context) ([]uint64, error)
	Remove(ctx context.Context, seg uint64) error
}

// setMagic marks a shared segment's metadata that names its participant
// set: sharedMagic, the coordinator's nonce, setMagic, then the set as a
// descriptor (MarshalDescriptor with no payload).
const setMagic = ":set:"

// setSegmentMeta is the metadata of a shared segment tied to participants.
func setSegmentMeta(nonce string, participants []string) []byte {
	m := []byte(sharedMagic + nonce + setMagic)
	return append(m, MarshalDescriptor(Descriptor{Participants: participants})...)
}

// parseSetSegmentMeta returns the participant set a shared segment's
// metadata names; ok is false for any other metadata.
func parseSetSegmentMeta(meta []byte) (participants []string, ok bool) {
	if !bytes.HasPrefix(meta, []byte(sharedMagic)) {
		return nil, false
	}
	i := bytes.Index(meta, []byte(setMagic))
	if i < 0 {
		return nil, false
	}
	d, err := UnmarshalDescriptor(meta[i+len(setMagic):])
	if err != nil || len(d.Participants) == 0 || len(d.Payload) != 0 {
		return nil, false
	}
	return d.Participants, true
}

// segRecord is what a participant knows of a shared segment it was asked
// to vote in: whether its votes there may carry records (a set segment of
// this very set, recorded in the SegmentLog), or whether this incarnation
// fenced its votes there on starting (restoreVotes).
type segRecord struct {
	done   chan struct{} // closed when ok and err are set
	ok     bool
	fenced bool
	err    error
}

// segmentRecorded reports whether the participant may vote in t's shared
// segment with a record: the segment's metadata names exactly t's
// participants (so its vote registers are its own in every slot), and
// the segment is durably in the SegmentLog. The first transaction of a
// segment reads the metadata and adds the segment; the others wait for
// that or find it done. A failed attempt is forgotten, so the next
// transaction tries again.
//
// fenced reports that this incarnation settled its vote registers in the
// segment when it started (restoreVotes): its vote in t is already
// chosen, and it must not prepare t (see handlePrepareShared).
func (p *Participant) segmentRecorded(ctx context.Context, t Tx) (ok, fenced bool, err error) {
	seg := t.segment()
	r, mine := p.claimRecord(seg)
	if mine {
		p.finishRecord(ctx, seg, t.Participants, r)
		return r.ok, false, r.err
	}
	select {
	case <-r.done:
	case <-ctx.Done():
		return false, false, ctx.Err()
	}
	if r.err != nil {
		return p.segmentRecorded(ctx, t) // that attempt failed: try again
	}
	return r.ok, r.fenced, nil
}

// claimRecord returns seg's record, and whether the caller created it and
// must make it (finishRecord).
func (p *Participant) claimRecord(seg uint64) (r *segRecord, mine bool) {
	p.segMu.Lock()
	defer p.segMu.Unlock()
	if r := p.segs[seg]; r != nil {
		return r, false
	}
	r = &segRecord{done: make(chan struct{})}
	p.segs[seg] = r
	return r, true
}

// finishRecord makes r, claimed for seg: on failure it is forgotten, so
// that the next transaction there tries again.
func (p *Participant) finishRecord(ctx context.Context, seg uint64, participants []string, r *segRecord) {
	r.ok, r.err = p.recordSegment(ctx, seg, participants)
	if r.err != nil {
		p.segMu.Lock()
		delete(p.segs, seg)
		p.segMu.Unlock()
	}
	close(r.done)
}

// recordAhead records t.NextSegment, the set segment t's coordinator
// allocated ahead, in the background, so that the first vote there finds
// it recorded: that record (a Check and a force of the SegmentLog) took
// 1.4-2.4 ms on the first transaction of every segment on a busy 2-vCPU
// machine, which was WormTX's p99. Only where votes carry records (a
// SegmentLog and a Restorable Resource), after Run's restore (a prepare
// waits for it; a hint need not), once per segment. A segment recorded
// and never voted in costs a restart its fences there, as a segment whose
// coordinator died early does.
func (p *Participant) recordAhead(t Tx, res Recoverable) {
	next := t.NextSegment
	if next == 0 || next == t.segment() || next > MaxSharedSegment || p.cfg.Segments == nil {
		return
	}
	if _, ok := res.(Restorable); !ok {
		return
	}
	select {
	case <-p.restored:
	default:
		return
	}
	r, mine := p.claimRecord(next)
	if !mine {
		return
	}
	ctx := p.listeners.life
	go func() {
		p.finishRecord(ctx, next, t.Participants, r)
		if r.err != nil && ctx.Err() == nil {
			p.log.Debug("wormtx: recording the next segment ahead", "seg", next, "err", r.err)
		}
	}()
}

// recordSegment checks seg's metadata against participants and adds seg
// to the SegmentLog.
func (p *Participant) recordSegment(ctx context.Context, seg uint64, participants []string) (bool, error) {
	var info worm.SegmentInfo
	var b backoff
	for {
		var err error
		info, err = p.sp.Check(ctx, seg)
		if err == nil {
			break
		}
		if !transient(ctx, err) || b.wait(ctx) != nil {
			return false, fmt.Errorf("wormtx: segment %d: %w", seg, err)
		}
	}
	set, ok := parseSetSegmentMeta(info.Meta)
	if !ok || !slices.Equal(set, participants) {
		return false, nil
	}
	if err := p.cfg.Segments.Add(ctx, seg); err != nil {
		return false, fmt.Errorf("wormtx: recording segment %d: %w", seg, err)
	}
	p.pruneSegments(seg)
	return true, nil
}

// pruneSegments removes from the SegmentLog, in the background, the
// recorded segments other than current that are trimmed, so that the log
// (and a restart's scan) stays short: a coordinator trims a set segment
// once every transaction in it is complete. One prune runs at a time,
// until Close.
func (p *Participant) pruneSegments(current uint64) {
	p.segMu.Lock()
	if p.pruning {
		p.segMu.Unlock()
		return
	}
	p.pruning = true
	p.segMu.Unlock()
	ctx := p.listeners.life
	go func() {
		defer func() {
			p.segMu.Lock()
			p.pruning = false
			p.segMu.Unlock()
		}()
		segs, err := p.cfg.Segments.Segments(ctx)
		if err != nil {
			return
		}
		for _, seg := range segs {
			if seg == current || ctx.Err() != nil {
				continue
			}
			if _, err := p.sp.Check(ctx, seg); errors.Is(err, worm.ErrTrimmed) {
				if err := p.cfg.Segments.Remove(ctx, seg); err != nil {
					p.log.Warn("wormtx: forgetting a trimmed segment", "seg", seg, "err", err)
				}
				p.segMu.Lock()
				delete(p.segs, seg)
				p.segMu.Unlock()
			}
		}
	}()
}

// restoreVotes is Run's first step for a Restorable Resource with a
// SegmentLog: it settles the participant's vote register in every slot
// of every recorded segment (see the top of this file), restores each
// transaction found voted yes with a record, and returns them for
// handling. Trimmed segments are removed from the log.
func (p *Participant) restoreVotes(ctx context.Context, rr Restorable) ([]Tx, error) {
	segs, err := p.cfg.Segments.Segments(ctx)
	if err != nil {
		return nil, fmt.Errorf("wormtx: %q: listing recorded segments: %w", p.name, err)
	}
	size := p.sp.SegmentSize()
	var (
		mu   sync.Mutex
		out  []Tx
		errs []error
	)
	for _, seg := range segs {
		info, err := p.checkRetry(ctx, seg)
		if errors.Is(err, worm.ErrTrimmed) {
			if err := p.cfg.Segments.Remove(ctx, seg); err != nil {
				p.log.Warn("wormtx: forgetting a trimmed segment", "seg", seg, "err", err)
			}
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("wormtx: %q: recorded segment %d: %w", p.name, seg, err)
		}
		set, ok := parseSetSegmentMeta(info.Meta)
		i := slices.Index(set, p.name)
		if !ok || i < 0 {
			// Recorded only after this very check passed: not ours.
			return nil, fmt.Errorf("%w: recorded segment %d is not a set segment of %q", ErrInconsistent, seg, p.name)
		}
		slots := SlotsPerSegment(size, len(set))
		width := SlotWidth(len(set))
		// The segment's own registers only; a bounded number at once.
		sem := make(chan struct{}, 16)
		var wg sync.WaitGroup
		for k := range slots {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				id := SlotTxID(seg, uint32(k)*width)
				t := Tx{ID: id, Descriptor: Descriptor{Participants: set}}
				v, _, err := settle(ctx, p.sp, t.voteAddr(i), valFenced)
				if errors.Is(err, worm.ErrTrimmed) {
					return
				}
				if err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
					return
				}
				payload, rec, ok := parseVoteRecord(v)
				if !ok {
					return // fenced, or a vote without record (Prepared lists those)
				}
				t.Payload = bytes.Clone(payload)
				if err := rr.Restore(ctx, id, t.Descriptor, bytes.Clone(rec)); err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("wormtx: %v: restore: %w", id, err))
					mu.Unlock()
					return
				}
				mu.Lock()
				out = append(out, t)
				mu.Unlock()
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return nil, fmt.Errorf("wormtx: %q: settling votes in segment %d: %w", p.name, seg, err)
		}
		// Fenced: this incarnation votes there no more (the coordinator
		// moves on, having heard the fences).
		p.segMu.Lock()
		r := &segRecord{done: make(chan struct{}), fenced: true}
		close(r.done)
		p.segs[seg] = r
		p.segMu.Unlock()
	}
	slices.SortFunc(out, func(a, b Tx) int { return cmp.Compare(a.ID, b.ID) })
	return out, nil
}

// checkRetry is Check, retried while the error is transient.
func (p *Participant) checkRetry(ctx context.Context, seg uint64) (worm.SegmentInfo, error) {
	var b backoff
	for {
		info, err := p.sp.Check(ctx, seg)
		if err == nil || !transient(ctx, err) || b.wait(ctx) != nil {
			return info, err
		}
	}
}

// SegmentFile is a SegmentLog in a file: one record per change ('+' or '-'
// and the segment number), appended and synced (Add) or just appended
// (Remove). The records are checksummed and written over zeros written
// ahead of them, so that a sync is one device flush
// (apps/wormtx/internal/forcefile).
type SegmentFile struct {
	mu   sync.Mutex
	path string
	f    *forcefile.File
}

var _ SegmentLog = (*SegmentFile)(nil)

// segmentFileMagic starts a segment log file.
const segmentFileMagic = "wormspace wormtx segments v1\n"

// OpenSegmentFile opens (creating) the segment log at path. A torn last
// record (a crash in the middle of an append, whose Add never returned)
// is cut off.
func OpenSegmentFile(path string) (*SegmentFile, error) {
	f, recs, err := forcefile.Open(path, segmentFileMagic, false)
	if err != nil {
		return nil, fmt.Errorf("wormtx: segment log: %w", err)
	}
	s := &SegmentFile{path: path, f: f}
	if _, err := s.parse(recs); err != nil {
		f.Close()
		return nil, err
	}
	return s, nil
}

func (s *SegmentFile) write(op byte, seg uint64, sync bool) error {
	rec := forcefile.AppendRecord(nil, binary.LittleEndian.AppendUint64([]byte{op}, seg))
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.f.Write(rec); err != nil {
		return err
	}
	if sync {
		return s.f.Sync()
	}
	return nil
}

// Add implements SegmentLog.
func (s *SegmentFile) Add(_ context.Context, seg uint64) error { return s.write('+', seg, true) }

// Remove implements SegmentLog.
func (s *SegmentFile) Remove(_ context.Context, seg uint64) error { return s.write('-', seg, false) }

// Segments implements SegmentLog.
func (s *SegmentFile) Segments(context.Context) ([]uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	recs, err := s.f.Records()
	if err != nil {
		return nil, err
	}
	return s.parse(recs)
}

// parse returns the segments recs add and do not remove, in the order of
// their first addition.
func (s *SegmentFile) parse(recs [][]byte) ([]uint64, error) {
	live := map[uint64]bool{}
	var order []uint64
	for i, r := range recs {
		if len(r) != 9 {
			return nil, fmt.Errorf("wormtx: segment log %s: bad record %d: %x", s.path, i, r)
		}
		seg := binary.LittleEndian.Uint64(r[1:9])
		switch r[0] {
		case '+':
			if !live[seg] {
				live[seg] = true
				order = append(order, seg)
			}
		case '-':
			delete(live, seg)
		default:
			return nil, fmt.Errorf("wormtx: segment log %s: bad record %d: %x", s.path, i, r)
		}
	}
	var out []uint64
	for _, seg := range order {
		if live[seg] {
			out = append(out, seg)
		}
	}
	return out, nil
}

// Close closes the file.
func (s *SegmentFile) Close() error { return s.f.Close() }
