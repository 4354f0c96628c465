package guest

import (
	"bufio"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestWormdAcceptsWormdArgs checks the contract between init and the real
// server: it builds cmd/wormd, runs it on loopback with the argument
// vector init would give it (key, segment size, volatile; only -data
// points at a temporary directory instead of /data/wormd), and waits for
// "ready ADDR" on fd 3. A renamed or removed wormd flag fails here instead
// of in a booted VM.
func TestWormdAcceptsWormdArgs(t *testing.T) {
	if testing.Short() {
		t.Skip("builds cmd/wormd")
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go toolchain: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "wormd")
	build := exec.Command(gobin, "build", "-o", bin, "../../cmd/wormd")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build cmd/wormd: %v\n%s", err, out)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cfg, _, err := ParseCmdline("worm.id=3 worm.addr=127.0.0.1/8 worm.stack=kernel worm.port=" + strconv.Itoa(port) +
		" worm.volatile=1 worm.segsize=64 worm.key=" + strings.Repeat("ab", 32))
	if err != nil {
		t.Fatal(err)
	}
	args := cfg.WormdArgs()
	for _, want := range []string{"-id", "-data", "-listen", "-stack", "-volatile", "-key-hex", "-segment-size", "-ready-fd"} {
		if !slices.Contains(args, want) {
			t.Fatalf("WormdArgs %q lacks %s", args, want)
		}
	}
	i := slices.Index(args, "-data")
	args[i+1] = filepath.Join(t.TempDir(), "wormd")

	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	var out syncBuffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.ExtraFiles = []*os.File{pw}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	type res struct {
		line string
		err  error
	}
	ch := make(chan res, 1)
	go func() {
		l, err := bufio.NewReader(pr).ReadString('\n')
		ch <- res{l, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("wormd %q did not report ready: %v\n%s", RedactArgs(args), r.err, out.String())
		}
		want := "ready " + netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port)).String()
		if strings.TrimSpace(r.line) != want {
			t.Errorf("ready line %q, want %q", r.line, want)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("no ready line within 30s\n%s", out.String())
	}
	// wormd's log reaches out through exec's copying goroutine, which may
	// lag the ready line on the pipe: wait for it (bounded).
	wants := []string{"segment_size=64", "auth=true", "VOLATILE"}
	has := func(log string) bool {
		for _, w := range wants {
			if !strings.Contains(log, w) {
				return false
			}
		}
		return true
	}
	for end := time.Now().Add(10 * time.Second); !has(out.String()) && time.Now().Before(end); {
		time.Sleep(20 * time.Millisecond)
	}
	log := out.String()
	for _, want := range wants {
		if !strings.Contains(log, want) {
			t.Errorf("wormd log lacks %q (flag not applied?):\n%s", want, log)
		}
	}
}

func TestRedactArgs(t *testing.T) {
	got := RedactArgs([]string{"/bin/wormd", "-id", "1", "-key-hex", "abcd", "-key-hex=ef", "-ready-fd", "3"})
	want := []string{"/bin/wormd", "-id", "1", "-key-hex", "<redacted>", "-key-hex=<redacted>", "-ready-fd", "3"}
	if !slices.Equal(got, want) {
		t.Fatalf("RedactArgs = %q", got)
	}
}
