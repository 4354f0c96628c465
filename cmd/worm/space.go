package main

import (
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/client"
)

// Exit codes of the register commands (README.md documents them).
const (
	exitOK         = 0
	exitFailure    = 1
	exitEmpty      = 2
	exitPreempted  = 3
	exitWritten    = 4
	exitTrimmed    = 5
	exitUnavail    = 6
	exitUnknown    = 7
	exitUnallocced = exitEmpty // check on an unallocated segment: nothing there
)

func init() {
	for _, c := range []*command{
		{name: "capture", summary: "capture a register and print the token: capture ADDR", run: cmdCapture},
		{name: "write", summary: "capture and write a register: write [-token T] ADDR VALUE|-", run: cmdWrite},
		{name: "read", summary: "print a register's value: read ADDR", run: cmdRead},
		{name: "unsafe-write", summary: "write at ballot 0 without capturing: unsafe-write ADDR VALUE|-", run: cmdUnsafeWrite},
		{name: "alloc", summary: "allocate a segment (first caller wins): alloc [-meta M] SEG", run: cmdAlloc},
		{name: "check", summary: "print a segment's allocation record: check SEG", run: cmdCheck},
		{name: "trim", summary: "trim (garbage-collect) a segment: trim SEG", run: cmdTrim},
		{name: "listen", summary: "print each register of a segment as it is written: listen SEG", run: cmdListen},
		{name: "status", summary: "show each wormserver's health, storage and version", run: cmdStatus},
	} {
		register(c)
	}
}

// spaceFlags are the flags every command that talks to a cluster takes.
type spaceFlags struct {
	servers string
	keyFile string
	keyHex  string
	id      string
	timeout time.Duration
}

func (f *spaceFlags) add(fs *flag.FlagSet) {
	fs.StringVar(&f.servers, "servers", os.Getenv("WORM_SERVERS"), "wormservers, comma separated (default $WORM_SERVERS)")
	fs.StringVar(&f.keyFile, "key-file", os.Getenv("WORM_KEY_FILE"), "cluster key file (default $WORM_KEY_FILE)")
	fs.StringVar(&f.keyHex, "key-hex", os.Getenv("WORM_KEY"), "cluster key in hex (default $WORM_KEY)")
	fs.StringVar(&f.id, "id", os.Getenv("WORM_ID"), "client identity recorded by alloc (default $WORM_ID, else random)")
	fs.DurationVar(&f.timeout, "timeout", 10*time.Second, "deadline for the whole command")
}

func (f *spaceFlags) key() ([]byte, error) {
	switch {
	case f.keyHex != "" && f.keyFile != "":
		return nil, errors.New("give the key once: -key-hex ($WORM_KEY) or -key-file ($WORM_KEY_FILE)")
	case f.keyHex != "":
		k, err := hex.DecodeString(strings.TrimSpace(f.keyHex))
		if err != nil {
			return nil, fmt.Errorf("-key-hex: %w", err)
		}
		return k, nil
	case f.keyFile != "":
		b, err := os.ReadFile(f.keyFile)
		if err != nil {
			return nil, err
		}
		t := strings.TrimSpace(string(b))
		if k, err := hex.DecodeString(t); err == nil && t != "" {
			return k, nil
		}
		return b, nil
	}
	return nil, nil
}

// dial connects to the cluster named by the flags.
func (f *spaceFlags) dial(ctx context.Context) (*client.Client, error) {
	if f.servers == "" {
		return nil, &exitError{code: exitFailure, msg: "no servers: give -servers a,b,c or set WORM_SERVERS (worm cluster up prints it)"}
	}
	key, err := f.key()
	if err != nil {
		return nil, err
	}
	var servers []string
	for _, s := range strings.Split(f.servers, ",") {
		if s = strings.TrimSpace(s); s != "" {
			servers = append(servers, s)
		}
	}
	// Connection trouble is reported by the command's own error line;
	// WORM_DEBUG=1 shows the client's log as well.
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if os.Getenv("WORM_DEBUG") != "" {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	cl, err := client.Dial(ctx, client.Config{Servers: servers, Key: key, ID: f.id, Logger: logger})
	if err != nil {
		return nil, classify(err)
	}
	return cl, nil
}

// classify maps a WormSpace error to the command's exit code.
func classify(err error) error {
	code := exitFailure
	switch {
	case errors.Is(err, worm.ErrEmpty):
		code = exitEmpty
	case errors.Is(err, worm.ErrPreempted):
		code = exitPreempted
	case errors.Is(err, worm.ErrWritten):
		code = exitWritten
	case errors.Is(err, worm.ErrTrimmed):
		code = exitTrimmed
	case errors.Is(err, worm.ErrUnknownOutcome):
		code = exitUnknown
	case errors.Is(err, worm.ErrUnavailable):
		code = exitUnavail
	case errors.Is(err, worm.ErrUnallocated):
		code = exitUnallocced
	}
	return &exitError{code: code, msg: oneLine(err.Error())}
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// givenFlags returns the names of the flags given on the command line (a
// shortcut such as -quick leaves those alone).
func givenFlags(fs *flag.FlagSet) map[string]bool {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	return set
}

// parseArgs parses a command's flags (which may also follow the
// positional arguments) and checks the number of positional arguments.
func parseArgs(fs *flag.FlagSet, args []string, want int, usage string) ([]string, error) {
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: worm %s\n", usage)
		fs.PrintDefaults()
	}
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(pos) != want {
		fs.Usage()
		return nil, errUsage
	}
	return pos, nil
}

func parseSeg(s string) (uint64, error) {
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, &exitError{code: exitFailure, msg: fmt.Sprintf("segment %q: want a decimal number", s)}
	}
	return v, nil
}

func parseAddr(s string) (worm.Addr, error) {
	a, err := worm.ParseAddr(s)
	if err != nil {
		return a, &exitError{code: exitFailure, msg: err.Error()}
	}
	return a, nil
}

// valueArg returns VALUE, or standard input for "-".
func valueArg(s string) ([]byte, error) {
	if s != "-" {
		return []byte(s), nil
	}
	return io.ReadAll(os.Stdin)
}

// withCluster runs fn with a client and the command's deadline.
func withCluster(sf *spaceFlags, fn func(ctx context.Context, cl *client.Client) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), sf.timeout)
	defer cancel()
	cl, err := sf.dial(ctx)
	if err != nil {
		return err
	}
	defer cl.Close()
	return fn(ctx, cl)
}

// printValue writes v and a newline (unless raw).
func printValue(v []byte, raw bool) {
	os.Stdout.Write(v)
	if !raw {
		os.Stdout.Write([]byte{'\n'})
	}
}

// writtenExit prints the stored value of a *WrittenError and exits 4.
func writtenExit(err error, raw bool) error {
	if v, ok := worm.WrittenValue(err); ok {
		printValue(v, raw)
	}
	return classify(err)
}

func cmdCapture(args []string) error {
	var sf spaceFlags
	fs := flag.NewFlagSet("capture", flag.ContinueOnError)
	sf.add(fs)
	raw := fs.Bool("raw", false, "print a stored value without a newline")
	pos, err := parseArgs(fs, args, 1, "capture [flags] ADDR")
	if err != nil {
		return err
	}
	addr, err := parseAddr(pos[0])
	if err != nil {
		return err
	}
	return withCluster(&sf, func(ctx context.Context, cl *client.Client) error {
		tok, err := cl.Capture(ctx, addr)
		if errors.Is(err, worm.ErrWritten) {
			return writtenExit(err, *raw)
		}
		if err != nil {
			return classify(err)
		}
		fmt.Println(tok)
		return nil
	})
}

func cmdWrite(args []string) error {
	var sf spaceFlags
	fs := flag.NewFlagSet("write", flag.ContinueOnError)
	sf.add(fs)
	token := fs.String("token", "", "write with this token (from worm capture) instead of capturing first")
	raw := fs.Bool("raw", false, "print a stored value without a newline")
	pos, err := parseArgs(fs, args, 2, "write [flags] ADDR VALUE|-")
	if err != nil {
		return err
	}
	addr, err := parseAddr(pos[0])
	if err != nil {
		return err
	}
	value, err := valueArg(pos[1])
	if err != nil {
		return err
	}
	var tok worm.Token
	if *token != "" {
		if tok, err = worm.ParseToken(*token); err != nil {
			return &exitError{code: exitFailure, msg: err.Error()}
		}
	}
	return withCluster(&sf, func(ctx context.Context, cl *client.Client) error {
		if tok.IsZero() {
			t, err := cl.Capture(ctx, addr)
			if err != nil {
				if v, ok := worm.WrittenValue(err); ok && string(v) == string(value) {
					return nil // already holds this value: the write is idempotent
				}
				if errors.Is(err, worm.ErrWritten) {
					return writtenExit(err, *raw)
				}
				return classify(err)
			}
			tok = t
		}
		err := cl.Write(ctx, addr, tok, value)
		if errors.Is(err, worm.ErrWritten) {
			return writtenExit(err, *raw)
		}
		if err != nil {
			return classify(err)
		}
		return nil
	})
}

func cmdUnsafeWrite(args []string) error {
	var sf spaceFlags
	fs := flag.NewFlagSet("unsafe-write", flag.ContinueOnError)
	sf.add(fs)
	raw := fs.Bool("raw", false, "print a stored value without a newline")
	pos, err := parseArgs(fs, args, 2, "unsafe-write [flags] ADDR VALUE|-")
	if err != nil {
		return err
	}
	addr, err := parseAddr(pos[0])
	if err != nil {
		return err
	}
	value, err := valueArg(pos[1])
	if err != nil {
		return err
	}
	return withCluster(&sf, func(ctx context.Context, cl *client.Client) error {
		err := cl.WriteUnsafe(ctx, addr, value)
		if errors.Is(err, worm.ErrWritten) {
			return writtenExit(err, *raw)
		}
		if err != nil {
			return classify(err)
		}
		return nil
	})
}

func cmdRead(args []string) error {
	var sf spaceFlags
	fs := flag.NewFlagSet("read", flag.ContinueOnError)
	sf.add(fs)
	raw := fs.Bool("raw", false, "print the value without a trailing newline")
	pos, err := parseArgs(fs, args, 1, "read [flags] ADDR")
	if err != nil {
		return err
	}
	addr, err := parseAddr(pos[0])
	if err != nil {
		return err
	}
	return withCluster(&sf, func(ctx context.Context, cl *client.Client) error {
		v, err := cl.Read(ctx, addr)
		if err != nil {
			return classify(err)
		}
		printValue(v, *raw)
		return nil
	})
}

func printInfo(info worm.SegmentInfo) {
	fmt.Printf("owner=%s won=%t meta=%q\n", info.Owner, info.Won, info.Meta)
}

func cmdAlloc(args []string) error {
	var sf spaceFlags
	fs := flag.NewFlagSet("alloc", flag.ContinueOnError)
	sf.add(fs)
	meta := fs.String("meta", "", "metadata recorded with the allocation")
	pos, err := parseArgs(fs, args, 1, "alloc [flags] SEG")
	if err != nil {
		return err
	}
	seg, err := parseSeg(pos[0])
	if err != nil {
		return err
	}
	return withCluster(&sf, func(ctx context.Context, cl *client.Client) error {
		info, err := cl.Alloc(ctx, seg, []byte(*meta))
		if err != nil {
			return classify(err)
		}
		printInfo(info)
		return nil
	})
}

func cmdCheck(args []string) error {
	var sf spaceFlags
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	sf.add(fs)
	pos, err := parseArgs(fs, args, 1, "check [flags] SEG")
	if err != nil {
		return err
	}
	seg, err := parseSeg(pos[0])
	if err != nil {
		return err
	}
	return withCluster(&sf, func(ctx context.Context, cl *client.Client) error {
		info, err := cl.Check(ctx, seg)
		if err != nil {
			return classify(err)
		}
		printInfo(info)
		return nil
	})
}

func cmdTrim(args []string) error {
	var sf spaceFlags
	fs := flag.NewFlagSet("trim", flag.ContinueOnError)
	sf.add(fs)
	pos, err := parseArgs(fs, args, 1, "trim [flags] SEG")
	if err != nil {
		return err
	}
	seg, err := parseSeg(pos[0])
	if err != nil {
		return err
	}
	return withCluster(&sf, func(ctx context.Context, cl *client.Client) error {
		if err := cl.Trim(ctx, seg); err != nil {
			return classify(err)
		}
		return nil
	})
}

// cmdListen prints "SEG/OFF VALUE" for every register of the segment that
// is written while it runs (and, with -all, those written before), until
// interrupted. Notifications are hints: it reads each register, and
// rescans the segment when told notifications were lost.
func cmdListen(args []string) error {
	var sf spaceFlags
	fs := flag.NewFlagSet("listen", flag.ContinueOnError)
	sf.add(fs)
	all := fs.Bool("all", false, "first print the registers already written")
	pos, err := parseArgs(fs, args, 1, "listen [flags] SEG")
	if err != nil {
		return err
	}
	seg, err := parseSeg(pos[0])
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	dctx, cancel := context.WithTimeout(ctx, sf.timeout)
	cl, err := sf.dial(dctx)
	cancel()
	if err != nil {
		return err
	}
	defer cl.Close()
	ch, err := cl.Listen(ctx, seg)
	if err != nil {
		return classify(err)
	}
	printed := map[uint32]bool{}
	show := func(off uint32) error {
		if printed[off] {
			return nil
		}
		rctx, cancel := context.WithTimeout(ctx, sf.timeout)
		v, err := cl.Read(rctx, worm.Addr{Seg: seg, Off: off})
		cancel()
		switch {
		case errors.Is(err, worm.ErrEmpty):
			return nil
		case err != nil:
			return err
		}
		printed[off] = true
		fmt.Printf("%d/%d %s\n", seg, off, v)
		return nil
	}
	rescan := func() error {
		for off := uint32(0); off < cl.SegmentSize(); off++ {
			if err := show(off); err != nil {
				return err
			}
		}
		return nil
	}
	if *all {
		if err := rescan(); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return classify(err)
		}
	}
	for n := range ch {
		var err error
		if n.Lost {
			err = rescan()
		} else {
			err = show(n.Off)
		}
		if err != nil && ctx.Err() == nil {
			return classify(err)
		}
	}
	return nil
}

func cmdStatus(args []string) error {
	var sf spaceFlags
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	sf.add(fs)
	if _, err := parseArgs(fs, args, 0, "status [flags]"); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), sf.timeout)
	defer cancel()
	cl, err := sf.dial(ctx)
	if err != nil {
		return err
	}
	defer cl.Close()
	down := 0
	for _, s := range cl.Status(ctx) {
		if s.Err != nil {
			down++
			fmt.Printf("%s\tDOWN\t%s\n", s.Addr, oneLine(s.Err.Error()))
			continue
		}
		fmt.Printf("%s\tUP\t%s\n", s.Addr, oneLine(s.Status))
	}
	if down > 0 {
		return &exitError{code: exitUnavail, msg: fmt.Sprintf("%d server(s) not answering", down)}
	}
	return nil
}
