// Command netecho measures raw TCP echo round-trip time and bulk
// throughput over the kernel's TCP/IP or a gVisor netstack, for the
// comparison harness. Results are one JSON object on stdout; progress goes
// to stderr.
//
// Server (prints {"listening":"ADDR"} once it accepts, runs until SIGINT or
// SIGTERM):
//
//	netecho -mode server -stack kernel -listen 10.0.0.1:7000
//	netecho -mode server -stack netstack -tap tap0 -addr 10.0.0.2/24 -listen :7000
//	netecho -mode server -stack netstack -iface eth0 -prepare -addr 10.77.0.11/24 -listen :7000
//
// Client:
//
//	netecho -mode client -stack kernel -connect 10.0.0.2:7000 -count 5000 -bulk 64MiB
//
// -knobs overrides netstack.DefaultKnobs (netstack.ParseKnobs: name=value
// pairs or a JSON object), e.g. -knobs congestion_control=cubic,dispatch=mmap.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/wormspace/wormspace/netstack"
	"github.com/wormspace/wormspace/netstack/netperf"
)

type result struct {
	Stack    string              `json:"stack"`
	Knobs    *netstack.Knobs     `json:"knobs,omitempty"`
	Echo     *netperf.EchoResult `json:"echo,omitempty"`
	BulkSend *netperf.BulkResult `json:"bulk_send,omitempty"`
	BulkRecv *netperf.BulkResult `json:"bulk_recv,omitempty"`
}

func main() {
	var (
		mode    = flag.String("mode", "client", "server or client")
		stackF  = flag.String("stack", "kernel", "kernel or netstack")
		tap     = flag.String("tap", "", "netstack: attach to this TAP interface (created if missing)")
		tapFD   = flag.Int("tap-fd", -1, "netstack: attach to this already-open TAP fd")
		iface   = flag.String("iface", "", "netstack: attach to this interface via AF_PACKET")
		prepare = flag.Bool("prepare", false, "with -iface: run PrepareNICFor first (flush addresses, IPv6 off; GRO and LRO as the knobs need)")
		addr    = flag.String("addr", "", "netstack: address/prefix, e.g. 10.0.0.2/24")
		gw      = flag.String("gw", "", "netstack: default gateway")
		mtu     = flag.Uint("mtu", 0, "netstack: MTU (default: interface MTU or 1500)")
		knobsF  = flag.String("knobs", "", "netstack: knobs overriding the defaults, e.g. dispatch=recvmmsg,processors=1 (or a JSON object)")
		listen  = flag.String("listen", ":7000", "server: listen address")
		connect = flag.String("connect", "", "client: server address host:port")
		count   = flag.Int("count", 5000, "client: echo round trips (0 = skip)")
		size    = flag.Int("size", 64, "client: echo message size")
		bulk    = flag.String("bulk", "64MiB", "client: bulk bytes per direction (0 = skip; suffixes KiB MiB GiB)")
		dirs    = flag.String("dirs", "send,recv", "client: bulk directions")
		timeout = flag.Duration("timeout", 2*time.Minute, "client: overall limit")
		verbose = flag.Bool("v", false, "debug logging")
	)
	flag.Parse()
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(log)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	n, knobs, err := openNetwork(*stackF, *tap, *tapFD, *iface, *prepare, *addr, *gw, uint32(*mtu), *knobsF, log)
	if err != nil {
		fatal(err)
	}
	defer n.Close()

	switch *mode {
	case "server":
		l, err := n.Listen(ctx, "tcp", *listen)
		if err != nil {
			fatal(err)
		}
		json.NewEncoder(os.Stdout).Encode(map[string]string{"listening": l.Addr().String(), "stack": n.String()})
		if err := netperf.Serve(ctx, l, log); err != nil {
			fatal(err)
		}
	case "client":
		if *connect == "" {
			fatal(errors.New("-connect is required in client mode"))
		}
		nb, err := parseSize(*bulk)
		if err != nil {
			fatal(err)
		}
		ctx, cancel := context.WithTimeout(ctx, *timeout)
		defer cancel()
		res := result{Stack: n.String(), Knobs: knobs}
		cfg := netperf.Config{Progress: func(done, total int64) {
			log.Info("bulk", "done_mib", done>>20, "total_mib", total>>20)
		}}
		if *count > 0 {
			c, err := n.DialContext(ctx, "tcp", *connect)
			if err != nil {
				fatal(err)
			}
			r, err := netperf.EchoRun(ctx, c, *size, *count, cfg)
			c.Close()
			if err != nil {
				fatal(err)
			}
			res.Echo = &r
			log.Info("echo", "p50", r.P50, "p99", r.P99)
		}
		for _, d := range strings.Split(*dirs, ",") {
			if nb == 0 {
				break
			}
			c, err := n.DialContext(ctx, "tcp", *connect)
			if err != nil {
				fatal(err)
			}
			var r netperf.BulkResult
			switch d {
			case "send":
				r, err = netperf.BulkSend(ctx, c, nb, cfg)
				res.BulkSend = &r
			case "recv":
				r, err = netperf.BulkRecv(ctx, c, nb, cfg)
				res.BulkRecv = &r
			default:
				err = fmt.Errorf("unknown direction %q", d)
			}
			c.Close()
			if err != nil {
				fatal(err)
			}
			log.Info("bulk", "dir", d, "MB/s", fmt.Sprintf("%.1f", r.MBps))
		}
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		enc.Encode(res)
	default:
		fatal(fmt.Errorf("unknown -mode %q", *mode))
	}
}

func openNetwork(kind, tap string, tapFD int, iface string, prepare bool, addr, gw string, mtu uint32, knobsJSON string, log *slog.Logger) (netstack.Network, *netstack.Knobs, error) {
	c := netstack.Config{Stack: kind, Iface: iface, TAP: tap, TAPFD: tapFD, PrepareIface: prepare, MTU: mtu, Logger: log}
	if kind != "netstack" {
		n, err := netstack.Open(c)
		return n, nil, err
	}
	k, err := netstack.ParseKnobs(knobsJSON)
	if err != nil {
		return nil, nil, fmt.Errorf("-knobs: %w", err)
	}
	c.Knobs = &k
	k.ApplyGoProcs() // the process serves this stack (see Knobs.GoProcs)
	if c.Addr, err = netip.ParsePrefix(addr); err != nil {
		return nil, nil, fmt.Errorf("-addr: %w", err)
	}
	if gw != "" {
		if c.Gateway, err = netip.ParseAddr(gw); err != nil {
			return nil, nil, fmt.Errorf("-gw: %w", err)
		}
	}
	n, err := netstack.Open(c)
	if err != nil {
		return nil, nil, err
	}
	return n, &k, nil
}

func parseSize(s string) (int64, error) {
	mult := int64(1)
	for _, u := range []struct {
		suf string
		m   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if strings.HasSuffix(s, u.suf) {
			s, mult = strings.TrimSuffix(s, u.suf), u.m
			break
		}
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return v * mult, nil
}

func fatal(err error) {
	slog.Error("netecho", "err", err)
	os.Exit(1)
}
