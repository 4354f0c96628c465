package images

import (
	"fmt"
	"os"

	"sort"
	"strings"

	"github.com/u-root/u-root/pkg/cpio"
	"github.com/wormspace/wormspace/kernel"
)

// layout is what goes into an initramfs.
type layout struct {
	wormd    string          // host path of the wormd binary
	modules  []kernel.Module // in load order
	commands []cmdFile
	// stackDefault, if set, becomes /etc/worm/cmdline (see guest.DefaultsFile).
	stackDefault string
}

// mountPoints are empty directories the guest init mounts on.
var mountPoints = []string{"proc", "sys", "dev", "run", "tmp", "data"}

// writeInitramfs writes the newc archive for l to dst and returns the
// content size of each part. Records are written in a fixed order with
// every parent directory explicit (the kernel does not create missing
// parents), made reproducible, deduplicated, and ended by the trailer.
func writeInitramfs(dst string, l layout) (map[string]int64, error) {
	parts := map[string]int64{}
	var recs []cpio.Record
	var opened []*os.File
	defer func() {
		for _, f := range opened {
			f.Close()
		}
	}()
	file := func(name, src string, mode uint64) (cpio.Record, int64, error) {
		f, err := os.Open(src)
		if err != nil {
			return cpio.Record{}, 0, err
		}
		opened = append(opened, f)
		st, err := f.Stat()
		if err != nil {
			return cpio.Record{}, 0, err
		}
		return cpio.Record{ReaderAt: f, Info: cpio.Info{Name: name, Mode: cpio.S_IFREG | mode, FileSize: uint64(st.Size()), NLink: 1}}, st.Size(), nil
	}

	for _, d := range append([]string{"bin", "lib", "lib/modules"}, mountPoints...) {
		recs = append(recs, cpio.Directory(d, 0o755))
	}
	recs = append(recs, cpio.CharDev("dev/console", 0o600, 5, 1))

	// /bin/wormd and /init share one inode (a hard link): the kernel's
	// unpacker links a record with nlink >= 2 to an earlier one with the
	// same inode number, so the contents are stored once.
	w, n, err := file("bin/wormd", l.wormd, 0o755)
	if err != nil {
		return nil, err
	}
	w.NLink = 2
	recs = append(recs, w)
	recs = append(recs, cpio.Record{Info: cpio.Info{Name: "init", Mode: cpio.S_IFREG | 0o755, NLink: 2}})
	parts["wormd"] = n
	hardlinked := len(recs) - 1 // index of /init: reuses /bin/wormd's inode

	var order strings.Builder
	for _, m := range l.modules {
		name := m.Name + ".ko"
		r, n, err := file("lib/modules/"+name, m.File, 0o644)
		if err != nil {
			return nil, err
		}
		recs = append(recs, r)
		parts["modules"] += n
		fmt.Fprintln(&order, name)
	}
	recs = append(recs, cpio.StaticFile("lib/modules/order", order.String(), 0o644))

	if l.stackDefault != "" {
		recs = append(recs, cpio.Directory("etc", 0o755), cpio.Directory("etc/worm", 0o755),
			cpio.StaticFile("etc/worm/cmdline", "worm.stack="+l.stackDefault+"\n", 0o644))
	}

	cmds := append([]cmdFile(nil), l.commands...)
	sort.Slice(cmds, func(i, j int) bool { return cmds[i].name < cmds[j].name })
	for _, c := range cmds {
		if c.target != "" {
			recs = append(recs, cpio.Symlink("bin/"+c.name, c.target))
			continue
		}
		r, n, err := file("bin/"+c.name, c.src, 0o755)
		if err != nil {
			return nil, err
		}
		recs = append(recs, r)
		parts["commands"] += n
	}

	// Inode numbers in record order (MakeReproducible keeps them; host
	// inode numbers would make the archive differ between machines).
	ino := uint64(0)
	for i := range recs {
		if i == hardlinked {
			recs[i].Ino = recs[i-1].Ino
			continue
		}
		ino++
		recs[i].Ino = ino
	}
	cpio.MakeAllReproducible(recs)

	tmp := dst + ".tmp"
	out, err := os.Create(tmp)
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp)
	rw := cpio.NewDedupWriter(cpio.Newc.Writer(out))
	if err := cpio.WriteRecordsAndDirs(rw, recs); err != nil {
		out.Close()
		return nil, fmt.Errorf("write %s: %w", dst, err)
	}
	if err := cpio.WriteTrailer(rw); err != nil {
		out.Close()
		return nil, err
	}
	if err := out.Close(); err != nil {
		return nil, err
	}
	st, err := os.Stat(tmp)
	if err != nil {
		return nil, err
	}
	parts["overhead"] = st.Size() - parts["wormd"] - parts["modules"] - parts["commands"]
	return parts, os.Rename(tmp, dst)
}
