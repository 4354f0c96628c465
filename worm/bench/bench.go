// Package bench measures WormSpace workloads with closed-loop clients: each
// client issues one operation, waits for it, and issues the next, for a
// fixed time after a warm-up. It reports throughput and latency
// percentiles, and measures the physical floor of the same path in the same
// run (a raw TCP echo round trip), so that figures read as ratios to what
// the network alone costs.
//
//	res, err := bench.Run(ctx, bench.Config{
//		Spaces:   []worm.Space{cl},      // clients share these round-robin
//		Workload: bench.Write,
//		Clients:  16,
//		Duration: 5 * time.Second,
//	})
//	fmt.Println(res) // write c=16: 41234 ops/s p50=380µs p99=1.2ms
//
// Workloads (see Workload): Write writes consecutive registers of a segment
// the client allocated and captured once (the WormLog/WormPaxos fast path:
// one round trip per write); Batch does the same with WriteBatch of
// Config.Batch values (throughput counts values); CaptureWrite captures
// and writes a fresh register per operation (two round trips); Read reads
// registers written beforehand.
//
// Segment allocation and capture when a client's segment fills up are not
// timed: they happen once per SegmentSize writes and are not what the
// workload measures.
//
// This package measures any worm.Space (the spec, the distributed client)
// and never imports worm/client, worm/server or worm/paxos.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/sockio"
)

// Workload names an operation mix.
type Workload string

// The workloads.
const (
	Write        Workload = "write"
	Batch        Workload = "batch"
	CaptureWrite Workload = "capture-write"
	Read         Workload = "read"
)

// Workloads lists every workload, in report order.
var Workloads = []Workload{Write, Batch, CaptureWrite, Read}

// ParseWorkload checks a workload name.
func ParseWorkload(s string) (Workload, error) {
	for _, w := range Workloads {
		if string(w) == s {
			return w, nil
		}
	}
	return "", fmt.Errorf("bench: unknown workload %q (want write, batch, capture-write or read)", s)
}

// Config describes one measurement.
type Config struct {
	// Spaces are shared by the clients round-robin (client i uses
	// Spaces[i%len]). One distributed client multiplexes many callers
	// over one connection per server, which is how it is meant to be
	// used.
	Spaces   []worm.Space
	Workload Workload
	// Clients is the number of closed-loop clients (default 1).
	Clients int
	// Duration of the measured part (default 5s); Warmup before it
	// (default 1s, not counted).
	Duration, Warmup time.Duration
	// ValueSize is the bytes per value (default 64).
	ValueSize int
	// Batch is the values per WriteBatch for the Batch workload (default
	// 16).
	Batch int
	// SegBase is the first segment the run uses; every run must use
	// segments no earlier run touched (default: derived from the clock).
	SegBase uint64
	// OpTimeout bounds one operation (default 10s); a timed-out or failed
	// operation counts as an error, not as a latency sample.
	OpTimeout time.Duration
}

// Result is one measurement.
type Result struct {
	Workload Workload      `json:"workload"`
	Clients  int           `json:"clients"`
	Batch    int           `json:"batch,omitempty"`
	Duration time.Duration `json:"duration_ns"`
	// Ops are completed operations; Writes counts register writes
	// (Batch values per batch operation).
	Ops    int64 `json:"ops"`
	Writes int64 `json:"writes"`
	Errors int64 `json:"errors"`
	// FirstError describes the first error seen, if any.
	FirstError string `json:"first_error,omitempty"`
	// OpsPerSec is operations per second (registers per second for Batch:
	// see WritesPerSec).
	OpsPerSec    float64 `json:"ops_per_sec"`
	WritesPerSec float64 `json:"writes_per_sec,omitempty"`
	Latency      Latency `json:"latency"`
}

// Latency holds percentiles of the per-operation latencies.
type Latency struct {
	Mean time.Duration `json:"mean_ns"`
	P50  time.Duration `json:"p50_ns"`
	P90  time.Duration `json:"p90_ns"`
	P99  time.Duration `json:"p99_ns"`
	P999 time.Duration `json:"p999_ns"`
	Max  time.Duration `json:"max_ns"`
}

// Summarize computes percentiles of samples (which it sorts).
func Summarize(samples []time.Duration) Latency {
	if len(samples) == 0 {
		return Latency{}
	}
	slices.Sort(samples)
	var sum time.Duration
	for _, s := range samples {
		sum += s
	}
	q := func(p float64) time.Duration {
		i := int(p * float64(len(samples)-1))
		return samples[i]
	}
	return Latency{Mean: sum / time.Duration(len(samples)), P50: q(0.50), P90: q(0.90), P99: q(0.99), P999: q(0.999), Max: samples[len(samples)-1]}
}

func (r Result) String() string {
	s := fmt.Sprintf("%s c=%d: %.0f ops/s", r.Workload, r.Clients, r.OpsPerSec)
	if r.Workload == Batch {
		s += fmt.Sprintf(" (%.0f writes/s, batch %d)", r.WritesPerSec, r.Batch)
	}
	s += fmt.Sprintf(" p50=%v p99=%v", r.Latency.P50.Round(time.Microsecond), r.Latency.P99.Round(time.Microsecond))
	if r.Errors > 0 {
		s += fmt.Sprintf(" errors=%d (%s)", r.Errors, r.FirstError)
	}
	return s
}

func (c *Config) defaults() error {
	if len(c.Spaces) == 0 {
		return errors.New("bench: no Spaces")
	}
	if c.Workload == "" {
		c.Workload = Write
	}
	if _, err := ParseWorkload(string(c.Workload)); err != nil {
		return err
	}
	if c.Clients <= 0 {
		c.Clients = 1
	}
	if c.Duration <= 0 {
		c.Duration = 5 * time.Second
	}
	if c.Warmup < 0 {
		c.Warmup = 0
	} else if c.Warmup == 0 {
		c.Warmup = time.Second
	}
	if c.ValueSize <= 0 {
		c.ValueSize = 64
	}
	if c.Batch <= 0 {
		c.Batch = 16
	}
	if c.OpTimeout <= 0 {
		c.OpTimeout = 10 * time.Second
	}
	if c.SegBase == 0 {
		c.SegBase = uint64(time.Now().UnixNano()/1000) << 8
	}
	return nil
}

// segmentBudget bounds the bytes of values a worker writes into one
// segment before it moves to a fresh one and trims the old: with it a
// run holds at most about Clients times this much live data, whatever the
// value size and however long it runs (64-byte values fill a whole
// 1024-register segment with 64 KiB, well below it; 64 KiB values take 16
// registers per segment, so that 64 clients keep 64 MiB live, within a
// small VM's memory and disk, not 4 GiB).
const segmentBudget = 1 << 20

// worker is one closed-loop client.
type worker struct {
	cfg     *Config
	id      int
	sp      worm.Space
	segSize uint32 // the space's
	perSeg  uint32 // registers the worker uses per segment (segmentBudget)
	seg     uint64
	segN    uint64 // segments this worker has used
	tok     worm.Token
	off     uint32
	value   []byte
	values  [][]byte
	samples []time.Duration
}

// nextSeg trims the worker's current segment, if any, and allocates and
// captures its next one (untimed: not in the operation's latency, but in
// the run's elapsed time, as a real writer's housekeeping would be).
func (w *worker) nextSeg(ctx context.Context) error {
	if w.segN > 0 {
		if err := w.sp.Trim(ctx, w.seg); err != nil {
			return fmt.Errorf("trim %d: %w", w.seg, err)
		}
	}
	w.seg = w.cfg.SegBase + uint64(w.id) + w.segN*uint64(w.cfg.Clients)
	w.segN++
	if _, err := w.sp.Alloc(ctx, w.seg, nil); err != nil {
		return fmt.Errorf("alloc %d: %w", w.seg, err)
	}
	sc, err := w.sp.CaptureSegment(ctx, w.seg)
	if err != nil {
		return fmt.Errorf("capture segment %d: %w", w.seg, err)
	}
	w.tok, w.off = sc.Token, 0
	return nil
}

// prepare sets the worker up before timing starts.
func (w *worker) prepare(ctx context.Context) error {
	w.segSize = w.sp.SegmentSize()
	w.perSeg = uint32(min(uint64(w.segSize), max(segmentBudget/uint64(w.cfg.ValueSize), 1)))
	if w.cfg.Workload == Batch {
		// Room for at least one batch (and a whole one at the end).
		w.perSeg = min(w.segSize, max(w.perSeg, uint32(w.cfg.Batch)))
	}
	w.value = make([]byte, w.cfg.ValueSize)
	for i := range w.value {
		w.value[i] = byte('a' + (w.id+i)%26)
	}
	switch w.cfg.Workload {
	case Write, Batch, CaptureWrite:
		return w.nextSeg(ctx)
	case Read:
		// Fill a segment's worth of registers (bounded) to read back.
		if err := w.nextSeg(ctx); err != nil {
			return err
		}
		n := min(w.perSeg, 256)
		for off := uint32(0); off < n; off += 16 {
			k := min(16, n-off)
			vals := make([][]byte, k)
			for i := range vals {
				vals[i] = w.value
			}
			if err := w.sp.WriteBatch(ctx, w.seg, off, w.tok, vals); err != nil {
				return fmt.Errorf("prefill: %w", err)
			}
		}
		w.off = 0
	}
	return nil
}

// op runs one operation; it returns the registers written and the time
// spent in the measured call(s).
func (w *worker) op(ctx context.Context) (int64, time.Duration, error) {
	switch w.cfg.Workload {
	case Write:
		if w.off >= w.perSeg {
			if err := w.nextSeg(ctx); err != nil {
				return 0, 0, err
			}
		}
		t := time.Now()
		err := w.sp.Write(ctx, worm.Addr{Seg: w.seg, Off: w.off}, w.tok, w.value)
		d := time.Since(t)
		w.off++
		return 1, d, err
	case Batch:
		n := uint32(w.cfg.Batch)
		if w.off+n > w.perSeg {
			if err := w.nextSeg(ctx); err != nil {
				return 0, 0, err
			}
		}
		if w.values == nil {
			w.values = make([][]byte, n)
			for i := range w.values {
				w.values[i] = w.value
			}
		}
		t := time.Now()
		err := w.sp.WriteBatch(ctx, w.seg, w.off, w.tok, w.values)
		d := time.Since(t)
		w.off += n
		return int64(n), d, err
	case CaptureWrite:
		if w.off >= w.perSeg {
			if err := w.nextSeg(ctx); err != nil {
				return 0, 0, err
			}
		}
		a := worm.Addr{Seg: w.seg, Off: w.off}
		w.off++
		t := time.Now()
		tok, err := w.sp.Capture(ctx, a)
		if err == nil {
			err = w.sp.Write(ctx, a, tok, w.value)
		}
		return 1, time.Since(t), err
	case Read:
		a := worm.Addr{Seg: w.seg, Off: w.off % min(w.perSeg, 256)}
		w.off++
		t := time.Now()
		_, err := w.sp.Read(ctx, a)
		return 0, time.Since(t), err
	}
	return 0, 0, fmt.Errorf("bench: workload %q", w.cfg.Workload)
}

// Run measures cfg.Workload with cfg.Clients closed-loop clients.
func Run(ctx context.Context, cfg Config) (Result, error) {
	if err := cfg.defaults(); err != nil {
		return Result{}, err
	}
	ws := make([]*worker, cfg.Clients)
	var prepErr error
	var prepMu sync.Mutex
	var wg sync.WaitGroup
	for i := range ws {
		ws[i] = &worker{cfg: &cfg, id: i, sp: cfg.Spaces[i%len(cfg.Spaces)]}
		wg.Add(1)
		go func(w *worker) {
			defer wg.Done()
			pctx, cancel := context.WithTimeout(ctx, cfg.OpTimeout)
			defer cancel()
			if err := w.prepare(pctx); err != nil {
				prepMu.Lock()
				prepErr = errors.Join(prepErr, err)
				prepMu.Unlock()
			}
		}(ws[i])
	}
	wg.Wait()
	if prepErr != nil {
		return Result{}, fmt.Errorf("bench: preparing %s: %w", cfg.Workload, prepErr)
	}

	var measuring, stop atomic.Bool
	var ops, writes, nerr atomic.Int64
	var firstErr atomic.Value
	start := make(chan struct{})
	for _, w := range ws {
		wg.Add(1)
		go func(w *worker) {
			defer wg.Done()
			<-start
			for !stop.Load() && ctx.Err() == nil {
				octx, cancel := context.WithTimeout(ctx, cfg.OpTimeout)
				n, d, err := w.op(octx)
				cancel()
				if !measuring.Load() {
					continue
				}
				if err != nil {
					nerr.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				ops.Add(1)
				writes.Add(n)
				w.samples = append(w.samples, d)
			}
		}(w)
	}
	close(start)
	sleep(ctx, cfg.Warmup)
	measuring.Store(true)
	t0 := time.Now()
	sleep(ctx, cfg.Duration)
	measuring.Store(false)
	elapsed := time.Since(t0)
	stop.Store(true)
	wg.Wait()
	if ctx.Err() != nil {
		return Result{}, ctx.Err()
	}
	// Leave nothing behind: a harness runs many of these against the same
	// cluster (and the spec keeps every value in memory). Best effort: a
	// segment left untrimmed costs space, not correctness, and the figures
	// are already taken.
	for _, w := range ws {
		if w.segN == 0 {
			continue // never had a segment
		}
		wg.Add(1)
		go func(w *worker) {
			defer wg.Done()
			tctx, cancel := context.WithTimeout(ctx, cfg.OpTimeout)
			defer cancel()
			_ = w.sp.Trim(tctx, w.seg)
		}(w)
	}
	wg.Wait()
	var all []time.Duration
	for _, w := range ws {
		all = append(all, w.samples...)
	}
	r := Result{Workload: cfg.Workload, Clients: cfg.Clients, Duration: elapsed,
		Ops: ops.Load(), Writes: writes.Load(), Errors: nerr.Load(), Latency: Summarize(all)}
	if cfg.Workload == Batch {
		r.Batch = cfg.Batch
		r.WritesPerSec = float64(r.Writes) / elapsed.Seconds()
	}
	r.OpsPerSec = float64(r.Ops) / elapsed.Seconds()
	if s, ok := firstErr.Load().(string); ok {
		r.FirstError = s
	}
	return r, nil
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// Dialer makes connections (netstack.Network and net.Dialer satisfy it).
type Dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// EchoServer serves a TCP echo on l until l is closed: the raw floor of a
// round trip over the same path the wormservers use, with their socket
// I/O (raw system calls on a socket of this process, worm/sockio;
// not io.Copy, which splices between kernel sockets).
func EchoServer(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			rw := sockio.ReadWriter(c)
			buf := make([]byte, 64<<10)
			for {
				n, err := rw.Read(buf)
				if err != nil {
					return
				}
				if _, err := rw.Write(buf[:n]); err != nil {
					return
				}
			}
		}()
	}
}

// RawStream measures bulk throughput through an echo server at addr: one
// connection, a writer sending chunk-byte writes back to back and a reader
// taking the echo as it comes, for duration after a short warm-up. An
// operation is one chunk echoed: OpsPerSec times chunk is the bytes per
// second each way, and the latency of a chunk is from the start of its
// write until its last byte is back (the queueing in the pipe included).
// Its Result has Workload "raw-stream". The chunks carry a counter pattern
// and the reader checks it, so a stack that reorders or corrupts the
// stream fails the measurement instead of speeding it up.
func RawStream(ctx context.Context, d Dialer, addr string, chunk int, duration time.Duration) (Result, error) {
	if chunk <= 0 {
		chunk = 64 << 10
	}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return Result{}, fmt.Errorf("bench: raw stream dial %s: %w", addr, err)
	}
	defer c.Close()
	rw := sockio.ReadWriter(c)
	// starts carries each chunk's write start to the reader, in order;
	// its capacity bounds the chunks in flight far above what the
	// sockets' buffers hold.
	starts := make(chan time.Time, 4096)
	var measuring, stop atomic.Bool
	werr := make(chan error, 1)
	done := make(chan struct{}) // the reader returned
	wdone := make(chan struct{})
	go func() {
		defer close(wdone)
		defer close(starts)
		out := make([]byte, chunk)
		for n := uint64(0); !stop.Load(); n++ {
			fillStream(out, n*uint64(chunk))
			select {
			case starts <- time.Now():
			case <-done:
				return
			}
			c.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if _, err := rw.Write(out); err != nil {
				if !stop.Load() {
					werr <- err
				}
				return
			}
		}
	}()
	var ops atomic.Int64
	var lat []time.Duration
	var rerr error
	var t0 time.Time
	var elapsed time.Duration
	go func() {
		defer close(done)
		in := make([]byte, chunk)
		want := make([]byte, chunk)
		for n := uint64(0); ; n++ {
			t, ok := <-starts
			if !ok {
				return
			}
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(rw, in); err != nil {
				if !stop.Load() {
					rerr = err
				}
				return
			}
			fillStream(want, n*uint64(chunk))
			if string(in) != string(want) {
				rerr = fmt.Errorf("bench: raw stream: chunk %d came back different", n)
				return
			}
			if measuring.Load() {
				lat = append(lat, time.Since(t))
				ops.Add(1)
			}
		}
	}()
	sleep(ctx, 200*time.Millisecond)
	t0 = time.Now()
	measuring.Store(true)
	sleep(ctx, duration)
	awaitFirst(ctx, ops.Load, done)
	measuring.Store(false)
	elapsed = time.Since(t0)
	stop.Store(true)
	// Closing ends a write or read in progress (a deadline could be
	// replaced by the writer's next one).
	c.Close()
	<-done
	<-wdone
	r := Result{Workload: "raw-stream", Clients: 1, Duration: elapsed, Ops: ops.Load(),
		OpsPerSec: float64(ops.Load()) / elapsed.Seconds(), Latency: Summarize(lat)}
	select {
	case err := <-werr:
		rerr = errors.Join(rerr, err)
	default:
	}
	if rerr != nil {
		r.Errors, r.FirstError = 1, rerr.Error()
		return r, fmt.Errorf("bench: raw stream to %s: %w", addr, rerr)
	}
	if ctx.Err() != nil {
		return r, ctx.Err()
	}
	if r.Ops == 0 {
		return r, errors.New("bench: raw stream: no chunk came back")
	}
	return r, nil
}

// firstOpWait bounds how long a floor's measurement window is held open
// for its first completed operation (awaitFirst).
const firstOpWait = 5 * time.Second

// awaitFirst holds a measurement window that has seen no completed
// operation open until one completes, at most firstOpWait, or until
// quit (when not nil) closes. A stall longer than a short window (a
// retransmission timeout, a guest just resumed) then shows as a slow
// sample, its time counted in the window, instead of an empty one.
func awaitFirst(ctx context.Context, ops func() int64, quit <-chan struct{}) {
	deadline := time.Now().Add(firstOpWait)
	for ops() == 0 && ctx.Err() == nil && time.Now().Before(deadline) {
		select {
		case <-quit:
			return
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// fillStream writes the stream pattern for offset off into b: each 8-byte
// word holds its own offset, so a chunk out of place does not match.
func fillStream(b []byte, off uint64) {
	for i := 0; i+8 <= len(b); i += 8 {
		v := off + uint64(i)
		b[i], b[i+1], b[i+2], b[i+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
		b[i+4], b[i+5], b[i+6], b[i+7] = byte(v>>32), byte(v>>40), byte(v>>48), byte(v>>56)
	}
}

// RawRTT measures closed-loop round trips of size-byte messages to an echo
// server at addr over d, with clients connections, for duration after a
// short warm-up. Its Result has Workload "raw-rtt".
func RawRTT(ctx context.Context, d Dialer, addr string, clients, size int, duration time.Duration) (Result, error) {
	if clients <= 0 {
		clients = 1
	}
	if size <= 0 {
		size = 64
	}
	conns := make([]net.Conn, clients)
	for i := range conns {
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			for _, c := range conns[:i] {
				c.Close()
			}
			return Result{}, fmt.Errorf("bench: raw rtt dial %s: %w", addr, err)
		}
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetNoDelay(true)
		}
		conns[i] = c
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	var measuring, stop atomic.Bool
	var ops, nerr atomic.Int64
	samples := make([][]time.Duration, clients)
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func(i int, c net.Conn) {
			defer wg.Done()
			out, in := make([]byte, size), make([]byte, size)
			rw := sockio.ReadWriter(c)
			for !stop.Load() {
				c.SetDeadline(time.Now().Add(5 * time.Second))
				t := time.Now()
				if _, err := rw.Write(out); err != nil {
					nerr.Add(1)
					return
				}
				if _, err := io.ReadFull(rw, in); err != nil {
					nerr.Add(1)
					return
				}
				if measuring.Load() {
					samples[i] = append(samples[i], time.Since(t))
					ops.Add(1)
				}
			}
		}(i, c)
	}
	// Closed when every connection's loop has ended (on an error): then
	// no round trip can complete, and awaitFirst need not wait.
	loopsDone := make(chan struct{})
	go func() { wg.Wait(); close(loopsDone) }()
	sleep(ctx, 200*time.Millisecond)
	measuring.Store(true)
	t0 := time.Now()
	sleep(ctx, duration)
	awaitFirst(ctx, ops.Load, loopsDone)
	measuring.Store(false)
	elapsed := time.Since(t0)
	stop.Store(true)
	wg.Wait()
	var all []time.Duration
	for _, s := range samples {
		all = append(all, s...)
	}
	r := Result{Workload: "raw-rtt", Clients: clients, Duration: elapsed, Ops: ops.Load(), Errors: nerr.Load(),
		OpsPerSec: float64(ops.Load()) / elapsed.Seconds(), Latency: Summarize(all)}
	if r.Ops == 0 {
		return r, errors.New("bench: raw rtt: no round trip completed")
	}
	return r, nil
}
