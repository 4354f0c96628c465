package netstack_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/wormspace/wormspace/netstack/netperf"
)

// A Linux client that sent a lot on a connection netstack closed first,
// and dials again from the same source port at once, gets through: its SYN
// (whose sequence number is below where the old connection ended) is
// refused while netstack holds the 4-tuple in TIME_WAIT (gVisor reopens
// only on a higher sequence number, and drops the RSTs), and TIME_WAIT is
// short (Knobs.TimeWaitMillis, 3 s), so a retransmitted SYN is accepted.
// With gVisor's 60 s the dial times out: that is what made TestSoakTAP
// fail now and then.
func TestTimeWaitReopen(t *testing.T) {
	for _, c := range []struct {
		name     string
		timeWait int
		reopens  bool
	}{{"default", -1, true}, {"gvisor-60s", 0, false}} {
		t.Run(c.name, func(t *testing.T) {
			k := knobs(t)
			if c.timeWait >= 0 {
				k.TimeWaitMillis = c.timeWait
			}
			e, st := tapEnvWith(t, k)
			startServer(t, st, ":7201")
			addr := fmt.Sprintf("%v:7201", tapStack.Addr())
			dialFrom := func(port int, timeout time.Duration) (c net.Conn, err error) {
				d := net.Dialer{Timeout: timeout, LocalAddr: &net.TCPAddr{IP: tapKernel.Addr().AsSlice(), Port: port},
					Control: func(_, _ string, rc syscall.RawConn) error {
						var serr error
						rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1) })
						return serr
					}}
				err = e.do(func() error {
					c, err = d.Dial("tcp", addr)
					return err
				})
				return c, err
			}
			opened := time.Now() // about when Linux picked the old ISN
			c1, err := dialFrom(0, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			port := c1.LocalAddr().(*net.TCPAddr).Port
			// 64 MiB: the old connection ends about 67 million past its
			// ISN, ahead of the ISN Linux picks for the same 4-tuple for
			// the next 4 s. The server answers and closes first.
			if _, err := netperf.BulkSend(context.Background(), c1, 64<<20, netperf.Config{StallTimeout: 5 * time.Second}); err != nil {
				t.Fatal(err)
			}
			// The server's FIN first (EOF here), so that netstack's side
			// is the one in TIME_WAIT.
			c1.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, err := c1.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
				t.Fatalf("after the transfer: read %d bytes, %v; want EOF (the server closes first)", n, err)
			}
			c1.Close()
			time.Sleep(100 * time.Millisecond)
			start := time.Now()
			if age := start.Sub(opened); !c.reopens && age > 3*time.Second {
				// The new ISN is then past the old connection's end
				// (15.6 million a second against 67 million bytes).
				t.Logf("the transfer took %v, too long for the new SYN to fall below the old connection's end; nothing to show", age.Round(time.Millisecond))
				return
			}
			c2, err := dialFrom(port, 5*time.Second)
			switch {
			case c.reopens && err != nil:
				t.Fatalf("dial again from port %d: %v after %v; want a connection once netstack's TIME_WAIT (%d ms) ends", port, err, time.Since(start).Round(time.Millisecond), k.TimeWaitMillis)
			case c.reopens:
				t.Logf("reconnected from port %d after %v", port, time.Since(start).Round(time.Millisecond))
				c2.Close()
			case err == nil:
				c2.Close()
				t.Fatalf("with gVisor's 60 s TIME_WAIT a dial from port %d reopened the 4-tuple: gVisor now accepts such a SYN, and Knobs.TimeWaitMillis may no longer be needed", port)
			case !isTimeout(err):
				t.Fatalf("dial again from port %d: %v; want a timeout", port, err)
			}
		})
	}
}

// isTimeout reports a dial that ran out of time (a net.Error that says so).
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
