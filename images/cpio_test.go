package images

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/u-root/u-root/pkg/cpio"
	"github.com/wormspace/wormspace/kernel"
)

// TestWriteInitramfsDeterministic writes the same layout twice, from
// files with different modification times, and requires identical bytes;
// the stack default becomes /etc/worm/cmdline.
func TestWriteInitramfsDeterministic(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	l := layout{
		wormd: write("wormd", "\x7fELF wormd"),
		modules: []kernel.Module{
			{Name: "virtio", File: write("virtio.ko", "\x7fELF a")},
			{Name: "virtio_net", File: write("virtio_net.ko", "\x7fELF bb")},
		},
		commands:     []cmdFile{{name: "ip", target: "bb"}, {name: "bb", src: write("bb", "busybox")}},
		stackDefault: "kernel",
	}
	a := filepath.Join(dir, "a.cpio")
	parts, err := writeInitramfs(a, l)
	if err != nil {
		t.Fatal(err)
	}
	if parts["wormd"] != 10 || parts["modules"] != 13 || parts["commands"] != 7 {
		t.Errorf("parts %v", parts)
	}
	later := time.Now().Add(-time.Hour)
	os.Chtimes(l.wormd, later, later)
	b := filepath.Join(dir, "b.cpio")
	if _, err := writeInitramfs(b, l); err != nil {
		t.Fatal(err)
	}
	ab, _ := os.ReadFile(a)
	bb, _ := os.ReadFile(b)
	if !bytes.Equal(ab, bb) {
		t.Fatal("two writes of the same layout differ")
	}
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(ab)))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	var cmdline string
	for _, r := range recs {
		names = append(names, r.Name)
		if r.Name == "etc/worm/cmdline" {
			buf := make([]byte, r.FileSize)
			r.ReadAt(buf, 0)
			cmdline = string(buf)
		}
	}
	if cmdline != "worm.stack=kernel\n" {
		t.Errorf("etc/worm/cmdline = %q in %q", cmdline, names)
	}
	// ReadAllRecords stops at the trailer; it must be the archive's end
	// (padded to a multiple of 4).
	if i := bytes.LastIndex(ab, []byte(cpio.Trailer+"\x00")); i < 0 || len(ab)-i > len(cpio.Trailer)+4 {
		t.Errorf("no trailer at the end of the archive")
	}
}
