package sockio

import (
	"io"
	"net"
	"sync/atomic"
)

// enabled gates Of process-wide, so that a program or a test can compare
// raw I/O with the net package's (SetEnabled).
var enabled atomic.Bool

func init() { enabled.Store(true) }

// SetEnabled turns raw socket I/O on or off for connections given to Of
// afterwards, and returns the previous setting.
func SetEnabled(on bool) (was bool) { return enabled.Swap(on) }

// ReadWriter returns what a connection loop should read nc with and write
// it with: Of(nc) when nc is a socket of this process, else nc itself.
func ReadWriter(nc net.Conn) io.ReadWriter {
	if c := Of(nc); c != nil {
		return c
	}
	return nc
}
