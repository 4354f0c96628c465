package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/client"
)

func init() {
	register(&command{
		name:    "replace",
		summary: "replace a failed wormserver online: replace -old ADDR -new ADDR",
		run:     cmdReplace,
	})
}

const replaceUsage = `replace [flags] -old ADDR -new ADDR
       worm replace [flags]                  (finish a change left half done)

Replaces the member ADDR (-old: its address, or its acceptor id) of the
cluster reached through -servers by a new wormd (-new), which must have been
started with -join on an empty data directory. Clients keep working: they
move to the new configuration by themselves. The command prints each step
and, at the end, the WORM_SERVERS line of the new configuration.

It seals the current configuration at a majority of its members, activates
the next one at the members it keeps, copies the state of a majority of the
old members into the new one (in bounded chunks) and activates it. Run again
(with or without -old/-new), it finishes whatever an earlier, interrupted
run left undone. Exit codes: 0 done, 1 error, 6 not enough members
reachable.

flags:`

func cmdReplace(args []string) error {
	var sf spaceFlags
	fs := flag.NewFlagSet("replace", flag.ContinueOnError)
	sf.add(fs)
	old := fs.String("old", "", "the member to replace: its address (as the configuration or -servers lists it) or its acceptor id")
	newMember := fs.String("new", "", "the new member's address (a wormd started with -join)")
	chunk := fs.Int("chunk", 1<<20, "bytes per chunk of the state transfer")
	fs.Lookup("timeout").DefValue = "10m"
	fs.Lookup("timeout").Value.Set("10m") // a state transfer takes as long as the state is large
	if _, err := parseArgs(fs, args, 0, replaceUsage); err != nil {
		return err
	}
	if sf.servers == "" {
		return &exitError{code: exitFailure, msg: "no servers: give -servers a,b,c or set WORM_SERVERS"}
	}
	key, err := sf.key()
	if err != nil {
		return err
	}
	var servers []string
	for _, s := range strings.Split(sf.servers, ",") {
		if s = strings.TrimSpace(s); s != "" {
			servers = append(servers, s)
		}
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if os.Getenv("WORM_DEBUG") != "" {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, sf.timeout)
	defer cancel()
	start := time.Now()
	cfg, err := client.Replace(ctx, client.Replacement{
		Servers:    servers,
		Key:        key,
		ID:         sf.id,
		Old:        *old,
		New:        *newMember,
		ChunkBytes: *chunk,
		Logger:     logger,
		Progress:   func(line string) { fmt.Fprintf(os.Stderr, "worm replace: %s\n", line) },
	})
	if err != nil {
		code := exitFailure
		if errors.Is(err, worm.ErrUnavailable) {
			code = exitUnavail
		}
		return &exitError{code: code, msg: oneLine(err.Error())}
	}
	addrs := make([]string, len(cfg.Members))
	for i, m := range cfg.Members {
		addrs[i] = m.Addr
	}
	fmt.Fprintf(os.Stderr, "worm replace: done in %v; the configuration is %v\n", time.Since(start).Round(time.Millisecond), cfg)
	fmt.Printf("export WORM_SERVERS=%s\n", strings.Join(addrs, ","))
	return nil
}
