// Package netperf measures a TCP path: echo round-trip time of small
// messages and bulk throughput in either direction with checksummed
// content. It serves the netstack tests, benchmarks and the netecho tool,
// and works over any net.Conn / net.Listener (kernel TCP or netstack).
//
// Wire protocol: the client opens a connection and sends a 17-byte header
// (op byte, uint64 length, uint64 unused, big endian).
//
//   - 'E' echo: the server copies everything back until EOF.
//   - 'S' sink: the client sends length pattern bytes; the server answers
//     with the uint64 byte count and the uint32 CRC-32C it received.
//   - 'R' source: the server sends length pattern bytes followed by their
//     uint32 CRC-32C; the client checks both.
//
// It must never import the WormSpace protocol packages (worm/...).
package netperf

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"time"
)

const (
	opEcho   = 'E'
	opSink   = 'S'
	opSource = 'R'
	hdrLen   = 17
	// chunk is the bulk write/read size.
	chunk = 64 << 10
	// patternLen is deliberately not a power of two, so the pattern
	// does not line up with chunk or segment boundaries.
	patternLen = 1<<20 + 13
)

// ErrCorrupt reports bulk content that does not match what was sent.
var ErrCorrupt = errors.New("netperf: corrupt transfer")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

var pattern = sync.OnceValue(func() []byte {
	// Pattern plus one chunk, so that any chunk-sized window starting
	// inside the pattern is contiguous.
	p := make([]byte, patternLen+chunk)
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i+8 <= patternLen; i += 8 {
		binary.LittleEndian.PutUint64(p[i:], r.Uint64())
	}
	copy(p[patternLen:], p[:chunk])
	return p
})

// window returns the pattern bytes at stream offset off, at most n long.
func window(off int64, n int) []byte {
	s := int(off % patternLen)
	return pattern()[s : s+n]
}

// Config bounds a measurement.
type Config struct {
	// StallTimeout fails a transfer when no byte moves for this long
	// (default 10 s). A stalled stack shows up as an error, not a hang.
	StallTimeout time.Duration
	// Progress, if set, is called about every 8 MiB of bulk data.
	Progress func(done, total int64)
}

func (c Config) stall() time.Duration {
	if c.StallTimeout > 0 {
		return c.StallTimeout
	}
	return 10 * time.Second
}

// Serve accepts connections on l until it is closed or ctx is done, and
// serves each in its own goroutine. It returns nil when the listener is
// closed.
func Serve(ctx context.Context, l net.Listener, log *slog.Logger) error {
	if log == nil {
		log = slog.Default()
	}
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("netperf: accept: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			stopc := context.AfterFunc(ctx, func() { c.Close() })
			defer stopc()
			if err := serveConn(c); err != nil && ctx.Err() == nil {
				log.Debug("netperf: connection", "remote", c.RemoteAddr(), "err", err)
			}
		}()
	}
}

func serveConn(c net.Conn) error {
	var hdr [hdrLen]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return err
	}
	n := int64(binary.BigEndian.Uint64(hdr[1:]))
	switch hdr[0] {
	case opEcho:
		buf := make([]byte, 32<<10)
		_, err := io.CopyBuffer(c, readerOnly{c}, buf)
		return err
	case opSink:
		buf := make([]byte, chunk)
		crc := uint32(0)
		var got int64
		for got < n {
			m, err := c.Read(buf[:min(int64(len(buf)), n-got)])
			crc = crc32.Update(crc, castagnoli, buf[:m])
			got += int64(m)
			if err != nil {
				break
			}
		}
		var resp [12]byte
		binary.BigEndian.PutUint64(resp[:], uint64(got))
		binary.BigEndian.PutUint32(resp[8:], crc)
		_, err := c.Write(resp[:])
		return err
	case opSource:
		crc := uint32(0)
		for off := int64(0); off < n; {
			w := window(off, int(min(chunk, n-off)))
			if _, err := c.Write(w); err != nil {
				return err
			}
			crc = crc32.Update(crc, castagnoli, w)
			off += int64(len(w))
		}
		var tail [4]byte
		binary.BigEndian.PutUint32(tail[:], crc)
		_, err := c.Write(tail[:])
		return err
	}
	return fmt.Errorf("netperf: unknown op %q", hdr[0])
}

// readerOnly hides WriterTo/ReaderFrom so io.CopyBuffer uses the buffer.
type readerOnly struct{ io.Reader }

func header(op byte, n int64) []byte {
	h := make([]byte, hdrLen)
	h[0] = op
	binary.BigEndian.PutUint64(h[1:], uint64(n))
	return h
}

// EchoResult summarises sequential round trips.
type EchoResult struct {
	Size   int           `json:"size"`
	Count  int           `json:"count"`
	P50    time.Duration `json:"p50_ns"`
	P90    time.Duration `json:"p90_ns"`
	P99    time.Duration `json:"p99_ns"`
	Min    time.Duration `json:"min_ns"`
	Max    time.Duration `json:"max_ns"`
	Mean   time.Duration `json:"mean_ns"`
	PerSec float64       `json:"round_trips_per_sec"`
}

// Echo starts an echo session on c: after it returns nil, each call to
// the returned round-trip function writes one size-byte message, reads it
// back and checks it. Nothing is allocated per round trip.
func Echo(c net.Conn, size int) (roundTrip func() error, err error) {
	if size <= 0 || size > chunk {
		return nil, fmt.Errorf("netperf: echo size %d out of range", size)
	}
	if _, err := c.Write(header(opEcho, 0)); err != nil {
		return nil, err
	}
	out := make([]byte, size)
	in := make([]byte, size)
	var seq uint64
	return func() error {
		seq++
		copy(out, window(int64(seq), size))
		if _, err := c.Write(out); err != nil {
			return err
		}
		if _, err := io.ReadFull(c, in); err != nil {
			return err
		}
		if string(in) != string(out) {
			return fmt.Errorf("%w: echo %d returned different bytes", ErrCorrupt, seq)
		}
		return nil
	}, nil
}

// EchoRun performs count sequential round trips of size bytes on c and
// returns their latency distribution. ctx cancels between round trips;
// cfg.StallTimeout bounds each one.
func EchoRun(ctx context.Context, c net.Conn, size, count int, cfg Config) (EchoResult, error) {
	rt, err := Echo(c, size)
	if err != nil {
		return EchoResult{}, err
	}
	lat := make([]time.Duration, 0, count)
	start := time.Now()
	for i := 0; i < count; i++ {
		if err := ctx.Err(); err != nil {
			return EchoResult{}, err
		}
		t := time.Now()
		if i%256 == 0 {
			_ = c.SetDeadline(t.Add(cfg.stall()))
		}
		if err := rt(); err != nil {
			return EchoResult{}, fmt.Errorf("netperf: round trip %d: %w", i, err)
		}
		lat = append(lat, time.Since(t))
	}
	total := time.Since(start)
	_ = c.SetDeadline(time.Time{})
	return summarize(size, lat, total), nil
}

func summarize(size int, lat []time.Duration, total time.Duration) EchoResult {
	r := EchoResult{Size: size, Count: len(lat)}
	if len(lat) == 0 {
		return r
	}
	slices.Sort(lat)
	pct := func(p float64) time.Duration { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
	var sum time.Duration
	for _, l := range lat {
		sum += l
	}
	r.P50, r.P90, r.P99 = pct(0.50), pct(0.90), pct(0.99)
	r.Min, r.Max, r.Mean = lat[0], lat[len(lat)-1], sum/time.Duration(len(lat))
	r.PerSec = float64(len(lat)) / total.Seconds()
	return r
}

// BulkResult is one bulk transfer.
type BulkResult struct {
	Direction string        `json:"direction"` // "send" (client to server) or "recv"
	Bytes     int64         `json:"bytes"`
	Elapsed   time.Duration `json:"elapsed_ns"`
	MBps      float64       `json:"mb_per_sec"` // 10^6 bytes per second
}

func result(dir string, n int64, d time.Duration) BulkResult {
	return BulkResult{Direction: dir, Bytes: n, Elapsed: d, MBps: float64(n) / d.Seconds() / 1e6}
}

// BulkSend streams n pattern bytes to the server and checks the count and
// CRC the server reports. Elapsed includes the server's answer.
func BulkSend(ctx context.Context, c net.Conn, n int64, cfg Config) (BulkResult, error) {
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	start := time.Now()
	if _, err := c.Write(header(opSink, n)); err != nil {
		return BulkResult{}, err
	}
	crc := uint32(0)
	next := int64(8 << 20)
	for off := int64(0); off < n; {
		w := window(off, int(min(chunk, n-off)))
		_ = c.SetWriteDeadline(time.Now().Add(cfg.stall()))
		m, err := c.Write(w)
		crc = crc32.Update(crc, castagnoli, w[:m])
		off += int64(m)
		if err != nil {
			return BulkResult{}, fmt.Errorf("netperf: send stalled or failed at %d of %d bytes: %w", off, n, errors.Join(ctx.Err(), err))
		}
		if cfg.Progress != nil && off >= next {
			cfg.Progress(off, n)
			next += 8 << 20
		}
	}
	var resp [12]byte
	_ = c.SetReadDeadline(time.Now().Add(cfg.stall()))
	if _, err := io.ReadFull(c, resp[:]); err != nil {
		return BulkResult{}, fmt.Errorf("netperf: sink answer: %w", errors.Join(ctx.Err(), err))
	}
	d := time.Since(start)
	_ = c.SetDeadline(time.Time{})
	got, gotCRC := int64(binary.BigEndian.Uint64(resp[:])), binary.BigEndian.Uint32(resp[8:])
	if got != n || gotCRC != crc {
		return BulkResult{}, fmt.Errorf("%w: server got %d bytes crc %08x, sent %d crc %08x", ErrCorrupt, got, gotCRC, n, crc)
	}
	return result("send", n, d), nil
}

// BulkRecv asks the server for n pattern bytes and checks them against the
// pattern and the server's CRC.
func BulkRecv(ctx context.Context, c net.Conn, n int64, cfg Config) (BulkResult, error) {
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	start := time.Now()
	if _, err := c.Write(header(opSource, n)); err != nil {
		return BulkResult{}, err
	}
	buf := make([]byte, chunk)
	crc := uint32(0)
	next := int64(8 << 20)
	for off := int64(0); off < n; {
		_ = c.SetReadDeadline(time.Now().Add(cfg.stall()))
		m, err := c.Read(buf[:min(chunk, n-off)])
		if m > 0 {
			if string(buf[:m]) != string(window(off, m)) {
				return BulkResult{}, fmt.Errorf("%w: content differs within bytes %d..%d", ErrCorrupt, off, off+int64(m))
			}
			crc = crc32.Update(crc, castagnoli, buf[:m])
			off += int64(m)
		}
		if err != nil && off < n {
			return BulkResult{}, fmt.Errorf("netperf: receive stalled or failed at %d of %d bytes: %w", off, n, errors.Join(ctx.Err(), err))
		}
		if cfg.Progress != nil && off >= next {
			cfg.Progress(off, n)
			next += 8 << 20
		}
	}
	var tail [4]byte
	if _, err := io.ReadFull(c, tail[:]); err != nil {
		return BulkResult{}, fmt.Errorf("netperf: source crc: %w", err)
	}
	d := time.Since(start)
	_ = c.SetDeadline(time.Time{})
	if got := binary.BigEndian.Uint32(tail[:]); got != crc {
		return BulkResult{}, fmt.Errorf("%w: crc %08x, server sent %08x", ErrCorrupt, crc, got)
	}
	return result("recv", n, d), nil
}
