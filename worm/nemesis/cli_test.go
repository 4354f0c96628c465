package nemesis_test

import (
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestCLI runs `worm nemesis` briefly: a summary with every section and a
// PASS line for the seed, exit status 0; an unknown fault is refused.
func TestCLI(t *testing.T) {
	worm := filepath.Join(bin, "worm")
	cmd := exec.Command(worm, "nemesis", "-seed", "5", "-duration", "2s", "-faults", "kill,pause", "-dir", t.TempDir())
	cmd.Env = append(cmd.Environ(), "WORMD="+wormd)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("worm nemesis: %v\n%s", err, out)
	}
	for _, want := range []string{"== seed 5", "operations:", "log-append", "kv-put", "faults: kill=", "recovery:", "verdicts:", "ok   registers", "ok   kv", "PASS seed 5", "1 seeds passed"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	out, err = exec.Command(worm, "nemesis", "-faults", "kill,meteor").CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), `unknown fault "meteor"`) {
		t.Fatalf("unknown fault: %v\n%s", err, out)
	}
	// The VM harness refuses a fault it does not know before booting
	// anything.
	out, err = exec.Command(worm, "nemesis", "-vm", "-faults", "kill,disk").CombinedOutput()
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), `unknown VM fault "disk"`) {
		t.Fatalf("unknown VM fault: %v\n%s", err, out)
	}
}
