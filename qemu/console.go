package qemu

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
)

// Console markers printed by the guest init (guest contract).
const (
	readyMarker = "WORMSPACE-READY"
	errorMarker = "WORMSPACE-ERROR"
)

// Ready is a parsed WORMSPACE-READY line plus the host-side measurement.
type Ready struct {
	ID     int           // id= (the acceptor id the guest booted with)
	Addr   string        // addr= (the address wormd listens on in the guest)
	Stack  string        // stack=
	Uptime time.Duration // uptime_ms=: guest uptime when wormd became ready
	// BootToReady is the host-side time from just before QEMU's exec to
	// reading the READY line from the console file (the file is polled
	// every consolePoll, which bounds the measurement error).
	BootToReady time.Duration
	Line        string // the console line as printed
}

// parseReady parses the part of line starting at WORMSPACE-READY; ok is
// false if line has no READY marker. Kernel messages can share a console
// line, so the marker may appear anywhere in it. Unknown fields are
// ignored; a malformed known field is an error.
func parseReady(line string) (r Ready, ok bool, err error) {
	i := strings.Index(line, readyMarker)
	if i < 0 {
		return Ready{}, false, nil
	}
	r.Line = strings.TrimSpace(line[i:])
	for _, f := range strings.Fields(line[i+len(readyMarker):]) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "id":
			if r.ID, err = strconv.Atoi(v); err != nil {
				return r, true, fmt.Errorf("qemu: READY line id %q: %w", v, err)
			}
		case "addr":
			r.Addr = v
		case "stack":
			r.Stack = v
		case "uptime_ms":
			ms, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return r, true, fmt.Errorf("qemu: READY line uptime_ms %q: %w", v, err)
			}
			r.Uptime = time.Duration(ms * float64(time.Millisecond))
		}
	}
	return r, true, nil
}

// consolePoll is how often the console file is read while waiting for
// readiness. QEMU writes the serial port to a file (so the console keeps
// being captured after a detached `worm vm up` exits); polling a regular
// file is the portable way to follow it.
const consolePoll = 5 * time.Millisecond

// markConsole appends a boot separator to the console file and returns the
// offset where this boot's output begins.
func markConsole(path string, boot int, accel Accel) (int64, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if _, err := fmt.Fprintf(f, "=== worm vm: boot %d at %s, accel %s ===\n", boot, time.Now().Format(time.RFC3339Nano), accel); err != nil {
		return 0, err
	}
	return f.Seek(0, io.SeekEnd)
}

// followConsole reads complete lines from path starting at off and hands
// each to onLine until onLine returns true (done), ctx ends, or exited is
// closed (after a final read). It returns the offset after the last
// complete line consumed.
func followConsole(ctx context.Context, path string, off int64, exited <-chan struct{}, onLine func(string) bool) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return off, err
	}
	defer f.Close()
	var pending []byte
	buf := make([]byte, 64<<10)
	t := time.NewTicker(consolePoll)
	defer t.Stop()
	for {
		// Check for exit before reading, so the read after the exit sees
		// everything QEMU wrote.
		var gone bool
		select {
		case <-exited:
			gone = true
		default:
		}
		for {
			n, err := f.ReadAt(buf, off+int64(len(pending)))
			pending = append(pending, buf[:n]...)
			if err != nil || n < len(buf) {
				break
			}
		}
		for {
			i := bytes.IndexByte(pending, '\n')
			if i < 0 {
				break
			}
			line := strings.TrimRight(string(pending[:i]), "\r")
			pending = pending[i+1:]
			off += int64(i + 1)
			if onLine(line) {
				return off, nil
			}
		}
		if gone {
			if len(pending) > 0 && onLine(strings.TrimRight(string(pending), "\r")) {
				return off + int64(len(pending)), nil
			}
			return off, ErrExited
		}
		select {
		case <-ctx.Done():
			return off, ctx.Err()
		case <-exited:
		case <-t.C:
		}
	}
}

// tailFile returns the last n lines of a file (for error messages).
func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
