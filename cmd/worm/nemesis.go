package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/wormspace/wormspace/qemu"
	"github.com/wormspace/wormspace/worm/nemesis"
)

func init() {
	register(&command{
		name:    "nemesis",
		summary: "fault harness: a 3-wormd cluster under load and faults, then every history checked",
		run:     runNemesis,
	})
}

const nemesisUsage = `usage: worm nemesis [-seed N[,N...]] [-duration D] [-faults LIST] [-dir DIR] [-wormd PATH] [-v]
       worm nemesis -vm [-seed N[,N...]] [-duration D] [-faults kill,pause,partition] [-image DIR] [-accel tcg|kvm|auto] [-dir DIR] [-v]

Starts three wormd processes, runs register capture/write/read, WormLog
appends and WormPaxos KV operations against them while injecting the faults
in an order fixed by the seed (kill -9 and restart, SIGSTOP/SIGCONT, a full
disk for wormd 1 on a tmpfs it mounts (root), kill -9 of all three,
partitions and one-way drops, packet loss, delay, duplication and
reordering, and restarts with the monotonic clocks jumped in a time
namespace (root)), then measures availability with one and two wormds down,
heals everything, and checks every history (porcupine for registers and KV,
log invariants, durability of acknowledged writes). The network faults need
a network namespace of its own: as root, worm nemesis re-executes itself in
one. With packet faults the wormds run on netstack over TAP devices there
(wormd -net-faults); otherwise on kernel TCP over loopback.

With -vm it boots three VMs from the boot image (make image) instead and
injects kill -9 of a VM's QEMU (restart from its disk), SIGSTOP/SIGCONT of a
QEMU and partitions (iptables in the cluster's namespace), checking the
register history and durability, availability and recovery times.

Prints a summary per seed; exits 1 if any check failed (the seed replays
the fault schedule).`

func runNemesis(args []string) error {
	fs := flag.NewFlagSet("nemesis", flag.ContinueOnError)
	seeds := fs.String("seed", "", "seed, or comma-separated seeds (default: one from the clock)")
	dur := fs.Duration("duration", 20*time.Second, "length of the randomized fault phase per seed")
	faults := fs.String("faults", "all", "faults to inject: "+strings.Join(nemesis.Faults, ",")+" (or all); with -vm: "+strings.Join(nemesis.VMFaults, ","))
	vm := fs.Bool("vm", false, "run against a 3-VM cluster booted from the boot image (QEMU)")
	image := fs.String("image", qemu.DefaultImageDir, "-vm: boot image directory (make image)")
	accel := fs.String("accel", string(qemu.AccelTCG), "-vm: accelerator: tcg, kvm or auto")
	dir := fs.String("dir", "", "working directory (default: a temporary one, kept when a check fails)")
	wormd := fs.String("wormd", "", "wormd binary (default: $WORMD, next to worm, build/bin/wormd)")
	verbose := fs.Bool("v", false, "print progress (faults, verdicts) as it happens")
	fs.Usage = func() { fmt.Fprintln(os.Stderr, nemesisUsage); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return errUsage
	}
	if *vm {
		return runVMNemesis(*seeds, *dur, *faults, *image, *accel, *dir, *verbose)
	}
	fl, err := nemesis.ParseFaults(*faults)
	if err != nil {
		return err
	}
	// Network faults need a network namespace of our own: re-execute
	// there (root only; otherwise they are skipped with the reason).
	wantNet := false
	for _, f := range fl {
		switch f {
		case "partition", "oneway", "loss", "delay", "dup", "reorder":
			wantNet = true
		}
	}
	if wantNet && !nemesis.InPrivateNetns() && os.Geteuid() == 0 {
		code, err := nemesis.Reexec(append([]string{"nemesis"}, args...))
		if err != nil {
			return err
		}
		if code != 0 {
			return &exitError{code: code}
		}
		return nil
	}
	if nemesis.InPrivateNetns() {
		if err := nemesis.SetupNetns(); err != nil {
			return err
		}
	}
	list, err := parseSeeds(*seeds)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	failed := 0
	for i, seed := range list {
		cfg := nemesis.Config{Seed: seed, Duration: *dur, Faults: fl, Wormd: *wormd}
		if *dir != "" {
			cfg.Dir = fmt.Sprintf("%s/seed-%d", *dir, seed)
		}
		if *verbose {
			cfg.Logf = func(format string, args ...any) {
				fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05.000")}, args...)...)
			}
		}
		fmt.Printf("== seed %d (%d/%d), %v of faults: %s\n", seed, i+1, len(list), *dur, strings.Join(fl, ","))
		rep, err := nemesis.Run(ctx, cfg)
		if rep != nil {
			fmt.Print(rep)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "worm nemesis: seed %d: %v\n", seed, err)
			failed++
		} else if !rep.OK() {
			failed++
		}
		if ctx.Err() != nil {
			break
		}
	}
	if failed > 0 {
		return &exitError{code: 1, msg: fmt.Sprintf("%d of %d seeds failed", failed, len(list))}
	}
	fmt.Printf("worm nemesis: %d seeds passed\n", len(list))
	return nil
}

// parseSeeds parses -seed (default: one seed from the clock).
func parseSeeds(seeds string) ([]uint64, error) {
	if seeds == "" {
		return []uint64{uint64(time.Now().UnixNano())}, nil
	}
	var list []uint64
	for _, s := range strings.Split(seeds, ",") {
		v, err := strconv.ParseUint(strings.TrimSpace(s), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("-seed %q: %v", s, err)
		}
		list = append(list, v)
	}
	return list, nil
}

// runVMNemesis is `worm nemesis -vm`.
func runVMNemesis(seeds string, dur time.Duration, faults, image, accel, dir string, verbose bool) error {
	var fl []string
	if faults != "" && faults != "all" {
		for _, f := range strings.Split(faults, ",") {
			if f = strings.TrimSpace(f); f != "" {
				if !slices.Contains(nemesis.VMFaults, f) {
					return fmt.Errorf("unknown VM fault %q (known: %s)", f, strings.Join(nemesis.VMFaults, ","))
				}
				fl = append(fl, f)
			}
		}
	}
	list, err := parseSeeds(seeds)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	failed := 0
	for i, seed := range list {
		cfg := nemesis.VMConfig{Seed: seed, Duration: dur, Faults: fl, ImageDir: image, Accel: qemu.Accel(accel)}
		if dir != "" {
			cfg.Dir = fmt.Sprintf("%s/vm-seed-%d", dir, seed)
		}
		if verbose {
			cfg.Logf = func(format string, args ...any) {
				fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05.000")}, args...)...)
			}
		}
		fmt.Printf("== VM seed %d (%d/%d), %v of faults\n", seed, i+1, len(list), dur)
		rep, err := nemesis.RunVM(ctx, cfg)
		if rep != nil {
			fmt.Print(rep)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "worm nemesis -vm: seed %d: %v\n", seed, err)
			failed++
		} else if !rep.OK() {
			failed++
		}
		if ctx.Err() != nil {
			break
		}
	}
	if failed > 0 {
		return &exitError{code: 1, msg: fmt.Sprintf("%d of %d VM seeds failed", failed, len(list))}
	}
	fmt.Printf("worm nemesis -vm: %d seeds passed\n", len(list))
	return nil
}
