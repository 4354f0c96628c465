package kernel

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
)

// Errors for expected module-resolution failures.
var (
	// ErrNoModinfo: the file is an ELF object without a .modinfo section.
	ErrNoModinfo = errors.New("kernel: no .modinfo section")
	// ErrModuleNotFound: a wanted module (or a dependency) is neither in
	// the package nor built into the kernel.
	ErrModuleNotFound = errors.New("kernel: module not found")
	// ErrDependencyCycle: depends= entries form a cycle (a broken package).
	ErrDependencyCycle = errors.New("kernel: module dependency cycle")
)

// ModInfo is what an image build needs from a module's .modinfo section.
type ModInfo struct {
	// Name is the module name (name=, or the file name when absent), with
	// '-' normalised to '_' as the kernel does.
	Name string
	// Depends lists the modules that must be loaded first (depends=).
	Depends []string
	// Vermagic is the kernel release and flags the module was built for.
	Vermagic string
}

// NormalizeName returns a module name as the kernel compares it: '-' and
// '_' are interchangeable, so file names like virtio-rng.ko name the module
// virtio_rng.
func NormalizeName(s string) string { return strings.ReplaceAll(s, "-", "_") }

// ModuleNameFromPath returns the module name a file path implies:
// ".../hw_random/virtio-rng.ko.xz" → "virtio_rng".
func ModuleNameFromPath(p string) string {
	base := p[strings.LastIndexByte(p, '/')+1:]
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return NormalizeName(base)
}

// ParseModInfo parses the contents of a .modinfo section: NUL-separated
// key=value strings (padding NULs are ignored). Entries without '=' are
// ignored, as the kernel does.
func ParseModInfo(sec []byte) ModInfo {
	var mi ModInfo
	for _, f := range bytes.Split(sec, []byte{0}) {
		k, v, ok := strings.Cut(string(f), "=")
		if !ok {
			continue
		}
		switch k {
		case "name":
			mi.Name = NormalizeName(v)
		case "depends":
			for _, d := range strings.Split(v, ",") {
				if d = strings.TrimSpace(d); d != "" {
					mi.Depends = append(mi.Depends, NormalizeName(d))
				}
			}
		case "vermagic":
			mi.Vermagic = v
		}
	}
	return mi
}

// ReadModInfo reads the .modinfo section of an uncompressed module (an ELF
// relocatable object).
func ReadModInfo(r io.ReaderAt) (ModInfo, error) {
	f, err := elf.NewFile(r)
	if err != nil {
		return ModInfo{}, fmt.Errorf("kernel: read module: %w", err)
	}
	defer f.Close()
	s := f.Section(".modinfo")
	if s == nil {
		return ModInfo{}, ErrNoModinfo
	}
	data, err := s.Data()
	if err != nil {
		return ModInfo{}, fmt.Errorf("kernel: read .modinfo: %w", err)
	}
	return ParseModInfo(data), nil
}

// LoadOrder returns the closure of want over the dependencies in index,
// dependencies before dependents. Names in builtin (modules compiled into
// the kernel) satisfy a want or a dependency without being loaded. The
// order is deterministic: a depth-first walk that visits wants in the given
// order and each module's dependencies sorted by name.
func LoadOrder(index map[string]ModInfo, builtin map[string]bool, want []string) ([]string, error) {
	const (
		unseen = iota
		visiting
		done
	)
	state := map[string]int{}
	var order []string
	var visit func(name string, path []string) error
	visit = func(name string, path []string) error {
		name = NormalizeName(name)
		switch state[name] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("%w: %s", ErrDependencyCycle, strings.Join(append(path, name), " -> "))
		}
		mi, ok := index[name]
		if !ok {
			if builtin[name] {
				state[name] = done
				return nil
			}
			if len(path) > 0 {
				return fmt.Errorf("%w: %s (needed by %s)", ErrModuleNotFound, name, strings.Join(path, " -> "))
			}
			return fmt.Errorf("%w: %s", ErrModuleNotFound, name)
		}
		state[name] = visiting
		deps := slices.Clone(mi.Depends)
		sort.Strings(deps)
		for _, d := range deps {
			if err := visit(d, append(path, name)); err != nil {
				return err
			}
		}
		state[name] = done
		order = append(order, name)
		return nil
	}
	for _, w := range want {
		if err := visit(w, nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}
