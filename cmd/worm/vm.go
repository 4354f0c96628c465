package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/wormspace/wormspace/qemu"
)

func init() {
	register(&command{
		name:    "vm",
		summary: "run WormSpace VM clusters under QEMU (up, down, status, kill, restart, console)",
		run:     runVM,
	})
}

const vmUsage = `usage: worm vm SUBCOMMAND [flags]

  up       boot a cluster and print WORM_SERVERS and WORM_KEY_FILE
  down     kill the cluster's VMs and delete its network namespace
  status   list the cluster's VMs
  kill ID  SIGKILL one VM's QEMU (a crash)
  restart ID
           restart one VM on the same disk and wait until it is ready
  console ID
           print one VM's serial console log

With TAP networking the servers live in a private network namespace; reach
them with:  ip netns exec NAMESPACE worm ...  (the name is printed by up and
status). Without CAP_NET_ADMIN or /dev/net/tun, up falls back to QEMU user
networking with ports forwarded on 127.0.0.1.
The state directory (default build/vm, or $WORM_VM_STATE) holds the state
file, disks and console logs.`

func runVM(args []string) error {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, vmUsage)
		return errUsage
	}
	sub, rest := args[0], args[1:]
	switch sub {
	case "up":
		return vmUp(rest)
	case "down":
		return vmDown(rest)
	case "status":
		return vmStatus(rest)
	case "kill", "restart", "console":
		return vmOne(sub, rest)
	case "-h", "--help", "help":
		fmt.Fprintln(os.Stderr, vmUsage)
		return nil
	}
	fmt.Fprintf(os.Stderr, "worm vm: unknown subcommand %q\n%s\n", sub, vmUsage)
	return errUsage
}

// defaultStateDir is $WORM_VM_STATE or build/vm.
func defaultStateDir() string {
	if d := os.Getenv("WORM_VM_STATE"); d != "" {
		return d
	}
	return qemu.DefaultStateDir
}

// progressPrinter prints launcher events to w; console lines only when
// verbose (WORMSPACE lines always).
func progressPrinter(w io.Writer, verbose bool) func(qemu.Event) {
	return func(e qemu.Event) {
		if e.Kind == qemu.EventConsole && !verbose && !strings.Contains(e.Msg, "WORMSPACE-") {
			return
		}
		fmt.Fprintln(w, e)
	}
}

func vmUp(args []string) error {
	fs := flag.NewFlagSet("worm vm up", flag.ContinueOnError)
	n := fs.Int("n", 3, "number of VMs (acceptors 1..n)")
	stack := fs.String("stack", qemu.StackNetstack, "guest TCP stack: netstack or kernel")
	accel := fs.String("accel", "auto", "QEMU accelerator: auto, kvm or tcg")
	netMode := fs.String("net", "auto", "networking: auto, tap (namespace+bridge) or user (127.0.0.1 port forwarding)")
	image := fs.String("image", qemu.DefaultImageDir, "boot image directory (vmlinuz, initramfs.cpio), made by `make image`")
	state := fs.String("state", defaultStateDir(), "state directory (state file, disks, console logs)")
	volatile := fs.Bool("volatile", false, "run wormd with -volatile (no fsync; benchmarks only)")
	key := fs.String("key", "", "cluster key in hex, >= 32 bytes (worm.key); default: STATE/cluster.key if present, else a new random key")
	segsize := fs.Int("segment-size", 0, "wormd segment size (worm.segsize); 0 = wormd's default")
	mem := fs.Int("m", 256, "memory per VM in MiB")
	disk := fs.Int("disk", 128, "data disk size per VM in MiB (created and formatted once, then reused)")
	debug := fs.Bool("debug", false, "worm.debug=1: guest drops to a shell instead of powering off on failure")
	foreground := fs.Bool("foreground", false, "stay running; Ctrl-C stops the VMs and cleans up")
	verbose := fs.Bool("v", false, "print every console line while booting")
	timeout := fs.Duration("ready-timeout", 2*time.Minute, "per-VM limit for WORMSPACE-READY")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args())
	}
	a, err := qemu.ParseAccel(*accel)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	c, err := qemu.Up(ctx, qemu.Config{
		N: *n, Stack: *stack, Accel: a, Net: qemu.NetMode(*netMode),
		ImageDir: *image, StateDir: *state,
		Volatile: *volatile, Key: *key, SegmentSize: *segsize, Debug: *debug,
		MemoryMiB: *mem, DiskMiB: *disk,
		Options: qemu.Options{
			ReadyTimeout: *timeout,
			// In the foreground the VMs belong to this process; detached
			// VMs must outlive it.
			KillWithParent: *foreground,
			Progress:       progressPrinter(os.Stderr, *verbose),
		},
	})
	if err != nil {
		return err
	}
	printCluster(os.Stdout, c)
	if !*foreground {
		fmt.Printf("# stop with: worm vm down -state %s\n", c.StateDir())
		return nil
	}
	fmt.Fprintln(os.Stderr, "foreground: Ctrl-C stops the VMs and removes the cluster")
	<-ctx.Done()
	stop()
	fmt.Fprintln(os.Stderr, "stopping...")
	return c.Shutdown(context.Background(), qemu.DownOptions{})
}

// printCluster prints the WORM_SERVERS and WORM_KEY_FILE lines and how to
// reach the servers.
func printCluster(w io.Writer, c *qemu.Cluster) {
	fmt.Fprintf(w, "WORM_SERVERS=%s\n", c.Servers())
	fmt.Fprintf(w, "WORM_KEY_FILE=%s\n", c.KeyFile())
	fmt.Fprintf(w, "# export WORM_SERVERS=%s WORM_KEY_FILE=%s\n", c.Servers(), c.KeyFile())
	fmt.Fprintf(w, "# accel %s, stack %s, net %s, state %s\n", c.Accel(), c.Stack(), c.Net(), c.StateDir())
	if ns := c.Netns(); ns != "" {
		fmt.Fprintf(w, "WORM_NETNS=%s\n", ns)
		fmt.Fprintf(w, "# the servers are in network namespace %s: ip netns exec %s worm status\n", ns, ns)
	}
	for _, v := range c.VMs() {
		r := v.Ready()
		fmt.Fprintf(w, "# vm%d %s pid %d boot-to-ready %v guest-uptime %v (accel %s)\n",
			v.ID(), v.Server(), v.Pid(), r.BootToReady.Round(time.Millisecond), r.Uptime.Round(time.Millisecond), c.Accel())
	}
}

func vmDown(args []string) error {
	fs := flag.NewFlagSet("worm vm down", flag.ContinueOnError)
	state := fs.String("state", defaultStateDir(), "state directory")
	graceful := fs.Bool("graceful", false, "power the guests off (ACPI, then SIGTERM) instead of SIGKILL")
	rmDisks := fs.Bool("rm-disks", false, "delete the data disks too (acceptor state is lost)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if _, err := qemu.ReadState(*state); errors.Is(err, qemu.ErrNoCluster) {
		fmt.Fprintf(os.Stderr, "no cluster in %s\n", *state)
		return nil
	}
	return qemu.Down(ctx, *state, qemu.DownOptions{Graceful: *graceful, RemoveDisks: *rmDisks},
		qemu.Options{Progress: progressPrinter(os.Stderr, false)})
}

func vmStatus(args []string) error {
	fs := flag.NewFlagSet("worm vm status", flag.ContinueOnError)
	state := fs.String("state", defaultStateDir(), "state directory")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c, err := qemu.Open(*state, qemu.Options{})
	if err != nil {
		return err
	}
	st := c.State()
	fmt.Printf("cluster %s (created %s): accel %s, stack %s, net %s\n", st.Name, st.Created.Format(time.RFC3339), st.Accel, st.Stack, st.Net)
	if st.Netns != "" {
		fmt.Printf("namespace %s, bridge %s %s: ip netns exec %s worm ...\n", st.Netns, st.Bridge, st.HostAddr, st.Netns)
	}
	fmt.Printf("WORM_SERVERS=%s\n", c.Servers())
	fmt.Printf("WORM_KEY_FILE=%s\n", c.KeyFile())
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tPID\tSERVER\tBOOTS\tBOOT-TO-READY\tGUEST-UPTIME\tDISK\tCONSOLE")
	for _, v := range c.VMs() {
		s := v.State()
		run, pid := "down", "-"
		if v.Running() {
			run, pid = "running", strconv.Itoa(v.Pid())
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%.0fms\t%.0fms\t%s\t%s\n", s.ID, run, pid, s.Server, s.Boots, s.BootToReadyMS, s.GuestUptimeMS, s.Disk, s.Console)
	}
	return tw.Flush()
}

func vmOne(sub string, args []string) error {
	fs := flag.NewFlagSet("worm vm "+sub, flag.ContinueOnError)
	state := fs.String("state", defaultStateDir(), "state directory")
	timeout := fs.Duration("ready-timeout", 2*time.Minute, "restart: limit for WORMSPACE-READY")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("%w: worm vm %s [-state DIR] ID", errUsage, sub)
	}
	id, err := strconv.Atoi(fs.Arg(0))
	if err != nil {
		return fmt.Errorf("%w: VM id %q", errUsage, fs.Arg(0))
	}
	c, err := qemu.Open(*state, qemu.Options{ReadyTimeout: *timeout, Progress: progressPrinter(os.Stderr, false)})
	if err != nil {
		return err
	}
	v, err := c.VM(id)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	switch sub {
	case "kill":
		return v.Kill(ctx)
	case "restart":
		if err := v.Restart(ctx); err != nil {
			return err
		}
		r := v.Ready()
		fmt.Printf("vm%d %s ready: boot-to-ready %v, guest uptime %v (accel %s)\n",
			id, v.Server(), r.BootToReady.Round(time.Millisecond), r.Uptime.Round(time.Millisecond), c.Accel())
		return nil
	default: // console
		f, err := os.Open(v.ConsolePath())
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(os.Stdout, f)
		return err
	}
}
