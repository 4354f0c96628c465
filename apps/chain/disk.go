package chain

import (
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/wormspace/wormspace/worm"
)

// Errors of OpenDisk. Each refusal wraps one of them.
var (
	// ErrLocked: another process has the data directory open.
	ErrLocked = errors.New("chain: data directory is locked by another process")
	// ErrForeign: the directory belongs to another cluster, has another
	// segment size, or holds files this package did not write.
	ErrForeign = errors.New("chain: data directory belongs to something else")
	// ErrCorrupt: the log is damaged before its last synced batch. The
	// error is a *CorruptError naming file and offset.
	ErrCorrupt = errors.New("chain: data directory is corrupt")
)

// CorruptError locates damage in a replica's log.
type CorruptError struct {
	File   string
	Offset int64
	Reason string
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("chain: %s: offset %d: %s", e.File, e.Offset, e.Reason)
}

// Unwrap makes errors.Is(err, ErrCorrupt) true.
func (e *CorruptError) Unwrap() error { return ErrCorrupt }

// DiskOptions configures OpenDisk.
type DiskOptions struct {
	// SegmentSize is recorded by a new directory and must match an
	// existing one (0: take the directory's; a new directory then gets
	// DefaultSegmentSize).
	SegmentSize uint32
	// Cluster is recorded by a new directory and must match an existing
	// one.
	Cluster string
	// Volatile skips fsync: replies wait for the write(2) only, so a
	// process crash loses nothing acknowledged and a power failure may.
	// For benchmarks, like wormd -volatile.
	Volatile bool
	// Logger receives recovery diagnostics (default slog.Default()).
	Logger *slog.Logger
}

// DefaultSegmentSize is the segment size of a new directory when none is
// given (wormd's default).
const DefaultSegmentSize = 1024

// Files of a data directory. Anything else makes OpenDisk refuse it.
const (
	lockFile     = "LOCK"
	identityFile = "IDENTITY"
	logFile      = "chain.log"
	tmpSuffix    = ".tmp"
	identityHead = "wormspace chain replica"
	formatV1     = "1"
)

// Log frame layout: crc32c u32 | n u32 | payload [n]; the checksum covers
// n and the payload. A record's payload is kind u8 | seg u64 | off u32 |
// ballot round u64 | node u64 | value (the rest); a commit's is
// kindCommit | batch u64.
const (
	frameHead   = 8
	recFixed    = 1 + 8 + 4 + 16
	kindCommit  = 0x11
	commitSize  = frameHead + 1 + 8
	maxRecValue = 64 << 20 // refuses absurd lengths when replaying
	// compactMin: a log smaller than this is never rewritten at open.
	compactMin = 64 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Disk is a replica's durable log: Append buffers records in memory,
// Sync writes every buffered record followed by a commit marker with one
// write(2) and fsyncs once for all of them (group commit). Positions are
// byte counts of appended records; Sync returns the position it made
// durable.
//
// Concurrency: Append may run concurrently with Sync (a Sync in progress
// covers only what was appended before it started); Syncs are serialised.
// After a failed Sync every later Sync fails with the same error.
//
// Recovery (OpenDisk) replays every batch whose commit marker is intact;
// a torn last batch (never acknowledged: replies wait for its Sync) is
// cut. Damage followed by an intact commit of a later batch cannot come
// from a crash and is refused as corruption.
//
// The log is not compacted while the replica runs: trimmed segments free
// their memory at once and their disk space when OpenDisk finds the log
// much larger than the live state (it then rewrites it from a snapshot).
type Disk struct {
	dir      string
	volatile bool
	log      *slog.Logger
	lock     *os.File
	f        *os.File

	mu       sync.Mutex // guards buf, appended
	buf      []byte
	appended uint64

	syncMu  sync.Mutex // serialises Sync; guards the fields below
	spare   []byte
	size    int64  // file size
	batch   uint64 // last committed batch
	durable uint64
	failed  error
	syncs   uint64
	lastDur time.Duration
}

// OpenDisk opens (creating if needed) the data directory dir and returns
// its log and the replica recovered from it.
func OpenDisk(dir string, o DiskOptions) (*Disk, *Replica, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, nil, err
	}
	lock, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, nil, err
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, nil, fmt.Errorf("%w: %s", ErrLocked, dir)
		}
		return nil, nil, fmt.Errorf("chain: locking %s: %w", dir, err)
	}
	d, rep, err := open(dir, lock, o)
	if err != nil {
		lock.Close()
		return nil, nil, err
	}
	return d, rep, nil
}

func open(dir string, lock *os.File, o DiskOptions) (*Disk, *Replica, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, err
	}
	for _, e := range ents {
		switch e.Name() {
		case lockFile, identityFile, logFile, identityFile + tmpSuffix, logFile + tmpSuffix:
		default:
			return nil, nil, fmt.Errorf("%w: %s holds %q, which is not a chain replica's file", ErrForeign, dir, e.Name())
		}
	}
	os.Remove(filepath.Join(dir, identityFile+tmpSuffix))
	os.Remove(filepath.Join(dir, logFile+tmpSuffix))
	segSize, err := identity(dir, o)
	if err != nil {
		return nil, nil, err
	}
	d := &Disk{dir: dir, volatile: o.Volatile, log: o.Logger, lock: lock}
	rep := NewReplica(segSize)
	path := filepath.Join(dir, logFile)
	data, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, nil, err
	}
	good, batch, err := replay(path, data, rep)
	if err != nil {
		return nil, nil, err
	}
	if good < int64(len(data)) {
		o.Logger.Warn("chain: cutting a torn tail of the log (a batch that was never acknowledged)", "file", path, "offset", good, "bytes", int64(len(data))-good)
	}
	d.batch = batch
	if int64(len(data)) > compactMin && int64(len(data)) > 4*(rep.LiveBytes()+compactMin/4) {
		if err := d.rewrite(rep); err != nil {
			return nil, nil, err
		}
		o.Logger.Info("chain: log rewritten from the live state", "file", path, "was_bytes", len(data), "now_bytes", d.size)
	} else {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			return nil, nil, err
		}
		if good < int64(len(data)) {
			if err := f.Truncate(good); err != nil {
				f.Close()
				return nil, nil, err
			}
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return nil, nil, err
		}
		if err := syncDir(dir); err != nil {
			f.Close()
			return nil, nil, err
		}
		d.f, d.size = f, good
	}
	return d, rep, nil
}

// identity reads IDENTITY, or writes it for a new directory; it returns
// the segment size.
func identity(dir string, o DiskOptions) (uint32, error) {
	path := filepath.Join(dir, identityFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		if _, err := os.Stat(filepath.Join(dir, logFile)); err == nil {
			return 0, fmt.Errorf("%w: %s has a log but no %s", ErrForeign, dir, identityFile)
		}
		size := o.SegmentSize
		if size == 0 {
			size = DefaultSegmentSize
		}
		if size >= worm.MetaOffset {
			return 0, fmt.Errorf("chain: segment size %d too large", size)
		}
		body := fmt.Sprintf("%s\nformat %s\ncluster %s\nsegment-size %d\n", identityHead, formatV1, strconv.Quote(o.Cluster), size)
		body += fmt.Sprintf("crc32c %08x\n", crc32.Checksum([]byte(body), castagnoli))
		if err := writeAtomic(path, []byte(body)); err != nil {
			return 0, err
		}
		return size, nil
	}
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndex(s, "crc32c ")
	if i < 0 || fmt.Sprintf("crc32c %08x\n", crc32.Checksum(b[:i], castagnoli)) != s[i:] {
		return 0, &CorruptError{File: path, Reason: "identity checksum mismatch"}
	}
	lines := strings.Split(strings.TrimSuffix(s[:i], "\n"), "\n")
	if len(lines) != 4 || lines[0] != identityHead || lines[1] != "format "+formatV1 {
		return 0, fmt.Errorf("%w: %s is not a format-%s chain replica identity", ErrForeign, path, formatV1)
	}
	cluster, err := strconv.Unquote(strings.TrimPrefix(lines[2], "cluster "))
	if err != nil {
		return 0, &CorruptError{File: path, Reason: "bad cluster line"}
	}
	size, err := strconv.ParseUint(strings.TrimPrefix(lines[3], "segment-size "), 10, 32)
	if err != nil || size == 0 || size >= uint64(worm.MetaOffset) {
		return 0, &CorruptError{File: path, Reason: "bad segment size line"}
	}
	if cluster != o.Cluster {
		return 0, fmt.Errorf("%w: %s is of cluster %q, not %q", ErrForeign, dir, cluster, o.Cluster)
	}
	if o.SegmentSize != 0 && uint32(size) != o.SegmentSize {
		return 0, fmt.Errorf("%w: %s has segment size %d, not %d", ErrForeign, dir, size, o.SegmentSize)
	}
	return uint32(size), nil
}

func writeAtomic(path string, b []byte) error {
	tmp := path + tmpSuffix
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// frameAt returns the payload of the intact frame at data[pos:], or ok
// false.
func frameAt(data []byte, pos int64) (payload []byte, next int64, ok bool) {
	if int64(len(data))-pos < frameHead {
		return nil, 0, false
	}
	sum := le.Uint32(data[pos:])
	n := int64(le.Uint32(data[pos+4:]))
	if n == 0 || n > int64(len(data))-pos-frameHead {
		return nil, 0, false
	}
	if crc32.Checksum(data[pos+4:pos+frameHead+n], castagnoli) != sum {
		return nil, 0, false
	}
	return data[pos+frameHead : pos+frameHead+n], pos + frameHead + n, true
}

// replay applies every committed batch of data to rep. It returns the
// offset after the last intact commit and that commit's batch number.
func replay(path string, data []byte, rep *Replica) (good int64, batch uint64, err error) {
	var pending []Record
	pos := int64(0)
	for pos < int64(len(data)) {
		p, next, ok := frameAt(data, pos)
		if !ok {
			break
		}
		if p[0] == kindCommit {
			if len(p) != 9 {
				return 0, 0, &CorruptError{File: path, Offset: pos, Reason: "malformed commit"}
			}
			b := le.Uint64(p[1:])
			if b != batch+1 {
				return 0, 0, &CorruptError{File: path, Offset: pos, Reason: fmt.Sprintf("commit of batch %d after batch %d", b, batch)}
			}
			for _, r := range pending {
				if err := rep.Apply(r); err != nil {
					return 0, 0, &CorruptError{File: path, Offset: pos, Reason: err.Error()}
				}
			}
			pending, batch, good = pending[:0], b, next
			pos = next
			continue
		}
		rec, derr := decodeRecord(p)
		if derr != nil {
			return 0, 0, &CorruptError{File: path, Offset: pos, Reason: derr.Error()}
		}
		pending = append(pending, rec)
		pos = next
	}
	if pos < int64(len(data)) {
		// Damage: a crash can only tear the batch after the last commit,
		// so an intact commit of a later batch beyond it is corruption.
		for q := pos + 1; q+commitSize <= int64(len(data)); q++ {
			if p, _, ok := frameAt(data, q); ok && p[0] == kindCommit && len(p) == 9 && le.Uint64(p[1:]) >= batch+2 {
				return 0, 0, &CorruptError{File: path, Offset: pos, Reason: fmt.Sprintf("damaged frame followed by the commit of batch %d at offset %d", le.Uint64(p[1:]), q)}
			}
		}
	}
	return good, batch, nil
}

func appendRecord(dst []byte, r *Record) []byte {
	start := len(dst)
	dst = le.AppendUint32(dst, 0)
	dst = le.AppendUint32(dst, uint32(recFixed+len(r.Value)))
	dst = append(dst, byte(r.Kind))
	dst = le.AppendUint64(dst, r.Seg)
	dst = le.AppendUint32(dst, r.Off)
	dst = appendBallot(dst, r.Ballot)
	dst = append(dst, r.Value...)
	le.PutUint32(dst[start:], crc32.Checksum(dst[start+4:], castagnoli))
	return dst
}

func appendCommit(dst []byte, batch uint64) []byte {
	start := len(dst)
	dst = le.AppendUint32(dst, 0)
	dst = le.AppendUint32(dst, 9)
	dst = append(dst, kindCommit)
	dst = le.AppendUint64(dst, batch)
	le.PutUint32(dst[start:], crc32.Checksum(dst[start+4:], castagnoli))
	return dst
}

func decodeRecord(p []byte) (Record, error) {
	if len(p) < recFixed {
		return Record{}, fmt.Errorf("record of %d bytes", len(p))
	}
	d := decoder{b: p}
	r := Record{Kind: RecordKind(d.u8()), Seg: d.u64(), Off: d.u32(), Ballot: d.ballot()}
	r.Value = d.b
	if r.Kind <= recInvalid || r.Kind >= recKindCount {
		return Record{}, fmt.Errorf("record of unknown kind %d", r.Kind)
	}
	if len(r.Value) > maxRecValue {
		return Record{}, fmt.Errorf("record value of %d bytes", len(r.Value))
	}
	return r, nil
}

// rewrite replaces the log with a snapshot of rep (one batch), durably.
func (d *Disk) rewrite(rep *Replica) error {
	var buf []byte
	if err := rep.Snapshot(func(r Record) error {
		buf = appendRecord(buf, &r)
		return nil
	}); err != nil {
		return err
	}
	buf = appendCommit(buf, 1)
	path := filepath.Join(d.dir, logFile)
	if err := writeAtomic(path, buf); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	d.f, d.size, d.batch = f, int64(len(buf)), 1
	return nil
}

// Append buffers recs and returns the log position after them. It never
// does I/O and allocates nothing in steady state.
func (d *Disk) Append(recs []Record) uint64 {
	d.mu.Lock()
	before := len(d.buf)
	for i := range recs {
		d.buf = appendRecord(d.buf, &recs[i])
	}
	d.appended += uint64(len(d.buf) - before)
	end := d.appended
	d.mu.Unlock()
	return end
}

// Sync writes everything appended so far with a commit marker and, unless
// volatile, fsyncs it; it returns the position now durable.
func (d *Disk) Sync() (uint64, error) {
	d.syncMu.Lock()
	defer d.syncMu.Unlock()
	if d.failed != nil {
		return d.durable, d.failed
	}
	d.mu.Lock()
	buf := d.buf
	end := d.appended
	d.buf = d.spare[:0]
	d.mu.Unlock()
	if len(buf) == 0 {
		d.spare = buf
		return d.durable, nil
	}
	t0 := time.Now()
	buf = appendCommit(buf, d.batch+1)
	if _, err := d.f.WriteAt(buf, d.size); err != nil {
		d.failed = fmt.Errorf("chain: writing the log: %w", err)
		return d.durable, d.failed
	}
	if !d.volatile {
		if err := d.f.Sync(); err != nil {
			d.failed = fmt.Errorf("chain: fsync of the log: %w", err)
			return d.durable, d.failed
		}
	}
	d.size += int64(len(buf))
	d.batch++
	d.durable = end
	d.syncs++
	d.lastDur = time.Since(t0)
	if cap(buf) <= 4<<20 {
		d.spare = buf[:0]
	} else {
		d.spare = nil
	}
	return end, nil
}

// SyncIsCheap reports whether Sync skips fsync (volatile mode).
func (d *Disk) SyncIsCheap() bool { return d.volatile }

// DiskStats are a Disk's counters.
type DiskStats struct {
	Bytes    int64  `json:"bytes"`
	Batches  uint64 `json:"batches"`
	Syncs    uint64 `json:"syncs"`
	LastSync string `json:"last_sync"`
	Volatile bool   `json:"volatile"`
	Failed   string `json:"failed,omitempty"`
}

// Stats returns the Disk's counters.
func (d *Disk) Stats() DiskStats {
	d.syncMu.Lock()
	defer d.syncMu.Unlock()
	s := DiskStats{Bytes: d.size, Batches: d.batch, Syncs: d.syncs, LastSync: d.lastDur.String(), Volatile: d.volatile}
	if d.failed != nil {
		s.Failed = d.failed.Error()
	}
	return s
}

// abort drops what is buffered and closes the files without a sync, as a
// crash would (tests).
func (d *Disk) abort() {
	d.mu.Lock()
	d.buf = d.buf[:0]
	d.mu.Unlock()
	d.syncMu.Lock()
	defer d.syncMu.Unlock()
	d.failed = errors.New("chain: log aborted")
	if d.f != nil {
		d.f.Close()
		d.f = nil
	}
	if d.lock != nil {
		d.lock.Close()
		d.lock = nil
	}
}

// Close syncs what is buffered and releases the directory.
func (d *Disk) Close() error {
	d.syncMu.Lock()
	aborted := d.f == nil
	d.syncMu.Unlock()
	if aborted {
		return nil
	}
	_, err := d.Sync()
	d.syncMu.Lock()
	defer d.syncMu.Unlock()
	if d.f != nil {
		if cerr := d.f.Close(); err == nil {
			err = cerr
		}
		d.f = nil
		if d.failed == nil {
			d.failed = errors.New("chain: log closed")
		}
	}
	if d.lock != nil {
		d.lock.Close()
		d.lock = nil
	}
	return err
}
