package guest

import (
	"bytes"
	"encoding/binary"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// syncBuffer is a goroutine-safe console.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// fakeWormd writes a shell script standing in for /bin/wormd.
func fakeWormd(t *testing.T, body string) string {
	t.Helper()
	if _, err := os.Stat("/bin/sh"); err != nil {
		t.Skip("no /bin/sh")
	}
	p := filepath.Join(t.TempDir(), "wormd")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func testSupervisor(t *testing.T, path string, out *syncBuffer) *supervisor {
	cfg := Config{ID: 4, Addr: netip.MustParsePrefix("10.77.0.14/24"), Stack: StackKernel, Port: 7070}
	return &supervisor{
		log:      slog.New(slog.NewTextHandler(out, nil)),
		cfg:      cfg,
		path:     path,
		out:      out,
		policy:   RestartPolicy{Initial: time.Millisecond, Max: 4 * time.Millisecond, StableAfter: time.Hour, MaxFailures: 3},
		stopWait: 5 * time.Second,
	}
}

// A wormd that reports ready and then crashes is restarted with backoff
// until the policy gives up; each start prints READY with its argv.
func TestSuperviseRestartsAndGivesUp(t *testing.T) {
	out := &syncBuffer{}
	args := filepath.Join(t.TempDir(), "args")
	s := testSupervisor(t, fakeWormd(t, `echo "$@" >> `+args+`; echo "ready 10.77.0.14:7070" >&3; exit 3`), out)
	err := s.run(make(chan os.Signal))
	if err == nil || !strings.Contains(err.Error(), "giving up") {
		t.Fatalf("run = %v", err)
	}
	log := out.String()
	if n := strings.Count(log, "WORMSPACE-READY id=4 addr=10.77.0.14:7070 stack=kernel uptime_ms="); n != 4 {
		t.Errorf("%d READY lines, want 4 (1 start + 3 restarts):\n%s", n, log)
	}
	got, _ := os.ReadFile(args)
	lines := strings.Split(strings.TrimSpace(string(got)), "\n")
	if len(lines) != 4 || lines[0] != strings.Join(s.cfg.WormdArgs(), " ") {
		t.Errorf("argv %q", lines)
	}
}

// A signal stops a running wormd with SIGTERM and ends supervision.
func TestSuperviseStopsOnSignal(t *testing.T) {
	out := &syncBuffer{}
	pidFile := filepath.Join(t.TempDir(), "pid")
	s := testSupervisor(t, fakeWormd(t, `echo $$ > `+pidFile+`; trap 'echo got-term; exit 0' TERM; echo "ready 10.77.0.14:7070" >&3; while :; do sleep 0.05; done`), out)
	sigs := make(chan os.Signal, 1)
	done := make(chan error, 1)
	go func() { done <- s.run(sigs) }()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), "WORMSPACE-READY") {
		if time.Now().After(deadline) {
			t.Fatalf("never ready:\n%s", out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	sigs <- syscall.SIGTERM
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("supervisor did not stop:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "got-term") {
		t.Errorf("wormd did not get SIGTERM:\n%s", out.String())
	}
	if strings.Count(out.String(), "WORMSPACE-READY") != 1 {
		t.Errorf("restarted after a stop:\n%s", out.String())
	}
}

func TestIsPowerPress(t *testing.T) {
	ev := make([]byte, inputEventSize)
	binary.NativeEndian.PutUint16(ev[16:], evKey)
	binary.NativeEndian.PutUint16(ev[18:], keyPower)
	binary.NativeEndian.PutUint32(ev[20:], 1)
	if !isPowerPress(ev) {
		t.Error("KEY_POWER press not recognised")
	}
	binary.NativeEndian.PutUint32(ev[20:], 0) // release
	if isPowerPress(ev) {
		t.Error("release taken for a press")
	}
}
