package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/wormspace/wormspace/worm/localcluster"
)

func init() {
	register(&command{
		name:    "cluster",
		summary: "run a local cluster of wormd processes on loopback: cluster up -n 3 -dir DIR",
		run:     runCluster,
	})
}

const clusterUsage = `usage: worm cluster up [-n 3] [-dir DIR] [-volatile] [-insecure] [-wormd PATH]

Starts N wormd processes on 127.0.0.1, each with its own data directory under
DIR, prints the environment a client needs (WORM_SERVERS and, unless
-insecure, WORM_KEY_FILE), and runs until interrupted (Ctrl-C or SIGTERM),
then stops every wormd gracefully. Started again on the same DIR, the cluster
keeps its data, ports and key.`

func runCluster(args []string) error {
	if len(args) == 0 || args[0] != "up" {
		fmt.Fprintln(os.Stderr, clusterUsage)
		return errUsage
	}
	fs := flag.NewFlagSet("cluster up", flag.ContinueOnError)
	n := fs.Int("n", 3, "number of wormds")
	dir := fs.String("dir", "build/cluster", "directory for data, logs, ports and the key")
	volatile := fs.Bool("volatile", false, "start wormds with -volatile (no fsync; benchmarks only)")
	insecure := fs.Bool("insecure", false, "run without a cluster key")
	wormd := fs.String("wormd", "", "wormd binary (default: next to worm, build/bin/wormd, or $PATH)")
	segSize := fs.Int("segment-size", 0, "registers per segment for new data directories")
	fs.Usage = func() { fmt.Fprintln(fs.Output(), clusterUsage); fs.PrintDefaults() }
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return errUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	fmt.Fprintf(os.Stderr, "worm cluster: starting %d wormds in %s ...\n", *n, *dir)
	cl, err := localcluster.Start(ctx, localcluster.Config{N: *n, Dir: *dir, Wormd: *wormd,
		Volatile: *volatile, Insecure: *insecure, SegmentSize: *segSize})
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "worm cluster: %d wormds ready in %v (logs: %s/wormd-N.log); Ctrl-C stops them\n",
		*n, time.Since(start).Round(time.Millisecond), *dir)
	line := "export " + cl.ServersEnv()
	if cl.KeyFile != "" {
		line += " WORM_KEY_FILE=" + cl.KeyFile
	}
	fmt.Println(line)
	<-ctx.Done()
	fmt.Fprintln(os.Stderr, "worm cluster: stopping ...")
	if err := cl.Stop(); err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "worm cluster: stopped; data kept in "+strings.TrimSuffix(*dir, "/"))
	return nil
}
