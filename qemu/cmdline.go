package qemu

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/wormspace/wormspace/netstack"
)

// NetMode selects how a VM's NIC reaches the host.
type NetMode string

const (
	// NetAuto uses NetTAP when the process can create namespaces and TAP
	// devices (CAP_NET_ADMIN and /dev/net/tun) and NetUser otherwise.
	NetAuto NetMode = "auto"
	// NetTAP attaches each VM to a TAP device on a bridge inside a private
	// network namespace; the host reaches VMs from inside that namespace.
	NetTAP NetMode = "tap"
	// NetUser uses QEMU's user-mode networking (slirp) with one host port
	// on 127.0.0.1 forwarded to each VM's server port. No privileges are
	// needed; VMs cannot reach each other (wormservers never do).
	NetUser NetMode = "user"
)

// Stack names for worm.stack.
const (
	StackNetstack = "netstack"
	StackKernel   = "kernel"
)

// Guest device names the launcher wires and the guest init expects.
const (
	// guestDataDev is the first virtio-blk disk, the only one attached.
	guestDataDev = "/dev/vda"
)

// Spec is everything needed to build one QEMU command line. It is a plain
// value so that command-line construction is pure and unit-testable; the
// launcher fills it from a Config and the runtime state (TAP fd number,
// forwarded port).
type Spec struct {
	// Name is passed to -name; the launcher also uses it to recognise its
	// own QEMU processes in /proc before signalling a recorded pid.
	Name string
	// Binary is the QEMU executable (qemu-system-x86_64).
	Binary string
	// Accel must be resolved (AccelKVM or AccelTCG), not AccelAuto.
	Accel Accel
	// Kernel and Initrd are the boot image files.
	Kernel, Initrd string
	// MemoryMiB and CPUs size the guest (-m, -smp).
	MemoryMiB, CPUs int

	// Guest parameters, passed on the kernel command line (see the guest
	// contract in the package documentation).
	ID            int
	Addr          netip.Prefix // worm.addr
	Gateway       netip.Addr   // worm.gw, optional
	Stack         string       // worm.stack
	Port          int          // worm.port
	EchoPort      int          // worm.echo, optional: wormd's echo floor
	Volatile      bool         // worm.volatile=1
	SegmentSize   int          // worm.segsize, optional
	NetstackKnobs string       // worm.knobs, optional: wormd -netstack-knobs
	Debug         bool         // worm.debug=1

	// KeyFile is a file holding the cluster key in hex, handed to the
	// guest as the fw_cfg item FwCfgKey (read by the guest init from
	// /sys/firmware/qemu_fw_cfg). Not the kernel command line: -append
	// shows in every host user's ps and in the guest's /proc/cmdline,
	// and the file= form keeps the key off QEMU's own argv too.
	// Optional: without it the guest's wormd serves unauthenticated.
	KeyFile string

	// Disk is the raw data disk file; empty means no disk (the guest then
	// keeps its data on tmpfs and warns).
	Disk string
	// MAC is the NIC's address; fixed per VM so restarts keep it.
	MAC net.HardwareAddr

	// Net is NetTAP or NetUser (resolved, not NetAuto).
	Net NetMode
	// TAPFD is the descriptor number of the TAP file in the child process
	// (3 + its index in exec.Cmd.ExtraFiles); used with NetTAP.
	TAPFD int
	// HostFwd is the 127.0.0.1 port forwarded to the guest's Port; used
	// with NetUser.
	HostFwd int
	// EchoFwd is the 127.0.0.1 port forwarded to the guest's EchoPort
	// (NetUser with EchoPort set).
	EchoFwd int

	// Console is the file receiving the serial console (appended to, so a
	// restarted VM's log follows the previous boot's).
	Console string
	// QMP is the path of the QMP control socket (graceful power-off).
	// Unix socket paths are limited to 107 bytes, so the launcher runs
	// QEMU in the state directory and passes a relative name.
	QMP string
}

// FwCfgKey is the fw_cfg item carrying the cluster key to the guest.
// Names under opt/ are reserved for users of QEMU; the vendor part keeps
// it apart from anyone else's (QEMU's docs ask for an RFC 2606 style
// prefix). The guest init reads it (kernel/guest.FwCfgKeyPath).
const FwCfgKey = "opt/org.wormspace/key"

// KernelCmdline returns the -append string for s.
func (s *Spec) KernelCmdline() string {
	p := []string{
		"console=ttyS0",
		// Reboot immediately on panic; with -no-reboot QEMU then exits
		// and the launcher sees a dead VM instead of a hung one.
		"panic=-1",
		"quiet",
		// Skip the crypto self-tests: 0.4 s of TCG boot time (boot-notes).
		"cryptomgr.notests",
		// Skip the IO-APIC timer check: under TCG on a loaded host the
		// emulated timer interrupts can miss its window, and the kernel
		// panics with "IO-APIC + timer doesn't work!" (seen in CI with
		// three guests booting at load 10). The timer is fine; only the
		// check is too strict for emulation.
		"no_timer_check",
		"worm.id=" + strconv.Itoa(s.ID),
		"worm.addr=" + s.Addr.String(),
		"worm.stack=" + s.Stack,
		"worm.port=" + strconv.Itoa(s.Port),
	}
	if s.Gateway.IsValid() {
		p = append(p, "worm.gw="+s.Gateway.String())
	}
	if s.Disk != "" {
		p = append(p, "worm.data="+guestDataDev)
	}
	if s.EchoPort > 0 {
		p = append(p, "worm.echo="+strconv.Itoa(s.EchoPort))
	}
	if s.Volatile {
		p = append(p, "worm.volatile=1")
	}
	if s.SegmentSize > 0 {
		p = append(p, "worm.segsize="+strconv.Itoa(s.SegmentSize))
	}
	if s.NetstackKnobs != "" {
		p = append(p, "worm.knobs="+s.NetstackKnobs)
	}
	if s.Debug {
		p = append(p, "worm.debug=1")
	}
	return strings.Join(p, " ")
}

// validate checks the fields Args depends on.
func (s *Spec) validate() error {
	switch {
	case s.Binary == "":
		return fmt.Errorf("%w: no QEMU binary", ErrConfig)
	case s.Accel != AccelKVM && s.Accel != AccelTCG:
		return fmt.Errorf("%w: accel %q not resolved", ErrConfig, s.Accel)
	case s.Kernel == "" || s.Initrd == "":
		return fmt.Errorf("%w: kernel and initrd are required", ErrConfig)
	case s.MemoryMiB <= 0 || s.CPUs <= 0:
		return fmt.Errorf("%w: memory %d MiB, %d CPUs", ErrConfig, s.MemoryMiB, s.CPUs)
	case s.ID <= 0:
		return fmt.Errorf("%w: VM id %d (ids start at 1)", ErrConfig, s.ID)
	case !s.Addr.IsValid() || !s.Addr.Addr().Is4():
		return fmt.Errorf("%w: guest address %v (want an IPv4 prefix)", ErrConfig, s.Addr)
	case s.Stack != StackNetstack && s.Stack != StackKernel:
		return fmt.Errorf("%w: stack %q (want netstack or kernel)", ErrConfig, s.Stack)
	case s.Port <= 0 || s.Port > 65535:
		return fmt.Errorf("%w: port %d", ErrConfig, s.Port)
	case s.EchoPort < 0 || s.EchoPort > 65535 || (s.EchoPort != 0 && s.EchoPort == s.Port):
		return fmt.Errorf("%w: echo port %d (wormd on %d)", ErrConfig, s.EchoPort, s.Port)
	case len(s.MAC) != 6:
		return fmt.Errorf("%w: MAC %v", ErrConfig, s.MAC)
	case s.Console == "" || s.QMP == "":
		return fmt.Errorf("%w: console and QMP paths are required", ErrConfig)
	}
	for _, f := range []string{s.Kernel, s.Initrd, s.Disk, s.Console, s.QMP, s.KeyFile} {
		// QEMU option values are comma-separated; a comma in a path
		// would need doubling, which nothing here needs to support.
		if strings.Contains(f, ",") {
			return fmt.Errorf("%w: path %q contains a comma", ErrConfig, f)
		}
	}
	switch s.Net {
	case NetTAP:
		if s.TAPFD < 3 {
			return fmt.Errorf("%w: TAP fd %d", ErrConfig, s.TAPFD)
		}
	case NetUser:
		if s.HostFwd <= 0 || s.HostFwd > 65535 {
			return fmt.Errorf("%w: forwarded port %d", ErrConfig, s.HostFwd)
		}
	default:
		return fmt.Errorf("%w: network mode %q not resolved", ErrConfig, s.Net)
	}
	return nil
}

// Args returns QEMU's argument vector (without the binary) for s.
func (s *Spec) Args() ([]string, error) {
	if err := s.validate(); err != nil {
		return nil, err
	}
	a := []string{
		"-name", s.Name,
		"-machine", "q35",
	}
	switch s.Accel {
	case AccelKVM:
		a = append(a, "-accel", "kvm", "-cpu", "host")
	case AccelTCG:
		// -cpu max, not the default qemu64: qemu64 lacks RDRAND and the
		// guest stalls about 1.1 s in getrandom at boot (boot-notes).
		a = append(a, "-accel", "tcg", "-cpu", "max")
	}
	a = append(a,
		"-m", strconv.Itoa(s.MemoryMiB),
		"-smp", strconv.Itoa(s.CPUs),
		// No default devices (VGA, NIC, floppy, CD-ROM) and no config
		// files: the machine is exactly what is listed here.
		"-nodefaults", "-no-user-config",
		"-display", "none",
		"-monitor", "none",
		// Guest reboot or power-off makes QEMU exit (status 0): the guest
		// init powers off with reboot(RESTART), a panic reboots
		// (panic=-1), and either way the launcher sees the VM end.
		"-no-reboot",
		"-kernel", s.Kernel,
		"-initrd", s.Initrd,
		"-append", s.KernelCmdline(),
		// Serial console to a file, appended so restarts keep history;
		// the launcher tails it for WORMSPACE-READY.
		"-chardev", "file,id=con0,path="+s.Console+",append=on",
		"-serial", "chardev:con0",
		"-qmp", "unix:"+s.QMP+",server=on,wait=off",
		// Entropy for the guest's getrandom from the host.
		"-object", "rng-random,id=rng0,filename=/dev/urandom",
		"-device", "virtio-rng-pci,rng=rng0",
	)
	if s.KeyFile != "" {
		// QEMU reads the file when it starts; the guest sees it as
		// /sys/firmware/qemu_fw_cfg/by_name/<FwCfgKey>/raw.
		a = append(a, "-fw_cfg", "name="+FwCfgKey+",file="+s.KeyFile)
	}
	switch s.Net {
	case NetTAP:
		// vhost=off: vhost-net only helps KVM and needs /dev/vhost-net;
		// the TAP fd is already open and configured (NO_PI|VNET_HDR).
		a = append(a, "-netdev", fmt.Sprintf("tap,id=net0,fd=%d,vhost=off", s.TAPFD))
	case NetUser:
		// restrict=on isolates the guest (no traffic to the host or the
		// outside world) except for the explicit forwarding rule.
		nd := fmt.Sprintf("user,id=net0,net=%s,restrict=on,hostfwd=tcp:127.0.0.1:%d-%s:%d",
			s.Addr.Masked(), s.HostFwd, s.Addr.Addr(), s.Port)
		if s.EchoPort > 0 && s.EchoFwd > 0 {
			nd += fmt.Sprintf(",hostfwd=tcp:127.0.0.1:%d-%s:%d", s.EchoFwd, s.Addr.Addr(), s.EchoPort)
		}
		a = append(a, "-netdev", nd)
	}
	a = append(a, "-device", s.nicDevice())
	if s.Disk != "" {
		a = append(a,
			"-drive", "file="+s.Disk+",format=raw,if=none,id=disk0",
			"-device", "virtio-blk-pci,drive=disk0",
		)
	}
	return a, nil
}

// nicDevice returns the virtio-net-pci -device value.
func (s *Spec) nicDevice() string {
	d := "virtio-net-pci,netdev=net0,mac=" + s.MAC.String() +
		// No option ROM: the kernel is loaded directly, nothing PXE-boots,
		// and skipping efi-virtio.rom saves firmware time.
		",romfile="
	if s.Stack == StackNetstack && s.Net == NetTAP && !guestTakesOffloads(s.NetstackKnobs) {
		// Checksum offload towards the guest off. Over a TAP with
		// VNET_HDR, frames from the host kernel carry CHECKSUM_PARTIAL
		// (checksum left to the receiver) when the guest offers
		// VIRTIO_NET_F_GUEST_CSUM; the guest kernel would accept them,
		// but gVisor netstack reads eth0 through AF_PACKET, sees the
		// unfinished checksum and drops every segment, so connections
		// time out (boot-notes). With guest_csum=off QEMU clears
		// TUN_F_CSUM on the TAP and the host kernel completes checksums
		// before handing frames over. The TSO/ECN/UFO receive offloads
		// depend on GUEST_CSUM in the virtio spec, so they go too (the
		// host then segments large sends itself).
		// The kernel stack handles partial checksums and keeps offloads,
		// and so does a guest netstack with host GSO (below).
		d += ",guest_csum=off,guest_tso4=off,guest_tso6=off,guest_ecn=off,guest_ufo=off"
	}
	return d
}

// guestTakesOffloads reports whether a netstack guest with these knobs
// (worm.knobs, over netstack.DefaultKnobs) takes frames as the guest
// kernel would: with host GSO its link reads coalesced segments of up to
// 64 KiB whole and, trusting the link's checksums, accepts unfinished
// ones, so the virtio-net device keeps its receive offloads (the host
// then hands the guest whole GSO segments instead of cutting them into
// MTU-sized frames; the guest's init switches LRO on for them,
// netstack.PrepareNICFor). Knobs that do not parse keep the offloads off,
// the choice that works with every link.
func guestTakesOffloads(knobs string) bool {
	k, err := netstack.ParseKnobs(knobs)
	return err == nil && k.HostGSO && k.RXChecksumOffload
}
