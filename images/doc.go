// Package images builds WormSpace boot images: a pinned Debian kernel
// (package kernel) and an uncompressed newc initramfs whose /init is the
// wormd binary, which runs the guest init (package kernel/guest) when it
// is PID 1.
//
// # Usage
//
//	m, err := images.Build(ctx, images.Options{
//		Root:     ".",                // the repository (module root)
//		OutDir:   "build/image",      // vmlinuz, initramfs.cpio, manifest.json
//		Progress: func(s string) { fmt.Fprintln(os.Stderr, s) },
//	})
//	fmt.Println(m.Initramfs.Size, m.BuildMillis)
//
// or `worm image build` / `make image` (BOOT.md has the figures). The steps, each reported with its
// duration: fetch the kernel (kernel.Fetch: apt-get download of the pinned
// .deb into build/cache/kernel, extraction of vmlinuz and the module
// closure), build wormd (Options.WormdPkg, default ./cmd/wormd), build the
// debugging commands (a u-root shell, ip, dmesg and cat, from the nested
// module images/ucmds), write the initramfs.
//
// The initramfs holds
//
//	/init                    hard link to /bin/wormd
//	/bin/wormd               the server (static, stripped)
//	/bin/bb + gosh ip dmesg cat  (symlinks to the busybox-style binary)
//	/lib/modules/*.ko        plain modules, and order (load order)
//	/dev/console             char 5:1, for the kernel to open before init
//	/proc /sys /run /tmp /data  mount points
//
// and nothing else. It is reproducible: Go binaries are built with
// CGO_ENABLED=0, -trimpath, -ldflags '-s -w -buildid=', -buildvcs=false
// and a fixed GOAMD64 (v1, so the image runs on any x86-64 CPU model QEMU
// offers); cpio records carry no times, owners or host inode numbers
// (cpio.MakeAllReproducible, inode numbers assigned in record order); the
// record order is fixed. The same inputs give a bit-identical image.
//
// The manifest (Manifest) records the kernel pin, the modules, the sha256
// and size of the initramfs with a per-part breakdown, the Go version and
// the build time.
//
// Debugging commands: CommandsBusybox (default) compiles them into one
// binary with u-root's gobusybox (makebb, built from the pinned nested
// module): 4.0 MiB, about 18-21 s on 2 cores, cached by content in
// build/cache/ucmds so it is paid once per Go version and pin.
// CommandsSeparate builds four binaries: 9.5 MiB, 1.4 s with a warm Go
// build cache (12 s cold). CommandsNone leaves them out. Busybox is the
// default because its build cost is paid once and it keeps the image small:
// with the real wormd (10.2 MB, static and stripped, gVisor netstack
// included) the initramfs is 14.3 MiB with busybox commands, about 10.8 MB
// with none, and about 5.5 MiB more with separate binaries. The shell is
// built with the goshsmall tag: a plain line reader that works on a
// serial console.
//
// This package runs on the build host. It must never import kernel/guest,
// the server or a network stack; it only builds them as programs.
package images
