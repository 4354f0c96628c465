package storage

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wormspace/wormspace/worm/paxos"
)

// Options configure Open.
type Options struct {
	// SegmentSize is the number of data registers per segment of the
	// space (required). It is recorded in the directory's identity.
	SegmentSize uint32
	// Cluster identifies the cluster this acceptor belongs to (required).
	// A directory of another cluster is refused with ErrForeign.
	Cluster string
	// Volatile makes Sync hand data to the operating system without
	// fsync. For benchmarks only: a power failure loses acknowledged
	// state.
	Volatile bool
	// Logger receives recovery and compaction events (default
	// slog.Default()).
	Logger *slog.Logger
	// ChunkSize is the preallocation unit (default 4 MiB; rounded up to
	// a multiple of 4096).
	ChunkSize int64
	// ZeroAhead is how far past the data a sync writes zeros over
	// preallocated space (default 256 KiB; negative: never). fallocate(2)
	// leaves unwritten extents, and on ext4 and XFS the first write into
	// one changes the file's metadata (the extent becomes written), which
	// the next fdatasync must write too: a journal commit, or on an ext4
	// without a journal (this project's test machine: ext4_fsync_nojournal
	// in a profile) the inode's blocks. A second write and device flush: a
	// log of small syncs pays it every 4 KiB block, a busy one on every
	// sync.
	// Zeros written ahead cost one such conversion per ZeroAhead bytes,
	// paid by a sync that converts anyway (one whose data crosses into
	// space not yet written, and which writes the next stretch of zeros
	// before its fdatasync). Side by side on ext4 here
	// (BenchmarkSyncZeroAhead), syncs of 1.6 KiB took 1.23x as long
	// without (133 against 107 µs), of 13 KiB 1.5-1.75x (211-228 against
	// 127-143 µs), of 100 bytes 1.02-1.03x. PostgreSQL zero-fills its WAL
	// segments for the same reason. Volatile logs never write zeros.
	ZeroAhead int64
	// MaxBytes, when positive, caps the bytes the log may hold on disk
	// (all generation files, preallocation included): Reserve fails with
	// ErrNoSpace beyond it.
	MaxBytes int64
	// CompactSlack is the bytes of garbage tolerated on top of twice the
	// live state before ShouldCompact says yes (default 8 MiB).
	CompactSlack int64
	// FS is the file system the directory lives in (default OSFS{}, the
	// operating system's). The simulator passes a simulated disk
	// (worm/storage/simfs) to crash the log's storage deterministically.
	FS FS
	// Now is the clock the directory's creation time is read from
	// (default time.Now). The simulator fixes it so that the bytes a run
	// writes are a function of its seed.
	Now func() time.Time
}

// Stats are counters for metrics.
type Stats struct {
	BytesOnDisk int64         // allocated size of every generation file
	LogBytes    int64         // bytes written to the current generation
	Records     uint64        // records appended since Open
	Recovered   int           // records replayed by Open
	Syncs       uint64        // syncs that wrote or flushed something
	LastSync    time.Duration // duration of the last write+fsync
	SyncTime    time.Duration // total duration of the syncs counted in Syncs
	Generation  uint64        // current generation number
	End         uint64        // log position after the last appended record
	Durable     uint64        // log position known durable
	TailCut     int64         // bytes of a torn tail Open cut (0: none)
	Discarded   int           // incomplete generations Open discarded (a crash during compaction)
}

// gen is one generation file.
type gen struct {
	num     uint64
	f       File
	base    uint64 // log position of file offset 0
	tail    int64  // file offset after everything appended (buffered included)
	written int64  // file offset up to which bytes were handed to the OS
	alloc   int64  // preallocated file size
	zeroed  int64  // file offset below which every block was written (data or zeros) before the last sync
	batch   uint64 // last batch number assigned
	pending bool   // records appended since the last commit frame
	fresh   bool   // created by Compact; its first sync retires the old generations
}

// Log is a wormserver's durable record log. It satisfies worm/server's
// Log interface. Reserve, Append, Compact and ShouldCompact are called by
// one goroutine at a time (the engine's lock); Sync and Stats may run
// concurrently with them.
type Log struct {
	dir     string
	opts    Options
	fs      FS
	logger  *slog.Logger
	chunk   int64
	lockf   io.Closer
	id      Identity
	maxRecV int // largest value a record frame can carry

	hookSyncIO func() // tests: called by Sync before its write and fsync

	syncMu      sync.Mutex // serialises Sync: one write+fsync at a time
	zeroFailing bool       // the last zeros ahead failed (guarded by syncMu)

	mu        sync.Mutex
	cur       *gen
	old       []*gen // superseded by cur; removed after cur's first sync
	buf       []byte // appended, not yet handed to the OS (belongs to cur)
	spare     []byte
	cbuf      []byte // compaction buffer
	durable   uint64
	failed    error
	closed    bool
	diskBytes int64
	records   uint64
	recovered int
	tailCut   int64
	discarded int
	syncs     uint64
	lastSync  time.Duration
	syncTime  time.Duration
}

func genName(num uint64) string { return fmt.Sprintf("gen-%016x.log", num) }

func parseGenName(name string) (uint64, bool) {
	s, ok := strings.CutPrefix(name, "gen-")
	if !ok {
		return 0, false
	}
	s, ok = strings.CutSuffix(s, ".log")
	if !ok || len(s) != 16 {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 16, 64)
	return n, err == nil && n > 0
}

func roundUp(n, unit int64) int64 { return (n + unit - 1) / unit * unit }

// Open opens the data directory dir, creating it when it does not exist
// or is empty, and recovers the acceptor state its durable records
// describe. The returned acceptor belongs to the caller; the Log keeps no
// reference to it.
//
// Open refuses, and never reinitialises: a directory another Log holds
// (ErrLocked); one of another cluster or segment size, or holding files
// this package did not write (ErrForeign); one of another format version
// (ErrFormat); and one whose records are damaged beyond a torn tail
// (ErrCorrupt, with a *CorruptError naming file and offset).
func Open(dir string, opts Options) (*Log, *paxos.Acceptor, error) {
	if opts.SegmentSize == 0 {
		return nil, nil, fmt.Errorf("%w: segment size 0", ErrInvalid)
	}
	if opts.Cluster == "" || len(opts.Cluster) > 1<<15 || strings.ContainsAny(opts.Cluster, "\n") {
		return nil, nil, fmt.Errorf("%w: cluster name %q", ErrInvalid, opts.Cluster)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.ChunkSize <= 0 {
		opts.ChunkSize = 4 << 20
	}
	if opts.ZeroAhead == 0 {
		opts.ZeroAhead = 256 << 10
	}
	if opts.CompactSlack <= 0 {
		opts.CompactSlack = 8 << 20
	}
	if opts.FS == nil {
		opts.FS = OSFS{}
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	l := &Log{
		dir: dir, opts: opts, fs: opts.FS, logger: opts.Logger.With("dir", dir),
		chunk:   roundUp(opts.ChunkSize, 4096),
		maxRecV: maxPayload - recordFixed,
		buf:     make([]byte, 0, 64<<10),
		spare:   make([]byte, 0, 64<<10),
	}
	if err := l.fs.MkdirAll(dir); err != nil {
		return nil, nil, fmt.Errorf("storage: %w", err)
	}
	lockf, err := l.fs.Lock(filepath.Join(dir, lockName))
	if errors.Is(err, ErrLocked) {
		return nil, nil, fmt.Errorf("%w: %s is locked by another wormserver", ErrLocked, dir)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("storage: lock %s: %w", dir, err)
	}
	l.lockf = lockf
	acc, err := l.open()
	if err != nil {
		l.closeFiles()
		return nil, nil, err
	}
	return l, acc, nil
}

func (l *Log) open() (*paxos.Acceptor, error) {
	entries, err := l.fs.ReadDir(l.dir)
	if err != nil {
		return nil, fmt.Errorf("storage: %w", err)
	}
	var gens []uint64
	for _, e := range entries {
		name := e.Name()
		switch name {
		case lockName, identityName:
			continue
		case identityTemp: // a crash while writing the identity
			if err := l.fs.Remove(filepath.Join(l.dir, name)); err != nil {
				return nil, fmt.Errorf("storage: %w", err)
			}
			continue
		}
		if n, ok := parseGenName(name); ok && e.Type().IsRegular() {
			gens = append(gens, n)
			continue
		}
		return nil, fmt.Errorf("%w: %s holds %q, which this package did not write", ErrForeign, l.dir, name)
	}
	slices.Sort(gens)
	id, hasID, err := readIdentity(l.fs, l.dir)
	if err != nil {
		return nil, err
	}
	if hasID {
		if id.Cluster != l.opts.Cluster || id.SegmentSize != l.opts.SegmentSize {
			return nil, fmt.Errorf("%w: %s belongs to cluster %q with segment size %d, not cluster %q with segment size %d",
				ErrForeign, l.dir, id.Cluster, id.SegmentSize, l.opts.Cluster, l.opts.SegmentSize)
		}
		l.id = id
		if len(gens) == 0 {
			return nil, corrupt(identityName, 0, "the directory has an identity but no generation file: its log was removed")
		}
	} else {
		if len(gens) > 0 {
			// Initialisation writes generation 1, then the identity. A
			// generation 1 holding nothing but its empty snapshot is an
			// interrupted initialisation; anything else is data whose
			// identity was lost.
			r, err := recoverGen(l.fs, l.dir, gens[0], &l.opts)
			if len(gens) != 1 || gens[0] != 1 || err != nil || r.records != 0 || r.batch > 1 {
				return nil, corrupt(identityName, 0, "missing, but generation files are present")
			}
			l.logger.Warn("storage: finishing an interrupted initialisation")
			if err := l.fs.Remove(filepath.Join(l.dir, genName(1))); err != nil {
				return nil, fmt.Errorf("storage: %w", err)
			}
		}
		return l.initDir()
	}
	// Newest complete generation wins.
	var r *recovered
	var chosen int
	for i := len(gens) - 1; i >= 0; i-- {
		g, err := recoverGen(l.fs, l.dir, gens[i], &l.opts)
		if err != nil {
			return nil, err
		}
		if g.complete {
			r, chosen = g, i
			break
		}
		if i == 0 {
			return nil, corrupt(genName(gens[i]), g.tail, "generation has no complete snapshot and no older generation exists")
		}
		l.discarded++
		l.logger.Warn("storage: discarding an incomplete generation (crash during compaction)", "file", genName(gens[i]))
	}
	num := gens[chosen]
	f, err := l.fs.OpenFile(filepath.Join(l.dir, genName(num)), os.O_RDWR)
	if err != nil {
		return nil, fmt.Errorf("storage: %w", err)
	}
	g := &gen{num: num, f: f, base: r.hdr.base, tail: r.tail, written: r.tail, alloc: r.size, batch: r.batch}
	l.cur = g
	l.diskBytes = r.size
	// Make what was recovered durable before anything is written after it
	// or depends on it, even when it needs no repair: after a process
	// crash, the page cache may still hold writes that never reached the
	// device (a Sync that died between its write and its fsync, or a
	// compaction's new generation), and the acceptor is about to answer
	// from them. Recovery's torn-tail argument needs it too: a repair
	// commit written while the batches before it are not durable could
	// survive a power failure without them, and pass for proof that they
	// had been synced.
	if !l.opts.Volatile {
		if err := f.Sync(); err != nil {
			return nil, fmt.Errorf("storage: fdatasync %s: %w", genName(num), err)
		}
	}
	// Only now may older generations go: removing them while the chosen
	// one is not durable would leave nothing complete after a power
	// failure. They go before the repair below, which may need room that
	// they hold (a crash can undo a compaction's unsynced removal of the
	// generation it replaced). The directory is synced even when nothing
	// was removed, since the chosen generation's own name may not be
	// durable yet.
	for i, n := range gens {
		if i != chosen {
			if err := l.fs.Remove(filepath.Join(l.dir, genName(n))); err != nil {
				return nil, fmt.Errorf("storage: %w", err)
			}
		}
	}
	if !l.opts.Volatile {
		if err := l.fs.SyncDir(l.dir); err != nil {
			return nil, fmt.Errorf("storage: %w", err)
		}
	}
	if r.garbage {
		l.logger.Warn("storage: cutting a torn tail", "file", genName(num), "offset", r.tail, "reason", r.torn, "bytes", r.size-r.tail)
		if err := f.Truncate(r.tail); err != nil {
			return nil, fmt.Errorf("storage: cut torn tail of %s: %w", genName(num), err)
		}
		l.tailCut = r.size - r.tail
		g.alloc, l.diskBytes = r.tail, r.tail
	}
	if r.pending || r.garbage {
		// Commit what was recovered: the acceptor will answer from it.
		if err := l.growLocked(g, g.tail+commitSize); err != nil {
			return nil, err
		}
		g.batch++
		b := appendCommit(l.buf[:0], commit{batch: g.batch, end: g.base + uint64(g.tail) + commitSize})
		if _, err := f.WriteAt(b, g.tail); err != nil {
			return nil, fmt.Errorf("storage: %w", err)
		}
		g.tail += commitSize
		g.written = g.tail
		if !l.opts.Volatile {
			if err := f.Sync(); err != nil {
				return nil, fmt.Errorf("storage: fdatasync %s: %w", genName(num), err)
			}
		}
	}
	l.durable = g.base + uint64(g.tail)
	l.recovered = r.records
	live, trimmed := r.acc.Segments()
	l.logger.Info("storage: recovered", "generation", num, "records", r.records, "bytes", g.tail,
		"live_segments", live, "trimmed_segments", trimmed)
	return r.acc, nil
}

// createGen creates generation file num whose offset 0 is log position
// base, preallocated with one chunk.
func (l *Log) createGen(num, base uint64) (*gen, error) {
	f, err := l.fs.OpenFile(filepath.Join(l.dir, genName(num)), os.O_RDWR|os.O_CREATE|os.O_EXCL)
	if err != nil {
		return nil, fmt.Errorf("storage: %w", err)
	}
	return &gen{num: num, f: f, base: base}, nil
}

func (l *Log) dropGen(g *gen) {
	g.f.Close()
	l.fs.Remove(filepath.Join(l.dir, genName(g.num)))
	l.mu.Lock()
	l.diskBytes -= g.alloc
	l.mu.Unlock()
}

func (l *Log) initDir() (*paxos.Acceptor, error) {
	g, err := l.createGen(1, 0)
	if err != nil {
		return nil, err
	}
	if err := l.growLocked(g, l.chunk); err != nil {
		l.dropGen(g)
		return nil, err
	}
	b := appendGenHeader(nil, genHeader{version: FormatVersion, gen: 1, segSize: l.opts.SegmentSize, cluster: l.opts.Cluster})
	b = appendCommit(b, commit{flags: commitSnapshot, batch: 1, end: uint64(len(b) + commitSize)})
	_, err = g.f.WriteAt(b, 0)
	if err == nil {
		err = g.f.Sync()
	}
	if err == nil {
		err = l.fs.SyncDir(l.dir)
	}
	id := Identity{Version: FormatVersion, Cluster: l.opts.Cluster, SegmentSize: l.opts.SegmentSize, Created: l.opts.Now()}
	if err == nil {
		err = writeFileAtomic(l.fs, l.dir, identityName, identityTemp, id.encode())
	}
	if err == nil {
		// The directory's own name: Open may just have created it.
		err = l.fs.SyncDir(filepath.Dir(l.dir))
	}
	if err != nil {
		l.dropGen(g)
		return nil, fmt.Errorf("storage: initialise %s: %w", l.dir, err)
	}
	g.tail, g.written, g.batch = int64(len(b)), int64(len(b)), 1
	l.cur, l.id = g, id
	l.durable = uint64(g.tail)
	l.logger.Info("storage: initialised", "cluster", l.opts.Cluster, "segment_size", l.opts.SegmentSize)
	return paxos.NewAcceptor(l.opts.SegmentSize), nil
}

// growLocked preallocates g so that its file holds at least need bytes.
func (l *Log) growLocked(g *gen, need int64) error {
	if need <= g.alloc {
		return nil
	}
	newAlloc := roundUp(need, l.chunk)
	add := newAlloc - g.alloc
	if l.opts.MaxBytes > 0 && l.diskBytes+add > l.opts.MaxBytes {
		return fmt.Errorf("%w: %d more bytes would exceed the quota of %d bytes (%d on disk)", ErrNoSpace, add, l.opts.MaxBytes, l.diskBytes)
	}
	if err := g.f.Allocate(g.alloc, add); err != nil {
		if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
			return fmt.Errorf("%w: preallocating %d bytes: %v", ErrNoSpace, add, err)
		}
		return fmt.Errorf("storage: preallocate %d bytes: %w", add, err)
	}
	g.alloc = newAlloc
	l.diskBytes += add
	return nil
}

func (l *Log) usableLocked() error {
	if l.closed {
		return ErrClosed
	}
	return l.failed
}

// Reserve makes sure that records of n more encoded bytes (see
// RecordOverhead) can be appended and synced without running out of
// space. It fails with an error wrapping ErrNoSpace, changing nothing,
// when they cannot. It does not wait for a sync.
func (l *Log) Reserve(n int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.usableLocked(); err != nil {
		return err
	}
	g := l.cur
	return l.growLocked(g, g.tail+int64(n)+commitSize)
}

// Append encodes recs into the log's buffer and returns the log position
// after them. It never waits for a sync: records appended while a Sync
// runs are made durable by the next one. Values are copied before Append
// returns. A record that cannot be encoded, or space that cannot be
// allocated (when the caller did not Reserve it), fails the call with
// nothing appended.
func (l *Log) Append(recs []paxos.Record) (uint64, error) {
	need := int64(0)
	for i := range recs {
		if !recs[i].Kind.Valid() || len(recs[i].Value) > l.maxRecV {
			return 0, fmt.Errorf("%w: cannot encode %v record with a %d-byte value", ErrInvalid, recs[i].Kind, len(recs[i].Value))
		}
		need += int64(recordSize(&recs[i]))
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.usableLocked(); err != nil {
		return 0, err
	}
	g := l.cur
	if err := l.growLocked(g, g.tail+need+commitSize); err != nil {
		return 0, err
	}
	for i := range recs {
		l.buf = appendRecord(l.buf, &recs[i])
	}
	if len(recs) > 0 {
		g.tail += need
		g.pending = true
		l.records += uint64(len(recs))
	}
	return g.base + uint64(g.tail), nil
}

// Sync makes every record appended before it started durable and returns
// the log position they reach. Concurrent callers are serialised; Appends
// continue while it writes and fsyncs. After a failed Sync the log is
// unusable (ErrFailed): what reached the disk is decided by reopening.
func (l *Log) Sync() (uint64, error) {
	l.syncMu.Lock()
	defer l.syncMu.Unlock()
	l.mu.Lock()
	if err := l.usableLocked(); err != nil {
		l.mu.Unlock()
		return 0, err
	}
	g := l.cur
	if g.pending {
		g.batch++
		g.tail += commitSize
		l.buf = appendCommit(l.buf, commit{batch: g.batch, end: g.base + uint64(g.tail)})
		g.pending = false
	}
	buf, off := l.buf, g.written
	end, fresh := g.base+uint64(g.tail), g.fresh
	alloc, zeroed := g.alloc, g.zeroed
	if len(buf) == 0 && !fresh {
		d := l.durable
		l.mu.Unlock()
		return d, nil
	}
	g.written += int64(len(buf))
	l.buf, l.spare = l.spare[:0], nil
	l.mu.Unlock()

	if l.hookSyncIO != nil {
		l.hookSyncIO()
	}
	start := time.Now()
	var err error
	if fresh && len(buf) > 0 && !l.opts.Volatile {
		// A compaction wrote this generation's snapshot (batch 1)
		// without fsync. Recovery reads an intact commit of batch b+2 as
		// proof that batch b+1 was synced, which holds only if no batch
		// is written before the one it follows is durable: fsync the
		// snapshot before writing the first batch after it.
		err = g.f.Sync()
	}
	if err == nil && len(buf) > 0 {
		_, err = g.f.WriteAt(buf, off)
	}
	newZeroed := zeroed
	if wend := off + int64(len(buf)); err == nil && !l.opts.Volatile && l.opts.ZeroAhead > 0 && wend > zeroed {
		zend := min(alloc, roundUp(wend, 4096)+l.opts.ZeroAhead)
		if zerr := writeZeros(g.f, wend, zend); zerr != nil {
			// The zeros only make later syncs cheaper; the data's own
			// write and fsync decide whether this sync worked. Try again
			// at the next sync that crosses them.
			if !l.zeroFailing {
				l.logger.Warn("storage: writing zeros ahead of the log failed; syncs go on without them", "err", zerr)
			}
			l.zeroFailing = true
		} else {
			if l.zeroFailing {
				l.logger.Info("storage: writing zeros ahead of the log works again")
			}
			l.zeroFailing = false
			newZeroed = max(zend, wend)
		}
	}
	if err == nil && !l.opts.Volatile {
		err = g.f.Sync()
		if err == nil && fresh {
			err = l.fs.SyncDir(l.dir) // the new generation's name
		}
	}
	took := time.Since(start)

	l.mu.Lock()
	l.spare = buf[:0]
	if err != nil {
		l.failed = fmt.Errorf("%w: sync of %s: %v", ErrFailed, genName(g.num), err)
		l.mu.Unlock()
		l.logger.Error("storage: sync failed; the log is unusable", "err", err)
		return 0, l.failed
	}
	l.syncs++
	l.lastSync = took
	l.syncTime += took
	g.zeroed = max(g.zeroed, newZeroed)
	l.durable = max(l.durable, end)
	var retire []*gen
	if fresh {
		g.fresh = false
		retire, l.old = l.old, nil
	}
	durable := l.durable
	l.mu.Unlock()

	for _, o := range retire {
		// The new generation is durable: the old one is garbage. A crash
		// before the removal is harmless (Open keeps the newest complete
		// generation).
		l.dropGen(o)
		l.logger.Info("storage: retired generation", "generation", o.num, "now", g.num)
	}
	return durable, nil
}

// ShouldCompact reports, cheaply, whether the current generation holds
// much more than the live state (liveBytes, from Acceptor.LiveBytes):
// more than twice as much plus Options.CompactSlack. It is false while a
// compaction is not yet durable.
func (l *Log) ShouldCompact(liveBytes int64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cur == nil || l.cur.fresh || len(l.old) > 0 || l.closed || l.failed != nil {
		return false
	}
	return l.cur.tail > 2*liveBytes+l.opts.CompactSlack
}

// Compact starts a new generation whose head is the snapshot that
// snapshot emits (pass acceptor.Snapshot), and directs later Appends
// there. The caller must hold off Append and Reserve for the duration
// (the engine calls it under its lock); Sync may run concurrently.
//
// The snapshot must describe the state after every record appended so
// far: records appended but not yet synced are dropped from the old
// generation, since the snapshot supersedes them. The old generation
// stays authoritative until the next Sync makes the new one durable; that
// Sync removes it. Positions stay monotonic. On failure (ErrNoSpace, an
// I/O error, an error from snapshot) the new generation is removed and
// nothing changes; Compact fails with ErrCompactPending until a Sync
// covered the previous compaction.
func (l *Log) Compact(snapshot func(emit func(paxos.Record) error) error) error {
	l.mu.Lock()
	if err := l.usableLocked(); err != nil {
		l.mu.Unlock()
		return err
	}
	if l.cur.fresh || len(l.old) > 0 {
		l.mu.Unlock()
		return ErrCompactPending
	}
	old := l.cur
	// A concurrent Sync may still add one commit frame to the old
	// generation: leave room so positions stay monotonic.
	base := old.base + uint64(old.tail) + commitSize
	l.mu.Unlock()

	g, err := l.createGen(old.num+1, base)
	if err != nil {
		return err
	}
	buf := appendGenHeader(l.cbuf[:0], genHeader{version: FormatVersion, gen: g.num, base: base, segSize: l.opts.SegmentSize, cluster: l.opts.Cluster})
	var off int64
	flush := func(extra int64) error {
		l.mu.Lock()
		err := l.growLocked(g, off+int64(len(buf))+extra)
		l.mu.Unlock()
		if err != nil {
			return err
		}
		if _, err := g.f.WriteAt(buf, off); err != nil {
			return fmt.Errorf("storage: write %s: %w", genName(g.num), err)
		}
		off += int64(len(buf))
		buf = buf[:0]
		return nil
	}
	n := 0
	err = snapshot(func(rec paxos.Record) error {
		if !rec.Kind.Valid() || len(rec.Value) > l.maxRecV {
			return fmt.Errorf("%w: snapshot emitted an unencodable %v record", ErrInvalid, rec.Kind)
		}
		buf = appendRecord(buf, &rec)
		n++
		if len(buf) >= 1<<20 {
			return flush(0)
		}
		return nil
	})
	if err == nil {
		end := g.base + uint64(off) + uint64(len(buf)) + commitSize
		buf = appendCommit(buf, commit{flags: commitSnapshot, batch: 1, end: end})
		err = flush(commitSize) // room for the next batch's commit
	}
	if cap(buf) <= 4<<20 {
		l.cbuf = buf[:0]
	}
	if err != nil {
		l.dropGen(g)
		return fmt.Errorf("storage: compaction: %w", err)
	}
	g.tail, g.written, g.batch, g.fresh = off, off, 1, true

	l.mu.Lock()
	if err := l.usableLocked(); err != nil {
		l.mu.Unlock()
		l.dropGen(g)
		return err
	}
	l.buf = l.buf[:0]
	old.pending = false
	l.old = append(l.old, old)
	l.cur = g
	l.mu.Unlock()
	l.logger.Info("storage: compaction wrote a new generation", "generation", g.num, "records", n, "bytes", off, "old_bytes", old.tail)
	return nil
}

// Stats returns counters for metrics.
func (l *Log) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := Stats{
		BytesOnDisk: l.diskBytes, Records: l.records, Recovered: l.recovered,
		Syncs: l.syncs, LastSync: l.lastSync, SyncTime: l.syncTime, Durable: l.durable,
		TailCut: l.tailCut, Discarded: l.discarded,
	}
	if l.cur != nil {
		s.LogBytes, s.Generation, s.End = l.cur.tail, l.cur.num, l.cur.base+uint64(l.cur.tail)
	}
	return s
}

// Identity returns what the directory's IDENTITY file records.
func (l *Log) Identity() Identity { return l.id }

// SyncIsCheap reports whether Sync returns without waiting for the device
// (Volatile): the wormserver's engine then runs syncs on the requesting
// goroutine instead of handing them to its sync goroutine.
func (l *Log) SyncIsCheap() bool { return l.opts.Volatile }

// Dir returns the data directory.
func (l *Log) Dir() string { return l.dir }

// Close syncs what was appended (unless the log failed), closes the files
// and releases the directory lock.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	failed := l.failed
	l.mu.Unlock()
	var err error
	if failed == nil {
		_, err = l.Sync()
	}
	l.syncMu.Lock()
	defer l.syncMu.Unlock()
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	l.closeFiles()
	return err
}

func (l *Log) closeFiles() {
	if l.cur != nil {
		l.cur.f.Close()
	}
	for _, o := range l.old {
		o.f.Close()
	}
	if l.lockf != nil {
		l.lockf.Close()
	}
}

// writeZeros writes zeros to f over [off, end).
func writeZeros(f File, off, end int64) error {
	for off < end {
		k := min(int64(len(zeros)), end-off)
		n, err := f.WriteAt(zeros[:k], off)
		if err != nil {
			return err
		}
		off += int64(n)
	}
	return nil
}
