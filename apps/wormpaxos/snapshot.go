package wormpaxos

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/wormspace/wormspace/worm"
)

// The snapshot area: snapshot slot k is segment SnapshotBase+k. A replica
// that wants to store a snapshot Allocs the first free slot (the Alloc
// metadata records the snapshot's log position), writes the chunks to
// registers 1..n and then the header to register 0, so a header implies a
// complete snapshot. Slots are allocated in order, so the live slots form
// a range ending at the first unallocated one. A replica trims the log
// segments wholly below its own snapshot's position, and the snapshot
// slots whose position is lower than its own; so the snapshot with the
// highest position is never trimmed, and the log is trimmed only below a
// complete snapshot.

// maybeSnapshot starts a snapshot when SnapshotEvery positions have been
// applied since the last one.
func (r *Replica) maybeSnapshot(ctx context.Context, wg *sync.WaitGroup) {
	if r.cfg.SnapshotEvery == 0 {
		return
	}
	r.mu.Lock()
	if r.snapping || r.applied-r.snapAt < r.cfg.SnapshotEvery {
		r.mu.Unlock()
		return
	}
	state, err := r.sm.Snapshot()
	if err != nil {
		r.mu.Unlock()
		r.log.Warn("snapshot", "err", err)
		return
	}
	sessions := make(map[string]session, len(r.sessions))
	for k, v := range r.sessions {
		sessions[k] = *v
	}
	snap := snapshot{Index: r.applied, Sessions: sessions, State: state}
	r.snapAt, r.snapping = r.applied, true
	r.mu.Unlock()
	wg.Go(func() {
		defer func() {
			r.mu.Lock()
			r.snapping = false
			r.mu.Unlock()
		}()
		if err := r.writeSnapshot(ctx, snap.Index, encodeSnapshot(snap)); err != nil && ctx.Err() == nil {
			r.log.Debug("store snapshot", "index", snap.Index, "err", err)
		}
	})
}

func (r *Replica) writeSnapshot(ctx context.Context, index uint64, data []byte) error {
	var chunks [][]byte
	for b := data; len(b) > 0; {
		n := min(len(b), r.cfg.ChunkSize)
		chunks = append(chunks, b[:n])
		b = b[n:]
	}
	if uint64(len(chunks))+1 > r.size {
		return fmt.Errorf("%w: %d bytes in %d-byte chunks, segment of %d", ErrSnapshotTooLarge, len(data), r.cfg.ChunkSize, r.size)
	}
	meta := binary.AppendUvarint([]byte("wormpaxos snapshot "), index)
	r.smu.Lock()
	defer r.smu.Unlock()
	end, err := r.snapEnd(ctx)
	if err != nil {
		return err
	}
	for k := end; ; k++ {
		s := r.cfg.SnapshotBase + k
		info, err := r.space.Alloc(ctx, s, meta)
		if errors.Is(err, worm.ErrTrimmed) {
			continue
		}
		if err != nil {
			return fmt.Errorf("alloc snapshot slot %d: %w", k, err)
		}
		if !info.Won {
			if idx, ok := snapMetaIndex(info.Meta); ok && idx >= index {
				r.snapNext = k + 1
				return nil // someone stores a newer one
			}
			continue
		}
		r.snapNext = k + 1
		sc, err := r.space.CaptureSegment(ctx, s)
		if err != nil {
			return fmt.Errorf("capture snapshot slot %d: %w", k, err)
		}
		if len(chunks) > 0 {
			if err := retryWrite(ctx, func() error { return r.space.WriteBatch(ctx, s, 1, sc.Token, chunks) }); err != nil {
				return fmt.Errorf("write snapshot chunks: %w", err)
			}
		}
		h := encodeSnapHeader(snapHeader{Index: index, Chunks: uint64(len(chunks)), Size: uint64(len(data)), CRC: checksum(data)})
		if err := retryWrite(ctx, func() error { return r.space.Write(ctx, worm.Addr{Seg: s, Off: 0}, sc.Token, h) }); err != nil {
			return fmt.Errorf("write snapshot header: %w", err)
		}
		r.stats.snapshots.Add(1)
		r.log.Debug("snapshot stored", "index", index, "slot", k, "bytes", len(data))
		r.trimBelow(ctx, index, k)
		return nil
	}
}

func snapMetaIndex(meta []byte) (uint64, bool) {
	const p = "wormpaxos snapshot "
	if len(meta) <= len(p) || string(meta[:len(p)]) != p {
		return 0, false
	}
	v, n := binary.Uvarint(meta[len(p):])
	return v, n > 0
}

// retryWrite retries an idempotent write on ErrUnavailable and
// ErrUnknownOutcome a few times.
func retryWrite(ctx context.Context, f func() error) error {
	var err error
	for i := range 8 {
		err = f()
		if err == nil || !(errors.Is(err, worm.ErrUnavailable) || errors.Is(err, worm.ErrUnknownOutcome) || isRetryBatch(err)) {
			return err
		}
		if sleep(ctx, backoff(i)) != nil {
			return err
		}
	}
	return err
}

func isRetryBatch(err error) bool {
	var be *worm.BatchError
	if !errors.As(err, &be) {
		return false
	}
	for _, e := range be.Errs {
		if e != nil && !errors.Is(e, worm.ErrUnavailable) && !errors.Is(e, worm.ErrUnknownOutcome) {
			return false
		}
	}
	return true
}

// trimBelow trims the log segments wholly below index and the snapshot
// slots below k that hold older snapshots. Caller holds r.smu.
func (r *Replica) trimBelow(ctx context.Context, index, k uint64) {
	upto := r.segsBelow(index)
	for s := r.trimmedLog; s < upto; s++ {
		if err := r.space.Trim(ctx, r.cfg.LogBase+s); err != nil {
			r.log.Debug("trim log", "seg", r.cfg.LogBase+s, "err", err)
			return
		}
		r.trimmedLog = s + 1
	}
	// Older slots, scanning down until a run of trimmed ones.
	run := 0
	for j := k; j > r.snapLow && run < 16; {
		j--
		s := r.cfg.SnapshotBase + j
		info, err := r.space.Check(ctx, s)
		if err == nil {
			if idx, ok := snapMetaIndex(info.Meta); ok && idx < index {
				err = r.space.Trim(ctx, s)
				if err == nil {
					err = worm.ErrTrimmed
				}
			}
		}
		if !errors.Is(err, worm.ErrTrimmed) {
			run = 0
			continue
		}
		if run++; run == 16 {
			r.snapLow = max(r.snapLow, j)
		}
	}
}

// snapEnd returns the first unallocated snapshot slot (slots are
// allocated in order), by galloping and bisecting from snapNext. Caller
// holds r.smu.
func (r *Replica) snapEnd(ctx context.Context) (uint64, error) {
	used := func(k uint64) (bool, error) {
		_, err := r.space.Check(ctx, r.cfg.SnapshotBase+k)
		switch {
		case err == nil, errors.Is(err, worm.ErrTrimmed):
			return true, nil
		case errors.Is(err, worm.ErrUnallocated):
			return false, nil
		}
		return false, fmt.Errorf("check snapshot slot %d: %w", k, err)
	}
	lo := r.snapNext
	ok, err := used(lo)
	if err != nil || !ok {
		return lo, err
	}
	hi := lo + 1
	for step := uint64(1); ; step *= 2 {
		if ok, err = used(hi); err != nil {
			return 0, err
		}
		if !ok {
			break
		}
		lo, hi = hi, hi+step
	}
	for hi-lo > 1 { // used(lo), !used(hi)
		mid := lo + (hi-lo)/2
		if ok, err = used(mid); err != nil {
			return 0, err
		}
		if ok {
			lo = mid
		} else {
			hi = mid
		}
	}
	return hi, nil
}

// restoreLatest installs the newest complete snapshot if it is ahead of
// the applied position. It reports whether it moved the replica forward.
func (r *Replica) restoreLatest(ctx context.Context) (bool, error) {
	r.smu.Lock()
	defer r.smu.Unlock()
	end, err := r.snapEnd(ctx)
	if err != nil {
		return false, err
	}
	r.snapNext = max(r.snapNext, end)
	// Scan down from the newest slot: positions grow with slots, older
	// slots are trimmed once a newer snapshot is complete, and the
	// snapshot with the highest position is never trimmed. Stop at a run
	// of trimmed slots or after a few complete snapshots.
	var best snapHeader
	var bestSeg uint64
	found := false
	trimmed, complete := 0, 0
	for k := end; k > r.snapLow && trimmed < 16 && complete < 8; {
		k--
		s := r.cfg.SnapshotBase + k
		v, err := r.space.Read(ctx, worm.Addr{Seg: s, Off: 0})
		if errors.Is(err, worm.ErrTrimmed) {
			if trimmed++; trimmed == 16 {
				r.snapLow = max(r.snapLow, k)
			}
			continue
		}
		trimmed = 0
		if empty(err) {
			continue // being written, or abandoned
		}
		if err != nil {
			return false, fmt.Errorf("read snapshot slot %d: %w", k, err)
		}
		h, err := decodeSnapHeader(v)
		if err != nil {
			return false, fmt.Errorf("snapshot slot %d: %w", k, err)
		}
		complete++
		if !found || h.Index > best.Index {
			best, bestSeg, found = h, s, true
		}
	}
	if !found || best.Index <= r.Applied() {
		return false, nil
	}
	data := make([]byte, 0, best.Size)
	for i := uint64(1); i <= best.Chunks; i++ {
		v, err := r.space.Read(ctx, worm.Addr{Seg: bestSeg, Off: uint32(i)})
		if err != nil {
			return false, fmt.Errorf("read snapshot chunk %d/%d: %w", bestSeg, i, err)
		}
		data = append(data, v...)
	}
	if uint64(len(data)) != best.Size || checksum(data) != best.CRC {
		return false, fmt.Errorf("%w: snapshot in segment %d fails its checksum", ErrCorrupt, bestSeg)
	}
	snap, err := decodeSnapshot(data)
	if err != nil {
		return false, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if snap.Index <= r.applied {
		return false, nil
	}
	if err := r.sm.Restore(snap.State); err != nil {
		return false, fmt.Errorf("%w: restore: %w", ErrCorrupt, err)
	}
	r.sessions = make(map[string]*session, len(snap.Sessions))
	for k, v := range snap.Sessions {
		r.sessions[k] = &v
	}
	r.applied, r.snapAt = snap.Index, snap.Index
	r.hint = max(r.hint, r.applied)
	r.trimmedLog = max(r.trimmedLog, r.segsBelow(snap.Index))
	for p := range r.known {
		if p < r.applied {
			delete(r.known, p)
		}
	}
	for k, head := range r.waiters {
		if s := r.sessions[k]; s != nil {
			r.resolveLocked(head, s)
		}
	}
	close(r.progress)
	r.progress = make(chan struct{})
	r.stats.restores.Add(1)
	r.log.Debug("restored snapshot", "index", snap.Index, "seg", bestSeg)
	return true, nil
}
