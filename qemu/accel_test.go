package qemu

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
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

// On a machine with KVM that can run a stock guest, the real device must
// probe as usable; where /dev/kvm is there without hardware
// virtualisation (kvm_pvm), the probe must refuse it and auto choose TCG.
func TestProbeKVMReal(t *testing.T) {
	if _, err := os.Stat("/dev/kvm"); err != nil {
		t.Skipf("no /dev/kvm on this machine: %v", err)
	}
	if checkHardwareVirt(cpuInfoFile, pvmModuleDir) != nil {
		err := ProbeKVM()
		if !errors.Is(err, ErrNoKVM) || !strings.Contains(err.Error(), "no hardware virtualisation") {
			t.Fatalf("ProbeKVM without vmx/svm: %v", err)
		}
		a, why, _ := ResolveAccel(AccelAuto)
		if a != AccelTCG {
			t.Fatalf("auto chose %s with a /dev/kvm that cannot run a stock guest", a)
		}
		t.Log(why)
		return
	}
	if err := ProbeKVM(); err != nil {
		t.Fatalf("ProbeKVM: %v", err)
	}
	if a, _, _ := ResolveAccel(AccelAuto); a != AccelKVM {
		t.Fatalf("auto chose %s with a usable /dev/kvm", a)
	}
}

func TestCheckHardwareVirt(t *testing.T) {
	dir := t.TempDir()
	write := func(name, flags string) string {
		p := filepath.Join(dir, name)
		text := "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: " + flags + "\nbugs\t\t: sysret_ss_attrs\n\n"
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	noPVM := filepath.Join(dir, "no-such-module")
	pvm := t.TempDir()
	for _, tc := range []struct {
		name, flags, pvmDir string
		ok                  bool
		want                string
	}{
		{"intel", "fpu vme de pse tsc msr vmx ept", noPVM, true, ""},
		{"amd", "fpu vme svm npt", noPVM, true, ""},
		{"none", "fpu vme de pse tsc msr hypervisor", noPVM, false, "no vmx or svm flag in"},
		{"pvm", "fpu vme de pse hypervisor", pvm, false, "kvm_pvm"},
		// A flag that merely contains the letters does not count.
		{"substring", "fpu svmx vmxe", noPVM, false, "no vmx or svm"},
	} {
		err := checkHardwareVirt(write(tc.name, tc.flags), tc.pvmDir)
		if tc.ok != (err == nil) {
			t.Errorf("%s: %v, want ok=%v", tc.name, err, tc.ok)
			continue
		}
		if err != nil && (!errors.Is(err, ErrNoKVM) || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: %v, want ErrNoKVM saying %q", tc.name, err, tc.want)
		}
	}
	if err := checkHardwareVirt(filepath.Join(dir, "missing"), noPVM); !errors.Is(err, ErrNoKVM) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing cpuinfo: %v", err)
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
