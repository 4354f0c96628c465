package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wormspace/wormspace/apps/wormlog"
	"github.com/wormspace/wormspace/worm"
)

// TestLogSequencerKill9 runs WormLog as processes: three real wormds, a
// `worm log sequencer` process, and `worm log append` / `worm log read`
// processes. The sequencer is killed with SIGKILL while it holds an
// unused grant and a new one is started on the same address: it recovers
// the tail by scanning and captures the log's segment, so a write with the
// old sequencer's token is refused as preempted; appends go on (every
// position printed once, every record read back at its position).
func TestLogSequencerKill9(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	exe, dir, lc, env := appCluster(ctx, t)
	seqAddr := freeLoopbackAddr(t)
	env = append(env, "WORM_SEQUENCER="+seqAddr)
	startSequencer := func() *exec.Cmd {
		return startLogged(t, env, filepath.Join(dir, "sequencer.log"), exe, "log", "sequencer", "-listen", seqAddr)
	}
	run := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, exe, args...)
		cmd.Env = env
		out, err := cmd.Output()
		return strings.TrimSpace(string(out)), err
	}
	positions := map[uint64]string{}
	appendOne := func(v string) {
		t.Helper()
		var out string
		var err error
		for { // the first appends wait for the sequencer to listen
			if out, err = run("log", "append", v); err == nil || ctx.Err() != nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("append %s: %v", v, err)
		}
		pos, err := strconv.ParseUint(out, 10, 64)
		if err != nil {
			t.Fatalf("append %s printed %q", v, out)
		}
		if prev, dup := positions[pos]; dup {
			t.Fatalf("position %d handed out twice (%s, then %s)", pos, prev, v)
		}
		positions[pos] = v
	}

	seq := startSequencer()
	defer func() {
		_ = seq.Process.Kill()
		_ = seq.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "sequencer.log"))
			t.Logf("sequencers' log:\n%s", b)
		}
	}()
	for i := range 5 {
		appendOne(fmt.Sprintf("before-%d", i))
	}
	// A grant the old sequencer hands out and nobody uses.
	remote := wormlog.NewRemote(func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", seqAddr)
	})
	stale, err := remote.NextN(ctx, 1)
	remote.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := seq.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = seq.Wait()
	seq = startSequencer()
	// Once the new sequencer answers, it has captured the log's segment:
	// the old token is fenced before anyone appends again.
	for {
		if _, err := run("log", "tail"); err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("the new sequencer never answered")
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The old sequencer's token no longer writes.
	sf := spaceFlags{servers: strings.Join(lc.Servers(), ","), keyFile: lc.KeyFile, id: "stale-appender"}
	cl, err := sf.dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	addr := wormlog.NewClient(cl, wormlog.Config{Name: "log", FirstSeg: 1 << 32}, nil).Addr(stale.Pos)
	err = cl.Write(ctx, addr, stale.Token, []byte("stale"))
	if err == nil {
		t.Fatalf("a write at position %d with the killed sequencer's token %v succeeded", stale.Pos, stale.Token)
	}
	if !errors.Is(err, worm.ErrPreempted) {
		t.Fatalf("write with the stale token: %v, want preempted", err)
	}
	for i := range 5 {
		appendOne(fmt.Sprintf("after-%d", i))
	}

	// Every record at its position, read by another process.
	for pos, v := range positions {
		out, err := run("log", "read", strconv.FormatUint(pos, 10))
		if err != nil || out != v {
			t.Errorf("read %d: %q (%v), want %q", pos, out, err, v)
		}
	}
	t.Logf("%d appends around the kill; the stale grant at %d was refused", len(positions), stale.Pos)
}
