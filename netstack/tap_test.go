package netstack_test

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/wormspace/wormspace/netstack"
	"github.com/wormspace/wormspace/netstack/netperf"
)

// pathTest runs echo and bulk (both directions) from client to a server on
// srvNet at srvAddr, and the same with the roles swapped.
func pathTest(t *testing.T, kern netstack.Network, kernAddr netip.Prefix, st *netstack.Stack) {
	const bulk = 24 << 20
	for _, dir := range []struct {
		name           string
		client, server netstack.Network
		srvAddr        netip.Addr
	}{
		{"kernel-to-netstack", kern, st, st.Addr().Addr()},
		{"netstack-to-kernel", st, kern, kernAddr.Addr()},
	} {
		t.Run(dir.name, func(t *testing.T) {
			port := 7100 + int(nsSeq.Add(1))
			startServer(t, dir.server, fmt.Sprintf(":%d", port))
			addr := fmt.Sprintf("%v:%d", dir.srvAddr, port)
			c := dial(t, dir.client, addr)
			r, err := netperf.EchoRun(context.Background(), c, 64, 2000, netperf.Config{})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("echo 64B x %d: p50 %v p99 %v", r.Count, r.P50, r.P99)
			s, err := netperf.BulkSend(context.Background(), dial(t, dir.client, addr), bulk, netperf.Config{})
			if err != nil {
				t.Fatal(err)
			}
			rv, err := netperf.BulkRecv(context.Background(), dial(t, dir.client, addr), bulk, netperf.Config{})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("bulk %d MiB: client->server %.1f MB/s, server->client %.1f MB/s", bulk>>20, s.MBps, rv.MBps)
		})
	}
}

func TestTAP(t *testing.T) {
	e, st := tapEnv(t)
	pathTest(t, nsKernel{e}, tapKernel, st)
}

func TestPacketSocket(t *testing.T) {
	e, st := vethEnv(t)
	pathTest(t, nsKernel{e}, vethKern, st)
}
