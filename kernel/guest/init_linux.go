package guest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Bounds on waiting for devices the kernel probes asynchronously.
const (
	deviceWait = 10 * time.Second // virtio probing under TCG can take a second or two
	stopWait   = 10 * time.Second // wormd's flush on SIGTERM before SIGKILL
)

// console is where init writes; /dev/console once devtmpfs is mounted.
var console io.Writer = os.Stderr

// Main is the guest init: PID 1 of a WormSpace VM. It never returns: it
// ends by powering the VM off (or, with worm.debug=1 after a failure, in a
// shell on the console and then powering off).
func Main() {
	start := time.Now()
	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintf(console, "WORMSPACE-ERROR init panic: %v\n", r)
			powerOff()
		}
	}()
	mountEarly()
	if f, err := os.OpenFile("/dev/console", os.O_WRONLY|unix.O_NOCTTY, 0); err == nil {
		console = f
	}
	log := slog.New(slog.NewTextHandler(&prefixWriter{w: console, prefix: "init: "}, nil))
	slog.SetDefault(log)
	log.Info("starting", "pid", os.Getpid())
	// Signals are caught from here on (PID 1 ignores those it has no
	// handler for); one that arrives during setup stops wormd at once.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, unix.SIGTERM, unix.SIGINT, unix.SIGPWR)
	// Ctrl-Alt-Del then sends SIGINT to init instead of an immediate reboot.
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF); err != nil {
		log.Warn("ctrl-alt-del off", "err", err)
	}

	loadModules(log)
	go watchPowerButton(log, sigs)

	raw, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		fail(log, Config{}, fmt.Errorf("read /proc/cmdline: %w", err))
	}
	line := string(raw)
	if defaults, err := os.ReadFile(DefaultsFile); err == nil {
		line = MergeCmdline(string(defaults), line)
	}
	cfg, warns, err := ParseCmdline(line)
	for _, w := range warns {
		log.Warn("cmdline", "param", w.Param, "msg", w.Msg)
	}
	if err != nil {
		cfg.Debug = WantsDebug(line) // a shell even when the rest is unusable
		fail(log, cfg, err)
	}
	if cfg.Key == "" {
		switch path, err := FwCfgKey(FwCfgKeyPath); {
		case err == nil:
			cfg.KeyFile = path
			log.Info("cluster key from fw_cfg", "file", path)
		case errors.Is(err, ErrNoFwCfgKey):
			// wormd then serves unauthenticated (with -insecure when the
			// contract asks for it) and says so itself.
		default:
			fail(log, cfg, err)
		}
	}
	log.Info("config", "id", cfg.ID, "addr", cfg.Addr, "gw", cfg.Gateway, "stack", cfg.Stack, "port", cfg.Port, "data", cfg.Data)

	if err := setupNetwork(log, cfg); err != nil {
		fail(log, cfg, err)
	}
	if err := mountData(log, cfg); err != nil {
		fail(log, cfg, err)
	}
	log.Info("system ready", "ms", time.Since(start).Milliseconds())

	sup := &supervisor{log: log, cfg: cfg, path: WormdPath, out: console, policy: DefaultRestartPolicy, stopWait: stopWait}
	if err := sup.run(sigs); err != nil {
		fail(log, cfg, err)
	}
	shutdown(log, cfg)
}

// mountEarly mounts the pseudo filesystems. Failures are reported later
// through the errors of whatever needs them.
func mountEarly() {
	for _, m := range []struct {
		src, dst, fs string
		flags        uintptr
		data         string
	}{
		{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
		{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
		{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	} {
		os.MkdirAll(m.dst, 0o755)
		if err := unix.Mount(m.src, m.dst, m.fs, m.flags, m.data); err != nil && !errors.Is(err, unix.EBUSY) {
			fmt.Fprintf(console, "init: mount %s: %v\n", m.dst, err)
		}
	}
}

// loadModules loads /lib/modules/order with finit_module. A module that
// fails is logged; what needed it fails later with a clearer error.
func loadModules(log *slog.Logger) {
	data, err := os.ReadFile(OrderFile)
	if err != nil {
		log.Warn("no module order", "err", err)
		return
	}
	t := time.Now()
	n := 0
	for _, name := range ParseOrder(string(data)) {
		f, err := os.Open(ModulesDir + "/" + name)
		if err != nil {
			log.Error("module", "name", name, "err", err)
			continue
		}
		err = unix.FinitModule(int(f.Fd()), "", 0)
		f.Close()
		if err != nil && !errors.Is(err, unix.EEXIST) {
			log.Error("module", "name", name, "err", err)
			continue
		}
		n++
	}
	log.Info("modules loaded", "n", n, "ms", time.Since(t).Milliseconds())
}

// mountData mounts the data disk (ext4) or a tmpfs at /data and creates
// wormd's directory.
func mountData(log *slog.Logger, cfg Config) error {
	os.MkdirAll(DataDir, 0o755)
	if cfg.Data == "" {
		if err := unix.Mount("tmpfs", DataDir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755"); err != nil {
			return fmt.Errorf("mount tmpfs on %s: %w", DataDir, err)
		}
	} else {
		if err := waitFor(cfg.Data, deviceWait); err != nil {
			return err
		}
		if err := unix.Mount(cfg.Data, DataDir, "ext4", unix.MS_NOATIME, ""); err != nil {
			return fmt.Errorf("mount %s (ext4) on %s: %w", cfg.Data, DataDir, err)
		}
		log.Info("data disk mounted", "dev", cfg.Data, "dir", DataDir)
	}
	return os.MkdirAll(WormdData, 0o755)
}

// waitFor polls until path exists or limit passes: devtmpfs creates the
// node when the driver's asynchronous probe finishes.
func waitFor(path string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not appear within %v", path, limit)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// shutdown syncs, unmounts /data and powers off.
func shutdown(log *slog.Logger, cfg Config) {
	unix.Sync()
	if err := unix.Unmount(DataDir, 0); err != nil {
		log.Error("unmount", "dir", DataDir, "err", err)
		unix.Mount("", DataDir, "", unix.MS_REMOUNT|unix.MS_RDONLY, "")
	}
	unix.Sync()
	log.Info("power off")
	powerOff()
}

// fail reports a fatal error on the console and powers off, or with
// worm.debug=1 runs a shell on the console first.
func fail(log *slog.Logger, cfg Config, err error) {
	fmt.Fprintf(console, "WORMSPACE-ERROR %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
	if cfg.Debug {
		debugShell(log)
	}
	unix.Sync()
	unix.Unmount(DataDir, 0)
	powerOff()
}

// debugShell runs the image's shell on the console until it exits.
func debugShell(log *slog.Logger) {
	for _, sh := range []string{"/bin/sh", "/bin/gosh"} {
		if _, err := os.Stat(sh); err != nil {
			continue
		}
		c, err := os.OpenFile("/dev/console", os.O_RDWR, 0)
		if err != nil {
			log.Error("debug shell: console", "err", err)
			return
		}
		cmd := exec.CommandContext(context.Background(), sh)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = c, c, c
		cmd.Env = []string{"PATH=/bin", "HOME=/", "TERM=vt100"}
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
		log.Info("worm.debug: starting a shell on the console; exit it to power off", "shell", sh)
		if err := cmd.Run(); err != nil {
			log.Error("debug shell", "err", err)
		}
		c.Close()
		return
	}
	log.Error("worm.debug: no shell in the image")
}

// powerOff restarts the machine, which QEMU's -no-reboot turns into a
// clean exit with status 0 (boot-notes: more dependable under TCG than
// ACPI power-off). PID 1 must never return, so it then sleeps forever
// (never a bare select{}, which the runtime can call a deadlock).
func powerOff() {
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	for {
		time.Sleep(time.Hour)
	}
}

// prefixWriter prefixes every write (slog writes one line per call).
type prefixWriter struct {
	mu     sync.Mutex
	w      io.Writer
	prefix string
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, err := io.WriteString(p.w, p.prefix+string(b)); err != nil {
		return 0, err
	}
	return len(b), nil
}
