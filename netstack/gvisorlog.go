package netstack

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	gvlog "gvisor.dev/gvisor/pkg/log"
)

// gVisor's own messages (a listener dropping a SYN whose connection is
// still in TIME-WAIT, a malformed option) go to its process-wide logger,
// which by default writes glog-style lines straight to stderr, outside
// the program's structured log. The first stack this package makes
// routes that logger to slog.Default() (looked up per message, so a later
// slog.SetDefault is followed), at gVisor's default level (Info: its
// debug messages are never formatted), with component=gvisor.
var routeGVisorLogOnce sync.Once

func routeGVisorLog() {
	routeGVisorLogOnce.Do(func() { gvlog.SetTarget(slogEmitter{}) })
}

// slogEmitter is a gVisor log Emitter writing to slog.Default().
type slogEmitter struct{}

func (slogEmitter) Emit(_ int, level gvlog.Level, _ time.Time, format string, v ...any) {
	l := slog.Default()
	sl := gvisorLevel(level)
	ctx := context.Background()
	if !l.Enabled(ctx, sl) {
		return // not formatted
	}
	l.Log(ctx, sl, fmt.Sprintf(format, v...), "component", "gvisor")
}

// gvisorLevel maps gVisor's log levels to slog's.
func gvisorLevel(level gvlog.Level) slog.Level {
	switch level {
	case gvlog.Warning:
		return slog.LevelWarn
	case gvlog.Info:
		return slog.LevelInfo
	default:
		return slog.LevelDebug
	}
}
