package nemesis

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/wormspace/wormspace/netstack"
	"github.com/wormspace/wormspace/worm"
)

// packetFaults are the faults injected at the wormds' netstack links.
var packetFaults = []string{"loss", "delay", "dup", "reorder"}

func isPacketFault(f string) bool {
	for _, p := range packetFaults {
		if f == p {
			return true
		}
	}
	return false
}

// tapNet is the network of a run with packet faults: inside the private
// network namespace, wormd i (1-based) runs `-stack netstack` on a
// persistent TAP device wnt<i> whose kernel side holds 10.78.<i>.1/24
// and whose netstack holds 10.78.<i>.2/24; it starts with -net-faults,
// and the harness sets its link's faults through the control endpoint on
// its metrics listener (kernel TCP on the namespace's loopback, so the
// control path never suffers the faults). The TAPs are persistent so that
// a killed wormd's device, address and routes survive until it restarts
// and attaches again.
type tapNet struct {
	taps    []string
	stacks  []netip.Prefix
	metrics []string
	http    *http.Client
}

// tapSubnet returns wormd i's (0-based) kernel and netstack addresses.
func tapSubnet(i int) (kernel, stack netip.Prefix) {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 78, byte(i + 1), 1}), 24),
		netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 78, byte(i + 1), 2}), 24)
}

// newTapNet makes n TAP devices, or says why packet faults cannot run.
func newTapNet(n int, wormd string) (*tapNet, error) {
	if !InPrivateNetns() {
		return nil, errors.New("needs the harness in its own network namespace (worm nemesis re-executes itself in one when run as root; tests do the same)")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		return nil, fmt.Errorf("no TAP devices: %w", err)
	}
	// A wormd built before -net-faults existed would refuse the flag at
	// every start; say so once instead.
	out, _ := exec.Command(wormd, "-h").CombinedOutput()
	if !bytes.Contains(out, []byte("-net-faults")) {
		return nil, fmt.Errorf("%s has no -net-faults flag (rebuild it: make build)", wormd)
	}
	t := &tapNet{http: &http.Client{Timeout: 5 * time.Second}}
	for i := range n {
		name := fmt.Sprintf("wnt%d", i+1)
		if err := makePersistentTAP(name); err != nil {
			t.close()
			return nil, err
		}
		t.taps = append(t.taps, name)
		kern, st := tapSubnet(i)
		// IPv6 off: the kernel side would only send router
		// solicitations netstack (IPv4 only) drops.
		_ = os.WriteFile("/proc/sys/net/ipv6/conf/"+name+"/disable_ipv6", []byte("1"), 0o644)
		if err := addrUp(name, kern); err != nil {
			t.close()
			return nil, err
		}
		t.stacks = append(t.stacks, st)
	}
	ports, err := freeLoopbackPorts(n)
	if err != nil {
		t.close()
		return nil, err
	}
	for _, p := range ports {
		t.metrics = append(t.metrics, net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
	}
	return t, nil
}

// makePersistentTAP creates TAP name (IFF_TAP|IFF_NO_PI, the flags
// wormd's netstack attaches with) and makes it outlive this descriptor.
func makePersistentTAP(name string) error {
	f, err := netstack.OpenTAP(name)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), unix.TUNSETPERSIST, 1); err != nil {
		return fmt.Errorf("TUNSETPERSIST %s: %w", name, err)
	}
	return nil
}

func addrUp(name string, p netip.Prefix) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	a, err := netlink.ParseAddr(p.String())
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(l, a); err != nil {
		return fmt.Errorf("address %v on %s: %w", p, name, err)
	}
	return netlink.LinkSetUp(l)
}

func freeLoopbackPorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// hosts are the wormds' listen addresses.
func (t *tapNet) hosts() []string {
	var h []string
	for _, p := range t.stacks {
		h = append(h, p.Addr().String())
	}
	return h
}

// nodeArgs are each wormd's netstack flags.
func (t *tapNet) nodeArgs(seed uint64) [][]string {
	var out [][]string
	for i := range t.taps {
		out = append(out, []string{"-stack", "netstack", "-tap", t.taps[i], "-addr", t.stacks[i].String(),
			"-metrics", t.metrics[i], "-net-faults", "-net-faults-seed", strconv.FormatUint(seed+uint64(i)+1, 10)})
	}
	return out
}

// faultState is wormd's /debug/netfaults answer.
type faultState struct {
	Config netstack.FaultConfig `json:"config"`
	Stats  netstack.FaultStats  `json:"stats"`
}

// set sets wormd i's (0-based) link faults.
func (t *tapNet) set(ctx context.Context, i int, c netstack.FaultConfig) (faultState, error) {
	b, err := json.Marshal(c)
	if err != nil {
		return faultState{}, err
	}
	return t.call(ctx, i, http.MethodPut, b)
}

// stats reads wormd i's fault configuration and counters.
func (t *tapNet) stats(ctx context.Context, i int) (faultState, error) {
	return t.call(ctx, i, http.MethodGet, nil)
}

func (t *tapNet) call(ctx context.Context, i int, method string, body []byte) (faultState, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://"+t.metrics[i]+"/debug/netfaults", bytes.NewReader(body))
	if err != nil {
		return faultState{}, err
	}
	resp, err := t.http.Do(req)
	if err != nil {
		return faultState{}, fmt.Errorf("wormd %d fault control: %w", i+1, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return faultState{}, fmt.Errorf("wormd %d fault control: %s: %s", i+1, resp.Status, strings.TrimSpace(string(b)))
	}
	var st faultState
	if err := json.Unmarshal(b, &st); err != nil {
		return faultState{}, fmt.Errorf("wormd %d fault control: %w", i+1, err)
	}
	return st, nil
}

// flushNeighbors forgets the kernel's ARP entries on wormd i's TAP: a
// restarted wormd's netstack has a new MAC address, and the kernel would
// otherwise send to the old one until its entry expires (tens of seconds
// for a REACHABLE entry), where a real host would have sent gratuitous
// ARP.
func (t *tapNet) flushNeighbors(i int) error {
	l, err := netlink.LinkByName(t.taps[i])
	if err != nil {
		return err
	}
	ns, err := netlink.NeighList(l.Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		return err
	}
	for _, n := range ns {
		if err := netlink.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("flush neighbor %v on %s: %w", n.IP, t.taps[i], err)
		}
	}
	return nil
}

// close deletes the TAP devices.
func (t *tapNet) close() {
	for _, name := range t.taps {
		if l, err := netlink.LinkByName(name); err == nil {
			_ = netlink.LinkDel(l)
		}
	}
	t.taps = nil
}

// packetRates draws a packet fault's rates from the seed.
func packetRates(rng *rand.Rand, f string) netstack.FaultRates {
	switch f {
	case "loss":
		return netstack.FaultRates{Loss: 0.05 + 0.25*rng.Float64()}
	case "delay":
		d := 2*time.Millisecond + time.Duration(rng.Int64N(int64(38*time.Millisecond)))
		return netstack.FaultRates{Delay: d, Jitter: time.Duration(rng.Int64N(int64(d/2) + 1))}
	case "dup":
		return netstack.FaultRates{Duplicate: 0.1 + 0.4*rng.Float64()}
	case "reorder":
		return netstack.FaultRates{Reorder: 0.1 + 0.4*rng.Float64()}
	}
	panic("nemesis: not a packet fault: " + f)
}

// lossyPhase: with 10% loss, duplication and reordering and a jittered
// delay on every wormd's link, writes still succeed; with every packet of
// two wormds' links dropped, operations fail as unavailable; clearing the
// faults restores service by itself, and the time it takes is recorded.
func (h *harness) lossyPhase(ctx context.Context) error {
	lossy := netstack.BothWays(netstack.FaultRates{Loss: 0.1, Duplicate: 0.1, Reorder: 0.1, Delay: time.Millisecond, Jitter: time.Millisecond})
	h.logf("availability: %s on every wormd's link", lossy.Egress)
	var before netstack.FaultStats
	for i := range h.lc.Nodes {
		st, err := h.tap.set(ctx, i, lossy)
		if err != nil {
			return err
		}
		before = addStats(before, st.Stats)
	}
	for _, f := range packetFaults {
		h.fault(f)
	}
	const writes = 5
	ok := 0
	var last error
	for range writes {
		if last = retryUntil(ctx, 10*time.Second, h.probeWrite); last == nil {
			ok++
		}
	}
	var after netstack.FaultStats
	for i := range h.lc.Nodes {
		st, err := h.tap.stats(ctx, i)
		if err != nil {
			return err
		}
		after = addStats(after, st.Stats)
	}
	dropped := after.Egress.Dropped + after.Ingress.Dropped - before.Egress.Dropped - before.Ingress.Dropped
	dup := after.Egress.Duplicated + after.Ingress.Duplicated - before.Egress.Duplicated - before.Ingress.Duplicated
	h.verdict("lossy", ok == writes && dropped > 0 && dup > 0,
		"%d of %d writes succeeded (each retried up to 10s) with %s on every link: %d packets dropped, %d duplicated meanwhile (last error: %v)",
		ok, writes, lossy.Egress, dropped, dup, kindOrNil(last))

	h.logf("availability: wormds 2 and 3 drop every packet at their links")
	if err := h.clearLinks(ctx); err != nil {
		return err
	}
	black := netstack.BothWays(netstack.FaultRates{Loss: 1})
	for _, i := range []int{1, 2} {
		if _, err := h.tap.set(ctx, i, black); err != nil {
			return err
		}
	}
	h.fault("loss")
	h.fault("loss")
	perr := h.probeWrite(ctx)
	h.verdict("two-lost", errors.Is(perr, worm.ErrUnavailable), "write with 2 of 3 links losing every packet: %v (want unavailable)", kindOrNil(perr))
	t0 := time.Now()
	if err := h.clearLinks(ctx); err != nil {
		return err
	}
	if err := h.probeUntil(ctx); err != nil {
		h.verdict("heal-loss", false, "no write %v after the links were cleared: %v", healWithin, err)
	} else {
		d := time.Since(t0)
		h.recovered("2 of 3 links losing every packet: cleared to first write", d)
		h.verdict("heal-loss", true, "service resumed %v after the links were cleared", d.Round(time.Millisecond))
	}
	return nil
}
