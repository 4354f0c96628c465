package images

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/u-root/u-root/pkg/cpio"
)

// repoRoot is the module root, two levels up from this package.
func repoRoot(t *testing.T) string {
	t.Helper()
	r, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// needTools skips when the build host lacks dpkg-deb or apt-get (the
// kernel comes from a Debian package).
func needTools(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"dpkg-deb", "apt-get", "go"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not found (make deps-image): %v", tool, err)
		}
	}
}

func buildImage(t *testing.T, out, cache string, cmds Commands) *Manifest {
	t.Helper()
	needTools(t)
	m, err := Build(context.Background(), Options{
		Root:     repoRoot(t),
		OutDir:   out,
		CacheDir: cache,
		Commands: cmds,
		Progress: func(s string) { t.Log(s) },
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestBuildReproducible builds the image twice into different output
// directories and requires bit-identical initramfs files, then checks the
// layout. The second build has its own cache (only the downloaded .deb is
// shared), so the kernel extraction and the busybox are made again.
func TestBuildReproducible(t *testing.T) {
	if testing.Short() {
		t.Skip("builds two images")
	}
	a := buildImage(t, t.TempDir(), "", CommandsBusybox)
	cache := t.TempDir()
	if err := os.Symlink(filepath.Join(repoRoot(t), "build", "cache", "kernel"), filepath.Join(cache, "kernel")); err != nil {
		t.Fatal(err)
	}
	b := buildImage(t, t.TempDir(), cache, CommandsBusybox)
	if a.Initramfs.SHA256 != b.Initramfs.SHA256 || a.Initramfs.Size != b.Initramfs.Size {
		t.Fatalf("not reproducible: %+v vs %+v", a.Initramfs, b.Initramfs)
	}
	if a.Kernel.Vmlinuz.SHA256 != b.Kernel.Vmlinuz.SHA256 {
		t.Fatal("vmlinuz differs")
	}
	t.Logf("initramfs %d bytes sha256 %s parts %v", a.Initramfs.Size, a.Initramfs.SHA256, a.Parts)
	checkLayout(t, a)
}

func checkLayout(t *testing.T, m *Manifest) {
	t.Helper()
	f, err := os.Open(filepath.Join(m.OutDir, m.Initramfs.Path))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(f))
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]cpio.Record{}
	var names []string
	for _, r := range recs {
		if _, dup := byName[r.Name]; dup {
			t.Errorf("duplicate record %s", r.Name)
		}
		byName[r.Name] = r
		names = append(names, r.Name)
		if r.MTime != 0 || r.UID != 0 || r.GID != 0 {
			t.Errorf("%s: not reproducible metadata %+v", r.Name, r.Info)
		}
		// Every parent directory comes before its children.
		if d := filepath.Dir(r.Name); d != "." && !slices.Contains(names, d) {
			t.Errorf("%s before its parent %s", r.Name, d)
		}
	}
	con, ok := byName["dev/console"]
	if !ok || con.Mode&cpio.S_IFMT != cpio.S_IFCHR || con.Rmajor != 5 || con.Rminor != 1 {
		t.Errorf("dev/console: %+v", con.Info)
	}
	wd, init := byName["bin/wormd"], byName["init"]
	if wd.Ino == 0 || wd.Ino != init.Ino || init.NLink < 2 || wd.NLink < 2 || wd.FileSize < 1<<20 || init.FileSize != 0 {
		t.Errorf("/init is not a hard link of /bin/wormd: %+v / %+v", init.Info, wd.Info)
	}
	order, ok := byName["lib/modules/order"]
	if !ok {
		t.Fatal("no lib/modules/order")
	}
	buf := make([]byte, order.FileSize)
	order.ReadAt(buf, 0)
	lines := strings.Fields(string(buf))
	if len(lines) != len(m.Modules) {
		t.Fatalf("order %q vs manifest %d modules", lines, len(m.Modules))
	}
	for i, mod := range m.Modules {
		if lines[i] != mod.Name+".ko" {
			t.Errorf("order[%d] = %s, want %s.ko", i, lines[i], mod.Name)
		}
		r, ok := byName["lib/modules/"+lines[i]]
		if !ok || r.FileSize != uint64(mod.Size) {
			t.Errorf("%s missing or wrong size", lines[i])
			continue
		}
		head := make([]byte, 4)
		r.ReadAt(head, 0)
		if !bytes.Equal(head, []byte("\x7fELF")) {
			t.Errorf("%s is not a plain ELF module", lines[i])
		}
	}
	for _, want := range []string{"virtio_net.ko", "virtio_blk.ko", "virtio_pci.ko", "virtio_rng.ko"} {
		if !slices.Contains(lines, want) {
			t.Errorf("%s not in order %q", want, lines)
		}
	}
	for _, mp := range mountPoints {
		if r, ok := byName[mp]; !ok || r.Mode&cpio.S_IFMT != cpio.S_IFDIR {
			t.Errorf("mount point %s missing", mp)
		}
	}
	if m.Commands == CommandsBusybox {
		for _, c := range []string{"gosh", "ip", "dmesg", "cat"} {
			r, ok := byName["bin/"+c]
			if !ok || r.Mode&cpio.S_IFMT != cpio.S_IFLNK {
				t.Errorf("bin/%s is not a symlink", c)
			}
		}
	}
	if m.Initramfs.Size >= 20<<20 {
		t.Errorf("initramfs %d bytes, goal < 20 MiB", m.Initramfs.Size)
	}
}
