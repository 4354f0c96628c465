package sockio

import "sync/atomic"

// enabled gates Of process-wide, so that a program or a test can compare
// raw I/O with the net package's (SetEnabled).
var enabled atomic.Bool

func init() { enabled.Store(true) }

// SetEnabled turns raw socket I/O on or off for connections given to Of
// afterwards, and returns the previous setting.
func SetEnabled(on bool) (was bool) { return enabled.Swap(on) }
