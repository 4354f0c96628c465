package wire

import (
	"bufio"
	"errors"
	"io"

	"github.com/wormspace/wormspace/worm/paxos"
)

// Frame is one decoded frame header and its payload.
type Frame struct {
	Type FrameType
	ID   uint64
	// Payload aliases the Reader's buffer: valid until the next call to
	// Reader.Next.
	Payload []byte
}

const (
	// DefaultReadBuffer is the Reader's bufio size. Frames that fit in it
	// (every Prepare, Read, Accepted and Accept of values up to ~64 KiB)
	// are returned in place without a copy; larger ones are copied into a
	// reused buffer.
	DefaultReadBuffer = 64 << 10
	// DefaultFlushThreshold is the buffered size at which a Writer writes
	// on its own, even before Flush: it bounds the Writer's memory and keeps
	// the socket busy while a long queue is being encoded.
	DefaultFlushThreshold = 256 << 10
)

// Reader reads frames from a connection. It is not safe for concurrent
// use: one goroutine (the connection's reader) owns it.
type Reader struct {
	br       *bufio.Reader
	maxFrame int
	discard  int    // bytes of the previous frame still in br
	big      []byte // reused buffer for frames larger than br
}

// NewReader returns a Reader of r that refuses frames whose length field
// exceeds maxFrame (<= 0 means DefaultMaxFrame).
func NewReader(r io.Reader, maxFrame int) *Reader {
	return &Reader{br: bufio.NewReaderSize(r, DefaultReadBuffer), maxFrame: orDefault(maxFrame, DefaultMaxFrame)}
}

// SetMaxFrame changes the frame size limit (for example to the limit a
// server announced in its hello).
func (r *Reader) SetMaxFrame(n int) { r.maxFrame = orDefault(n, DefaultMaxFrame) }

// Next returns the next frame. Its payload is valid until the next call.
//
// Errors: io.EOF at a clean end of stream between frames;
// io.ErrUnexpectedEOF (wrapped) inside a frame; ErrFrameTooLarge (a
// *FrameError) when the length field exceeds the limit, detected before
// any allocation; ErrMalformed for a length below the header size, an
// unknown frame type or a push or error frame with a non-zero id. After an
// error the stream is out of sync: send an error frame and close.
func (r *Reader) Next() (Frame, error) {
	if r.discard > 0 {
		if _, err := r.br.Discard(r.discard); err != nil {
			return Frame{}, err
		}
		r.discard = 0
	}
	h, err := r.br.Peek(4)
	if err != nil {
		if err == io.EOF && len(h) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return Frame{}, err
	}
	n := le.Uint32(h)
	if uint64(n) > uint64(r.maxFrame) {
		return Frame{}, &FrameError{Reason: "frame length " + itoa(uint64(n)) + " exceeds the limit of " + itoa(uint64(r.maxFrame)), Err: ErrFrameTooLarge}
	}
	if n < lengthCovers {
		return Frame{}, malformed("frame length %d is shorter than a header", n)
	}
	total := 4 + int(n)
	var b []byte
	if total <= r.br.Size() {
		b, err = r.br.Peek(total)
		if err != nil {
			return Frame{}, unexpected(err)
		}
		r.discard = total
	} else {
		if cap(r.big) < total {
			r.big = make([]byte, total)
		}
		b = r.big[:total]
		if _, err := io.ReadFull(r.br, b); err != nil {
			return Frame{}, unexpected(err)
		}
	}
	f := Frame{Type: FrameType(b[4]), ID: le.Uint64(b[5:]), Payload: b[HeaderSize:total:total]}
	switch {
	case !f.Type.Valid():
		return Frame{}, malformed("unknown frame type %d", uint8(f.Type))
	case (f.Type == FramePush || f.Type == FrameErr) && f.ID != 0:
		return Frame{}, malformed("%v frame with id %d", f.Type, f.ID)
	}
	return f, nil
}

func unexpected(err error) error {
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return &FrameError{Reason: "connection closed inside a frame", Err: io.ErrUnexpectedEOF}
	}
	return err
}

// Writer batches frames into one buffer and writes them with one call to
// the underlying writer. The intended use is one sender goroutine per
// connection: it takes queued messages, encodes each with a Write method,
// and calls Flush when its queue is empty, so a burst of pipelined
// requests (or group-committed replies) leaves in one write system call.
//
// A Writer is not safe for concurrent use. After a write error every
// method returns that error.
type Writer struct {
	w         io.Writer
	buf       []byte
	maxFrame  int
	maxValue  int
	threshold int
	err       error
}

// NewWriter returns a Writer of w that refuses to encode frames longer
// than maxFrame or values longer than maxValue (<= 0 means the default);
// a client should pass the limits its server announced.
func NewWriter(w io.Writer, maxFrame, maxValue int) *Writer {
	return &Writer{
		w:         w,
		buf:       make([]byte, 0, 64<<10),
		maxFrame:  orDefault(maxFrame, DefaultMaxFrame),
		maxValue:  orDefault(maxValue, DefaultMaxValue),
		threshold: DefaultFlushThreshold,
	}
}

// SetLimits changes the frame and value limits (<= 0 means the default).
func (w *Writer) SetLimits(maxFrame, maxValue int) {
	w.maxFrame = orDefault(maxFrame, DefaultMaxFrame)
	w.maxValue = orDefault(maxValue, DefaultMaxValue)
}

// Buffered returns the number of bytes waiting for Flush.
func (w *Writer) Buffered() int { return len(w.buf) }

// WriteRequest buffers a request frame. A value over the value limit
// (ErrValueTooLarge) or a frame over the frame limit (ErrFrameTooLarge)
// is refused and nothing is buffered; the connection stays usable.
func (w *Writer) WriteRequest(id uint64, r *paxos.Request) error {
	if w.err != nil {
		return w.err
	}
	for _, v := range r.Values {
		if len(v) > w.maxValue {
			return &FrameError{Reason: "value of " + itoa(uint64(len(v))) + " bytes exceeds the limit of " + itoa(uint64(w.maxValue)), Err: ErrValueTooLarge}
		}
	}
	start := len(w.buf)
	w.buf = AppendRequest(w.buf, id, r)
	return w.check(start)
}

// WriteResponse buffers a response frame; limits as for WriteRequest. A
// server whose response does not fit (a PrepareSeg of a segment holding
// more data than one frame) must answer something smaller instead, for
// example StatusError with an explanation.
func (w *Writer) WriteResponse(id uint64, r *paxos.Response) error {
	if w.err != nil {
		return w.err
	}
	start := len(w.buf)
	w.buf = AppendResponse(w.buf, id, r)
	return w.check(start)
}

// WritePush buffers a push frame carrying a KindNotify response.
func (w *Writer) WritePush(r *paxos.Response) error {
	if w.err != nil {
		return w.err
	}
	start := len(w.buf)
	w.buf = AppendPush(w.buf, r)
	return w.check(start)
}

// WriteError buffers an error frame describing err (its Code and text)
// and flushes. The caller closes the connection afterwards.
func (w *Writer) WriteError(err error) error {
	if w.err != nil {
		return w.err
	}
	w.buf = AppendErrorFrame(w.buf, CodeOf(err), err.Error())
	return w.Flush()
}

func (w *Writer) check(start int) error {
	if n := len(w.buf) - start - 4; n > w.maxFrame {
		w.buf = w.buf[:start]
		return &FrameError{Reason: "frame length " + itoa(uint64(n)) + " exceeds the limit of " + itoa(uint64(w.maxFrame)), Err: ErrFrameTooLarge}
	}
	if len(w.buf) >= w.threshold {
		return w.Flush()
	}
	return nil
}

// Flush writes every buffered frame with one Write call.
func (w *Writer) Flush() error {
	if w.err != nil {
		return w.err
	}
	if len(w.buf) == 0 {
		return nil
	}
	_, err := w.w.Write(w.buf)
	if err != nil {
		w.err = err
		return err
	}
	if cap(w.buf) > 4*DefaultFlushThreshold+DefaultMaxFrame {
		// One huge frame went out; do not keep its buffer for the life of
		// the connection.
		w.buf = make([]byte, 0, 64<<10)
	} else {
		w.buf = w.buf[:0]
	}
	return nil
}
