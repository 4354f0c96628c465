package sockio

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// maxChunk bounds one raw write(2): copying 64 KiB into a socket buffer
// takes some tens of microseconds, about what the runtime lets a P sit in
// an ordinary system call before it hands the P to another thread.
const maxChunk = 64 << 10

// Conn is a socket's raw reader and writer. Read and Write may run
// concurrently with each other; each is for one goroutine at a time
// (Read's calls are serialized by readMu, Write's by writeMu).
type Conn struct {
	rc  syscall.RawConn
	net string // "tcp" or "unix", for errors

	readMu sync.Mutex
	readFn func(fd uintptr) bool // r.read, bound once: no closure per call
	rbuf   []byte
	rn     int
	rerr   unix.Errno

	writeMu sync.Mutex
	writeFn func(fd uintptr) bool
	wbuf    []byte
	wn      int
	werr    unix.Errno
}

// Of returns a Conn for nc's socket, or nil when nc is not a socket of
// this process (or raw I/O is turned off, see SetEnabled).
func Of(nc net.Conn) *Conn {
	if !enabled.Load() {
		return nil
	}
	switch nc.(type) {
	case *net.TCPConn, *net.UnixConn:
	default:
		return nil
	}
	rc, err := nc.(syscall.Conn).SyscallConn()
	if err != nil {
		return nil
	}
	c := &Conn{rc: rc, net: nc.LocalAddr().Network()}
	c.readFn, c.writeFn = c.read, c.write
	return c
}

// Read reads into p like net.Conn.Read: at least one byte, or io.EOF at
// the end of the stream, or the error that ended the wait (a deadline,
// Close).
func (c *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.readMu.Lock()
	c.rbuf, c.rn, c.rerr = p, 0, 0
	err := c.rc.Read(c.readFn)
	n, errno := c.rn, c.rerr
	c.rbuf = nil
	c.readMu.Unlock()
	switch {
	case err != nil:
		return 0, err
	case errno != 0:
		return 0, &net.OpError{Op: "read", Net: c.net, Err: os.NewSyscallError("read", errno)}
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// read is the RawConn.Read callback: one read(2), retried on EINTR;
// false (wait for readability) on EAGAIN.
func (c *Conn) read(fd uintptr) bool {
	for {
		r, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&c.rbuf[0])), uintptr(len(c.rbuf)))
		switch e {
		case 0:
			c.rn = int(r)
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		default:
			c.rerr = e
			return true
		}
	}
}

// Write writes all of p like net.Conn.Write, waiting in the poller while
// the socket's send buffer is full; it returns the bytes written and the
// error that stopped it.
func (c *Conn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.writeMu.Lock()
	c.wbuf, c.wn, c.werr = p, 0, 0
	err := c.rc.Write(c.writeFn)
	n, errno := c.wn, c.werr
	c.wbuf = nil
	c.writeMu.Unlock()
	switch {
	case err != nil:
		return n, err
	case errno != 0:
		return n, &net.OpError{Op: "write", Net: c.net, Err: os.NewSyscallError("write", errno)}
	}
	return n, nil
}

// write is the RawConn.Write callback: write(2)s of at most maxChunk
// until c.wbuf is written (true), the socket is full (false: wait for
// writability), or an error (true, c.werr set).
func (c *Conn) write(fd uintptr) bool {
	for c.wn < len(c.wbuf) {
		chunk := min(len(c.wbuf)-c.wn, maxChunk)
		r, _, e := unix.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(&c.wbuf[c.wn])), uintptr(chunk))
		switch e {
		case 0:
			c.wn += int(r)
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			c.werr = e
			return true
		}
	}
	return true
}
