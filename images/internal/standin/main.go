// Command standin is a stand-in for wormd in image tests: it has wormd's
// guest-facing contract (PID 1 runs the guest init; otherwise it takes
// wormd's flags, serves TCP on the chosen stack and writes "ready ADDR" to
// the ready fd) but no registers. Each connection gets one greeting line
//
//	standin id=N stack=S boots=K
//
// (K counts starts recorded in -data, which shows that the data disk is
// mounted and writable) and then an echo of whatever it sends.
//
// It exists so that images can be built and booted before cmd/wormd has
// its PID-1 hook, and so that image tests do not depend on the server.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/wormspace/wormspace/kernel/guest"
	"github.com/wormspace/wormspace/netstack"
)

func main() {
	if os.Getpid() == 1 {
		guest.Main()
	}
	var (
		id      = flag.Int("id", 1, "acceptor id")
		data    = flag.String("data", "", "data directory")
		listen  = flag.String("listen", "127.0.0.1:7070", "listen address")
		stack   = flag.String("stack", "kernel", "kernel or netstack")
		iface   = flag.String("iface", "", "netstack: interface")
		addr    = flag.String("addr", "", "netstack: address/prefix")
		gw      = flag.String("gw", "", "netstack: gateway")
		readyFD = flag.Int("ready-fd", -1, "write 'ready ADDR' here once listening")
		_       = flag.Bool("volatile", false, "ignored")
		_       = flag.String("key-hex", "", "ignored")
		_       = flag.Int("segment-size", 0, "ignored")
	)
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("prog", "standin")
	if err := run(log, *id, *data, *listen, *stack, *iface, *addr, *gw, *readyFD); err != nil {
		log.Error("exit", "err", err)
		os.Exit(1)
	}
}

func run(log *slog.Logger, id int, data, listen, stack, iface, addr, gw string, readyFD int) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	boots := 0
	if data != "" {
		if err := os.MkdirAll(data, 0o755); err != nil {
			return err
		}
		p := filepath.Join(data, "boots")
		b, _ := os.ReadFile(p)
		boots, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		boots++
		if err := os.WriteFile(p, []byte(strconv.Itoa(boots)+"\n"), 0o644); err != nil {
			return err
		}
	}
	cfg := netstack.Config{Stack: stack, Iface: iface, TAPFD: -1, Logger: log}
	if stack == "netstack" {
		p, err := netip.ParsePrefix(addr)
		if err != nil {
			return fmt.Errorf("-addr: %w", err)
		}
		cfg.Addr = p
		if gw != "" {
			g, err := netip.ParseAddr(gw)
			if err != nil {
				return fmt.Errorf("-gw: %w", err)
			}
			cfg.Gateway = g
		}
	}
	n, err := netstack.Open(cfg)
	if err != nil {
		return err
	}
	defer n.Close()
	l, err := n.Listen(ctx, "tcp", listen)
	if err != nil {
		return err
	}
	defer l.Close()
	if readyFD >= 0 {
		f := os.NewFile(uintptr(readyFD), "ready")
		fmt.Fprintf(f, "ready %s\n", l.Addr())
		f.Close()
	}
	log.Info("listening", "addr", l.Addr(), "stack", n.String(), "boots", boots)
	go func() { <-ctx.Done(); l.Close() }()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go func(c net.Conn) {
			defer c.Close()
			fmt.Fprintf(c, "standin id=%d stack=%s boots=%d\n", id, stack, boots)
			io.Copy(c, c)
		}(c)
	}
}
