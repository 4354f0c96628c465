package netstack

import (
	"bytes"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	gvlog "gvisor.dev/gvisor/pkg/log"
)

// gVisor's process-wide log reaches slog.Default() once a stack exists,
// marked component=gvisor, at slog's level for it; gVisor's debug
// messages stay off.
func TestGVisorLogGoesToSlog(t *testing.T) {
	var buf bytes.Buffer
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	defer slog.SetDefault(prev)

	la, _ := Pipe()
	st, err := New(la, WithAddress(netip.MustParsePrefix("192.168.79.1/24")))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	gvlog.Warningf("port %d is in use", 7)
	gvlog.Infof("an info %s", "line")
	gvlog.Debugf("a debug line")
	out := buf.String()
	for _, want := range []string{`level=WARN msg="port 7 is in use" component=gvisor`, `level=INFO msg="an info line" component=gvisor`} {
		if !strings.Contains(out, want) {
			t.Errorf("slog output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "a debug line") {
		t.Errorf("gVisor's debug messages were emitted:\n%s", out)
	}
}
