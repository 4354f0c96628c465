package storage

import (
	"io/fs"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Small writes go to the kernel as raw system calls.
//
// Why: a Go program enters every ordinary system call through the runtime
// (entersyscall), and when the runtime's monitor thread, sysmon, is parked
// (it parks when it finds every P idle), entering a system call wakes it:
// a futex wake of a thread, usually on another CPU, which then polls every
// 20 µs until it finds every P idle again. A wormd that serves one request
// at a time goes idle between requests, so every request's record write
// woke sysmon: about 6,000 sysmon wake-ups and sleeps per second. On this
// project's 2-vCPU test machine, where waking an idle vCPU costs about
// 50 µs, that was 22% of a netstack wormd's CPU under one client (`perf
// record -g`: runtime.sysmon, mostly nanosleep), and the record write was
// the only system call of a request that woke it: the netstack link reads
// and writes frames with raw system calls already.
//
// With the write raw, sysmon stays parked (85 instead of about 10,000
// wake-ups in 2 s under one client). In three alternating pairs of `worm
// compare -configs host-kernel,host-netstack -workloads
// write,log-append,kv-put -clients 1,16 -reps 2 -duration 2s` (both
// configurations run the build under test), netstack wormds' CPU per
// write, the 3 summed, went from 145-172 to 122-144 µs under one client
// and from 32-40 to 30-32 µs under 16, and log-append under 16 clients
// from 0.72-0.82x of the kernel configuration's throughput to 0.99-1.16x.
// One client's latency, and the kernel configuration's figures, moved
// within the noise of this machine: kernel-stack wormds' socket reads and
// writes were ordinary system calls then, which woke sysmon anyway (they
// are raw too since, through worm/sockio).
//
// The cost of a raw call is that the runtime does not know the thread is
// in the kernel: if the call blocks, the P it holds stays blocked with it
// (with one P, as a netstack wormd runs, nothing else in the process
// runs), where an ordinary call would have had its P handed to another
// thread after 20 µs. A buffered write of a few KiB into a preallocated
// file copies into the page cache and does not block, except under
// writeback throttling or memory reclaim: the same exposure as storing
// through a shared file mapping, which Go databases built on mmap accept
// on every page fault. So only writes up to rawWriteMax are raw, and a raw
// write that took longer than rawWriteSlow sends this file's writes
// through the ordinary path for rawWriteBackoff: the kernel made it wait
// (dirty-page throttling pauses for 10-200 ms) and may again. The
// threshold is far above what preemption alone does to a call on a busy
// machine: at 1 ms, this 2-vCPU VM demoted the file within seconds of a
// one-client run, and the write path was back to waking sysmon.
// (pwritev2's RWF_NOWAIT would let the kernel say it would wait instead of
// waiting, but ext4 does not support it for buffered writes on the kernels
// here: EOPNOTSUPP on 6.18.)
const rawWriteMax = 64 << 10

// Variables, so that tests can make every write slow.
var (
	rawWriteSlow    = 20 * time.Millisecond
	rawWriteBackoff = 10 * time.Second
)

// rawWrites turns raw writes off process-wide (tests compare both paths).
var rawWrites atomic.Bool

func init() { rawWrites.Store(true) }

// rawWriteState is an osFile's: until when its writes take the ordinary
// path (monotonic nanoseconds since rawEpoch; 0: not demoted), how many
// times it was demoted, and the raw write in progress.
//
// The raw write runs inside the file's syscall.RawConn.Write, which holds
// the file's write lock and a reference to its descriptor, so that a
// write racing Close fails with os.ErrClosed, as os.File.WriteAt would,
// instead of writing to whatever file reused the descriptor number. The
// callback is a method value made once (a closure per write would be an
// allocation), and mu guards its arguments and results.
type rawWriteState struct {
	ordinaryUntil atomic.Int64
	demotions     atomic.Uint64

	mu    sync.Mutex
	rc    syscall.RawConn // nil: raw writes are not possible for this file
	fn    func(fd uintptr) bool
	b     []byte
	off   int64
	n     int
	errno unix.Errno
}

// init prepares raw writes to f (none if f offers no RawConn).
func (r *rawWriteState) init(f *os.File) {
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	r.rc = rc
	r.fn = r.pwrite
}

// pwrite is the RawConn.Write callback: all of r.b at r.off, as raw
// pwrite(2) calls. It always reports done (a regular file is never
// "not ready").
func (r *rawWriteState) pwrite(fd uintptr) bool {
	r.n, r.errno = 0, 0
	for r.n < len(r.b) {
		w, _, e := unix.RawSyscall6(unix.SYS_PWRITE64, fd, uintptr(unsafe.Pointer(&r.b[r.n])), uintptr(len(r.b)-r.n), uintptr(r.off+int64(r.n)), 0, 0)
		switch {
		case e == unix.EINTR:
			continue
		case e != 0:
			r.errno = e
			return true
		case w == 0:
			r.errno = unix.EIO // cannot happen for a non-empty regular-file write
			return true
		}
		r.n += int(w)
	}
	return true
}

var rawEpoch = time.Now()

// WriteAt implements File. See the comment above for when it is a raw
// system call; either way it writes all of b or returns an error, like
// os.File.WriteAt.
func (f *osFile) WriteAt(b []byte, off int64) (int, error) {
	r := &f.raw
	if len(b) == 0 || len(b) > rawWriteMax || r.rc == nil || !rawWrites.Load() {
		return f.File.WriteAt(b, off)
	}
	start := time.Since(rawEpoch)
	if until := r.ordinaryUntil.Load(); until != 0 && int64(start) < until {
		return f.File.WriteAt(b, off)
	}
	r.mu.Lock()
	r.b, r.off = b, off
	err := r.rc.Write(r.fn)
	n, errno := r.n, r.errno
	r.b = nil
	r.mu.Unlock()
	if err != nil {
		// The file was closed (no byte written): let os.File report it,
		// as os.ErrClosed.
		return f.File.WriteAt(b, off)
	}
	if errno != 0 {
		return n, &fs.PathError{Op: "write", Path: f.Name(), Err: errno}
	}
	if took := time.Since(rawEpoch) - start; took > rawWriteSlow {
		r.ordinaryUntil.Store(int64(start + took + rawWriteBackoff))
		r.demotions.Add(1)
		// At most once per file per rawWriteBackoff. The process default
		// logger: a File has none of its own (wormd sets the default).
		slog.Warn("storage: a write waited in the kernel; the file's writes use ordinary system calls for a while",
			"file", f.Name(), "took", took, "for", rawWriteBackoff)
	}
	return n, nil
}
