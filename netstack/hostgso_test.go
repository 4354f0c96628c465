package netstack_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/wormspace/wormspace/netstack"
	"github.com/wormspace/wormspace/netstack/netperf"
)

// TestHostGSO moves 16 MiB each way between a kernel client and a netstack
// on a TAP and on AF_PACKET over veth, with and without Knobs.HostGSO, and
// checks the bytes (netperf compares content and CRC) and how many frames
// the stack handed its link. With host GSO the stack's TCP hands the link
// segments of up to 64 KiB, so sending 16 MiB takes a small fraction of
// the frames one per MSS needs; without it, at least one per MSS. On the
// TAP, host GSO also sets the TAP's offloads, so the kernel hands netstack
// coalesced segments: far fewer frames received than MSS-sized ones would
// be. (Over veth the kernel side's TSO does that with or without the knob.)
func TestHostGSO(t *testing.T) {
	requireNetAdmin(t)
	const total = 16 << 20
	const mss = 1460 // the most an Ethernet frame carries of a TCP stream
	perMSS := uint64(total / mss)
	for _, env := range []struct {
		name string
		up   func(tb testing.TB, k netstack.Knobs) (*nsEnv, *netstack.Stack)
		// coalescedIn: frames received are coalesced without the knob too.
		coalescedIn bool
	}{
		{"tap", tapEnvWith, false},
		{"afpacket", func(tb testing.TB, k netstack.Knobs) (*nsEnv, *netstack.Stack) { return vethEnvWith(tb, k, false) }, true},
	} {
		for _, gso := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/host_gso=%v", env.name, gso), func(t *testing.T) {
				k := netstack.DefaultKnobs()
				k.HostGSO = gso
				e, st := env.up(t, k)
				if got := st.Knobs().HostGSO; got != gso {
					t.Fatalf("Stack.Knobs().HostGSO = %v, want %v", got, gso)
				}
				addr := fmt.Sprintf("%v:%d", st.Addr().Addr(), 7400+int(nsSeq.Add(1)))
				startServer(t, st, addr)
				nics := st.Stats().NICs

				rx0 := nics.Rx.Packets.Value()
				if _, err := netperf.BulkSend(context.Background(), dial(t, nsKernel{e}, addr), total, netperf.Config{}); err != nil {
					t.Fatalf("into netstack: %v", err)
				}
				rx := nics.Rx.Packets.Value() - rx0

				tx0 := nics.Tx.Packets.Value()
				if _, err := netperf.BulkRecv(context.Background(), dial(t, nsKernel{e}, addr), total, netperf.Config{}); err != nil {
					t.Fatalf("out of netstack: %v", err)
				}
				tx := nics.Tx.Packets.Value() - tx0
				t.Logf("%d bytes each way: %d frames received (%d MSS-sized would be), %d sent", total, rx, perMSS, tx)

				// Sent frames include the ACKs of the other transfer's
				// tail; data alone needs perMSS without GSO.
				if gso && tx > perMSS/8 {
					t.Errorf("host GSO: %d frames sent for %d bytes, want under %d (segments of 8 MSS or more)", tx, total, perMSS/8)
				}
				if !gso && tx < perMSS {
					t.Errorf("no GSO: %d frames sent for %d bytes, want at least one per MSS (%d)", tx, total, perMSS)
				}
				// Received frames include the ACKs of the outgoing
				// transfer (one per two segments or fewer).
				if (gso || env.coalescedIn) && rx > perMSS/4 {
					t.Errorf("%d frames received for %d bytes, want under %d (coalesced segments)", rx, total, perMSS/4)
				}
				if !gso && !env.coalescedIn && rx < perMSS {
					t.Errorf("no offload: %d frames received for %d bytes, want at least one per MSS (%d)", rx, total, perMSS)
				}
			})
		}
	}
}

// TestTAPFDWithVnetHdr: a TAP fd opened elsewhere with IFF_VNET_HDR (as
// the VM harness opens its TAPs) carries a virtio-net header on every
// frame; the stack reads the fd's flags and speaks the header, with host
// GSO when the knobs ask for it, and refuses a gVisor link, which would
// misparse every frame.
func TestTAPFDWithVnetHdr(t *testing.T) {
	requireNetAdmin(t)
	open := func(e *nsEnv) int {
		var fd int
		if err := e.do(func() error {
			name := ifname("nsvtap")
			tap := &netlink.Tuntap{
				LinkAttrs: netlink.LinkAttrs{Name: name}, Mode: netlink.TUNTAP_MODE_TAP,
				Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR, NonPersist: true, Queues: 1,
			}
			if err := netlink.LinkAdd(tap); err != nil {
				return err
			}
			var err error
			if fd, err = dupFD(tap.Fds[0]); err != nil {
				return err
			}
			return addrUp(name, tapKernel)
		}); err != nil {
			t.Fatal(err)
		}
		return fd
	}
	for _, gso := range []bool{true, false} {
		t.Run(fmt.Sprintf("host_gso=%v", gso), func(t *testing.T) {
			e := newNS(t)
			k := netstack.DefaultKnobs()
			k.HostGSO = gso
			st, err := netstack.New(netstack.TAP(open(e)), netstack.WithAddress(tapStack), netstack.WithKnobs(k))
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if st.Knobs().HostGSO != gso {
				t.Fatalf("Stack.Knobs().HostGSO = %v, want %v", st.Knobs().HostGSO, gso)
			}
			addr := fmt.Sprintf("%v:%d", st.Addr().Addr(), 7500+int(nsSeq.Add(1)))
			startServer(t, st, addr)
			const total = 4 << 20
			tx0 := st.Stats().NICs.Tx.Packets.Value()
			if _, err := netperf.BulkRecv(context.Background(), dial(t, nsKernel{e}, addr), total, netperf.Config{}); err != nil {
				t.Fatalf("out of netstack: %v", err)
			}
			if _, err := netperf.BulkSend(context.Background(), dial(t, nsKernel{e}, addr), total, netperf.Config{}); err != nil {
				t.Fatalf("into netstack: %v", err)
			}
			tx := st.Stats().NICs.Tx.Packets.Value() - tx0
			if perMSS := uint64(total / 1460); gso != (tx < perMSS/4) {
				t.Errorf("host_gso=%v: %d frames sent for 4 MiB each way (%d MSS-sized)", gso, tx, perMSS)
			}
		})
	}
	t.Run("fdbased refused", func(t *testing.T) {
		e := newNS(t)
		k, err := netstack.ParseKnobs("dispatch=recvmmsg")
		if err != nil {
			t.Fatal(err)
		}
		fd := open(e)
		_, err = netstack.New(netstack.TAP(fd), netstack.WithAddress(tapStack), netstack.WithKnobs(k))
		if !errors.Is(err, netstack.ErrBadOption) || !strings.Contains(err.Error(), "IFF_VNET_HDR") {
			t.Fatalf("TAP fd with IFF_VNET_HDR on a fdbased link: %v, want ErrBadOption naming IFF_VNET_HDR", err)
		}
		unix.Close(fd)
	})
}
