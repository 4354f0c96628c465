package qemu

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// withKVMDevice points the probe at path for one test.
func withKVMDevice(t *testing.T, path string) {
	old := kvmDevice
	kvmDevice = path
	t.Cleanup(func() { kvmDevice = old })
}

func TestProbeKVMMissing(t *testing.T) {
	withKVMDevice(t, filepath.Join(t.TempDir(), "kvm"))
	if err := ProbeKVM(); !errors.Is(err, ErrNoKVM) || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("ProbeKVM: %v", err)
	}
	a, why, err := ResolveAccel(AccelAuto)
	if err != nil || a != AccelTCG {
		t.Fatalf("auto: %s %v", a, err)
	}
	t.Log(why)
	if _, _, err := ResolveAccel(AccelKVM); !errors.Is(err, ErrNoKVM) {
		t.Fatalf("kvm requested without KVM: %v", err)
	}
	if a, _, err := ResolveAccel(AccelTCG); err != nil || a != AccelTCG {
		t.Fatalf("tcg: %s %v", a, err)
	}
}

// A device that opens but is not KVM (here /dev/null) fails the ioctl.
func TestProbeKVMNotKVM(t *testing.T) {
	withKVMDevice(t, os.DevNull)
	if err := ProbeKVM(); !errors.Is(err, ErrNoKVM) {
		t.Fatalf("ProbeKVM on %s: %v", os.DevNull, err)
	}
}

// On a machine with KVM, the real device must probe as usable.
func TestProbeKVMReal(t *testing.T) {
	if _, err := os.Stat("/dev/kvm"); err != nil {
		t.Skipf("no /dev/kvm on this machine: %v", err)
	}
	if err := ProbeKVM(); err != nil {
		t.Fatalf("ProbeKVM: %v", err)
	}
	if a, _, _ := ResolveAccel(AccelAuto); a != AccelKVM {
		t.Fatalf("auto chose %s with a usable /dev/kvm", a)
	}
}

func TestParseAccel(t *testing.T) {
	for in, want := range map[string]Accel{"": AccelAuto, "auto": AccelAuto, "kvm": AccelKVM, "tcg": AccelTCG} {
		if got, err := ParseAccel(in); err != nil || got != want {
			t.Errorf("ParseAccel(%q) = %s, %v", in, got, err)
		}
	}
	if _, err := ParseAccel("hvf"); !errors.Is(err, ErrConfig) {
		t.Errorf("ParseAccel(hvf): %v", err)
	}
}
