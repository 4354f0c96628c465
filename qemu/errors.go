package qemu

import "errors"

// Sentinel errors for expected conditions; the launcher wraps them with %w
// and the details of the case at hand.
var (
	// ErrConfig reports an invalid Config or Spec.
	ErrConfig = errors.New("qemu: invalid configuration")
	// ErrNoImage reports missing boot image files (build them with
	// `make image`).
	ErrNoImage = errors.New("qemu: boot image missing")
	// ErrNoQEMU reports that the QEMU binary is not installed.
	ErrNoQEMU = errors.New("qemu: qemu-system-x86_64 not found")
	// ErrNoTAP reports that TAP networking is impossible here (no
	// CAP_NET_ADMIN/CAP_SYS_ADMIN or no /dev/net/tun).
	ErrNoTAP = errors.New("qemu: TAP networking unavailable")
	// ErrExited reports that a VM's QEMU process ended (before becoming
	// ready, or while an operation waited on it).
	ErrExited = errors.New("qemu: VM exited")
	// ErrNotReady reports that a VM did not print WORMSPACE-READY within
	// the ready timeout.
	ErrNotReady = errors.New("qemu: VM not ready in time")
	// ErrKVMSilent reports a KVM guest that printed nothing on its
	// console within Options.KVMSilence: a sign of KVM that opens and
	// answers the API probe but cannot run a guest (seen with nested
	// virtualisation). Up with AccelAuto then falls back to TCG.
	ErrKVMSilent = errors.New("qemu: KVM guest printed nothing")
	// ErrClusterExists reports a state directory that already describes
	// a cluster with live VMs.
	ErrClusterExists = errors.New("qemu: a cluster is already running in this state directory")
	// ErrNoCluster reports a state directory without a state file.
	ErrNoCluster = errors.New("qemu: no cluster state")
	// ErrUnknownVM reports a VM id that is not part of the cluster.
	ErrUnknownVM = errors.New("qemu: no such VM")
	// ErrNotRunning reports an operation on a VM whose QEMU is not
	// running (Pause, Resume).
	ErrNotRunning = errors.New("qemu: VM not running")
)
