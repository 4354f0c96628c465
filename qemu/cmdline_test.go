package qemu

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

func baseSpec() Spec {
	mac, _ := net.ParseMAC("52:54:00:77:00:02")
	return Spec{
		Name: "worm-abc123-vm2", Binary: "/usr/bin/qemu-system-x86_64", Accel: AccelTCG,
		Kernel: "/img/vmlinuz", Initrd: "/img/initramfs.cpio", MemoryMiB: 256, CPUs: 1,
		ID: 2, Addr: netip.MustParsePrefix("10.77.0.12/24"), Stack: StackNetstack, Port: 7070,
		Disk: "vm2.img", MAC: mac, Net: NetTAP, TAPFD: 3,
		Console: "vm2.console", QMP: "vm2.qmp",
	}
}

// flagValue returns the value following the first occurrence of flag whose
// value has prefix (so repeated flags like -device can be told apart).
func flagValue(args []string, flag, prefix string) (string, bool) {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag && strings.HasPrefix(args[i+1], prefix) {
			return args[i+1], true
		}
	}
	return "", false
}

func TestSpecArgsTAPNetstack(t *testing.T) {
	s := baseSpec()
	s.Volatile, s.KeyFile, s.SegmentSize = true, "/state/cluster.key", 4096
	args, err := s.Args()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range [][2]string{
		{"-machine", "q35"}, {"-accel", "tcg"}, {"-cpu", "max"}, {"-m", "256"}, {"-smp", "1"},
		{"-kernel", "/img/vmlinuz"}, {"-initrd", "/img/initramfs.cpio"}, {"-name", "worm-abc123-vm2"},
		{"-netdev", "tap,id=net0,fd=3,vhost=off"},
		{"-drive", "file=vm2.img,format=raw,if=none,id=disk0"},
		{"-device", "virtio-blk-pci,drive=disk0"}, {"-device", "virtio-rng-pci,rng=rng0"},
		{"-chardev", "file,id=con0,path=vm2.console,append=on"}, {"-serial", "chardev:con0"},
		{"-qmp", "unix:vm2.qmp,server=on,wait=off"}, {"-display", "none"}, {"-monitor", "none"},
		{"-fw_cfg", "name=opt/org.wormspace/key,file=/state/cluster.key"},
	} {
		if v, ok := flagValue(args, want[0], want[1]); !ok || v != want[1] {
			t.Errorf("missing %s %s in %q", want[0], want[1], args)
		}
	}
	for _, f := range []string{"-nodefaults", "-no-user-config", "-no-reboot"} {
		if !slices.Contains(args, f) {
			t.Errorf("missing %s", f)
		}
	}
	nic, ok := flagValue(args, "-device", "virtio-net-pci,")
	if !ok {
		t.Fatalf("no virtio-net-pci in %q", args)
	}
	for _, w := range []string{"netdev=net0", "mac=52:54:00:77:00:02"} {
		if !strings.Contains(nic, w) {
			t.Errorf("NIC %q lacks %s", nic, w)
		}
	}
	// The guest's netstack (host GSO by default) takes what the guest
	// kernel would: the receive offloads stay on.
	if strings.Contains(nic, "guest_csum") || strings.Contains(nic, "guest_tso4") {
		t.Errorf("netstack guest with the default knobs: offloads off in %q", nic)
	}
	app, _ := flagValue(args, "-append", "")
	want := "console=ttyS0 panic=-1 quiet cryptomgr.notests no_timer_check worm.id=2 worm.addr=10.77.0.12/24 worm.stack=netstack worm.port=7070 worm.data=/dev/vda worm.volatile=1 worm.segsize=4096"
	if app != want {
		t.Errorf("append\n got %q\nwant %q", app, want)
	}
	// The key travels by fw_cfg only: never on an argument vector.
	for _, a := range args {
		if strings.Contains(a, "worm.key") {
			t.Errorf("key on QEMU's command line: %q", a)
		}
	}
}

// TestSpecArgsNetstackOffloadsFollowKnobs: a guest netstack that cannot
// take unfinished checksums or coalesced segments (no host GSO, or a
// fdbased link, or checksums verified) gets a NIC without receive
// offloads; bad knobs do too (the guest refuses them anyway).
func TestSpecArgsNetstackOffloadsFollowKnobs(t *testing.T) {
	for knobs, off := range map[string]bool{
		"":                          false,
		"host_gso=true":             false,
		"go_procs=2":                false,
		"host_gso=false":            true,
		"dispatch=recvmmsg":         true,
		"rx_checksum_offload=false": true,
		"no_such_knob=1":            true,
	} {
		s := baseSpec()
		s.NetstackKnobs = knobs
		args, err := s.Args()
		if err != nil {
			t.Fatal(err)
		}
		nic, _ := flagValue(args, "-device", "virtio-net-pci,")
		for _, w := range []string{"guest_csum=off", "guest_tso4=off", "guest_tso6=off"} {
			if has := strings.Contains(nic, w); has != off {
				t.Errorf("knobs %q: %s in NIC %q is %v, want %v", knobs, w, nic, has, off)
			}
		}
	}
}

func TestSpecArgsKernelStackKeepsOffloads(t *testing.T) {
	s := baseSpec()
	s.Stack = StackKernel
	s.Accel = AccelKVM
	s.Disk = ""
	args, err := s.Args()
	if err != nil {
		t.Fatal(err)
	}
	nic, _ := flagValue(args, "-device", "virtio-net-pci,")
	if strings.Contains(nic, "guest_csum") {
		t.Errorf("kernel stack NIC disables offloads: %q", nic)
	}
	if v, _ := flagValue(args, "-cpu", ""); v != "host" {
		t.Errorf("KVM cpu %q, want host", v)
	}
	if v, _ := flagValue(args, "-accel", ""); v != "kvm" {
		t.Errorf("accel %q, want kvm", v)
	}
	if slices.Contains(args, "-drive") || strings.Contains(s.KernelCmdline(), "worm.data") {
		t.Errorf("disk wired without a disk: %q", args)
	}
}

func TestSpecArgsUserNet(t *testing.T) {
	s := baseSpec()
	s.Net, s.TAPFD, s.HostFwd = NetUser, 0, 40123
	s.Addr = netip.MustParsePrefix("10.0.2.15/24")
	s.Gateway = netip.MustParseAddr("10.0.2.2")
	args, err := s.Args()
	if err != nil {
		t.Fatal(err)
	}
	nd, _ := flagValue(args, "-netdev", "")
	if nd != "user,id=net0,net=10.0.2.0/24,restrict=on,hostfwd=tcp:127.0.0.1:40123-10.0.2.15:7070" {
		t.Errorf("netdev %q", nd)
	}
	if nic, _ := flagValue(args, "-device", "virtio-net-pci,"); strings.Contains(nic, "guest_csum") {
		t.Errorf("user networking needs no checksum workaround: %q", nic)
	}
	if !strings.Contains(s.KernelCmdline(), "worm.gw=10.0.2.2") {
		t.Errorf("no gateway in %q", s.KernelCmdline())
	}
	// The echo floor gets its own forwarded port and worm.echo.
	s.EchoPort, s.EchoFwd = 7071, 40124
	args, err = s.Args()
	if err != nil {
		t.Fatal(err)
	}
	nd, _ = flagValue(args, "-netdev", "")
	if !strings.HasSuffix(nd, ",hostfwd=tcp:127.0.0.1:40123-10.0.2.15:7070,hostfwd=tcp:127.0.0.1:40124-10.0.2.15:7071") {
		t.Errorf("netdev with echo %q", nd)
	}
	if !strings.Contains(s.KernelCmdline(), " worm.echo=7071") {
		t.Errorf("no worm.echo in %q", s.KernelCmdline())
	}
	s.EchoPort = s.Port
	if _, err := s.Args(); !errors.Is(err, ErrConfig) {
		t.Errorf("echo on wormd's port: %v", err)
	}
}

func TestSpecValidate(t *testing.T) {
	for name, mut := range map[string]func(*Spec){
		"auto accel":   func(s *Spec) { s.Accel = AccelAuto },
		"comma key":    func(s *Spec) { s.KeyFile = "/a,b.key" },
		"comma path":   func(s *Spec) { s.Disk = "a,b.img" },
		"no tap fd":    func(s *Spec) { s.TAPFD = 0 },
		"bad stack":    func(s *Spec) { s.Stack = "bsd" },
		"id 0":         func(s *Spec) { s.ID = 0 },
		"ipv6 address": func(s *Spec) { s.Addr = netip.MustParsePrefix("fd00::2/64") },
		"auto net":     func(s *Spec) { s.Net = NetAuto },
		"user no port": func(s *Spec) { s.Net, s.HostFwd = NetUser, 0 },
	} {
		s := baseSpec()
		mut(&s)
		if _, err := s.Args(); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: err %v, want ErrConfig", name, err)
		}
	}
}

func TestParseReady(t *testing.T) {
	r, ok, err := parseReady("[    1.5] x WORMSPACE-READY id=3 addr=10.77.0.13:7070 stack=netstack uptime_ms=1523 extra=1\r")
	if !ok || err != nil {
		t.Fatalf("ok %v err %v", ok, err)
	}
	if r.ID != 3 || r.Addr != "10.77.0.13:7070" || r.Stack != "netstack" || r.Uptime != 1523*time.Millisecond {
		t.Errorf("parsed %+v", r)
	}
	if _, ok, _ := parseReady("WORMSPACE-ERROR wormd exited"); ok {
		t.Error("ERROR line parsed as READY")
	}
	if _, ok, err := parseReady("WORMSPACE-READY id=x"); !ok || err == nil {
		t.Errorf("malformed id: ok %v err %v", ok, err)
	}
}

func TestConfigDefaults(t *testing.T) {
	c := Config{N: 3}
	if err := c.defaults(); err != nil {
		t.Fatal(err)
	}
	if c.Stack != StackNetstack || c.Port != 7070 || c.MemoryMiB != 256 || c.CPUs != 1 ||
		c.Subnet.String() != "10.77.0.0/24" || c.ImageDir != DefaultImageDir || c.StateDir != DefaultStateDir {
		t.Errorf("defaults %+v", c)
	}
	for _, bad := range []Config{{N: 0}, {N: 201}, {N: 1, Stack: "x"}, {N: 1, Key: "zz"}, {N: 1, Subnet: netip.MustParsePrefix("10.0.0.0/28")}} {
		if err := bad.defaults(); !errors.Is(err, ErrConfig) {
			t.Errorf("%+v: %v, want ErrConfig", bad, err)
		}
	}
}
