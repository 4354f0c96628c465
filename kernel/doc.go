// Package kernel obtains the guest kernel for WormSpace boot images: a
// pinned Debian linux-image package, its vmlinuz and config, and the
// loadable modules the guest needs, in the order they must be loaded.
//
// # Usage
//
// The pin (meta package, exact package name and version, sha256 of the
// .deb) is a checked-in JSON file, kernel/pin.json. Fetch downloads that
// exact .deb with `apt-get download` into a cache directory (reusing a
// cached copy whose sha256 matches), then extracts only what an image needs
// into an output directory, streaming `dpkg-deb --fsys-tarfile` through
// archive/tar. Nothing is installed and /boot is never touched:
//
//	pin, err := kernel.LoadPin("kernel/pin.json")
//	k, err := kernel.Fetch(ctx, kernel.Options{
//		Pin:      pin,
//		CacheDir: "build/cache/kernel",
//		OutDir:   "build/kernel",
//		Modules:  kernel.DefaultModules, // virtio_net, virtio_blk, ...
//		Progress: func(msg string) { fmt.Fprintln(os.Stderr, msg) },
//	})
//	// k.Vmlinuz, k.Config: extracted files; k.Modules: plain .ko files in
//	// load order (dependencies first); k.Builtin: wanted names the kernel
//	// has built in.
//
// Security updates bump the kernel ABI (…-56 → …-57) and the old package
// leaves the archive. When the pinned version can be found neither in the
// cache nor in the archive (after one `apt-get update`), Fetch fails with
// ErrPinGone, whose message says how to re-pin: Repin resolves the current
// dependency of the meta package with apt-cache, downloads it, and returns
// a new Pin to save (`worm image pin`, `make kernel-pin`).
//
// # Modules
//
// The package ships no modules.dep. Each module's dependencies are read
// from the `depends=` entry of its .modinfo ELF section (ReadModInfo,
// ParseModInfo), and LoadOrder computes the closure of the wanted set with
// dependencies first. Modules compressed as .ko.xz are decompressed while
// extracting (ulikunitz/xz) and .ko.zst through the zstd command, so the
// guest always loads plain .ko files with finit_module.
//
// This package runs on the build host. It must never import the guest
// side (kernel/guest), images, qemu or anything that links a network stack.
package kernel
