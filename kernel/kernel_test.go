package kernel

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ulikunitz/xz"
)

// elfWithModinfo builds a minimal ELF64 little-endian relocatable object
// with a .modinfo section holding sec (and the section-name table).
func elfWithModinfo(t *testing.T, sec []byte) []byte {
	t.Helper()
	shstr := []byte("\x00.modinfo\x00.shstrtab\x00")
	const ehsize, shentsize = 64, 64
	modOff := ehsize
	strOff := modOff + len(sec)
	shOff := (strOff + len(shstr) + 7) &^ 7
	var b bytes.Buffer
	le := binary.LittleEndian
	ident := [16]byte{0x7f, 'E', 'L', 'F', 2 /*64-bit*/, 1 /*LE*/, 1 /*version*/}
	b.Write(ident[:])
	w := func(v any) { binary.Write(&b, le, v) }
	w(uint16(1))  // ET_REL
	w(uint16(62)) // EM_X86_64
	w(uint32(1))
	w(uint64(0))     // entry
	w(uint64(0))     // phoff
	w(uint64(shOff)) // shoff
	w(uint32(0))     // flags
	w(uint16(ehsize))
	w(uint16(0)) // phentsize
	w(uint16(0)) // phnum
	w(uint16(shentsize))
	w(uint16(3)) // shnum
	w(uint16(2)) // shstrndx
	b.Write(sec)
	b.Write(shstr)
	for b.Len() < shOff {
		b.WriteByte(0)
	}
	sh := func(name, typ uint32, off, size int) {
		w(name)
		w(typ)
		w(uint64(0)) // flags
		w(uint64(0)) // addr
		w(uint64(off))
		w(uint64(size))
		w(uint32(0)) // link
		w(uint32(0)) // info
		w(uint64(1)) // addralign
		w(uint64(0)) // entsize
	}
	sh(0, 0, 0, 0)
	sh(1, 1 /*PROGBITS*/, modOff, len(sec))
	sh(10, 3 /*STRTAB*/, strOff, len(shstr))
	return b.Bytes()
}

func TestParseModInfo(t *testing.T) {
	sec := []byte("license=GPL\x00depends=virtio_ring,virtio,net-failover\x00retpoline=Y\x00name=virtio_net\x00vermagic=6.1.0-56-cloud-amd64 SMP mod_unload modversions \x00\x00\x00junk\x00")
	mi := ParseModInfo(sec)
	if mi.Name != "virtio_net" {
		t.Errorf("name = %q", mi.Name)
	}
	if want := []string{"virtio_ring", "virtio", "net_failover"}; !slices.Equal(mi.Depends, want) {
		t.Errorf("depends = %q, want %q", mi.Depends, want)
	}
	if mi.Vermagic != "6.1.0-56-cloud-amd64 SMP mod_unload modversions " {
		t.Errorf("vermagic = %q", mi.Vermagic)
	}
	if mi := ParseModInfo([]byte("depends=\x00name=virtio\x00")); len(mi.Depends) != 0 || mi.Name != "virtio" {
		t.Errorf("empty depends: %+v", mi)
	}
}

func TestReadModInfoELF(t *testing.T) {
	obj := elfWithModinfo(t, []byte("name=virtio-rng\x00depends=virtio\x00"))
	mi, err := ReadModInfo(bytes.NewReader(obj))
	if err != nil {
		t.Fatal(err)
	}
	if mi.Name != "virtio_rng" || !slices.Equal(mi.Depends, []string{"virtio"}) {
		t.Errorf("got %+v", mi)
	}
	if _, err := ReadModInfo(bytes.NewReader([]byte("not an elf"))); err == nil {
		t.Error("non-ELF input accepted")
	}
}

func TestModuleNameFromPath(t *testing.T) {
	for in, want := range map[string]string{
		"lib/modules/6.1/kernel/drivers/char/hw_random/virtio-rng.ko": "virtio_rng",
		"kernel/fs/ext4/ext4.ko": "ext4",
		"x/virtio_net.ko.xz":     "virtio_net",
		"x/failover.ko.zst":      "failover",
	} {
		if got := ModuleNameFromPath(in); got != want {
			t.Errorf("%s: %q, want %q", in, got, want)
		}
	}
}

// The virtio-net closure as boot-notes measured it on Debian's cloud kernel.
var virtioIndex = map[string]ModInfo{
	"virtio_ring":            {Name: "virtio_ring"},
	"virtio":                 {Name: "virtio", Depends: []string{"virtio_ring"}},
	"virtio_pci_modern_dev":  {Name: "virtio_pci_modern_dev"},
	"virtio_pci_legacy_dev":  {Name: "virtio_pci_legacy_dev"},
	"virtio_pci":             {Name: "virtio_pci", Depends: []string{"virtio_pci_modern_dev", "virtio_ring", "virtio", "virtio_pci_legacy_dev"}},
	"failover":               {Name: "failover"},
	"net_failover":           {Name: "net_failover", Depends: []string{"failover"}},
	"virtio_net":             {Name: "virtio_net", Depends: []string{"net_failover", "virtio_ring", "virtio"}},
	"virtio_blk":             {Name: "virtio_blk", Depends: []string{"virtio_ring", "virtio"}},
	"crc16":                  {Name: "crc16"},
	"unused_module_entirely": {Name: "unused_module_entirely", Depends: []string{"nonexistent"}},
}

func TestLoadOrder(t *testing.T) {
	builtin := map[string]bool{"ext4": true, "af_packet": true}
	order, err := LoadOrder(virtioIndex, builtin, []string{"virtio_pci", "virtio_net", "virtio_blk", "ext4", "af-packet"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci", "failover", "net_failover", "virtio_net", "virtio_blk"}
	if !slices.Equal(order, want) {
		t.Fatalf("order = %q\nwant    %q", order, want)
	}
	// Every module comes after all of its dependencies, exactly once.
	pos := map[string]int{}
	for i, n := range order {
		if _, dup := pos[n]; dup {
			t.Fatalf("%s twice", n)
		}
		pos[n] = i
	}
	for _, n := range order {
		for _, d := range virtioIndex[n].Depends {
			if pos[d] >= pos[n] {
				t.Errorf("%s loads before its dependency %s", n, d)
			}
		}
	}
}

func TestLoadOrderErrors(t *testing.T) {
	if _, err := LoadOrder(virtioIndex, nil, []string{"e1000"}); !errors.Is(err, ErrModuleNotFound) {
		t.Errorf("missing want: %v", err)
	}
	if _, err := LoadOrder(virtioIndex, nil, []string{"unused_module_entirely"}); !errors.Is(err, ErrModuleNotFound) {
		t.Errorf("missing dependency: %v", err)
	}
	cyc := map[string]ModInfo{"a": {Name: "a", Depends: []string{"b"}}, "b": {Name: "b", Depends: []string{"c"}}, "c": {Name: "c", Depends: []string{"a"}}}
	if _, err := LoadOrder(cyc, nil, []string{"a"}); !errors.Is(err, ErrDependencyCycle) {
		t.Errorf("cycle: %v", err)
	}
}

func TestAptParsers(t *testing.T) {
	dep := "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n"
	if got := parseDepends(dep, "linux-image-"); got != "linux-image-6.1.0-56-cloud-amd64" {
		t.Errorf("parseDepends = %q", got)
	}
	pol := "linux-image-6.1.0-56-cloud-amd64:\n  Installed: (none)\n  Candidate: 6.1.192-2\n  Version table:\n"
	if got := parseCandidate(pol); got != "6.1.192-2" {
		t.Errorf("parseCandidate = %q", got)
	}
	if got := parseCandidate("x:\n  Installed: (none)\n  Candidate: (none)\n"); got != "" {
		t.Errorf("parseCandidate (none) = %q", got)
	}
}

func TestPinFile(t *testing.T) {
	p, err := LoadPin("pin.json")
	if err != nil {
		t.Fatal(err)
	}
	if p.Meta != DefaultMeta || p.Arch != "amd64" {
		t.Errorf("pin %+v", p)
	}
	tmp := filepath.Join(t.TempDir(), "pin.json")
	if err := p.Save(tmp); err != nil {
		t.Fatal(err)
	}
	q, err := LoadPin(tmp)
	if err != nil || q != p {
		t.Fatalf("round trip: %+v %v", q, err)
	}
	os.WriteFile(tmp, []byte(`{"package":"x","version":"1","arch":"amd64","sha256":"abc"}`), 0o644)
	if _, err := LoadPin(tmp); !errors.Is(err, ErrBadPin) {
		t.Errorf("short sha256 accepted: %v", err)
	}
	if got := (Pin{Package: "p", Version: "1:2.0-1", Arch: "amd64"}).DebName(); got != "p_1%3a2.0-1_amd64.deb" {
		t.Errorf("DebName = %q", got)
	}
}

// TestChecksumMismatch: a cached .deb that does not match the pin is
// refused, never used.
func TestChecksumMismatch(t *testing.T) {
	p, err := LoadPin("pin.json")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, p.DebName()), []byte("tampered"), 0o644)
	_, err = Fetch(context.Background(), Options{Pin: p, CacheDir: dir, OutDir: t.TempDir()})
	if !errors.Is(err, ErrChecksum) {
		t.Fatalf("err = %v, want ErrChecksum", err)
	}
}

// TestFetchRealPackage extracts the pinned kernel from the cache that
// `make image` fills (build/cache/kernel). It does not download: a unit
// test must not depend on the archive still holding the pin.
func TestFetchRealPackage(t *testing.T) {
	p, err := LoadPin("pin.json")
	if err != nil {
		t.Fatal(err)
	}
	cache := filepath.Join("..", "build", "cache", "kernel")
	if _, err := os.Stat(filepath.Join(cache, p.DebName())); err != nil {
		t.Skipf("pinned .deb not cached in %s (run `make image` once): %v", cache, err)
	}
	out := t.TempDir()
	k, err := Fetch(context.Background(), Options{Pin: p, CacheDir: cache, OutDir: out, Progress: func(s string) { t.Log(s) }})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range k.Modules {
		names = append(names, m.Name)
		mi, err := ReadModInfo(mustOpen(t, m.File))
		if err != nil {
			t.Fatalf("%s: %v", m.File, err)
		}
		if mi.Name != m.Name {
			t.Errorf("%s: modinfo name %q", m.File, mi.Name)
		}
	}
	for _, n := range []string{"virtio_ring", "virtio", "virtio_pci", "failover", "net_failover", "virtio_net", "virtio_blk", "virtio_rng"} {
		if !slices.Contains(names, n) {
			t.Errorf("%s missing from %q", n, names)
		}
	}
	if st, err := os.Stat(k.Vmlinuz); err != nil || st.Size() < 1<<20 {
		t.Errorf("vmlinuz: %v", err)
	}
	t.Logf("release %s modules %q builtin %q", k.Release, names, k.Builtin)

	// A second Fetch into the same directory reuses the extraction...
	var msgs []string
	k2, err := Fetch(context.Background(), Options{Pin: p, CacheDir: cache, OutDir: out, Progress: func(s string) { msgs = append(msgs, s) }})
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 1 || !bytes.Contains([]byte(msgs[0]), []byte("reusing")) || len(k2.Modules) != len(k.Modules) || k2.Modules[0].File != k.Modules[0].File {
		t.Errorf("second fetch did not reuse: %q %+v", msgs, k2.Modules)
	}
	// ...unless a file changed.
	os.WriteFile(k.Modules[0].File, []byte("corrupt"), 0o644)
	msgs = nil
	if _, err := Fetch(context.Background(), Options{Pin: p, CacheDir: cache, OutDir: out, Progress: func(s string) { msgs = append(msgs, s) }}); err != nil {
		t.Fatal(err)
	}
	if len(msgs) < 2 {
		t.Errorf("corrupted extraction reused: %q", msgs)
	}
}

func mustOpen(t *testing.T, p string) *os.File {
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// Compressed modules are decompressed before their .modinfo is read, so
// the image always holds plain .ko files.
func TestReadModuleCompressed(t *testing.T) {
	obj := elfWithModinfo(t, []byte("name=virtio_blk\x00depends=virtio,virtio_ring\x00"))
	var xzb bytes.Buffer
	w, err := xz.NewWriter(&xzb)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(obj)
	w.Close()
	var gzb bytes.Buffer
	gw := gzip.NewWriter(&gzb)
	gw.Write(obj)
	gw.Close()
	for name, data := range map[string][]byte{"m/virtio_blk.ko": obj, "m/virtio_blk.ko.xz": xzb.Bytes(), "m/virtio_blk.ko.gz": gzb.Bytes()} {
		if !isModule("lib/modules/6.1/kernel/" + name) {
			t.Errorf("%s not recognised as a module", name)
		}
		plain, err := readModule(context.Background(), name, bytes.NewReader(data))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !bytes.Equal(plain, obj) {
			t.Fatalf("%s: decompressed contents differ", name)
		}
		mi, err := ReadModInfo(bytes.NewReader(plain))
		if err != nil || mi.Name != "virtio_blk" || !slices.Equal(mi.Depends, []string{"virtio", "virtio_ring"}) {
			t.Errorf("%s: %+v %v", name, mi, err)
		}
	}
	if _, err := readModule(context.Background(), "x.ko.xz", bytes.NewReader(obj)); err == nil {
		t.Error("plain data accepted as xz")
	}
}

// TestRepin resolves the current cloud kernel through apt-cache (no
// apt-get update: the machine's package lists as they are) and checks the
// pin it would write. The .deb lands in the shared cache.
func TestRepin(t *testing.T) {
	if testing.Short() {
		t.Skip("may download a kernel package")
	}
	for _, tool := range []string{"apt-cache", "apt-get"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not found: %v", tool, err)
		}
	}
	if out, err := exec.Command("apt-cache", "policy", DefaultMeta).Output(); err != nil || !bytes.Contains(out, []byte("Candidate:")) || bytes.Contains(out, []byte("Candidate: (none)")) {
		t.Skipf("apt lists know no %s (apt-get update has never run): %v", DefaultMeta, err)
	}
	cache := filepath.Join("..", "build", "cache", "kernel")
	p, err := Repin(context.Background(), RepinOptions{CacheDir: cache, Progress: func(s string) { t.Log(s) }})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Validate(); err != nil || p.Meta != DefaultMeta || !strings.HasPrefix(p.Package, "linux-image-") || !strings.HasSuffix(p.Package, "-cloud-amd64") {
		t.Fatalf("pin %+v: %v", p, err)
	}
	if err := verifySHA256(filepath.Join(cache, p.DebName()), p.SHA256); err != nil {
		t.Fatal(err)
	}
	t.Logf("current: %s", p)
}
