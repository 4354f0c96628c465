package guest

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// supervisor runs wormd: it starts it with the ready pipe on fd 3, prints
// WORMSPACE-READY when wormd reports ready, and restarts it with backoff.
type supervisor struct {
	log      *slog.Logger
	cfg      Config
	path     string    // the server binary (WormdPath)
	out      io.Writer // console: wormd's output and the READY line
	policy   RestartPolicy
	stopWait time.Duration // SIGTERM to SIGKILL
}

// exitEvent is one wormd exit.
type exitEvent struct {
	err    error
	ranFor time.Duration
}

// run supervises until a signal arrives on sigs (wormd is stopped, nil
// is returned) or the restart policy gives up (an error).
func (s *supervisor) run(sigs <-chan os.Signal) error {
	r := NewRestarter(s.policy)
	for {
		cmd, exited, err := s.start()
		if err != nil {
			return err
		}
		select {
		case sig := <-sigs:
			s.log.Info("signal; stopping wormd", "signal", sig)
			s.stop(cmd, exited)
			return nil
		case ev := <-exited:
			s.log.Error("wormd exited", "err", ev.err, "ran", ev.ranFor.Round(time.Millisecond))
			delay, giveUp := r.Exited(ev.ranFor)
			if giveUp {
				return fmt.Errorf("wormd failed %d times in a row; giving up (last: %v)", r.Failures(), ev.err)
			}
			s.log.Info("restarting wormd", "in", delay, "failures", r.Failures())
			select {
			case sig := <-sigs:
				s.log.Info("signal during backoff", "signal", sig)
				return nil
			case <-time.After(delay):
			}
		}
	}
}

// start starts wormd once; exited receives its exit.
func (s *supervisor) start() (*exec.Cmd, <-chan exitEvent, error) {
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, nil, fmt.Errorf("ready pipe: %w", err)
	}
	cmd := exec.Command(s.path, s.cfg.WormdArgs()...)
	cmd.Stdout, cmd.Stderr = s.out, s.out
	cmd.ExtraFiles = []*os.File{pw} // fd 3
	cmd.Env = []string{"PATH=/bin", "HOME=/", "TMPDIR=/tmp"}
	s.log.Info("starting wormd", "args", strings.Join(RedactArgs(cmd.Args), " "))
	started := time.Now()
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		return nil, nil, fmt.Errorf("start %s: %w", s.path, err)
	}
	pw.Close() // wormd holds the only write end: EOF when it exits
	exited := make(chan exitEvent, 1)
	readyDone := make(chan struct{})
	go func() {
		defer close(readyDone)
		defer pr.Close()
		line, err := bufio.NewReader(pr).ReadString('\n')
		if err != nil {
			return // wormd exited (or closed fd 3) before it was ready
		}
		s.printReady(line)
	}()
	go func() {
		err := cmd.Wait()
		<-readyDone // a READY line is printed before the exit is reported
		exited <- exitEvent{err: err, ranFor: time.Since(started)}
	}()
	return cmd, exited, nil
}

// printReady writes the contract's readiness line.
func (s *supervisor) printReady(line string) {
	addr := s.cfg.ListenAddr().String()
	if f := strings.Fields(line); len(f) == 2 && f[0] == "ready" {
		addr = f[1]
	}
	fmt.Fprintf(s.out, "WORMSPACE-READY id=%d addr=%s stack=%s uptime_ms=%d\n", s.cfg.ID, addr, s.cfg.Stack, uptimeMillis())
}

// stop sends SIGTERM (wormd flushes) and SIGKILL after stopWait.
func (s *supervisor) stop(cmd *exec.Cmd, exited <-chan exitEvent) {
	cmd.Process.Signal(unix.SIGTERM)
	select {
	case ev := <-exited:
		s.log.Info("wormd stopped", "err", ev.err)
	case <-time.After(s.stopWait):
		s.log.Error("wormd ignored SIGTERM; killing", "after", s.stopWait)
		cmd.Process.Kill()
		<-exited
	}
}

// uptimeMillis reads guest uptime from /proc/uptime (-1 if unreadable).
func uptimeMillis() int64 {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return -1
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return -1
	}
	sec, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return -1
	}
	return int64(sec * 1000)
}
