package guest

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseCmdlineFull(t *testing.T) {
	line := `BOOT_IMAGE=/vmlinuz console=ttyS0 panic=-1 quiet cryptomgr.notests worm.id=3 worm.addr=10.77.0.13/24 worm.gw=10.77.0.1 worm.stack=kernel worm.port=7171 worm.echo=7172 worm.data=/dev/vda worm.volatile=1 worm.key=00FFab worm.segsize=4096 worm.debug=1` + "\n"
	c, warns, err := ParseCmdline(line)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{ID: 3, Addr: netip.MustParsePrefix("10.77.0.13/24"), Gateway: netip.MustParseAddr("10.77.0.1"),
		Stack: StackKernel, Port: 7171, EchoPort: 7172, Data: "/dev/vda", Volatile: true, Key: "00ffab", SegmentSize: 4096, Debug: true}
	if c != want {
		t.Fatalf("got  %+v\nwant %+v", c, want)
	}
	if len(warns) != 0 {
		t.Errorf("warnings: %v", warns)
	}
	args := strings.Join(c.WormdArgs(), " ")
	if args != "-id 3 -data /data/wormd -listen 10.77.0.13:7171 -stack kernel -echo-listen 10.77.0.13:7172 -volatile -key-hex 00ffab -segment-size 4096 -ready-fd 3" {
		t.Errorf("args: %s", args)
	}
}

func TestParseCmdlineDefaults(t *testing.T) {
	c, warns, err := ParseCmdline("console=ttyS0 worm.addr=10.0.2.15/24 worm.gw=10.0.2.2 worm.color=blue")
	if err != nil {
		t.Fatal(err)
	}
	if c.ID != 1 || c.Stack != StackNetstack || c.Port != 7070 || c.Data != "" || c.Volatile || c.Debug {
		t.Errorf("defaults: %+v", c)
	}
	var params []string
	for _, w := range warns {
		params = append(params, w.Param)
	}
	if !slices.Equal(params, []string{"worm.color", "worm.data"}) {
		t.Errorf("warnings %v", warns)
	}
	args := strings.Join(c.WormdArgs(), " ")
	if args != "-id 1 -data /data/wormd -listen 10.0.2.15:7070 -stack netstack -iface eth0 -addr 10.0.2.15/24 -gw 10.0.2.2 -ready-fd 3" {
		t.Errorf("args: %s", args)
	}
}

func TestParseCmdlineKnobs(t *testing.T) {
	c, _, err := ParseCmdline("worm.addr=10.0.0.2/24 worm.knobs=dispatch=recvmmsg,processors=1,send_buffer=4096/65536/262144")
	if err != nil {
		t.Fatal(err)
	}
	if c.Knobs != "dispatch=recvmmsg,processors=1,send_buffer=4096/65536/262144" {
		t.Fatalf("knobs %q", c.Knobs)
	}
	args := strings.Join(c.WormdArgs(), " ")
	if !strings.Contains(args, " -addr 10.0.0.2/24 -netstack-knobs dispatch=recvmmsg,processors=1,send_buffer=4096/65536/262144 ") {
		t.Errorf("args: %s", args)
	}
	back, _, err := ParseCmdline(c.Cmdline())
	if err != nil || back != c {
		t.Fatalf("round trip: %+v %v, want %+v", back, err, c)
	}
	// The kernel stack has no knobs to pass.
	c.Stack = StackKernel
	if args := strings.Join(c.WormdArgs(), " "); strings.Contains(args, "knobs") {
		t.Errorf("kernel stack given knobs: %s", args)
	}
}

func TestParseCmdlineErrors(t *testing.T) {
	for _, line := range []string{
		"worm.addr=10.0.0.1/24 worm.knobs=",
		"worm.addr=10.0.0.1/24 worm.knobs=dispatch",
		"worm.addr=10.0.0.1/24 worm.knobs=a=b;reboot",
		"worm.addr=10.0.0.1/24 worm.knobs=a=b,,c=d",
		"worm.addr=10.0.0.1/24 worm.id=x",
		"worm.addr=10.0.0.1",
		"worm.addr=fd00::1/64",
		"worm.addr=10.0.0.1/32",
		"worm.addr=10.0.0.1/24 worm.stack=dpdk",
		"worm.addr=10.0.0.1/24 worm.port=0",
		"worm.addr=10.0.0.1/24 worm.port=70000",
		"worm.addr=10.0.0.1/24 worm.data=vda",
		"worm.addr=10.0.0.1/24 worm.key=xyz",
		"worm.addr=10.0.0.1/24 worm.volatile=maybe",
		"worm.addr=10.0.0.1/24 worm.segsize=-1",
		"worm.addr=10.0.0.1/24 worm.gw=10.0.0.1",
		"worm.addr=10.0.0.1/24 worm.gw=::1",
	} {
		if _, _, err := ParseCmdline(line); !errors.Is(err, ErrBadParam) {
			t.Errorf("%q: err = %v, want ErrBadParam", line, err)
		}
	}
	if _, _, err := ParseCmdline("console=ttyS0 worm.id=2"); !errors.Is(err, ErrNoAddr) {
		t.Errorf("no addr: %v", err)
	}
}

func TestParseCmdlineQuotesAndRepeats(t *testing.T) {
	c, warns, err := ParseCmdline(`dyndbg="file x.c +p" worm.addr=10.0.0.9/8 worm.port=1 worm.port="2" worm.debug`)
	if err != nil {
		t.Fatal(err)
	}
	if c.Port != 2 || !c.Debug || c.Addr.Bits() != 8 {
		t.Errorf("%+v", c)
	}
	if len(warns) != 2 || warns[0].Param != "worm.port" {
		t.Errorf("warnings %v", warns)
	}
	if got := SplitCmdline(` a  "b c"d  e="f g" `); !slices.Equal(got, []string{"a", "b cd", "e=f g"}) {
		t.Errorf("split %q", got)
	}
}

func TestGatewayOffSubnetWarns(t *testing.T) {
	_, warns, err := ParseCmdline("worm.addr=10.0.0.5/24 worm.gw=10.9.0.1 worm.data=/dev/vdb")
	if err != nil || len(warns) != 1 || warns[0].Param != "worm.gw" {
		t.Errorf("warns %v err %v", warns, err)
	}
}

// FuzzParseCmdline: never panics; an accepted line gives a valid config
// that survives a Cmdline round trip.
func FuzzParseCmdline(f *testing.F) {
	for _, s := range []string{
		"console=ttyS0 panic=-1 quiet worm.id=1 worm.addr=10.77.0.11/24 worm.stack=netstack worm.port=7070 worm.data=/dev/vda",
		"worm.addr=10.0.2.15/24 worm.gw=10.0.2.2 worm.stack=kernel worm.volatile=1 worm.key=00ff worm.segsize=4096 worm.debug=1",
		`worm.addr="10.0.0.1/8" worm.x=1 worm.id=`,
		"worm.addr=10.0.0.1/24 worm.id=99999999999999999999",
		"worm.addr=10.0.0.1/24 worm.echo=7070",
		"worm.addr=10.0.0.1/24 worm.echo=7071",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, _, err := ParseCmdline(s)
		if err != nil {
			return
		}
		if !c.Addr.IsValid() || !c.Addr.Addr().Is4() || c.Port < 1 || c.Port > 65535 || c.ID < 0 ||
			(c.Stack != StackKernel && c.Stack != StackNetstack) {
			t.Fatalf("accepted invalid config %+v from %q", c, s)
		}
		if c.Data != "" && !strings.HasPrefix(c.Data, "/dev/") {
			t.Fatalf("data %q", c.Data)
		}
		c2, _, err := ParseCmdline(c.Cmdline())
		if err != nil {
			t.Fatalf("round trip of %q: %v", c.Cmdline(), err)
		}
		if c2 != c {
			t.Fatalf("round trip: %+v != %+v", c2, c)
		}
		if a := c.WormdArgs(); a[len(a)-1] != "3" || a[len(a)-2] != "-ready-fd" {
			t.Fatalf("args %q", a)
		}
	})
}

func TestRestarter(t *testing.T) {
	p := RestartPolicy{Initial: 100 * time.Millisecond, Max: time.Second, StableAfter: 10 * time.Second, MaxFailures: 6}
	r := NewRestarter(p)
	var delays []time.Duration
	for {
		d, giveUp := r.Exited(time.Millisecond)
		if giveUp {
			break
		}
		delays = append(delays, d)
	}
	want := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for i := range want {
		want[i] *= time.Millisecond
	}
	if !slices.Equal(delays, want) {
		t.Fatalf("delays %v, want %v", delays, want)
	}
	// A healthy run resets the count.
	r = NewRestarter(p)
	r.Exited(0)
	r.Exited(0)
	if d, _ := r.Exited(time.Minute); d != p.Initial || r.Failures() != 1 {
		t.Errorf("after a stable run: delay %v failures %d", d, r.Failures())
	}
	// The default policy gives up eventually and never waits more than Max.
	r = NewRestarter(DefaultRestartPolicy)
	for i := 0; ; i++ {
		d, giveUp := r.Exited(0)
		if giveUp {
			if i != DefaultRestartPolicy.MaxFailures {
				t.Errorf("gave up after %d failures", i)
			}
			break
		}
		if d > DefaultRestartPolicy.Max {
			t.Errorf("delay %v", d)
		}
	}
}

func TestParseOrder(t *testing.T) {
	got := ParseOrder("virtio_ring.ko\n# comment\n\n virtio.ko  # trailing\n../../etc/passwd\nsub/x.ko\nvirtio_net.ko")
	if want := []string{"virtio_ring.ko", "virtio.ko", "virtio_net.ko"}; !slices.Equal(got, want) {
		t.Errorf("got %q want %q", got, want)
	}
}

func TestMergeCmdline(t *testing.T) {
	got := MergeCmdline("worm.stack=kernel worm.port=7000 quiet\n", "console=ttyS0 worm.addr=10.0.0.2/24 worm.port=7070")
	if got != "worm.stack=kernel console=ttyS0 worm.addr=10.0.0.2/24 worm.port=7070" {
		t.Fatalf("merged %q", got)
	}
	c, warns, err := ParseCmdline(got)
	if err != nil || c.Stack != StackKernel || c.Port != 7070 {
		t.Fatalf("%+v %v", c, err)
	}
	for _, w := range warns {
		if strings.Contains(w.Msg, "more than once") {
			t.Errorf("duplicate after merge: %v", w)
		}
	}
	if got := MergeCmdline("", "a b"); got != "a b" {
		t.Errorf("empty defaults: %q", got)
	}
}

func TestWantsDebug(t *testing.T) {
	for line, want := range map[string]bool{
		"worm.debug=1 worm.port=0":  true,
		"worm.debug":                true,
		"worm.debug=1 worm.debug=0": false,
		"worm.debugx=1":             false,
		"":                          false,
	} {
		if got := WantsDebug(line); got != want {
			t.Errorf("%q: %v", line, got)
		}
	}
}

// TestFwCfgKey: the key QEMU hands over by fw_cfg reaches wormd as
// -key-file; an absent item is ErrNoFwCfgKey (wormd then runs without a
// key), and an unusable one is an error init stops on.
func TestFwCfgKey(t *testing.T) {
	dir := t.TempDir()
	if _, err := FwCfgKey(filepath.Join(dir, "absent")); !errors.Is(err, ErrNoFwCfgKey) {
		t.Fatalf("absent item: %v, want ErrNoFwCfgKey", err)
	}
	for name, content := range map[string]string{"not hex": "zz" + strings.Repeat("ab", 32), "short": strings.Repeat("ab", 31)} {
		p := filepath.Join(dir, strings.ReplaceAll(name, " ", "-"))
		os.WriteFile(p, []byte(content+"\n"), 0o600)
		if _, err := FwCfgKey(p); err == nil || errors.Is(err, ErrNoFwCfgKey) {
			t.Errorf("%s key: %v, want a description", name, err)
		}
	}
	good := filepath.Join(dir, "raw")
	os.WriteFile(good, []byte(strings.Repeat("ab", 32)+"\n"), 0o600)
	path, err := FwCfgKey(good)
	if err != nil || path != good {
		t.Fatalf("FwCfgKey(good) = %q, %v", path, err)
	}
	c, _, err := ParseCmdline("worm.addr=10.0.0.2/24")
	if err != nil {
		t.Fatal(err)
	}
	c.KeyFile = path
	args := strings.Join(c.WormdArgs(), " ")
	if !strings.Contains(args, "-key-file "+good) || strings.Contains(args, "-key-hex") {
		t.Errorf("WormdArgs = %q, want -key-file %s", args, good)
	}
	c.Key = "00ff" // a key on the command line wins
	if args := strings.Join(c.WormdArgs(), " "); strings.Contains(args, "-key-file") {
		t.Errorf("WormdArgs with worm.key = %q", args)
	}
}
