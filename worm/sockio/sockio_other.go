//go:build !linux

package sockio

import "net"

// Conn is not available here: Of returns nil and callers use net.Conn.
type Conn struct{}

// Of returns nil: raw socket I/O is implemented for Linux only.
func Of(net.Conn) *Conn { return nil }

// Read is never called (Of returns nil).
func (*Conn) Read([]byte) (int, error) { panic("sockio: no raw I/O on this platform") }

// Write is never called (Of returns nil).
func (*Conn) Write([]byte) (int, error) { panic("sockio: no raw I/O on this platform") }
