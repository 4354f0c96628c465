package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/wormspace/wormspace/worm/sockio"
)

// RawQuorumRTT measures the floor of one quorum round trip: each of
// clients closed-loop clients sends a size-byte message to an echo server
// at every address of addrs and waits for the first quorum of the echoes,
// as a write on a captured segment sends its accept to every wormserver
// and waits for a majority. The shape is the client library's: one
// connection per server, a reader goroutine per connection that hands
// each reply to the waiting caller, and the late replies drained in the
// background. Nothing else happens, so the ratio of a write's latency to
// this one is what the protocol, the server and the storage cost beyond
// the communication a quorum write cannot avoid; with the echoes in
// separate processes it pays the same cross-process wake-ups as the
// write. Its Result has Workload "raw-quorum-rtt"; quorum <= 0 means a
// majority of addrs.
func RawQuorumRTT(ctx context.Context, d Dialer, addrs []string, quorum, clients, size int, duration time.Duration) (Result, error) {
	if len(addrs) == 0 {
		return Result{}, errors.New("bench: raw quorum rtt: no address")
	}
	if quorum <= 0 {
		quorum = len(addrs)/2 + 1
	}
	if quorum > len(addrs) {
		return Result{}, fmt.Errorf("bench: raw quorum rtt: quorum %d of %d servers", quorum, len(addrs))
	}
	if clients <= 0 {
		clients = 1
	}
	if size < 8 {
		size = 8 // room for the round number
	}
	type echo struct {
		round uint64
		err   error
	}
	type client struct {
		conns   []io.ReadWriter // sockio.ReadWriter of each connection
		replies chan echo
		out     []byte
		round   uint64
	}
	cls := make([]*client, clients)
	var all []net.Conn
	done := make(chan struct{}) // readers stop handing replies over
	defer func() {
		close(done)
		for _, c := range all {
			c.Close()
		}
	}()
	for i := range cls {
		cl := &client{replies: make(chan echo, 4*len(addrs)), out: make([]byte, size)}
		for _, a := range addrs {
			c, err := d.DialContext(ctx, "tcp", a)
			if err != nil {
				return Result{}, fmt.Errorf("bench: raw quorum rtt dial %s: %w", a, err)
			}
			if tc, ok := c.(*net.TCPConn); ok {
				tc.SetNoDelay(true)
			}
			all = append(all, c)
			rw := sockio.ReadWriter(c)
			cl.conns = append(cl.conns, rw)
			go func() {
				in := make([]byte, size)
				for {
					_, err := io.ReadFull(rw, in)
					e := echo{round: binary.LittleEndian.Uint64(in), err: err}
					select {
					case cl.replies <- e:
					case <-done:
						return
					}
					if err != nil {
						return
					}
				}
			}()
		}
		cls[i] = cl
	}
	op := func(ctx context.Context, worker int) error {
		cl := cls[worker]
		cl.round++
		binary.LittleEndian.PutUint64(cl.out, cl.round)
		for _, c := range cl.conns {
			if _, err := c.Write(cl.out); err != nil {
				return err
			}
		}
		for got := 0; got < quorum; {
			select {
			case e := <-cl.replies:
				if e.err != nil {
					return e.err
				}
				if e.round == cl.round {
					got++
				}
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	}
	r, err := Loop(ctx, LoopConfig{Workload: "raw-quorum-rtt", Clients: clients, Duration: duration, Warmup: 200 * time.Millisecond}, op)
	if err == nil && r.Ops == 0 {
		err = errors.New("bench: raw quorum rtt: no round trip completed")
	}
	return r, err
}
