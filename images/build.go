package images

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/wormspace/wormspace/kernel"
)

// Commands selects how the debugging commands are built.
type Commands string

const (
	// CommandsBusybox: one gobusybox binary, /bin/bb, with symlinks.
	CommandsBusybox Commands = "busybox"
	// CommandsSeparate: one static binary per command.
	CommandsSeparate Commands = "separate"
	// CommandsNone: no debugging commands (worm.debug finds no shell).
	CommandsNone Commands = "none"
)

// DebugCommands are the u-root commands an image carries for debugging on
// the serial console (worm.debug=1).
var DebugCommands = []string{
	"github.com/u-root/u-root/cmds/core/gosh",
	"github.com/u-root/u-root/cmds/core/ip",
	"github.com/u-root/u-root/cmds/core/dmesg",
	"github.com/u-root/u-root/cmds/core/cat",
}

// commandTags are the build tags of the debugging commands: goshsmall
// gives the u-root shell a plain line reader instead of a full-screen line
// editor, which on a serial console waits for terminal replies that never
// come (and is 3 MB smaller).
const commandTags = "goshsmall"

// GOAMD64 is the fixed microarchitecture level of image binaries: v1 runs
// on every x86-64 CPU model, including QEMU's default qemu64.
const GOAMD64 = "v1"

// ErrNoWormd: the wormd package (Options.WormdPkg) has no Go files yet.
var ErrNoWormd = errors.New("images: wormd package has no Go files")

// ErrNotModuleRoot: Options.Root has no go.mod.
var ErrNotModuleRoot = errors.New("images: not the repository root (no go.mod)")

// Options configures Build. Paths are relative to Root unless absolute.
type Options struct {
	// Root is the repository root (default ".").
	Root string
	// OutDir receives vmlinuz, initramfs.cpio and manifest.json
	// (default build/image).
	OutDir string
	// CacheDir holds the kernel .deb, the extracted kernel and cached
	// command binaries (default build/cache).
	CacheDir string
	// PinFile is the kernel pin (default kernel/pin.json).
	PinFile string
	// WormdPkg is the Go package built as /init and /bin/wormd
	// (default ./cmd/wormd).
	WormdPkg string
	// Commands selects the debugging commands (default CommandsBusybox).
	Commands Commands
	// StackDefault, when set (netstack or kernel), is baked into the image
	// as /etc/worm/cmdline "worm.stack=S": the stack used when the kernel
	// command line names none. Empty keeps the guest's default (netstack).
	StackDefault string
	// Modules overrides kernel.DefaultModules.
	Modules []string
	// Progress receives one line per step; nil discards.
	Progress func(string)
}

func (o *Options) defaults() error {
	if o.Root == "" {
		o.Root = "."
	}
	root, err := filepath.Abs(o.Root)
	if err != nil {
		return err
	}
	o.Root = root
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		return fmt.Errorf("%w: %s", ErrNotModuleRoot, root)
	}
	abs := func(p *string, def string) {
		if *p == "" {
			*p = def
		}
		if !filepath.IsAbs(*p) {
			*p = filepath.Join(root, *p)
		}
	}
	abs(&o.OutDir, "build/image")
	abs(&o.CacheDir, "build/cache")
	abs(&o.PinFile, kernel.DefaultPinFile)
	if o.WormdPkg == "" {
		o.WormdPkg = "./cmd/wormd"
	}
	switch o.Commands {
	case "":
		o.Commands = CommandsBusybox
	case CommandsBusybox, CommandsSeparate, CommandsNone:
	default:
		return fmt.Errorf("images: commands %q: want busybox, separate or none", o.Commands)
	}
	switch o.StackDefault {
	case "", "netstack", "kernel":
	default:
		return fmt.Errorf("images: stack default %q: want netstack or kernel", o.StackDefault)
	}
	if o.Modules == nil {
		o.Modules = kernel.DefaultModules
	}
	if o.Progress == nil {
		o.Progress = func(string) {}
	}
	if strings.HasPrefix(o.WormdPkg, ".") {
		if gos, _ := filepath.Glob(filepath.Join(o.Root, o.WormdPkg, "*.go")); len(gos) == 0 {
			return fmt.Errorf("%w: %s (give the package of a program with wormd's PID-1 hook and flags)", ErrNoWormd, o.WormdPkg)
		}
	}
	return nil
}

// Manifest describes a built image (build/image/manifest.json).
type Manifest struct {
	Kernel struct {
		Meta    string `json:"meta"`
		Package string `json:"package"`
		Version string `json:"version"`
		DebSHA  string `json:"deb_sha256"`
		Release string `json:"release"`
		Vmlinuz File   `json:"vmlinuz"`
	} `json:"kernel"`
	Initramfs File `json:"initramfs"`
	// Modules in load order, as in /lib/modules/order.
	Modules []kernel.Module `json:"modules"`
	// Builtin lists wanted modules the kernel has built in.
	Builtin []string `json:"builtin"`
	// Parts breaks the initramfs size down (bytes of file contents).
	Parts    map[string]int64 `json:"parts"`
	WormdPkg string           `json:"wormd_package"`
	Commands Commands         `json:"commands"`
	// StackDefault is the worm.stack baked into /etc/worm/cmdline, if any.
	StackDefault string `json:"stack_default,omitempty"`
	GoVersion    string `json:"go_version"`
	GOAMD64      string `json:"goamd64"`
	BuildMillis  int64  `json:"build_ms"`
	// OutDir is where the image was written (not serialised).
	OutDir string `json:"-"`
	// Steps are the durations of the build steps in milliseconds.
	Steps []Step `json:"steps"`
}

// File is one output file; Path is its name in the output directory.
type File struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Step is one timed build step.
type Step struct {
	Name   string `json:"name"`
	Millis int64  `json:"ms"`
}

// Build builds the image described by o (see the package doc).
func Build(ctx context.Context, o Options) (*Manifest, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	start := time.Now()
	m := &Manifest{OutDir: o.OutDir, WormdPkg: o.WormdPkg, Commands: o.Commands, StackDefault: o.StackDefault, GOAMD64: GOAMD64, Parts: map[string]int64{}}
	work := filepath.Join(o.CacheDir, "work")
	if err := os.MkdirAll(work, 0o755); err != nil {
		return nil, err
	}
	step := func(name string, fn func() error) error {
		o.Progress(fmt.Sprintf("image: %s ...", name))
		t := time.Now()
		if err := fn(); err != nil {
			return fmt.Errorf("images: %s: %w", name, err)
		}
		d := time.Since(t)
		m.Steps = append(m.Steps, Step{name, d.Milliseconds()})
		o.Progress(fmt.Sprintf("image: %s done in %.1fs", name, d.Seconds()))
		return nil
	}

	var k *kernel.Kernel
	if err := step("fetch kernel", func() error {
		pin, err := kernel.LoadPin(o.PinFile)
		if err != nil {
			return err
		}
		k, err = kernel.Fetch(ctx, kernel.Options{
			Pin:      pin,
			CacheDir: filepath.Join(o.CacheDir, "kernel"),
			OutDir:   filepath.Join(o.CacheDir, "kernel-"+pin.Package),
			Modules:  o.Modules,
			Progress: func(s string) { o.Progress("  " + s) },
		})
		return err
	}); err != nil {
		return nil, err
	}

	goVersion, err := goOutput(ctx, o.Root, nil, "env", "GOVERSION")
	if err != nil {
		return nil, err
	}
	m.GoVersion = goVersion

	wormd := filepath.Join(work, "wormd")
	if err := step("build wormd ("+o.WormdPkg+")", func() error {
		return goBuild(ctx, o.Root, wormd, o.WormdPkg)
	}); err != nil {
		return nil, err
	}

	var cmds []cmdFile
	if o.Commands != CommandsNone {
		if err := step("build commands ("+string(o.Commands)+")", func() error {
			var err error
			cmds, err = buildCommands(ctx, o, goVersion)
			return err
		}); err != nil {
			return nil, err
		}
	}

	if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
		return nil, err
	}
	cpioPath := filepath.Join(o.OutDir, "initramfs.cpio")
	if err := step("write cpio", func() error {
		parts, err := writeInitramfs(cpioPath, layout{wormd: wormd, modules: k.Modules, commands: cmds, stackDefault: o.StackDefault})
		m.Parts = parts
		return err
	}); err != nil {
		return nil, err
	}
	vmlinuz := filepath.Join(o.OutDir, "vmlinuz")
	if err := copyFile(vmlinuz, k.Vmlinuz); err != nil {
		return nil, err
	}

	m.Kernel.Meta = k.Pin.Meta
	m.Kernel.Package = k.Pin.Package
	m.Kernel.Version = k.Pin.Version
	m.Kernel.DebSHA = k.Pin.SHA256
	m.Kernel.Release = k.Release
	if m.Kernel.Vmlinuz, err = describe(vmlinuz); err != nil {
		return nil, err
	}
	if m.Initramfs, err = describe(cpioPath); err != nil {
		return nil, err
	}
	m.Modules = k.Modules
	m.Builtin = k.Builtin
	m.BuildMillis = time.Since(start).Milliseconds()
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(o.OutDir, "manifest.json"), append(b, '\n'), 0o644); err != nil {
		return nil, err
	}
	o.Progress(fmt.Sprintf("image: %s (%.1f MiB) + %s (%.1f MiB), kernel %s, built in %.1fs",
		cpioPath, mib(m.Initramfs.Size), vmlinuz, mib(m.Kernel.Vmlinuz.Size), k.Release, time.Since(start).Seconds()))
	return m, nil
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// buildEnv is the environment for reproducible static Go builds.
func buildEnv() []string {
	// -mod=mod: go.mod is mid-edit in the main repository; never embed
	// VCS state (it would differ between clean and dirty trees).
	return buildEnvFlags("-mod=mod -buildvcs=false")
}

func buildEnvFlags(goflags string) []string {
	env := []string{}
	for _, e := range os.Environ() {
		k, _, _ := strings.Cut(e, "=")
		switch k {
		case "CGO_ENABLED", "GOOS", "GOARCH", "GOAMD64", "GOFLAGS", "GOEXPERIMENT":
			continue // fixed below: inputs that change the output
		}
		env = append(env, e)
	}
	return append(env, "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOAMD64="+GOAMD64, "GOFLAGS="+goflags)
}

// ldflags strips symbols and DWARF and empties the build ID, which would
// otherwise differ between otherwise identical builds.
const ldflags = "-s -w -buildid="

func goBuild(ctx context.Context, dir, out string, pkgs ...string) error {
	args := append([]string{"build", "-trimpath", "-ldflags", ldflags, "-o", out}, pkgs...)
	_, err := goOutput(ctx, dir, buildEnv(), args...)
	return err
}

func goOutput(ctx context.Context, dir string, env []string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	if env != nil {
		cmd.Env = env
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go %s (in %s): %w\n%s", strings.Join(args, " "), dir, err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(string(out)), nil
}

// cmdFile is one file of the debugging commands: a binary (src != "") or
// a symlink to target.
type cmdFile struct {
	name   string // in /bin
	src    string
	target string
}

// buildCommands builds the debugging commands in the nested module
// images/ucmds. Outputs are cached in CacheDir/ucmds under a key of every
// input (the module's go.mod and go.sum, the Go version, GOAMD64, the mode
// and the command list), so a reproducible 20 s busybox build is paid once.
func buildCommands(ctx context.Context, o Options, goVersion string) ([]cmdFile, error) {
	modDir := filepath.Join(o.Root, "images", "ucmds")
	h := sha256.New()
	for _, f := range []string{"go.mod", "go.sum"} {
		b, err := os.ReadFile(filepath.Join(modDir, f))
		if err != nil {
			return nil, err
		}
		h.Write(b)
	}
	fmt.Fprintf(h, "%s %s %s %s %s", goVersion, GOAMD64, o.Commands, commandTags, strings.Join(DebugCommands, " "))
	key := hex.EncodeToString(h.Sum(nil))[:16]
	dir := filepath.Join(o.CacheDir, "ucmds", string(o.Commands)+"-"+key)
	names := make([]string, len(DebugCommands))
	for i, p := range DebugCommands {
		names[i] = p[strings.LastIndexByte(p, '/')+1:]
	}
	var files []cmdFile
	switch o.Commands {
	case CommandsBusybox:
		files = append(files, cmdFile{name: "bb", src: filepath.Join(dir, "bb")})
		for _, n := range names {
			files = append(files, cmdFile{name: n, target: "bb"})
		}
	case CommandsSeparate:
		for _, n := range names {
			files = append(files, cmdFile{name: n, src: filepath.Join(dir, n)})
		}
		files = append(files, cmdFile{name: "sh", target: "gosh"})
	}
	if _, err := os.Stat(filepath.Join(dir, "done")); err == nil {
		o.Progress("  commands: cached " + dir)
		return files, nil
	}
	tmp := dir + ".tmp"
	os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return nil, err
	}
	switch o.Commands {
	case CommandsBusybox:
		makebb := filepath.Join(tmp, "makebb")
		if _, err := goOutput(ctx, modDir, nil, "build", "-o", makebb, "github.com/u-root/gobusybox/src/cmd/makebb"); err != nil {
			return nil, err
		}
		cmd := exec.CommandContext(ctx, makebb, append([]string{"-o", filepath.Join(tmp, "bb"), "-go-build-tags", commandTags}, DebugCommands...)...)
		cmd.Dir = modDir
		// makebb strips, trims paths and empties the build ID itself
		// (reproducible by default).
		cmd.Env = buildEnv()
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("makebb: %w\n%s", err, out)
		}
		os.Remove(makebb)
	case CommandsSeparate:
		if err := goBuild(ctx, modDir, tmp+"/", append([]string{"-tags", commandTags}, DebugCommands...)...); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(filepath.Join(tmp, "done"), nil, 0o644); err != nil {
		return nil, err
	}
	os.RemoveAll(dir)
	if err := os.Rename(tmp, dir); err != nil {
		return nil, err
	}
	return files, nil
}

func describe(path string) (File, error) {
	f, err := os.Open(path)
	if err != nil {
		return File{}, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return File{}, err
	}
	// The name only: the manifest lives next to the files and stays valid
	// when the directory moves.
	return File{Path: filepath.Base(path), Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

func copyFile(dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}
