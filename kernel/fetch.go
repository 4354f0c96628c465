package kernel

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/ulikunitz/xz"
)

// DefaultModules is what a WormSpace guest needs: the virtio PCI transport,
// the NIC, the data disk, the entropy source, ext4 for the data disk,
// AF_PACKET for netstack, and the ACPI power button with evdev so that the
// guest init sees a host's system_powerdown (QMP) as a KEY_POWER event,
// and qemu_fw_cfg, through which QEMU hands over the cluster key.
// Names the kernel has built in (ext4 and af_packet in Debian's cloud
// kernel) are satisfied without loading.
var DefaultModules = []string{"virtio_pci", "virtio_net", "virtio_blk", "virtio_rng", "ext4", "af_packet", "button", "evdev", "qemu_fw_cfg"}

// Options configures Fetch.
type Options struct {
	Pin Pin
	// CacheDir holds downloaded .deb files (build/cache/kernel).
	CacheDir string
	// OutDir receives vmlinuz, config and modules/NAME.ko. The modules
	// directory is replaced on every run.
	OutDir string
	// Modules are the wanted module names (default DefaultModules).
	Modules []string
	// Progress receives one line per step; nil discards.
	Progress func(string)
}

// Module is one extracted module, ready to load.
type Module struct {
	Name string `json:"name"`
	// Source is the module's path inside the package.
	Source string `json:"source"`
	// File is the extracted, uncompressed .ko on the host.
	File   string `json:"-"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Kernel is what Fetch extracted: the record an image manifest keeps.
type Kernel struct {
	Pin Pin `json:"pin"`
	// Release is the kernel release (uname -r), e.g. 6.1.0-56-cloud-amd64.
	Release string `json:"release"`
	Vmlinuz string `json:"-"`
	Config  string `json:"-"`
	// Modules in load order, dependencies first.
	Modules []Module `json:"modules"`
	// Builtin lists wanted names (and dependencies) compiled into the kernel.
	Builtin []string `json:"builtin"`
	// Want is the wanted module list this extraction was made for.
	Want []string `json:"want"`
	// VmlinuzSize is the size of the kernel image in bytes.
	VmlinuzSize int64 `json:"vmlinuz_size"`
}

// modEntry is one module found in the package.
type modEntry struct {
	path string
	info ModInfo
}

// Fetch makes sure the pinned .deb is in the cache (see the package doc)
// and extracts the kernel, its config and the closure of the wanted
// modules into OutDir.
func Fetch(ctx context.Context, o Options) (*Kernel, error) {
	if err := o.Pin.Validate(); err != nil {
		return nil, err
	}
	progress := o.Progress
	if progress == nil {
		progress = func(string) {}
	}
	want := o.Modules
	if want == nil {
		want = DefaultModules
	}
	if k, ok := loadExtracted(o.OutDir, o.Pin, want); ok {
		progress("kernel: reusing " + filepath.Join(o.OutDir, stampFile) + " (" + o.Pin.Spec() + ")")
		return k, nil
	}
	deb, err := ensureDeb(ctx, o.Pin, o.CacheDir, progress)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
		return nil, err
	}
	k := &Kernel{Pin: o.Pin}

	// Pass 1: kernel, config, builtin list and the modinfo of every module.
	// Module contents are not kept: ~100 MB for ~1100 modules.
	index := map[string]modEntry{}
	builtin := map[string]bool{}
	err = walkDeb(ctx, deb, func(name string, r io.Reader) error {
		switch {
		case strings.HasPrefix(name, "boot/vmlinuz-"):
			k.Release = strings.TrimPrefix(name, "boot/vmlinuz-")
			k.Vmlinuz = filepath.Join(o.OutDir, "vmlinuz")
			n, err := writeFrom(k.Vmlinuz, r)
			k.VmlinuzSize = n
			return err
		case strings.HasPrefix(name, "boot/config-"):
			k.Config = filepath.Join(o.OutDir, "config")
			_, err := writeFrom(k.Config, r)
			return err
		case strings.HasPrefix(name, "lib/modules/") && path.Base(name) == "modules.builtin":
			sc := bufio.NewScanner(r)
			for sc.Scan() {
				if l := strings.TrimSpace(sc.Text()); l != "" {
					builtin[ModuleNameFromPath(l)] = true
				}
			}
			return sc.Err()
		case isModule(name):
			data, err := readModule(ctx, name, r)
			if err != nil {
				return err
			}
			mi, err := ReadModInfo(bytes.NewReader(data))
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			if mi.Name == "" {
				mi.Name = ModuleNameFromPath(name)
			}
			index[mi.Name] = modEntry{path: name, info: mi}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if k.Vmlinuz == "" {
		return nil, fmt.Errorf("kernel: %s holds no boot/vmlinuz-*", deb)
	}
	infos := make(map[string]ModInfo, len(index))
	for n, e := range index {
		infos[n] = e.info
	}
	order, err := LoadOrder(infos, builtin, want)
	if err != nil {
		return nil, fmt.Errorf("%w (package %s)", err, o.Pin.Spec())
	}
	for _, w := range want {
		if _, ok := index[NormalizeName(w)]; !ok {
			k.Builtin = append(k.Builtin, NormalizeName(w))
		}
	}
	sort.Strings(k.Builtin)
	progress(fmt.Sprintf("kernel: %s, %d modules in package, load order: %s; built in: %s",
		k.Release, len(index), strings.Join(order, " "), strings.Join(k.Builtin, " ")))

	// Pass 2: extract the selected modules, decompressed.
	modDir := filepath.Join(o.OutDir, "modules")
	if err := os.RemoveAll(modDir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(modDir, 0o755); err != nil {
		return nil, err
	}
	byPath := map[string]string{}
	for _, n := range order {
		byPath[index[n].path] = n
	}
	got := map[string]Module{}
	err = walkDeb(ctx, deb, func(name string, r io.Reader) error {
		n, ok := byPath[name]
		if !ok {
			return nil
		}
		data, err := readModule(ctx, name, r)
		if err != nil {
			return err
		}
		file := filepath.Join(modDir, n+".ko")
		if err := os.WriteFile(file, data, 0o644); err != nil {
			return err
		}
		sum := sha256.Sum256(data)
		got[n] = Module{Name: n, Source: name, File: file, Size: int64(len(data)), SHA256: hex.EncodeToString(sum[:])}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, n := range order {
		m, ok := got[n]
		if !ok {
			return nil, fmt.Errorf("kernel: module %s vanished between passes", n)
		}
		k.Modules = append(k.Modules, m)
	}
	k.Want = slices.Clone(want)
	b, err := json.MarshalIndent(k, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := writeFileAtomic(filepath.Join(o.OutDir, stampFile), append(b, '\n'), 0o644); err != nil {
		return nil, err
	}
	return k, nil
}

// stampFile records in OutDir what Fetch extracted, so that a later Fetch
// with the same pin and wanted modules reuses it.
const stampFile = "kernel.json"

// loadExtracted returns the Kernel recorded in outDir if it was extracted
// from the same pin for the same wanted modules and its files are intact.
func loadExtracted(outDir string, p Pin, want []string) (*Kernel, bool) {
	b, err := os.ReadFile(filepath.Join(outDir, stampFile))
	if err != nil {
		return nil, false
	}
	var k Kernel
	if json.Unmarshal(b, &k) != nil || k.Pin != p || !slices.Equal(k.Want, want) {
		return nil, false
	}
	k.Vmlinuz = filepath.Join(outDir, "vmlinuz")
	k.Config = filepath.Join(outDir, "config")
	if st, err := os.Stat(k.Vmlinuz); err != nil || st.Size() != k.VmlinuzSize {
		return nil, false
	}
	for i, m := range k.Modules {
		m.File = filepath.Join(outDir, "modules", m.Name+".ko")
		if sum, err := fileSHA256(m.File); err != nil || sum != m.SHA256 {
			return nil, false
		}
		k.Modules[i] = m
	}
	return &k, true
}

func isModule(name string) bool {
	return strings.HasPrefix(name, "lib/modules/") &&
		(strings.HasSuffix(name, ".ko") || strings.HasSuffix(name, ".ko.xz") ||
			strings.HasSuffix(name, ".ko.zst") || strings.HasSuffix(name, ".ko.gz"))
}

// ErrUnsupportedCompression: a .ko.zst module and no zstd command.
var ErrUnsupportedCompression = errors.New("kernel: unsupported module compression")

// readModule returns the uncompressed contents of a module file.
func readModule(ctx context.Context, name string, r io.Reader) ([]byte, error) {
	switch {
	case strings.HasSuffix(name, ".xz"):
		xr, err := xz.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("kernel: %s: %w", name, err)
		}
		return io.ReadAll(xr)
	case strings.HasSuffix(name, ".gz"):
		gr, err := gzip.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("kernel: %s: %w", name, err)
		}
		return io.ReadAll(gr)
	case strings.HasSuffix(name, ".zst"):
		// No zstd decoder among the project's modules; Debian kernels
		// have shipped plain .ko so far, so the command is enough.
		if _, err := exec.LookPath("zstd"); err != nil {
			return nil, fmt.Errorf("%w: %s needs the zstd command (apt-get install zstd)", ErrUnsupportedCompression, name)
		}
		cmd := exec.CommandContext(ctx, "zstd", "-dc")
		cmd.Stdin = r
		out, err := cmd.Output()
		if err != nil {
			return nil, fmt.Errorf("kernel: zstd -dc %s: %w", name, err)
		}
		return out, nil
	}
	return io.ReadAll(r)
}

// walkDeb streams the data archive of a .deb (dpkg-deb --fsys-tarfile)
// and calls fn for each regular file with its path, without "./".
func walkDeb(ctx context.Context, deb string, fn func(name string, r io.Reader) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cmd := exec.CommandContext(ctx, "dpkg-deb", "--fsys-tarfile", deb)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("kernel: dpkg-deb (apt-get install dpkg): %w", err)
	}
	tr := tar.NewReader(bufio.NewReaderSize(out, 1<<20))
	var walkErr error
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			walkErr = fmt.Errorf("kernel: read %s: %w", deb, err)
			break
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		if err := fn(strings.TrimPrefix(h.Name, "./"), tr); err != nil {
			walkErr = err
			break
		}
	}
	if walkErr != nil {
		cancel()
		cmd.Wait()
		return walkErr
	}
	// Drain so dpkg-deb exits cleanly.
	io.Copy(io.Discard, out)
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("kernel: dpkg-deb --fsys-tarfile %s: %w: %s", deb, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

func writeFrom(file string, r io.Reader) (int64, error) {
	tmp := file + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(f, r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return n, err
	}
	return n, os.Rename(tmp, file)
}
