package qemu

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeQEMU is a shell script standing in for qemu-system-x86_64: under
// -accel kvm it prints nothing (a KVM that cannot run guests), or with
// FAKE_QEMU_KVM=abort exits as QEMU 7.2 does on kvm_pvm (an assertion on
// setting MSRs, SIGABRT); under TCG it writes a READY line for worm.id to
// the console file; then it sleeps until killed.
const fakeQEMU = `#!/bin/sh
accel= con= id=
prev=
for a in "$@"; do
  case "$prev" in
    -accel) accel=$a ;;
    -chardev) con=${a#*path=}; con=${con%%,*} ;;
    -append) id=$(echo "$a" | tr ' ' '\n' | sed -n 's/^worm.id=//p') ;;
  esac
  prev=$a
done
if [ "$accel" = kvm ] && [ "$FAKE_QEMU_KVM" = abort ]; then
  echo "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69" >&2
  kill -ABRT $$
fi
if [ "$accel" = tcg ]; then
  echo "WORMSPACE-READY id=$id addr=10.0.2.15:7070 stack=kernel uptime_ms=5" >> "$con"
fi
exec sleep 600
`

// TestAutoFallsBackFromBrokenKVM: with AccelAuto on a machine whose
// /dev/kvm answers the probe, a guest that prints nothing under KVM, or
// whose QEMU aborts there, makes Up boot the cluster again under TCG and
// record that in the state file; with AccelKVM requested, Up fails
// instead (ErrKVMSilent, ErrExited).
func TestAutoFallsBackFromBrokenKVM(t *testing.T) {
	if _, err := os.Stat("/bin/sh"); err != nil {
		t.Skip("no /bin/sh for the fake QEMU")
	}
	old := probeKVM
	probeKVM = func() error { return nil }
	t.Cleanup(func() { probeKVM = old })
	for _, tc := range []struct {
		mode    string
		wantErr error
	}{{"silent", ErrKVMSilent}, {"abort", ErrExited}} {
		t.Run(tc.mode, func(t *testing.T) {
			t.Setenv("FAKE_QEMU_KVM", tc.mode)
			dir := t.TempDir()
			fake := filepath.Join(dir, "fake-qemu")
			if err := os.WriteFile(fake, []byte(fakeQEMU), 0o755); err != nil {
				t.Fatal(err)
			}
			image := filepath.Join(dir, "image")
			os.MkdirAll(image, 0o755)
			os.WriteFile(filepath.Join(image, KernelFile), []byte("k"), 0o644)
			os.WriteFile(filepath.Join(image, InitrdFile), []byte("i"), 0o644)
			var mu sync.Mutex
			var events []string
			cfg := Config{
				N: 2, Stack: StackKernel, Net: NetUser, NoDisk: true, QEMU: fake,
				ImageDir: image, StateDir: filepath.Join(dir, "state"),
				Options: Options{
					KVMSilence: 500 * time.Millisecond, ReadyTimeout: 20 * time.Second, KillWithParent: true,
					Progress: func(e Event) { mu.Lock(); events = append(events, e.String()); mu.Unlock() },
				},
			}
			logged := func() string { mu.Lock(); defer mu.Unlock(); return strings.Join(events, "\n") }
			c, err := Up(context.Background(), cfg)
			if err != nil {
				t.Fatalf("Up (auto): %v\n%s", err, logged())
			}
			defer c.Close()
			if c.Accel() != AccelTCG {
				t.Fatalf("accel %s after fallback, want tcg", c.Accel())
			}
			if s, err := ReadState(cfg.StateDir); err != nil || s.Accel != AccelTCG {
				t.Fatalf("state file accel: %v %v", s, err)
			}
			for _, v := range c.VMs() {
				if st := v.State(); st.Boots != 2 || !v.Running() {
					t.Errorf("vm%d: boots %d running %v, want a KVM boot then a TCG boot", v.ID(), st.Boots, v.Running())
				}
			}
			if !strings.Contains(logged(), "falling back to TCG") {
				t.Errorf("no fallback event:\n%s", logged())
			}
			c.Close()

			cfg.Accel = AccelKVM
			cfg.StateDir = filepath.Join(dir, "state2")
			if c, err := Up(context.Background(), cfg); !errors.Is(err, tc.wantErr) {
				if c != nil {
					c.Close()
				}
				t.Fatalf("Up (kvm requested): %v, want %v", err, tc.wantErr)
			}
		})
	}
}
