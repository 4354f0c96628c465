package qemu

import (
	"errors"
	"fmt"
	"os"

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

// ProbeKVM reports whether KVM is usable: /dev/kvm opens read-write and
// answers KVM_GET_API_VERSION with the stable API version. The error says
// why not (missing device, permission, a device that is not KVM); it wraps
// ErrNoKVM.
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
	return nil
}

// ResolveAccel turns a requested accelerator into the one to use. AccelAuto
// becomes AccelKVM when ProbeKVM succeeds and AccelTCG otherwise; AccelKVM
// fails with ErrNoKVM when KVM is not usable; AccelTCG is always possible.
// The second result explains the choice for progress output.
func ResolveAccel(want Accel) (Accel, string, error) {
	switch want {
	case "", AccelAuto:
		if err := ProbeKVM(); err != nil {
			return AccelTCG, fmt.Sprintf("tcg (auto: %v)", err), nil
		}
		return AccelKVM, "kvm (auto: " + kvmDevice + " usable)", nil
	case AccelKVM:
		if err := ProbeKVM(); err != nil {
			return "", "", err
		}
		return AccelKVM, "kvm (requested)", nil
	case AccelTCG:
		return AccelTCG, "tcg (requested)", nil
	}
	return "", "", fmt.Errorf("%w: accel %q", ErrConfig, want)
}
