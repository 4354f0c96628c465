// Package sockio reads and writes a TCP or Unix socket of this process
// with raw system calls, for the connection loops of wormd and the client
// library, and of the baselines they are compared with (chain registers,
// 2PC's transport) and WormLog's sequencer, so that a message costs the
// same on every side of a comparison.
//
// Why: Go enters every ordinary system call through the runtime
// (entersyscall), and when the runtime's monitor thread, sysmon, is parked
// (it parks once it finds every P idle), entering a system call wakes it:
// a futex wake of a thread, usually on another CPU, which then polls
// every 20 µs until it finds every P idle again. A process that serves one
// request at a time goes idle between requests, so each request's socket
// read and reply write woke sysmon. worm/storage writes its records raw
// for the same reason (rawwrite_linux.go), and netstack's links read and
// write their frames raw.
//
// A socket made by the net package is non-blocking, so a raw read or
// write never waits in the kernel: it moves what it can and reports
// EAGAIN for the rest, and Conn then waits in the runtime's poller like
// net.Conn does (syscall.RawConn.Read/Write), honouring the connection's
// deadlines and Close. A single raw write is bounded (maxChunk) so that
// copying a large frame does not hold the thread's P for long unknown to
// the runtime.
//
// Of returns nil for a connection that is not such a socket (gVisor's
// netstack connections, net.Pipe, TLS); ReadWriter returns the raw Conn
// or, for those, the connection itself, which is what a connection loop
// reads and writes. Conn does not allocate per call.
//
// This package must never import other packages of this module.
package sockio
