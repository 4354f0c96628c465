package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/wormspace/wormspace/apps/wormpaxos"
	"github.com/wormspace/wormspace/apps/wormpaxos/kv"
)

func init() {
	register(&command{
		name:    "kv",
		summary: "a replicated key-value store on WormPaxos: serve, put, get, delete",
		run:     cmdKV,
	})
}

const kvUsage = `usage: worm kv SUBCOMMAND [flags] [args]

  serve -index I      run replica I of the store; it serves clients on the
                      I-th address of -replicas and replicates through
                      WormSpace (-servers / WORM_SERVERS)
  put KEY VALUE       set KEY (linearizable, exactly once)
  get KEY             print KEY's value (linearizable; exit 2 if absent)
  delete KEY          remove KEY

-replicas (or $WORM_KV) lists every replica's client address, comma
separated, in index order; clients try them in turn. -policy chooses how
replicas share the log: sticky (a leader; others forward to it), rotating
(Mencius-style: replica r owns segments r mod n) or leaderless.`

func cmdKV(args []string) error {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, kvUsage)
		return errUsage
	}
	sub, rest := args[0], args[1:]
	var sf spaceFlags
	fs := flag.NewFlagSet("kv "+sub, flag.ContinueOnError)
	sf.add(fs)
	replicas := fs.String("replicas", os.Getenv("WORM_KV"), "replica client addresses, comma separated, in index order (default $WORM_KV)")
	addrs := func() ([]string, error) {
		var out []string
		for _, a := range strings.Split(*replicas, ",") {
			if a = strings.TrimSpace(a); a != "" {
				out = append(out, a)
			}
		}
		if len(out) == 0 {
			return nil, &exitError{code: exitFailure, msg: "no replicas: give -replicas a,b,c or set WORM_KV"}
		}
		return out, nil
	}
	switch sub {
	case "serve":
		index := fs.Int("index", 0, "this replica's index in -replicas")
		policy := fs.String("policy", "sticky", "sticky, rotating or leaderless")
		logBase := fs.Uint64("log", 1<<36, "first segment of the replicated log")
		logLevel := fs.String("log-level", "warn", "debug, info, warn or error")
		if _, err := parseArgs(fs, rest, 0, "kv serve -index I [flags]"); err != nil {
			return err
		}
		as, err := addrs()
		if err != nil {
			return err
		}
		if *index < 0 || *index >= len(as) {
			return &exitError{code: exitFailure, msg: fmt.Sprintf("-index %d: want 0..%d", *index, len(as)-1)}
		}
		pol, err := wormpaxos.ParsePolicy(*policy)
		if err != nil {
			return &exitError{code: exitFailure, msg: err.Error()}
		}
		ids := map[string]string{}
		for i, a := range as {
			ids[fmt.Sprintf("kv-replica-%d", i)] = a
		}
		sf.id = fmt.Sprintf("kv-replica-%d", *index)
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		dctx, cancel := context.WithTimeout(ctx, sf.timeout)
		cl, err := sf.dial(dctx)
		cancel()
		if err != nil {
			return err
		}
		defer cl.Close()
		var lvl slog.Level
		if err := lvl.UnmarshalText([]byte(*logLevel)); err != nil {
			return &exitError{code: exitFailure, msg: fmt.Sprintf("-log-level: %v", err)}
		}
		logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
		slog.SetDefault(logger)
		rep, err := wormpaxos.New(cl, kv.NewStore(), wormpaxos.Config{Policy: pol, LogBase: *logBase,
			Replicas: len(as), Index: *index, Logger: logger, Forward: kv.Forwarder(&net.Dialer{}, ids)})
		if err != nil {
			return &exitError{code: exitFailure, msg: err.Error()}
		}
		l, err := net.Listen("tcp", as[*index])
		if err != nil {
			return err
		}
		runErr := make(chan error, 1)
		go func() { runErr <- rep.Run(ctx) }()
		fmt.Fprintf(os.Stderr, "worm kv: replica %d (%s policy) serving on %s\n", *index, pol, l.Addr())
		go kv.Serve(ctx, rep, l)
		select {
		case err := <-runErr:
			if ctx.Err() == nil {
				return err
			}
		case <-ctx.Done():
			<-runErr
		}
		return nil
	case "put", "get", "delete":
		want := map[string]int{"put": 2, "get": 1, "delete": 1}[sub]
		pos, err := parseArgs(fs, rest, want, "kv "+sub+" [flags] KEY"+map[bool]string{true: " VALUE"}[sub == "put"])
		if err != nil {
			return err
		}
		as, err := addrs()
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), sf.timeout)
		defer cancel()
		c, err := kv.Dial(ctx, &net.Dialer{Timeout: 2 * time.Second}, as...)
		if err != nil {
			return err
		}
		switch sub {
		case "put":
			if err := c.Put(ctx, pos[0], pos[1]); err != nil {
				return classify(err)
			}
		case "get":
			v, ok, err := c.Get(ctx, pos[0])
			if err != nil {
				return classify(err)
			}
			if !ok {
				return &exitError{code: exitEmpty}
			}
			fmt.Println(v)
		case "delete":
			if _, err := c.Delete(ctx, pos[0]); err != nil {
				return classify(err)
			}
		}
		return nil
	default:
		fmt.Fprintln(os.Stderr, kvUsage)
		return errUsage
	}
}
