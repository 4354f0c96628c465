package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/wormspace/wormspace/apps/wormlog"
	"github.com/wormspace/wormspace/worm/client"
)

func init() {
	register(&command{
		name:    "log",
		summary: "WormLog, a shared log: append, read, tail, follow, trim, sequencer",
		run:     cmdLog,
	})
}

const logUsage = `usage: worm log SUBCOMMAND [flags] [args]

  append VALUE|-      append a record; prints its position
  read POS            print the record at POS (exit 2 if unwritten; "(hole)" for a hole)
  tail                print the next position to be appended
  follow [-from P]    print records as they are appended ("POS VALUE"), until Ctrl-C
  trim POS            trim every whole segment below POS
  sequencer -listen ADDR
                      serve positions and tokens to appenders (run one per log)

Appenders take positions from the sequencer named by -sequencer or
$WORM_SEQUENCER; without one, append runs a private sequencer for the
command (it recovers the tail by scanning, and fences any other sequencer
of the log). The log is named by -name and starts at segment -first.`

type logFlags struct {
	spaceFlags
	name      string
	first     uint64
	sequencer string
}

func (f *logFlags) add(fs *flag.FlagSet) {
	f.spaceFlags.add(fs)
	fs.StringVar(&f.name, "name", "log", "the log's name")
	fs.Uint64Var(&f.first, "first", 1<<32, "the log's first segment")
	fs.StringVar(&f.sequencer, "sequencer", os.Getenv("WORM_SEQUENCER"), "sequencer address host:port (default $WORM_SEQUENCER)")
}

func (f *logFlags) config() wormlog.Config {
	return wormlog.Config{Name: f.name, FirstSeg: f.first, Logger: slog.New(slog.DiscardHandler)}
}

// source returns the token source appends use and a function to release it.
func (f *logFlags) source(cl *client.Client) (wormlog.TokenSource, func()) {
	if f.sequencer != "" {
		addr := f.sequencer
		r := wormlog.NewRemote(func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		})
		return r, func() { r.Close() }
	}
	s := wormlog.NewSequencer(cl, f.config())
	return s, func() { s.Close() }
}

// logErr maps WormLog errors to exit codes.
func logErr(err error) error {
	if errors.Is(err, wormlog.ErrUnwritten) {
		return &exitError{code: exitEmpty, msg: oneLine(err.Error())}
	}
	return classify(err)
}

func cmdLog(args []string) error {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, logUsage)
		return errUsage
	}
	sub, rest := args[0], args[1:]
	var lf logFlags
	fs := flag.NewFlagSet("log "+sub, flag.ContinueOnError)
	lf.add(fs)
	switch sub {
	case "append":
		pos, err := parseArgs(fs, rest, 1, "log append [flags] VALUE|-")
		if err != nil {
			return err
		}
		value, err := valueArg(pos[0])
		if err != nil {
			return err
		}
		return withCluster(&lf.spaceFlags, func(ctx context.Context, cl *client.Client) error {
			src, done := lf.source(cl)
			defer done()
			p, err := wormlog.NewClient(cl, lf.config(), src).Append(ctx, value)
			if err != nil {
				return logErr(err)
			}
			fmt.Println(p)
			return nil
		})
	case "read":
		pos, err := parseArgs(fs, rest, 1, "log read [flags] POS")
		if err != nil {
			return err
		}
		p, err := strconv.ParseUint(pos[0], 10, 64)
		if err != nil {
			return &exitError{code: exitFailure, msg: "position: " + err.Error()}
		}
		return withCluster(&lf.spaceFlags, func(ctx context.Context, cl *client.Client) error {
			rec, err := wormlog.NewClient(cl, lf.config(), nil).Read(ctx, p)
			if err != nil {
				return logErr(err)
			}
			if rec.Hole {
				fmt.Println("(hole)")
			} else {
				printValue(rec.Value, false)
			}
			return nil
		})
	case "tail":
		if _, err := parseArgs(fs, rest, 0, "log tail [flags]"); err != nil {
			return err
		}
		return withCluster(&lf.spaceFlags, func(ctx context.Context, cl *client.Client) error {
			src, done := lf.source(cl)
			defer done()
			t, err := wormlog.NewClient(cl, lf.config(), src).Tail(ctx)
			if err != nil {
				return logErr(err)
			}
			fmt.Println(t)
			return nil
		})
	case "trim":
		pos, err := parseArgs(fs, rest, 1, "log trim [flags] POS")
		if err != nil {
			return err
		}
		p, err := strconv.ParseUint(pos[0], 10, 64)
		if err != nil {
			return &exitError{code: exitFailure, msg: "position: " + err.Error()}
		}
		return withCluster(&lf.spaceFlags, func(ctx context.Context, cl *client.Client) error {
			if err := wormlog.NewClient(cl, lf.config(), nil).Trim(ctx, p); err != nil {
				return logErr(err)
			}
			return nil
		})
	case "follow":
		from := fs.Uint64("from", 0, "first position to print")
		if _, err := parseArgs(fs, rest, 0, "log follow [flags]"); err != nil {
			return err
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		dctx, cancel := context.WithTimeout(ctx, lf.timeout)
		cl, err := lf.dial(dctx)
		cancel()
		if err != nil {
			return err
		}
		defer cl.Close()
		for rec, err := range wormlog.NewClient(cl, lf.config(), nil).Follow(ctx, *from) {
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return logErr(err)
			}
			if rec.Hole {
				fmt.Printf("%d (hole)\n", rec.Pos)
			} else {
				fmt.Printf("%d %s\n", rec.Pos, rec.Value)
			}
		}
		return nil
	case "sequencer":
		listen := fs.String("listen", "127.0.0.1:7400", "address to serve appenders on")
		if _, err := parseArgs(fs, rest, 0, "log sequencer [flags]"); err != nil {
			return err
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		dctx, cancel := context.WithTimeout(ctx, lf.timeout)
		cl, err := lf.dial(dctx)
		cancel()
		if err != nil {
			return err
		}
		defer cl.Close()
		l, err := net.Listen("tcp", *listen)
		if err != nil {
			return err
		}
		seq := wormlog.NewSequencer(cl, lf.config())
		defer seq.Close()
		srv := wormlog.NewServer(seq, slog.Default())
		go func() { <-ctx.Done(); srv.Close() }()
		fmt.Fprintf(os.Stderr, "worm log: sequencer of log %q serving on %s (export WORM_SEQUENCER=%s)\n", lf.name, l.Addr(), l.Addr())
		start := time.Now()
		err = srv.Serve(l)
		if ctx.Err() != nil {
			fmt.Fprintf(os.Stderr, "worm log: sequencer stopped after %v\n", time.Since(start).Round(time.Second))
			return nil
		}
		return err
	default:
		fmt.Fprintln(os.Stderr, logUsage)
		return errUsage
	}
}
