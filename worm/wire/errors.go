package wire

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every error this package returns for an expected
// condition matches (errors.Is) one of these, or a context error, or an I/O
// error of the connection (io.EOF, io.ErrUnexpectedEOF, net errors).
var (
	// ErrMalformed: bytes that are not a valid frame, payload or handshake
	// message (bad magic, unknown frame type, kind or status, a count that
	// does not fit in the remaining bytes, trailing bytes, ...).
	ErrMalformed = errors.New("wire: malformed message")
	// ErrFrameTooLarge: a frame's length exceeds the connection's maximum
	// frame size. The receiver detects it from the length prefix alone and
	// allocates nothing for it.
	ErrFrameTooLarge = errors.New("wire: frame too large")
	// ErrValueTooLarge: a value exceeds the connection's maximum value size.
	ErrValueTooLarge = errors.New("wire: value too large")
	// ErrVersion: the peers speak different protocol versions. The error is
	// a *VersionError naming both.
	ErrVersion = errors.New("wire: protocol version mismatch")
	// ErrAuth: authentication failed or was required and not offered.
	ErrAuth = errors.New("wire: authentication failed")
	// ErrShutdown: the peer is shutting down (a CodeShutdown error frame).
	ErrShutdown = errors.New("wire: peer is shutting down")
)

// FrameError describes a malformed or oversize frame, payload or handshake
// message. Err is the sentinel it matches (ErrMalformed, ErrFrameTooLarge or
// ErrValueTooLarge).
type FrameError struct {
	Reason string
	Err    error
}

func (e *FrameError) Error() string { return "wire: " + e.Reason }

// Unwrap returns the sentinel.
func (e *FrameError) Unwrap() error { return e.Err }

func malformed(format string, args ...any) error {
	return &FrameError{Reason: fmt.Sprintf(format, args...), Err: ErrMalformed}
}

// VersionError reports a protocol version mismatch. errors.Is(err,
// ErrVersion).
type VersionError struct {
	Local, Remote uint16
}

func (e *VersionError) Error() string {
	return fmt.Sprintf("wire: protocol version mismatch: this side speaks version %d, the peer speaks version %d", e.Local, e.Remote)
}

// Is makes errors.Is(err, ErrVersion) true.
func (e *VersionError) Is(target error) bool { return target == ErrVersion }

// Code classifies a connection-level error sent to the peer (in an error
// frame or a handshake error message), so that the receiver can match it
// with errors.Is.
type Code uint8

const (
	// CodeOther: any other failure; the text explains.
	CodeOther Code = iota
	// CodeMalformed: the receiver got bytes it could not decode.
	CodeMalformed
	// CodeFrameTooLarge: a frame or value exceeded the receiver's limits.
	CodeFrameTooLarge
	// CodeVersion: protocol version mismatch.
	CodeVersion
	// CodeAuth: authentication required or failed.
	CodeAuth
	// CodeShutdown: the sender is shutting down.
	CodeShutdown
	codeCount
)

var codeNames = [...]string{"error", "malformed", "frame too large", "version mismatch", "authentication", "shutdown"}

func (c Code) String() string {
	if c < codeCount {
		return codeNames[c]
	}
	return fmt.Sprintf("code(%d)", uint8(c))
}

// CodeOf returns the Code that describes err to a peer.
func CodeOf(err error) Code {
	switch {
	case errors.Is(err, ErrVersion):
		return CodeVersion
	case errors.Is(err, ErrAuth):
		return CodeAuth
	case errors.Is(err, ErrFrameTooLarge), errors.Is(err, ErrValueTooLarge):
		return CodeFrameTooLarge
	case errors.Is(err, ErrMalformed):
		return CodeMalformed
	case errors.Is(err, ErrShutdown):
		return CodeShutdown
	}
	return CodeOther
}

// RemoteError is a connection-level error the peer sent (an error frame,
// or an error message during the handshake) before closing the
// connection. errors.Is matches it against the sentinel of its Code
// (CodeAuth matches ErrAuth, and so on).
type RemoteError struct {
	Code Code
	Text string
}

func (e *RemoteError) Error() string {
	return "wire: peer closed the connection: " + e.Code.String() + ": " + e.Text
}

// Is matches the sentinel of e.Code.
func (e *RemoteError) Is(target error) bool {
	switch e.Code {
	case CodeMalformed:
		return target == ErrMalformed
	case CodeFrameTooLarge:
		return target == ErrFrameTooLarge
	case CodeVersion:
		return target == ErrVersion
	case CodeAuth:
		return target == ErrAuth
	case CodeShutdown:
		return target == ErrShutdown
	}
	return false
}
