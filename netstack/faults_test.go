package netstack_test

import (
	"context"
	"fmt"
	"math"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/wormspace/wormspace/netstack"
	"github.com/wormspace/wormspace/netstack/netperf"
)

// lossy is the fault mix of the TCP tests: 10% loss, 10% duplication and
// 10% reordering each way, and a little delay with jitter (which reorders
// too).
var lossy = netstack.BothWays(netstack.FaultRates{
	Loss: 0.1, Duplicate: 0.1, Reorder: 0.1,
	Delay: 200 * time.Microsecond, Jitter: 200 * time.Microsecond,
})

// transferUnderFaults moves checksummed byte streams both ways and runs
// echo round trips through c's server at addr, with every connection's
// bytes checked by netperf.
// On failure it reports the server stack's TCP counters and the faults'.
func transferUnderFaults(t *testing.T, client netstack.Network, addr string, server *netstack.Stack, f *netstack.Faults) {
	t.Helper()
	const bulk = 256 << 10
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	// A stall is only a failure past what backoff allows. With 10% loss
	// each way a retransmission and its ACK both get through with p ≈
	// 0.81, so k timeouts in a row have p ≈ 0.19^k, and from gVisor's
	// initial RTO of 1 s (a connection with no RTT sample yet) they add up
	// to 2^k - 1 seconds: five, 31 s, happened once in CI; six are 63 s.
	cfg := netperf.Config{StallTimeout: 70 * time.Second}
	fail := func(what string, err error) {
		t.Helper()
		tcp := server.Stats().TCP
		t.Fatalf("%s: %v\nserver TCP: retransmits %d, timeouts %d, fast retransmits %d, SACK recoveries %d, TLP recoveries %d, segments sent %d, received %d, invalid %d\nfaults: %+v",
			what, err, tcp.Retransmits.Value(), tcp.Timeouts.Value(), tcp.FastRetransmit.Value(), tcp.SACKRecovery.Value(), tcp.TLPRecovery.Value(),
			tcp.SegmentsSent.Value(), tcp.ValidSegmentsReceived.Value(), tcp.InvalidSegmentsReceived.Value(), f.Stats())
	}
	s, err := netperf.BulkSend(ctx, dial(t, client, addr), bulk, cfg)
	if err != nil {
		fail("bulk send", err)
	}
	r, err := netperf.BulkRecv(ctx, dial(t, client, addr), bulk, cfg)
	if err != nil {
		fail("bulk receive", err)
	}
	e, err := netperf.EchoRun(ctx, dial(t, client, addr), 200, 40, cfg)
	if err != nil {
		fail("echo", err)
	}
	tcp := server.Stats().TCP
	t.Logf("under faults: send %.2f MB/s, receive %.2f MB/s, echo p50 %v p99 %v; server retransmits %d, timeouts %d",
		s.MBps, r.MBps, e.P50, e.P99, tcp.Retransmits.Value(), tcp.Timeouts.Value())
}

// quiesce waits until f holds nothing and its counters stop moving.
func quiesce(t *testing.T, f *netstack.Faults, also func() uint64) netstack.FaultStats {
	t.Helper()
	var last netstack.FaultStats
	var lastAlso uint64
	stable := 0
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		s := f.Stats()
		a := also()
		if s == last && a == lastAlso && s.Egress.Pending == 0 && s.Ingress.Pending == 0 {
			if stable++; stable == 4 {
				return s
			}
		} else {
			stable = 0
		}
		last, lastAlso = s, a
	}
	t.Fatalf("traffic did not settle: %+v", last)
	return last
}

// checkCounters checks the fault counters' own arithmetic and that the
// faults happened at about the configured rates.
func checkCounters(t *testing.T, s netstack.FaultStats) {
	t.Helper()
	for _, d := range []struct {
		name string
		c    netstack.FaultCounters
	}{{"egress", s.Egress}, {"ingress", s.Ingress}} {
		c := d.c
		t.Logf("%s: %+v", d.name, c)
		if c.Emitted != c.Packets-c.Dropped+c.Duplicated {
			t.Errorf("%s: emitted %d != packets %d - dropped %d + duplicated %d", d.name, c.Emitted, c.Packets, c.Dropped, c.Duplicated)
		}
		if c.Packets < 300 {
			t.Fatalf("%s: only %d packets", d.name, c.Packets)
		}
		// 10% each, within 5 standard deviations of a binomial draw.
		for _, k := range []struct {
			what  string
			n, of uint64
		}{{"dropped", c.Dropped, c.Packets}, {"duplicated", c.Duplicated, c.Packets - c.Dropped}} {
			mean, sd := 0.1*float64(k.of), math.Sqrt(float64(k.of)*0.1*0.9)
			if math.Abs(float64(k.n)-mean) > 5*sd {
				t.Errorf("%s: %s %d of %d, configured 10%% (expected %.0f ± %.0f)", d.name, k.what, k.n, k.of, mean, 5*sd)
			}
		}
		if c.Reordered == 0 || c.Delayed == 0 {
			t.Errorf("%s: nothing reordered or delayed", d.name)
		}
	}
}

// TestFaultsPipeTCP: over the in-process link, with 10% loss, duplication
// and reordering both ways on one stack's link, TCP delivers every byte
// intact, and the fault counters match what the two stacks' NICs counted.
func TestFaultsPipeTCP(t *testing.T) {
	f := netstack.NewFaults(42)
	la, lb := netstack.Pipe()
	a, err := netstack.New(la, netstack.WithAddress(addrA), netstack.WithFaults(f))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := netstack.New(lb, netstack.WithAddress(addrB))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := f.Set(lossy); err != nil {
		t.Fatal(err)
	}
	srv := startServer(t, a, "192.168.77.1:7001")
	transferUnderFaults(t, b, srv, a, f)
	s := quiesce(t, f, func() uint64 { return b.Stats().NICs.Rx.Packets.Value() })
	checkCounters(t, s)
	as, bs := a.Stats(), b.Stats()
	// The pipe loses nothing: what a's faults let out is what b
	// received, what b sent is what reached a's faults, and what they
	// let in is what a's NIC received.
	for _, c := range []struct {
		what      string
		got, want uint64
	}{
		{"a's NIC sent / egress packets", as.NICs.Tx.Packets.Value(), s.Egress.Packets},
		{"b's NIC received / egress emitted", bs.NICs.Rx.Packets.Value(), s.Egress.Emitted},
		{"b's NIC sent / ingress packets", bs.NICs.Tx.Packets.Value(), s.Ingress.Packets},
		{"a's NIC received / ingress emitted", as.NICs.Rx.Packets.Value(), s.Ingress.Emitted},
	} {
		if c.got != c.want {
			t.Errorf("%s: %d, want %d", c.what, c.got, c.want)
		}
	}
	if as.TCP.Retransmits.Value() == 0 || bs.TCP.Retransmits.Value() == 0 {
		t.Errorf("no retransmissions under 10%% loss (a %d, b %d)", as.TCP.Retransmits.Value(), bs.TCP.Retransmits.Value())
	}
	// Faults off: the link is clean again.
	if err := f.Set(netstack.FaultConfig{}); err != nil {
		t.Fatal(err)
	}
	before := f.Stats()
	if _, err := netperf.EchoRun(context.Background(), dial(t, b, srv), 64, 200, netperf.Config{}); err != nil {
		t.Fatal(err)
	}
	after := f.Stats()
	if after.Egress.Dropped != before.Egress.Dropped || after.Ingress.Duplicated != before.Ingress.Duplicated || after.Egress.Packets == before.Egress.Packets {
		t.Fatalf("faults off but counters moved: %+v -> %+v", before, after)
	}
}

// TestFaultsTAP: a netstack on a TAP device in a private namespace, with
// the fault mix on its link, serves a kernel TCP client: every byte
// arrives intact, and the fault counters match the kernel's counters of
// the TAP device (what netstack wrote is what the kernel received, what
// the kernel sent is what reached the faults).
func TestFaultsTAP(t *testing.T) {
	e := newNS(t)
	f := netstack.NewFaults(7)
	name := ifname("nsflt")
	kern, stackAddr := netip.MustParsePrefix("10.97.0.1/24"), netip.MustParsePrefix("10.97.0.2/24")
	var st *netstack.Stack
	if err := e.do(func() error {
		tf, err := netstack.OpenTAP(name)
		if err != nil {
			return err
		}
		fd, err := dupFD(tf)
		if err != nil {
			return err
		}
		if err := addrUp(name, kern); err != nil {
			return err
		}
		st, err = netstack.New(netstack.TAP(fd), netstack.WithAddress(stackAddr), netstack.WithFaults(f))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	tapStats := func() (rx, tx, txDropped uint64) {
		e.do(func() error {
			l, err := netlink.LinkByName(name)
			if err != nil {
				return err
			}
			s := l.Attrs().Statistics
			rx, tx, txDropped = s.RxPackets, s.TxPackets, s.TxDropped
			return nil
		})
		return
	}
	if err := f.Set(lossy); err != nil {
		t.Fatal(err)
	}
	srv := startServer(t, st, fmt.Sprintf("%v:7002", stackAddr.Addr()))
	transferUnderFaults(t, nsKernel{e}, srv, st, f)
	s := quiesce(t, f, func() uint64 { rx, tx, _ := tapStats(); return rx + tx })
	checkCounters(t, s)
	rx, tx, txDropped := tapStats()
	if rx != s.Egress.Emitted {
		t.Errorf("kernel received %d frames on %s, netstack's faults let out %d", rx, name, s.Egress.Emitted)
	}
	if tx-txDropped != s.Ingress.Packets {
		t.Errorf("kernel sent %d frames on %s (%d dropped), netstack's faults saw %d", tx, name, txDropped, s.Ingress.Packets)
	}
	if r := st.Stats().TCP.Retransmits.Value(); r == 0 {
		t.Error("netstack retransmitted nothing under 10% loss")
	}
}
