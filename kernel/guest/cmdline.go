package guest

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Stacks wormd can serve TCP with (worm.stack).
const (
	// StackNetstack: gVisor netstack on eth0 over AF_PACKET; the kernel
	// keeps no address on eth0. The default.
	StackNetstack = "netstack"
	// StackKernel: init gives eth0 the address; wormd uses kernel TCP.
	StackKernel = "kernel"
)

// Defaults for optional parameters.
const (
	DefaultID   = 1
	DefaultPort = 7070
	// Iface is the guest NIC (the first virtio-net device).
	Iface = "eth0"
	// DataDir is where the data disk (or a tmpfs) is mounted.
	DataDir = "/data"
	// WormdData is wormd's -data directory on it.
	WormdData = DataDir + "/wormd"
	// WormdPath is the server binary init starts.
	WormdPath = "/bin/wormd"
)

// Errors for a command line init cannot boot from.
var (
	// ErrNoAddr: worm.addr is missing (the only required parameter).
	ErrNoAddr = errors.New("guest: worm.addr is required")
	// ErrBadParam: a known worm.* parameter has an invalid value; the
	// error is a *ParamError.
	ErrBadParam = errors.New("guest: bad parameter")
)

// ParamError reports a worm.* parameter with an invalid value.
type ParamError struct {
	Param, Value string
	Reason       string
}

func (e *ParamError) Error() string {
	return fmt.Sprintf("guest: bad parameter %s=%q: %s", e.Param, e.Value, e.Reason)
}

// Unwrap makes errors.Is(err, ErrBadParam) true.
func (e *ParamError) Unwrap() error { return ErrBadParam }

// Warning is a non-fatal finding about the command line, printed on the
// console: an unknown worm.* parameter, a repeated one, a gateway off the
// subnet, no data disk.
type Warning struct {
	Param string
	Msg   string
}

func (w Warning) String() string { return w.Param + ": " + w.Msg }

// Config is what the kernel command line asks of the guest (see the
// guest contract in the package doc).
type Config struct {
	ID      int          // worm.id, default 1
	Addr    netip.Prefix // worm.addr, required: eth0's IPv4 address
	Gateway netip.Addr   // worm.gw, optional default route
	Stack   string       // worm.stack: StackNetstack (default) or StackKernel
	Port    int          // worm.port, default 7070
	// EchoPort, when set (worm.echo), has wormd also serve a raw TCP echo
	// on this port over its own stack: the benchmark floor.
	EchoPort int
	// Data is the block device holding the ext4 data filesystem
	// (worm.data); empty means a tmpfs (nothing survives a reboot).
	Data     string
	Volatile bool   // worm.volatile=1: wormd -volatile
	Key      string // worm.key: cluster key, hex
	// KeyFile is a file holding the cluster key, used when Key is empty.
	// Not a command-line parameter: init sets it to FwCfgKeyPath when QEMU
	// handed the key over by fw_cfg.
	KeyFile     string
	SegmentSize int // worm.segsize, 0 = wormd's default
	// Knobs (worm.knobs) are netstack knob overrides passed to wormd's
	// -netstack-knobs as they are (name=value,...); wormd validates them.
	Knobs string
	Debug bool // worm.debug=1: a shell instead of power-off on failure
}

// ListenAddr is the address wormd listens on: eth0's address and the port.
func (c Config) ListenAddr() netip.AddrPort {
	return netip.AddrPortFrom(c.Addr.Addr(), uint16(c.Port))
}

// WormdArgs is the argument vector init starts wormd with (the contract's
// flag list), without the program name. The ready pipe is fd 3.
func (c Config) WormdArgs() []string {
	a := []string{
		"-id", strconv.Itoa(c.ID),
		"-data", WormdData,
		"-listen", c.ListenAddr().String(),
		"-stack", c.Stack,
	}
	if c.Stack == StackNetstack {
		a = append(a, "-iface", Iface, "-addr", c.Addr.String())
		if c.Gateway.IsValid() {
			a = append(a, "-gw", c.Gateway.String())
		}
		if c.Knobs != "" {
			a = append(a, "-netstack-knobs", c.Knobs)
		}
	}
	if c.EchoPort > 0 {
		a = append(a, "-echo-listen", netip.AddrPortFrom(c.Addr.Addr(), uint16(c.EchoPort)).String())
	}
	if c.Volatile {
		a = append(a, "-volatile")
	}
	if c.Key != "" {
		a = append(a, "-key-hex", c.Key)
	} else if c.KeyFile != "" {
		a = append(a, "-key-file", c.KeyFile)
	}
	if c.SegmentSize > 0 {
		a = append(a, "-segment-size", strconv.Itoa(c.SegmentSize))
	}
	return append(a, "-ready-fd", "3")
}

// RedactArgs returns args with the value of -key-hex replaced, for logs:
// the console is copied to files on the host that are not as private as
// the key.
func RedactArgs(args []string) []string {
	out := append([]string(nil), args...)
	for i := range out {
		if out[i] == "-key-hex" && i+1 < len(out) {
			out[i+1] = "<redacted>"
		} else if strings.HasPrefix(out[i], "-key-hex=") {
			out[i] = "-key-hex=<redacted>"
		}
	}
	return out
}

// Cmdline renders c as worm.* kernel parameters; ParseCmdline of the
// result gives c back.
func (c Config) Cmdline() string {
	p := []string{
		"worm.id=" + strconv.Itoa(c.ID),
		"worm.addr=" + c.Addr.String(),
		"worm.stack=" + c.Stack,
		"worm.port=" + strconv.Itoa(c.Port),
	}
	if c.Gateway.IsValid() {
		p = append(p, "worm.gw="+c.Gateway.String())
	}
	if c.Data != "" {
		p = append(p, "worm.data="+c.Data)
	}
	if c.EchoPort > 0 {
		p = append(p, "worm.echo="+strconv.Itoa(c.EchoPort))
	}
	if c.Volatile {
		p = append(p, "worm.volatile=1")
	}
	if c.Key != "" {
		p = append(p, "worm.key="+c.Key)
	}
	if c.SegmentSize > 0 {
		p = append(p, "worm.segsize="+strconv.Itoa(c.SegmentSize))
	}
	if c.Knobs != "" {
		p = append(p, "worm.knobs="+c.Knobs)
	}
	if c.Debug {
		p = append(p, "worm.debug=1")
	}
	return strings.Join(p, " ")
}

// SplitCmdline splits a kernel command line the way the kernel does:
// on whitespace, with double quotes grouping (and removed from) a value.
func SplitCmdline(s string) []string {
	var out []string
	var cur strings.Builder
	in, quoted := false, false
	for _, r := range s {
		switch {
		case r == '"':
			quoted = !quoted
			in = true
		case !quoted && (r == ' ' || r == '\t' || r == '\n' || r == '\r'):
			if in {
				out = append(out, cur.String())
				cur.Reset()
				in = false
			}
		default:
			cur.WriteRune(r)
			in = true
		}
	}
	if in {
		out = append(out, cur.String())
	}
	return out
}

// ParseCmdline reads the worm.* parameters of a kernel command line
// (/proc/cmdline) into a Config with defaults applied. Other parameters
// are ignored. It returns warnings for unknown or repeated worm.*
// parameters and other non-fatal findings, and an error (ErrNoAddr or a
// *ParamError) when init cannot start wormd from it.
func ParseCmdline(s string) (Config, []Warning, error) {
	c := Config{ID: DefaultID, Stack: StackNetstack, Port: DefaultPort}
	var warns []Warning
	seen := map[string]bool{}
	for _, tok := range SplitCmdline(s) {
		key, val, hasVal := strings.Cut(tok, "=")
		if !strings.HasPrefix(key, "worm.") {
			continue
		}
		if seen[key] {
			warns = append(warns, Warning{key, "given more than once; the last one counts"})
		}
		seen[key] = true
		bad := func(reason string) error { return &ParamError{Param: key, Value: val, Reason: reason} }
		switch key {
		case "worm.id":
			n, err := strconv.Atoi(val)
			if err != nil || n < 0 || n > 1<<31-1 {
				return Config{}, warns, bad("want a non-negative integer")
			}
			c.ID = n
		case "worm.addr":
			p, err := netip.ParsePrefix(val)
			if err != nil || !p.Addr().Is4() || p.Bits() < 1 || p.Bits() > 30 {
				return Config{}, warns, bad("want an IPv4 address with a prefix length of 1 to 30, e.g. 10.77.0.11/24")
			}
			c.Addr = p
		case "worm.gw":
			a, err := netip.ParseAddr(val)
			if err != nil || !a.Is4() {
				return Config{}, warns, bad("want an IPv4 address")
			}
			c.Gateway = a
		case "worm.stack":
			if val != StackNetstack && val != StackKernel {
				return Config{}, warns, bad("want netstack or kernel")
			}
			c.Stack = val
		case "worm.port":
			n, err := strconv.Atoi(val)
			if err != nil || n < 1 || n > 65535 {
				return Config{}, warns, bad("want a port number 1-65535")
			}
			c.Port = n
		case "worm.echo":
			n, err := strconv.Atoi(val)
			if err != nil || n < 1 || n > 65535 {
				return Config{}, warns, bad("want a port number 1-65535")
			}
			c.EchoPort = n
		case "worm.data":
			if !strings.HasPrefix(val, "/dev/") || len(val) <= len("/dev/") || strings.ContainsAny(val, " \t") {
				return Config{}, warns, bad("want a block device path like /dev/vda")
			}
			c.Data = val
		case "worm.volatile", "worm.debug":
			b, ok := parseBool(val, hasVal)
			if !ok {
				return Config{}, warns, bad("want 1 or 0")
			}
			if key == "worm.volatile" {
				c.Volatile = b
			} else {
				c.Debug = b
			}
		case "worm.key":
			if _, err := hex.DecodeString(val); err != nil || val == "" {
				return Config{}, warns, bad("want hex digits")
			}
			c.Key = strings.ToLower(val)
		case "worm.knobs":
			if !validKnobs(val) {
				return Config{}, warns, bad("want name=value pairs separated by commas (letters, digits, _ . / -)")
			}
			c.Knobs = val
		case "worm.segsize":
			n, err := strconv.Atoi(val)
			if err != nil || n < 1 {
				return Config{}, warns, bad("want a positive integer")
			}
			c.SegmentSize = n
		default:
			warns = append(warns, Warning{key, "unknown parameter, ignored"})
		}
	}
	if !c.Addr.IsValid() {
		return Config{}, warns, ErrNoAddr
	}
	if c.Gateway.IsValid() && !c.Addr.Masked().Contains(c.Gateway) {
		warns = append(warns, Warning{"worm.gw", fmt.Sprintf("%v is not inside %v; the default route may not work", c.Gateway, c.Addr)})
	}
	if c.Gateway.IsValid() && c.Gateway == c.Addr.Addr() {
		return Config{}, warns, &ParamError{Param: "worm.gw", Value: c.Gateway.String(), Reason: "the gateway is the VM's own address"}
	}
	if c.EchoPort == c.Port {
		return Config{}, warns, &ParamError{Param: "worm.echo", Value: strconv.Itoa(c.EchoPort), Reason: "the echo floor cannot share wormd's port"}
	}
	if c.Data == "" {
		warns = append(warns, Warning{"worm.data", "no data disk: " + DataDir + " is a tmpfs and nothing survives a reboot"})
	}
	return c, warns, nil
}

func parseBool(v string, hasVal bool) (bool, bool) {
	if !hasVal {
		return true, true // a bare "worm.debug" switches it on
	}
	switch strings.ToLower(v) {
	case "1", "y", "yes", "true", "on":
		return true, true
	case "0", "n", "no", "false", "off":
		return false, true
	}
	return false, false
}

// DefaultsFile holds worm.* parameters baked into the image (for example
// worm.stack=kernel from `worm image build -stack-default kernel`). The
// kernel command line overrides them (MergeCmdline).
const DefaultsFile = "/etc/worm/cmdline"

// MergeCmdline returns the kernel command line with the worm.* parameters
// of defaults that it does not set itself placed in front, so that the
// command line always wins and no parameter appears twice.
func MergeCmdline(defaults, cmdline string) string {
	set := map[string]bool{}
	for _, tok := range SplitCmdline(cmdline) {
		k, _, _ := strings.Cut(tok, "=")
		set[k] = true
	}
	var keep []string
	for _, tok := range SplitCmdline(defaults) {
		k, _, _ := strings.Cut(tok, "=")
		if strings.HasPrefix(k, "worm.") && !set[k] && !strings.ContainsAny(tok, " \t\"") {
			keep = append(keep, tok)
		}
	}
	if len(keep) == 0 {
		return cmdline
	}
	return strings.Join(keep, " ") + " " + cmdline
}

// WantsDebug reports whether a command line asks for worm.debug, even
// one that ParseCmdline rejects: init then offers a shell after the error.
func WantsDebug(cmdline string) bool {
	on := false
	for _, tok := range SplitCmdline(cmdline) {
		k, v, hasVal := strings.Cut(tok, "=")
		if k == "worm.debug" {
			on, _ = parseBool(v, hasVal)
		}
	}
	return on
}

// validKnobs checks worm.knobs' shape only (this package must not import
// gVisor): name=value pairs of [a-z0-9_./-], comma separated. wormd checks
// names and values and refuses to start on a bad one.
func validKnobs(s string) bool {
	if s == "" {
		return false
	}
	for _, kv := range strings.Split(s, ",") {
		name, val, ok := strings.Cut(kv, "=")
		if !ok || name == "" || val == "" {
			return false
		}
		for _, r := range name + val {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("_./-", r)) {
				return false
			}
		}
	}
	return true
}
