// Package simfs is a deterministic simulated disk for worm/storage: an
// in-memory file system (a storage.FS) that remembers, for every file,
// what is durable and what was changed since its last fsync, and for every
// directory, which names are durable and which changes since the last
// directory fsync are not.
//
// A power failure (PowerLoss, or a crash armed with ArmCrash to strike
// during a later operation) keeps a seeded choice of the unsynced state of
// every file: none of it, all of it, a prefix of its changes, a prefix and
// a torn part of the next write, or page by page any version the page
// cache held (pages written back in any order, a page itself possibly torn
// at sector boundaries), with the file's size from any point of its
// history. Every directory keeps a seeded prefix of its unsynced name
// changes (journaled metadata reaches the disk in order). A process crash
// (Kill) loses nothing (the page cache survives the process) but, like a
// power failure, invalidates every handle and lock of the dead process.
// Operations on a crashed disk fail with ErrCrashed until Restart.
//
// Faults (SetFaults) inject EIO into writes and fsyncs, and a Capacity
// makes growth fail with ENOSPC, so that the log's refusals are exercised;
// the lying variants (IgnoreSync, IgnoreSyncDir) are controls that break
// the durability contract on purpose, to show that a harness notices.
//
// Everything is a function of the seed and of the sequence of calls: the
// package reads no clock, starts no goroutines and does no I/O. It imports
// only the standard library and worm/storage (for the interface it
// implements); it must never import worm/sim or anything that does I/O.
package simfs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/wormspace/wormspace/worm/storage"
)

// ErrCrashed: the machine crashed (power failure or process crash) and
// the call did not complete; handles of the crashed process stay invalid.
var ErrCrashed = errors.New("simfs: crashed")

// Options configure a Disk.
type Options struct {
	// Seed drives every choice the disk makes.
	Seed uint64
	// PageSize is the unit in which unsynced data reaches the device
	// independently at a power failure (default 4096, the page cache's).
	PageSize int
	// SectorSize is the unit in which a page write may be torn (default
	// 512, the device's atomic write unit).
	SectorSize int
	// Capacity, when positive, is the number of bytes the files may hold
	// in all: growth beyond it fails with ENOSPC.
	Capacity int64
	// Trace, when set, receives a line for every crash and what each file
	// and directory kept.
	Trace func(string)
}

// Faults are injected failures. The zero value injects none.
type Faults struct {
	// WriteErr is the probability that a WriteAt, Truncate or Allocate
	// fails with EIO, changing nothing.
	WriteErr float64
	// SyncErr is the probability that a File.Sync or SyncDir fails with
	// EIO, making nothing durable (the changes stay unsynced: a later
	// sync may still make them durable, a power failure may lose them).
	SyncErr float64
	// IgnoreSync makes File.Sync succeed without making anything durable
	// (a device that acknowledges a cache flush it did not do). A control:
	// it breaks the durability contract.
	IgnoreSync bool
	// IgnoreSyncDir makes SyncDir succeed without making the names
	// durable. A control: it breaks the durability contract.
	IgnoreSyncDir bool
}

// Crash modes: what a file kept of its unsynced changes at a power
// failure (Stats.Kept is indexed by them).
const (
	KeptNone   = iota // the durable contents only
	KeptAll           // every change
	KeptPrefix        // the first k changes
	KeptTorn          // the first k changes and part of the next write
	KeptPages         // each page any version it had, a size from any point
	numModes
)

var modeNames = [numModes]string{"none", "all", "prefix", "torn", "pages"}

// Stats count what the disk did.
type Stats struct {
	Ops         int           // operations that change or sync something
	PowerLosses int           // power failures
	Kills       int           // process crashes
	Kept        [numModes]int // files with unsynced changes at a power failure, by what they kept
	DirLost     int           // unsynced directory changes a power failure lost
	Injected    int           // EIO failures injected
	NoSpace     int           // ENOSPC failures
}

// Disk is one simulated machine's disk with its file system tree. It is
// safe for concurrent use.
type Disk struct {
	mu       sync.Mutex
	opts     Options
	rng      *rand.Rand
	faults   Faults
	root     *inode
	inodes   []*inode // every inode that may be reachable, in creation order
	boot     uint64   // incremented by every crash: older handles are dead
	down     bool     // crashed and not restarted
	armed    int      // > 0: the crash strikes during the armed-th next operation
	armPower bool
	stats    Stats
}

// New returns an empty disk holding only its root directory.
func New(opts Options) *Disk {
	if opts.PageSize <= 0 {
		opts.PageSize = 4096
	}
	if opts.SectorSize <= 0 || opts.SectorSize > opts.PageSize {
		opts.SectorSize = min(512, opts.PageSize)
	}
	d := &Disk{opts: opts, rng: rand.New(rand.NewPCG(opts.Seed, opts.Seed^0x5eed0f5d15c)), boot: 1}
	d.root = d.newInode(true)
	return d
}

var _ storage.FS = (*Disk)(nil)

type inode struct {
	dir bool
	// files
	data    []byte   // current contents: what reads see
	durable []byte   // contents a power failure keeps for sure
	pending []fileOp // changes since the last Sync, in order
	// directories
	entries    map[string]*inode // current names
	durEntries map[string]*inode // names a power failure keeps for sure
	dirOps     []dirOp           // name changes since the last SyncDir, in order

	links, opens int
	locked       uint64 // boot of the lock holder, 0 when unlocked
}

type fileOp struct {
	resize bool
	off    int64  // write offset, or the new size
	data   []byte // written bytes
}

type dirOp struct {
	kind   byte // 'c' create, 'r' remove, 'm' rename
	name   string
	to     string
	target *inode
}

func (d *Disk) newInode(dir bool) *inode {
	n := &inode{dir: dir}
	if dir {
		n.entries, n.durEntries = map[string]*inode{}, map[string]*inode{}
	}
	d.inodes = append(d.inodes, n)
	return n
}

// SetFaults replaces the injected faults (from the next operation on).
func (d *Disk) SetFaults(f Faults) {
	d.mu.Lock()
	d.faults = f
	d.mu.Unlock()
}

// ArmCrash makes the disk crash during its n-th next operation (n >= 1)
// that changes or syncs something: a power failure when power is set,
// else a process crash. The operation fails with ErrCrashed; whether its
// effect reached the page cache before the crash is a seeded choice (a
// power failure may then keep part of it). A crash that strikes replaces
// an armed one; PowerLoss, Kill and Restart disarm.
func (d *Disk) ArmCrash(n int, power bool) {
	d.mu.Lock()
	d.armed, d.armPower = max(n, 1), power
	d.mu.Unlock()
}

// Armed reports whether a crash is armed and has not struck yet.
func (d *Disk) Armed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.armed > 0
}

// PowerLoss crashes the machine now, between operations: every file
// keeps a seeded choice of its unsynced changes, every directory a seeded
// prefix of its unsynced name changes. It also applies to a disk that is
// already down after a process crash (the page cache is lost then).
func (d *Disk) PowerLoss() {
	d.mu.Lock()
	d.crashLocked(true)
	d.mu.Unlock()
}

// Kill crashes the process using the disk now: nothing is lost, but its
// handles and locks are dead.
func (d *Disk) Kill() {
	d.mu.Lock()
	d.crashLocked(false)
	d.mu.Unlock()
}

// Restart brings a crashed disk back (a new process, or a new boot after
// a power failure). Handles opened before the crash stay invalid.
func (d *Disk) Restart() {
	d.mu.Lock()
	d.down, d.armed = false, 0
	d.mu.Unlock()
}

// Down reports whether the disk crashed and was not restarted.
func (d *Disk) Down() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.down
}

// Stats returns the disk's counters.
func (d *Disk) Stats() Stats {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stats
}

// ReadFile returns the current contents of the file name (what a reader
// sees, synced or not), for tests.
func (d *Disk) ReadFile(name string) ([]byte, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	_, _, n, err := d.lookup("open", name)
	if err != nil {
		return nil, err
	}
	if n == nil {
		return nil, pathErr("open", name, fs.ErrNotExist)
	}
	if n.dir {
		return nil, pathErr("open", name, syscall.EISDIR)
	}
	return bytes.Clone(n.data), nil
}

func (d *Disk) trace(format string, args ...any) {
	if d.opts.Trace != nil {
		d.opts.Trace(fmt.Sprintf(format, args...))
	}
}

func pathErr(op, name string, err error) error { return &fs.PathError{Op: op, Path: name, Err: err} }

// begin starts an operation that changes or syncs something. It reports
// whether the armed crash strikes during it.
func (d *Disk) begin() (strike bool) {
	d.stats.Ops++
	if d.armed > 0 {
		d.armed--
		return d.armed == 0
	}
	return false
}

// strikeBefore decides, for an operation the armed crash strikes, whether
// the crash comes before the operation took effect; if so it crashes.
func (d *Disk) strikeBefore() bool {
	if d.rng.IntN(2) == 0 {
		d.crashLocked(d.armPower)
		return true
	}
	return false
}

// inject reports whether an injected EIO fails this operation.
func (d *Disk) inject(p float64) bool {
	if p > 0 && d.rng.Float64() < p {
		d.stats.Injected++
		return true
	}
	return false
}

// used is the bytes the live files hold.
func (d *Disk) used() int64 {
	var n int64
	for _, in := range d.inodes {
		if !in.dir && (in.links > 0 || in.opens > 0) {
			n += int64(len(in.data))
		}
	}
	return n
}

// room reports whether the disk can grow by n bytes.
func (d *Disk) room(n int64) bool {
	if n <= 0 || d.opts.Capacity <= 0 || d.used()+n <= d.opts.Capacity {
		return true
	}
	d.stats.NoSpace++
	return false
}

// lookup resolves name into its parent directory, base name and inode
// (nil when the parent exists but the name does not).
func (d *Disk) lookup(op, name string) (parent *inode, base string, n *inode, err error) {
	if d.down {
		return nil, "", nil, pathErr(op, name, ErrCrashed)
	}
	clean := path.Clean("/" + name)
	if clean == "/" {
		return nil, "", d.root, nil
	}
	parts := strings.Split(clean[1:], "/")
	dir := d.root
	for _, p := range parts[:len(parts)-1] {
		next := dir.entries[p]
		if next == nil {
			return nil, "", nil, pathErr(op, name, fs.ErrNotExist)
		}
		if !next.dir {
			return nil, "", nil, pathErr(op, name, syscall.ENOTDIR)
		}
		dir = next
	}
	base = parts[len(parts)-1]
	return dir, base, dir.entries[base], nil
}

func (d *Disk) link(dir *inode, name string, n *inode) {
	if old := dir.entries[name]; old != nil {
		old.links--
	}
	dir.entries[name] = n
	n.links++
}

// MkdirAll creates dir and its missing parents.
func (d *Disk) MkdirAll(dir string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.down {
		return pathErr("mkdir", dir, ErrCrashed)
	}
	clean := path.Clean("/" + dir)
	if clean == "/" {
		return nil
	}
	cur := d.root
	for _, p := range strings.Split(clean[1:], "/") {
		next := cur.entries[p]
		if next == nil {
			strike := d.begin()
			if strike && d.strikeBefore() {
				return pathErr("mkdir", dir, ErrCrashed)
			}
			next = d.newInode(true)
			d.link(cur, p, next)
			cur.dirOps = append(cur.dirOps, dirOp{kind: 'c', name: p, target: next})
			if strike {
				d.crashLocked(d.armPower)
				return pathErr("mkdir", dir, ErrCrashed)
			}
		} else if !next.dir {
			return pathErr("mkdir", dir, syscall.ENOTDIR)
		}
		cur = next
	}
	return nil
}

// Lock takes the lock of the file name (creating it) for the current
// process; it fails with storage.ErrLocked while another handle holds it.
func (d *Disk) Lock(name string) (io.Closer, error) {
	f, err := d.OpenFile(name, os.O_RDWR|os.O_CREATE)
	if err != nil {
		return nil, err
	}
	sf := f.(*File)
	d.mu.Lock()
	defer d.mu.Unlock()
	if sf.n.locked == d.boot {
		sf.closeLocked()
		return nil, fmt.Errorf("%w: %s is locked", storage.ErrLocked, name)
	}
	sf.n.locked = d.boot
	sf.lock = true
	return sf, nil
}

type dirEntry struct {
	name string
	dir  bool
	size int64
}

func (e dirEntry) Name() string { return e.name }
func (e dirEntry) IsDir() bool  { return e.dir }
func (e dirEntry) Type() fs.FileMode {
	if e.dir {
		return fs.ModeDir
	}
	return 0
}
func (e dirEntry) Info() (fs.FileInfo, error) { return e, nil }
func (e dirEntry) Size() int64                { return e.size }
func (e dirEntry) Mode() fs.FileMode {
	if e.dir {
		return fs.ModeDir | 0o700
	}
	return 0o600
}
func (e dirEntry) ModTime() time.Time { return time.Time{} }
func (e dirEntry) Sys() any           { return nil }

// ReadDir lists dir, sorted by name.
func (d *Disk) ReadDir(dir string) ([]fs.DirEntry, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	_, _, n, err := d.lookup("readdir", dir)
	if err != nil {
		return nil, err
	}
	if n == nil {
		return nil, pathErr("readdir", dir, fs.ErrNotExist)
	}
	if !n.dir {
		return nil, pathErr("readdir", dir, syscall.ENOTDIR)
	}
	names := make([]string, 0, len(n.entries))
	for name := range n.entries {
		names = append(names, name)
	}
	slices.Sort(names)
	out := make([]fs.DirEntry, len(names))
	for i, name := range names {
		e := n.entries[name]
		out[i] = dirEntry{name: name, dir: e.dir, size: int64(len(e.data))}
	}
	return out, nil
}

// OpenFile opens name; see storage.FS.
func (d *Disk) OpenFile(name string, flag int) (storage.File, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	parent, base, n, err := d.lookup("open", name)
	if err != nil {
		return nil, err
	}
	if parent == nil && n == d.root {
		return nil, pathErr("open", name, syscall.EISDIR)
	}
	if flag&os.O_CREATE != 0 && flag&os.O_EXCL != 0 && n != nil {
		return nil, pathErr("open", name, fs.ErrExist)
	}
	if n != nil && n.dir {
		return nil, pathErr("open", name, syscall.EISDIR)
	}
	if n == nil && flag&os.O_CREATE == 0 {
		return nil, pathErr("open", name, fs.ErrNotExist)
	}
	writable := flag&(os.O_WRONLY|os.O_RDWR) != 0
	trunc := flag&os.O_TRUNC != 0 && writable && n != nil && len(n.data) > 0
	if n == nil || trunc {
		strike := d.begin()
		if strike && d.strikeBefore() {
			return nil, pathErr("open", name, ErrCrashed)
		}
		if n == nil {
			n = d.newInode(false)
			d.link(parent, base, n)
			parent.dirOps = append(parent.dirOps, dirOp{kind: 'c', name: base, target: n})
		}
		if trunc {
			n.resize(0)
		}
		if strike {
			d.crashLocked(d.armPower)
			return nil, pathErr("open", name, ErrCrashed)
		}
	}
	n.opens++
	return &File{d: d, n: n, name: name, boot: d.boot, write: writable}, nil
}

// Rename replaces newpath by oldpath; both must be in one directory.
func (d *Disk) Rename(oldpath, newpath string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	parent, base, n, err := d.lookup("rename", oldpath)
	if err != nil {
		return err
	}
	if n == nil {
		return pathErr("rename", oldpath, fs.ErrNotExist)
	}
	np, nbase, target, err := d.lookup("rename", newpath)
	if err != nil {
		return err
	}
	if np != parent {
		return pathErr("rename", newpath, syscall.EXDEV)
	}
	if target != nil && target.dir {
		return pathErr("rename", newpath, syscall.EISDIR)
	}
	if n.dir {
		return pathErr("rename", oldpath, syscall.EISDIR)
	}
	if target == n {
		return nil
	}
	strike := d.begin()
	if strike && d.strikeBefore() {
		return pathErr("rename", oldpath, ErrCrashed)
	}
	d.link(parent, nbase, n)
	n.links--
	delete(parent.entries, base)
	parent.dirOps = append(parent.dirOps, dirOp{kind: 'm', name: base, to: nbase})
	if strike {
		d.crashLocked(d.armPower)
		return pathErr("rename", oldpath, ErrCrashed)
	}
	return nil
}

// Remove removes a file or an empty directory.
func (d *Disk) Remove(name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	parent, base, n, err := d.lookup("remove", name)
	if err != nil {
		return err
	}
	if n == nil {
		return pathErr("remove", name, fs.ErrNotExist)
	}
	if parent == nil {
		return pathErr("remove", name, syscall.EBUSY)
	}
	if n.dir && len(n.entries) > 0 {
		return pathErr("remove", name, syscall.ENOTEMPTY)
	}
	strike := d.begin()
	if strike && d.strikeBefore() {
		return pathErr("remove", name, ErrCrashed)
	}
	n.links--
	delete(parent.entries, base)
	parent.dirOps = append(parent.dirOps, dirOp{kind: 'r', name: base})
	if strike {
		d.crashLocked(d.armPower)
		return pathErr("remove", name, ErrCrashed)
	}
	return nil
}

// SyncDir makes dir's names durable.
func (d *Disk) SyncDir(dir string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	_, _, n, err := d.lookup("fsync", dir)
	if err != nil {
		return err
	}
	if n == nil {
		return pathErr("fsync", dir, fs.ErrNotExist)
	}
	if !n.dir {
		return pathErr("fsync", dir, syscall.ENOTDIR)
	}
	strike := d.begin()
	if strike && d.strikeBefore() {
		return pathErr("fsync", dir, ErrCrashed)
	}
	if !strike && d.inject(d.faults.SyncErr) {
		return pathErr("fsync", dir, syscall.EIO)
	}
	if !d.faults.IgnoreSyncDir {
		n.durEntries = cloneEntries(n.entries)
		n.dirOps = nil
	}
	if strike {
		d.crashLocked(d.armPower)
		return pathErr("fsync", dir, ErrCrashed)
	}
	return nil
}

func cloneEntries(m map[string]*inode) map[string]*inode {
	c := make(map[string]*inode, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// File is an open file of a Disk (a storage.File).
type File struct {
	d      *Disk
	n      *inode
	name   string
	boot   uint64
	write  bool
	lock   bool // this handle holds n's lock
	closed bool
}

// check fails operations on a closed handle, a crashed disk, or a handle
// of a process that crashed.
func (f *File) check(op string) error {
	switch {
	case f.closed:
		return pathErr(op, f.name, os.ErrClosed)
	case f.d.down || f.boot != f.d.boot:
		return pathErr(op, f.name, ErrCrashed)
	}
	return nil
}

// ReadAt reads from the current contents.
func (f *File) ReadAt(p []byte, off int64) (int, error) {
	f.d.mu.Lock()
	defer f.d.mu.Unlock()
	if err := f.check("read"); err != nil {
		return 0, err
	}
	if off < 0 {
		return 0, pathErr("read", f.name, syscall.EINVAL)
	}
	if off >= int64(len(f.n.data)) {
		return 0, io.EOF
	}
	n := copy(p, f.n.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// modify runs one changing operation with the armed crash, the injected
// faults and the capacity applied; grow is the bytes it adds.
func (f *File) modify(op string, grow int64, apply func()) error {
	d := f.d
	if err := f.check(op); err != nil {
		return err
	}
	if !f.write {
		return pathErr(op, f.name, syscall.EBADF)
	}
	strike := d.begin()
	if strike && d.strikeBefore() {
		return pathErr(op, f.name, ErrCrashed)
	}
	if !strike && d.inject(d.faults.WriteErr) {
		return pathErr(op, f.name, syscall.EIO)
	}
	if !d.room(grow) {
		if strike {
			d.crashLocked(d.armPower)
			return pathErr(op, f.name, ErrCrashed)
		}
		return pathErr(op, f.name, syscall.ENOSPC)
	}
	apply()
	if strike {
		d.crashLocked(d.armPower)
		return pathErr(op, f.name, ErrCrashed)
	}
	return nil
}

// WriteAt writes p at off, extending the file when needed.
func (f *File) WriteAt(p []byte, off int64) (int, error) {
	f.d.mu.Lock()
	defer f.d.mu.Unlock()
	if off < 0 {
		return 0, pathErr("write", f.name, syscall.EINVAL)
	}
	n := f.n
	err := f.modify("write", off+int64(len(p))-int64(len(n.data)), func() { n.write(off, p) })
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// Size returns the current size.
func (f *File) Size() (int64, error) {
	f.d.mu.Lock()
	defer f.d.mu.Unlock()
	if err := f.check("stat"); err != nil {
		return 0, err
	}
	return int64(len(f.n.data)), nil
}

// Truncate sets the size.
func (f *File) Truncate(size int64) error {
	f.d.mu.Lock()
	defer f.d.mu.Unlock()
	if size < 0 {
		return pathErr("truncate", f.name, syscall.EINVAL)
	}
	n := f.n
	return f.modify("truncate", size-int64(len(n.data)), func() { n.resize(size) })
}

// Allocate extends the file to cover [off, off+n) with zeros.
func (f *File) Allocate(off, n int64) error {
	f.d.mu.Lock()
	defer f.d.mu.Unlock()
	if off < 0 || n <= 0 {
		return pathErr("fallocate", f.name, syscall.EINVAL)
	}
	in := f.n
	end := off + n
	return f.modify("fallocate", end-int64(len(in.data)), func() {
		if end > int64(len(in.data)) {
			in.resize(end)
		}
	})
}

// Sync makes the contents and size durable.
func (f *File) Sync() error {
	d := f.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := f.check("fdatasync"); err != nil {
		return err
	}
	strike := d.begin()
	if strike && d.strikeBefore() {
		return pathErr("fdatasync", f.name, ErrCrashed)
	}
	if !strike && d.inject(d.faults.SyncErr) {
		return pathErr("fdatasync", f.name, syscall.EIO)
	}
	if !d.faults.IgnoreSync {
		n := f.n
		for _, op := range n.pending {
			n.durable = op.apply(n.durable)
		}
		n.pending = nil
	}
	if strike {
		d.crashLocked(d.armPower)
		return pathErr("fdatasync", f.name, ErrCrashed)
	}
	return nil
}

// Close closes the handle (and releases its lock).
func (f *File) Close() error {
	f.d.mu.Lock()
	defer f.d.mu.Unlock()
	if f.closed {
		return pathErr("close", f.name, os.ErrClosed)
	}
	f.closeLocked()
	return nil
}

func (f *File) closeLocked() {
	f.closed = true
	if f.boot != f.d.boot {
		return // the process crashed: its handles are already gone
	}
	f.n.opens--
	if f.lock && f.n.locked == f.boot {
		f.n.locked = 0
	}
}

// write applies a write to the current contents and records it.
func (n *inode) write(off int64, p []byte) {
	op := fileOp{off: off, data: bytes.Clone(p)}
	n.data = op.apply(n.data)
	n.pending = append(n.pending, op)
}

// resize applies a size change to the current contents and records it.
func (n *inode) resize(size int64) {
	op := fileOp{resize: true, off: size}
	n.data = op.apply(n.data)
	n.pending = append(n.pending, op)
}

// apply returns b changed by op (reusing b's storage).
func (op fileOp) apply(b []byte) []byte {
	if op.resize {
		return setLen(b, op.off)
	}
	end := op.off + int64(len(op.data))
	if end > int64(len(b)) {
		b = setLen(b, end)
	}
	copy(b[op.off:], op.data)
	return b
}

// setLen returns b cut or zero-extended to n bytes.
func setLen(b []byte, n int64) []byte {
	if n <= int64(len(b)) {
		return b[:n]
	}
	old := len(b)
	b = slices.Grow(b, int(n)-old)[:n]
	clear(b[old:])
	return b
}
