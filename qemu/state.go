package qemu

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// stateVersion is bumped when State changes incompatibly.
const stateVersion = 1

// stateFile and lockFile live in the state directory.
const (
	stateFile = "cluster.json"
	lockFile  = "cluster.lock"
)

// State is the JSON document (StateDir/cluster.json) describing a running
// cluster, so that a separate process (`worm vm down|status|kill|restart`)
// can find its QEMU processes, network namespace, disks and console logs.
// It is written atomically (temporary file + rename) under an flock on
// StateDir/cluster.lock, and each update re-reads the file first, so
// several processes may operate on one cluster.
type State struct {
	Version int       `json:"version"`
	Name    string    `json:"name"` // cluster name; also the namespace name with TAP
	Created time.Time `json:"created"`

	Accel Accel   `json:"accel"`
	Net   NetMode `json:"net"`
	// Netns, Bridge and HostAddr describe the TAP network (empty with
	// NetUser).
	Netns    string `json:"netns,omitempty"`
	Bridge   string `json:"bridge,omitempty"`
	HostAddr string `json:"host_addr,omitempty"`

	// Boot parameters shared by all VMs, kept so that a restart from
	// another process boots the VM exactly as before.
	QEMU          string `json:"qemu"`
	Kernel        string `json:"kernel"`
	Initrd        string `json:"initrd"`
	Stack         string `json:"stack"`
	Port          int    `json:"port"`
	EchoPort      int    `json:"echo_port,omitempty"`
	MemoryMiB     int    `json:"memory_mib"`
	CPUs          int    `json:"cpus"`
	DiskMiB       int    `json:"disk_mib"`
	Volatile      bool   `json:"volatile,omitempty"`
	Key           string `json:"key,omitempty"`
	SegmentSize   int    `json:"segment_size,omitempty"`
	NetstackKnobs string `json:"netstack_knobs,omitempty"`
	Debug         bool   `json:"debug,omitempty"`

	VMs []VMState `json:"vms"`
}

// VMState is one VM's entry in State. File names are relative to the
// state directory.
type VMState struct {
	ID        int    `json:"id"`
	Name      string `json:"name"` // QEMU -name, also matched in /proc/PID/cmdline
	Pid       int    `json:"pid"`  // 0 when not running
	Server    string `json:"server"`
	GuestAddr string `json:"guest_addr"`
	Gateway   string `json:"gateway,omitempty"`
	MAC       string `json:"mac"`
	TAP       string `json:"tap,omitempty"`
	HostFwd   int    `json:"host_fwd,omitempty"`
	Echo      string `json:"echo,omitempty"`     // the echo floor's address (Config.EchoPort)
	EchoFwd   int    `json:"echo_fwd,omitempty"` // its forwarded host port (user networking)
	Disk      string `json:"disk,omitempty"`
	Console   string `json:"console"`
	QMP       string `json:"qmp"`
	QEMULog   string `json:"qemu_log"`

	Boots         int       `json:"boots"`
	StartedAt     time.Time `json:"started_at,omitzero"`
	BootToReadyMS float64   `json:"boot_to_ready_ms,omitempty"`
	GuestUptimeMS float64   `json:"guest_uptime_ms,omitempty"`
}

// ReadState reads StateDir/cluster.json; ErrNoCluster if absent.
func ReadState(dir string) (*State, error) {
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w in %s", ErrNoCluster, dir)
	}
	if err != nil {
		return nil, err
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("qemu: %s: %w", filepath.Join(dir, stateFile), err)
	}
	if s.Version != stateVersion {
		return nil, fmt.Errorf("qemu: %s: state version %d, this launcher reads %d", filepath.Join(dir, stateFile), s.Version, stateVersion)
	}
	return &s, nil
}

// writeState replaces StateDir/cluster.json atomically. The file may hold
// the cluster key, so it is private to the owner.
func writeState(dir string, s *State) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, stateFile+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), filepath.Join(dir, stateFile))
}

// lockState takes the state directory's exclusive flock; the returned
// function releases it.
func lockState(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("qemu: lock %s: %w", f.Name(), err)
	}
	return func() { f.Close() }, nil
}

// updateState re-reads the state file under the lock, applies f and
// writes it back.
func updateState(dir string, f func(*State) error) error {
	unlock, err := lockState(dir)
	if err != nil {
		return err
	}
	defer unlock()
	s, err := ReadState(dir)
	if err != nil {
		return err
	}
	if err := f(s); err != nil {
		return err
	}
	return writeState(dir, s)
}

// vm returns the entry for id.
func (s *State) vm(id int) (*VMState, error) {
	for i := range s.VMs {
		if s.VMs[i].ID == id {
			return &s.VMs[i], nil
		}
	}
	return nil, fmt.Errorf("%w: %d (cluster %s has %d VMs)", ErrUnknownVM, id, s.Name, len(s.VMs))
}
