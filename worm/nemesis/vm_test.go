package nemesis_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wormspace/wormspace/qemu"
	"github.com/wormspace/wormspace/worm/nemesis"
)

// vmImageDir returns the boot image for the VM nemesis: $WORM_IMAGE_DIR,
// else build/image at the repository root (made by `make image`, which
// make test runs first).
func vmImageDir() string {
	if d := os.Getenv("WORM_IMAGE_DIR"); d != "" {
		return d
	}
	return filepath.Join("..", "..", qemu.DefaultImageDir)
}

// TestVMNemesis boots three VMs from the boot image under TCG and runs the
// VM harness for a short randomized phase: kill -9 of a VM's QEMU and a
// restart from its disk, SIGSTOP/SIGCONT of a QEMU, partitions with
// iptables in the cluster's namespace; then availability with one and two
// VMs down (killed, stopped, partitioned), recovery times, the register
// history checked by porcupine and every acknowledged write read back.
// Skipped, with the reason, only when the image or QEMU is missing.
func TestVMNemesis(t *testing.T) {
	if testing.Short() {
		t.Skip("VM nemesis boots three TCG guests (~2-3 min)")
	}
	s := seed(t)
	t.Logf("seed %d (replay: WORM_SEED=%d go test -run TestVMNemesis ./worm/nemesis)", s, s)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	began := time.Now()
	rep, err := nemesis.RunVM(ctx, nemesis.VMConfig{Seed: s, Duration: 20 * time.Second, ImageDir: vmImageDir(),
		Dir: t.TempDir(), Logf: t.Logf})
	if errors.Is(err, qemu.ErrNoImage) || errors.Is(err, qemu.ErrNoQEMU) {
		t.Skipf("cannot boot VMs: %v", err)
	}
	if err != nil {
		t.Fatalf("seed %d: %v", s, err)
	}
	t.Logf("\n%s", rep)
	t.Logf("whole VM nemesis: %v", time.Since(began).Round(time.Second))
	for _, v := range rep.Failures() {
		t.Errorf("seed %d: %s: %s %s", s, v.Name, v.Detail, v.Visualization)
	}
	want := []string{"kill", "pause"}
	if os.Geteuid() == 0 {
		want = append(want, "partition") // TAP networking, hence a namespace to filter in
	}
	for _, f := range want {
		if rep.Faults[f] == 0 {
			t.Errorf("seed %d: no %s fault injected (%s)", s, f, rep.Skipped[f])
		}
	}
	names := map[string]bool{}
	for _, v := range rep.Verdicts {
		names[v.Name] = true
	}
	for _, v := range []string{"one-down", "two-down", "heal-kill", "two-paused", "heal-pause", "durability", "registers"} {
		if !names[v] {
			t.Errorf("seed %d: no %s verdict", s, v)
		}
	}
	if os.Geteuid() == 0 && !names["heal-cut"] {
		t.Errorf("seed %d: no partition verdict", s)
	}
	if !strings.Contains(rep.Network, "tcg") {
		t.Errorf("not under TCG: %s", rep.Network)
	}
}
