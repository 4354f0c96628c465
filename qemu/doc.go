// Package qemu launches WormSpace boot images (a Debian kernel plus an
// initramfs whose /init is wormd, see kernel/ and images/) as QEMU virtual
// machines, singly or as clusters of acceptors, and gives the host a way to
// reach them.
//
// # Usage
//
// A cluster is booted with Up and removed with Shutdown:
//
//	c, err := qemu.Up(ctx, qemu.Config{
//		N:        3,                 // acceptors 1..3
//		Stack:    qemu.StackNetstack, // or StackKernel
//		ImageDir: "build/image",      // vmlinuz + initramfs.cpio from `make image`
//		StateDir: "build/vm",         // state file, disks, console logs
//	})
//	if err != nil { ... }
//	defer c.Close()
//	servers := c.Servers() // WORM_SERVERS: "10.77.0.11:7070,10.77.0.12:7070,..."
//	key, _ := hex.DecodeString(c.Key()) // also in c.KeyFile(): WORM_KEY_FILE
//	cl, err := client.Dial(ctx, client.Config{
//		Servers: strings.Split(servers, ","), Key: key,
//		Dialer: c, // DialContext dials from inside the cluster's namespace
//	})
//
// # Cluster key
//
// wormd refuses non-loopback addresses without a cluster key, so every
// cluster has one: Config.Key if given, else the key StateDir/cluster.key
// left by a previous cluster (clients keep their key file across
// `worm vm down` and `up`), else 32 random bytes. It is recorded in the
// state file (0600) and written to StateDir/cluster.key (0600), which
// `worm vm up` prints as WORM_KEY_FILE, and reaches every guest through
// fw_cfg (-fw_cfg name=opt/org.wormspace/key,file=StateDir/cluster.key;
// FwCfgKey), never on an argument vector: neither QEMU's -append nor its
// own argv shows it in ps, and the guest's /proc/cmdline does not hold it.
//
// Up boots the VMs in parallel and returns when every guest printed
// WORMSPACE-READY on its serial console; VM.Ready reports the host-side
// boot-to-ready time (exec to READY line) and the guest's uptime. VM.Kill
// simulates a crash (SIGKILL to QEMU), VM.Stop powers the guest off (ACPI
// power button through QMP, then SIGTERM, then SIGKILL), VM.Start and
// VM.Restart boot it again on the same data disk, MAC and address.
//
// Everything about a running cluster is in StateDir/cluster.json (State),
// so another process can attach with Open, or remove the cluster with Down;
// this is what `worm vm up|down|status|kill|restart|console` do. QEMU runs
// in its own session, so VMs outlive the launching process unless
// Options.KillWithParent is set (tests, `worm vm up -foreground`).
//
// # Accelerator
//
// AccelAuto picks KVM (-accel kvm -cpu host) when /dev/kvm opens and
// answers KVM_GET_API_VERSION, and TCG (-accel tcg -cpu max) otherwise;
// every progress report names the accelerator in use. Some machines have a
// /dev/kvm that answers the probe but cannot run a guest (nested
// virtualisation: the guest stops after the kernel's real-mode setup and
// prints nothing). A KVM guest silent on its console for
// Options.KVMSilence (30 s) fails with ErrKVMSilent, and Up with AccelAuto
// then boots the whole cluster again under TCG.
//
// # Networking
//
// With NetTAP (chosen automatically with CAP_NET_ADMIN, CAP_SYS_ADMIN and
// /dev/net/tun) each cluster gets a private, named network namespace
// (worm-XXXXXX, visible to `ip netns`) holding a bridge with the host-side
// address (10.77.0.1/24 by default) and one non-persistent TAP per VM
// (NO_PI|VNET_HDR), whose descriptor QEMU inherits (-netdev tap,fd=3). VM i
// is 10.77.0.(10+i). Nothing touches the host's own namespace; deleting the
// namespace name and ending the QEMUs frees bridge and TAPs. The host
// reaches VMs from inside the namespace: Cluster.DialContext for Go code,
// `ip netns exec worm-XXXXXX CMD` for programs.
//
// With NetUser (the fallback) QEMU's user networking forwards one port on
// 127.0.0.1 per VM to the guest's wormd; VMs cannot reach each other, which
// wormservers never need.
//
// # Guest contract
//
// The kernel command line carries worm.id, worm.addr, worm.stack,
// worm.port, worm.data=/dev/vda (a raw ext4 disk made once with
// `mkfs.ext4 -F -q` and kept across restarts), and optionally worm.gw,
// worm.volatile=1, worm.segsize, worm.debug=1 (the key goes by fw_cfg). The guest prints
// `WORMSPACE-READY id=N addr=IP:PORT stack=S uptime_ms=T` when wormd
// accepts connections and `WORMSPACE-ERROR ...` on failures, and powers off
// (QEMU runs with -no-reboot and exits) on shutdown.
//
// This package must not import the WormSpace protocol packages (worm/...,
// wormd) or kernel/guest: it only launches and watches processes, so that
// it stays usable for any image that follows the contract.
package qemu
