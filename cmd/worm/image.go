package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/wormspace/wormspace/images"
	"github.com/wormspace/wormspace/kernel"
)

func init() {
	register(&command{
		name:    "image",
		summary: "build the VM boot image (build) or re-pin the guest kernel (pin)",
		run:     runImage,
	})
}

const imageUsage = `usage: worm image SUBCOMMAND [flags]

  build    build build/image/{vmlinuz,initramfs.cpio,manifest.json}
  pin      resolve the current linux-image-cloud-amd64 kernel with apt and
           rewrite kernel/pin.json (when the pinned package left the archive)

Run from the repository root (or below it). 'worm image build -h' lists flags.`

func runImage(args []string) error {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, imageUsage)
		return errUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch args[0] {
	case "build":
		return imageBuild(ctx, args[1:])
	case "pin":
		return imagePin(ctx, args[1:])
	case "-h", "--help", "help":
		fmt.Fprintln(os.Stderr, imageUsage)
		return nil
	}
	fmt.Fprintf(os.Stderr, "worm image: unknown subcommand %q\n%s\n", args[0], imageUsage)
	return errUsage
}

// findRepoRoot walks up from the working directory to the directory
// holding go.mod.
func findRepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("not inside the WormSpace repository (no go.mod above the working directory)")
		}
		dir = parent
	}
}

func progressLine(s string) { fmt.Fprintln(os.Stderr, s) }

func imageBuild(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("worm image build", flag.ContinueOnError)
	out := fs.String("out", "build/image", "output directory (relative to the repository root)")
	cache := fs.String("cache", "build/cache", "cache for the kernel .deb, the extracted kernel and command binaries")
	pin := fs.String("pin", kernel.DefaultPinFile, "kernel pin file")
	wormd := fs.String("wormd", "./cmd/wormd", "Go package built as /init and /bin/wormd")
	cmds := fs.String("commands", string(images.CommandsBusybox), "debugging commands: busybox (one binary), separate, or none")
	modules := fs.String("modules", "", "extra kernel modules, comma-separated, added to the defaults with their dependencies (e.g. mlx5_core,ena for bare metal)")
	stackDefault := fs.String("stack-default", "", "bake worm.stack=S (netstack or kernel) into the image as the default; the kernel command line still overrides it")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args())
	}
	root, err := findRepoRoot()
	if err != nil {
		return err
	}
	var mods []string
	if *modules != "" {
		mods = append(mods, kernel.DefaultModules...)
		for _, m := range strings.Split(*modules, ",") {
			if m = strings.TrimSpace(m); m != "" {
				mods = append(mods, m)
			}
		}
	}
	m, err := images.Build(ctx, images.Options{
		Root: root, OutDir: *out, CacheDir: *cache, PinFile: *pin, WormdPkg: *wormd,
		Commands: images.Commands(*cmds), StackDefault: *stackDefault, Modules: mods, Progress: progressLine,
	})
	if errors.Is(err, kernel.ErrPinGone) {
		return &exitError{code: 2, msg: err.Error()}
	}
	if err != nil {
		return err
	}
	for _, f := range []string{m.Kernel.Vmlinuz.Path, m.Initramfs.Path, "manifest.json"} {
		fmt.Println(filepath.Join(m.OutDir, f))
	}
	return nil
}

func imagePin(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("worm image pin", flag.ContinueOnError)
	pinFile := fs.String("pin", kernel.DefaultPinFile, "pin file to rewrite")
	cache := fs.String("cache", "build/cache", "cache directory (the .deb goes to CACHE/kernel)")
	meta := fs.String("meta", kernel.DefaultMeta, "meta package whose dependency names the kernel")
	noUpdate := fs.Bool("no-update", false, "skip apt-get update (use the package lists as they are)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	root, err := findRepoRoot()
	if err != nil {
		return err
	}
	abs := func(p string) string {
		if filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(root, p)
	}
	p, err := kernel.Repin(ctx, kernel.RepinOptions{
		Meta: *meta, CacheDir: filepath.Join(abs(*cache), "kernel"), Update: !*noUpdate, Progress: progressLine,
	})
	if err != nil {
		return err
	}
	old, oldErr := kernel.LoadPin(abs(*pinFile))
	if err := p.Save(abs(*pinFile)); err != nil {
		return err
	}
	if oldErr == nil && old.Package == p.Package && old.Version == p.Version && old.SHA256 == p.SHA256 {
		fmt.Fprintf(os.Stderr, "worm image pin: %s unchanged: %s\n", *pinFile, p)
	} else {
		fmt.Fprintf(os.Stderr, "worm image pin: %s now pins %s; commit it\n", *pinFile, p)
	}
	return nil
}
