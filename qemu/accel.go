package qemu

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// Accel selects QEMU's accelerator.
type Accel string

const (
	// AccelAuto uses KVM when /dev/kvm is usable and TCG otherwise.
	AccelAuto Accel = "auto"
	// AccelKVM runs the guest with hardware virtualisation
	// (-accel kvm -cpu host).
	AccelKVM Accel = "kvm"
	// AccelTCG runs the guest under QEMU's binary translator
	// (-accel tcg -cpu max).
	AccelTCG Accel = "tcg"
)

// ParseAccel parses "auto", "kvm" or "tcg" (the empty string means auto).
func ParseAccel(s string) (Accel, error) {
	switch Accel(s) {
	case "", AccelAuto:
		return AccelAuto, nil
	case AccelKVM, AccelTCG:
		return Accel(s), nil
	}
	return "", fmt.Errorf("%w: accel %q (want auto, kvm or tcg)", ErrConfig, s)
}

// kvmDevice is the KVM control device; a variable so tests can point the
// probe at files that are not KVM.
var kvmDevice = "/dev/kvm"

// kvmAPIVersion is the only KVM API version Linux has ever reported
// (KVM_API_VERSION in <linux/kvm.h>).
const kvmAPIVersion = 12

// kvmGetAPIVersion is the KVM_GET_API_VERSION ioctl, _IO(KVMIO=0xAE, 0x00).
const kvmGetAPIVersion = 0xAE00

// ErrNoKVM is returned (wrapped) when KVM is requested but not usable.
var ErrNoKVM = errors.New("qemu: KVM is not usable")

// ProbeKVM reports whether KVM can run the image's guest: /dev/kvm opens
// read-write, answers KVM_GET_API_VERSION with the stable API version,
// and the CPU has hardware virtualisation (the vmx or svm flag). The last
// check matters where /dev/kvm is served without it: kvm_pvm (a
// "pagetable-based" KVM for nested use without VMX/SVM) answers every
// probe but runs only guest kernels built for PVM, and QEMU aborts on a
// stock one ("failed to set MSR 0x10a"). The error says why not (missing
// device, permission, a device that is not KVM, no hardware
// virtualisation); it wraps ErrNoKVM.
func ProbeKVM() error {
	f, err := os.OpenFile(kvmDevice, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNoKVM, err)
	}
	defer f.Close()
	sc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNoKVM, err)
	}
	var v uintptr
	var errno unix.Errno
	if err := sc.Control(func(fd uintptr) {
		v, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, kvmGetAPIVersion, 0)
	}); err != nil {
		return fmt.Errorf("%w: %w", ErrNoKVM, err)
	}
	if errno != 0 {
		return fmt.Errorf("%w: KVM_GET_API_VERSION on %s: %v", ErrNoKVM, kvmDevice, errno)
	}
	if v != kvmAPIVersion {
		return fmt.Errorf("%w: %s reports API version %d, want %d", ErrNoKVM, kvmDevice, v, kvmAPIVersion)
	}
	return checkHardwareVirt(cpuInfoFile, pvmModuleDir)
}

// Where checkHardwareVirt looks; variables so tests can use other files.
var (
	// probeKVM is what ResolveAccel asks (tests stand in a machine whose
	// KVM answers).
	probeKVM     = ProbeKVM
	cpuInfoFile  = "/proc/cpuinfo"
	pvmModuleDir = "/sys/module/kvm_pvm"
)

// checkHardwareVirt returns nil when a CPU in cpuinfo lists the vmx
// (Intel VT-x) or svm (AMD-V) flag, and an ErrNoKVM error otherwise that
// names kvm_pvm when pvmDir exists.
func checkHardwareVirt(cpuinfo, pvmDir string) error {
	b, err := os.ReadFile(cpuinfo)
	if err != nil {
		return fmt.Errorf("%w: reading CPU flags: %w", ErrNoKVM, err)
	}
	for line := range strings.Lines(string(b)) {
		name, flags, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(name) != "flags" {
			continue
		}
		for _, f := range strings.Fields(flags) {
			if f == "vmx" || f == "svm" {
				return nil
			}
		}
	}
	if _, err := os.Stat(pvmDir); err == nil {
		return fmt.Errorf("%w: %s answers, but the CPU has no hardware virtualisation (no vmx or svm flag): it is served by kvm_pvm, which runs only PVM guest kernels", ErrNoKVM, kvmDevice)
	}
	return fmt.Errorf("%w: %s answers, but the CPU has no hardware virtualisation (no vmx or svm flag in %s)", ErrNoKVM, kvmDevice, cpuinfo)
}

// ResolveAccel turns a requested accelerator into the one to use. AccelAuto
// becomes AccelKVM when ProbeKVM succeeds and AccelTCG otherwise; AccelKVM
// fails with ErrNoKVM when KVM is not usable; AccelTCG is always possible.
// The second result explains the choice for progress output.
func ResolveAccel(want Accel) (Accel, string, error) {
	switch want {
	case "", AccelAuto:
		if err := probeKVM(); err != nil {
			return AccelTCG, fmt.Sprintf("tcg (auto: %v)", err), nil
		}
		return AccelKVM, "kvm (auto: " + kvmDevice + " usable)", nil
	case AccelKVM:
		if err := probeKVM(); err != nil {
			return "", "", err
		}
		return AccelKVM, "kvm (requested)", nil
	case AccelTCG:
		return AccelTCG, "tcg (requested)", nil
	}
	return "", "", fmt.Errorf("%w: accel %q", ErrConfig, want)
}
