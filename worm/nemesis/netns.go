package nemesis

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"

	"github.com/vishvananda/netlink"
)

// netnsEnv marks a process that Reexec started in its own network
// namespace.
const netnsEnv = "WORM_NEMESIS_NETNS"

// InPrivateNetns reports whether this process runs in a network namespace
// that Reexec created for it (so that firewall rules on its loopback touch
// nothing else on the machine).
func InPrivateNetns() bool { return os.Getenv(netnsEnv) == "1" }

// Reexec runs this executable again with args in a new network namespace
// (root only), stdio inherited, and returns its exit code. The child sees
// InPrivateNetns() == true and must call SetupNetns first.
func Reexec(args []string) (int, error) {
	if os.Geteuid() != 0 {
		return 0, errors.New("a network namespace needs root")
	}
	cmd := exec.Command("/proc/self/exe", args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), netnsEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), nil
	}
	if err != nil {
		return 0, err
	}
	return 0, nil
}

// SetupNetns brings up the loopback interface of a new namespace.
func SetupNetns() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return err
	}
	return netlink.LinkSetUp(lo)
}

// netFaults drops a wormd's traffic on loopback with iptables, inside the
// private namespace only.
type netFaults struct {
	bin    string
	mu     sync.Mutex
	active map[string][]string // rule key -> rule
}

// newNetFaults finds a working iptables, or says why there is none.
func newNetFaults() (*netFaults, error) {
	if !InPrivateNetns() {
		return nil, errors.New("needs the harness in its own network namespace (worm nemesis re-executes itself in one when run as root; tests do the same)")
	}
	var why []string
	for _, b := range []string{"iptables", "iptables-legacy"} {
		p, err := exec.LookPath(b)
		if err != nil {
			why = append(why, b+": not installed")
			continue
		}
		// A harmless rule on a port nobody uses proves the tables work.
		probe := []string{"INPUT", "-p", "tcp", "--dport", "1", "-j", "DROP"}
		if out, err := exec.Command(p, append([]string{"-w", "-A"}, probe...)...).CombinedOutput(); err != nil {
			why = append(why, fmt.Sprintf("%s: %v %s", b, err, strings.TrimSpace(string(out))))
			continue
		}
		exec.Command(p, append([]string{"-w", "-D"}, probe...)...).Run()
		return &netFaults{bin: p, active: map[string][]string{}}, nil
	}
	return nil, fmt.Errorf("no usable iptables (apt package iptables): %s", strings.Join(why, "; "))
}

func portOf(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

// rules returns the rules that cut wormd at addr: both directions
// (partition), or only its replies (oneway: requests arrive and are
// acted on, the answers are lost).
func rules(addr string, oneway bool) [][]string {
	p := portOf(addr)
	out := [][]string{{"INPUT", "-p", "tcp", "--sport", p, "-j", "DROP"}}
	if !oneway {
		out = append(out, []string{"INPUT", "-p", "tcp", "--dport", p, "-j", "DROP"})
	}
	return out
}

func (n *netFaults) cut(addr string, oneway bool) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, r := range rules(addr, oneway) {
		k := strings.Join(r, " ")
		if _, ok := n.active[k]; ok {
			continue
		}
		if out, err := exec.Command(n.bin, append([]string{"-w", "-A"}, r...)...).CombinedOutput(); err != nil {
			return fmt.Errorf("iptables -A %s: %v %s", k, err, out)
		}
		n.active[k] = r
	}
	return nil
}

// heal removes every rule.
func (n *netFaults) heal() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	var errs []error
	for k, r := range n.active {
		if out, err := exec.Command(n.bin, append([]string{"-w", "-D"}, r...)...).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("iptables -D %s: %v %s", k, err, out))
			continue
		}
		delete(n.active, k)
	}
	return errors.Join(errs...)
}
