// Command worm is the WormSpace command-line tool: registers and segments,
// the applications, local clusters, boot images, VMs and benchmarks.
//
// Each subcommand lives in its own file and registers itself in init with
// register, so that packages can grow their own subcommands without touching
// this file.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// A command is one `worm NAME ...` subcommand.
type command struct {
	name    string
	summary string
	// run executes the command with the arguments after its name. It
	// returns an error for the caller to print; an *exitError carries a
	// specific exit code.
	run func(args []string) error
}

var commands = map[string]*command{}

// register adds a subcommand; it panics on a duplicate name (a programming
// error caught by any test that runs the binary).
func register(c *command) {
	if _, dup := commands[c.name]; dup {
		panic("worm: duplicate command " + c.name)
	}
	commands[c.name] = c
}

// exitError asks main to exit with code after printing msg (if any) to stderr.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

// errUsage is returned by commands for bad arguments; main exits with 1.
var errUsage = errors.New("usage")

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: worm COMMAND [flags] [args]")
	fmt.Fprintln(w, "\ncommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-14s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "\nRun 'worm COMMAND -h' for a command's flags.")
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(os.Stderr)
		if len(args) == 0 {
			return 1
		}
		return 0
	}
	c, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(os.Stderr, "worm: unknown command %q\n", args[0])
		usage(os.Stderr)
		return 1
	}
	err := c.run(args[1:])
	if err == nil {
		return 0
	}
	var ee *exitError
	switch {
	case errors.As(err, &ee):
		if ee.msg != "" {
			fmt.Fprintln(os.Stderr, "worm "+c.name+": "+strings.TrimSpace(ee.msg))
		}
		return ee.code
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 1
	default:
		fmt.Fprintln(os.Stderr, "worm "+c.name+": "+err.Error())
		return 1
	}
}
