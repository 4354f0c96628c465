// Package guest is the init of a WormSpace VM: what PID 1 runs inside the
// boot image built by package images, around a Debian kernel from package
// kernel.
//
// # Usage
//
// The image's /init is the wormd binary itself. wormd's main starts with
//
//	if os.Getpid() == 1 {
//		guest.Main() // never returns
//	}
//
// and Main then, in order: mounts /proc, /sys, /dev (devtmpfs), /run and
// /tmp; loads the modules named in /lib/modules/order (finit_module,
// dependencies first); parses /proc/cmdline (ParseCmdline); brings lo and
// eth0 up, giving eth0 the address and default route for worm.stack=kernel
// or keeping the kernel off eth0 for worm.stack=netstack (no addresses,
// IPv6 disabled; wormd's netstack sets the offloads); mounts the ext4 data disk (worm.data, waiting
// for the device a bounded time) or a tmpfs at /data; and starts
//
//	/bin/wormd -id N -data /data/wormd -listen ADDR:PORT -stack S
//	    [-iface eth0 -addr CIDR [-gw IP]] [-volatile] [-key-hex HEX]
//	    [-segment-size N] -ready-fd 3
//
// (Config.WormdArgs). When wormd writes "ready ADDR\n" to fd 3, init prints
// on the console
//
//	WORMSPACE-READY id=N addr=IP:PORT stack=S uptime_ms=T
//
// which the host launcher (package qemu) waits for. Fatal problems print
// WORMSPACE-ERROR and one line. If wormd exits, init restarts it with
// backoff (RestartPolicy); after too many quick failures it gives up. On
// SIGTERM, SIGINT (also Ctrl-Alt-Del) or SIGPWR, or the ACPI power button
// (QEMU's system_powerdown over QMP, read as KEY_POWER from
// /dev/input/event*, which needs the button and evdev modules), init stops
// wormd with SIGTERM, syncs, unmounts /data and restarts the machine,
// which QEMU's -no-reboot turns into a clean exit. With worm.debug=1 a failure drops to the image's shell on
// the console first. init logs to the console with an "init:" prefix.
//
// # Kernel command line
//
//	worm.id=N          acceptor id (default 1)
//	worm.addr=CIDR     eth0's IPv4 address, required
//	worm.gw=IP         default route (optional)
//	worm.stack=S       netstack (default) or kernel
//	worm.port=N        default 7070
//	worm.echo=N        also a raw TCP echo on port N (wormd -echo-listen), the benchmark floor
//	worm.data=DEV      ext4 block device for /data; absent: tmpfs + warning
//	worm.volatile=1    wormd -volatile
//	worm.key=HEX       cluster key (bare metal; under QEMU see below)
//	worm.segsize=N     segment size
//	worm.knobs=K       netstack knob overrides, name=value,... (wormd -netstack-knobs)
//	worm.debug=1       a shell instead of power-off on failure
//
// Unknown worm.* parameters are warnings on the console, not errors.
//
// # The cluster key under QEMU
//
// The launcher (package qemu) does not put the key on the kernel command
// line, where every host user could read it in ps and every guest process
// in /proc/cmdline. It hands it over as the fw_cfg item
// opt/org.wormspace/key (QEMU's -fw_cfg name=...,file=...); init loads
// qemu_fw_cfg and, when worm.key is absent and FwCfgKeyPath exists, starts
// wormd with -key-file FwCfgKeyPath (readable by root only).
//
// The pure parts (ParseCmdline, Restarter, ParseOrder) build and are
// tested on any OS; Main is Linux only. This package must stay small and
// static: it must never import the wormd server, gVisor, or anything that
// needs cgo; it is linked into every image.
package guest
