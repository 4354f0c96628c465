package guest

import (
	"encoding/binary"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// Linux input event constants (linux/input-event-codes.h).
const (
	evKey    = 0x01
	keyPower = 116
	// inputEventSize is struct input_event on 64-bit: a 16-byte timeval,
	// type u16, code u16, value s32.
	inputEventSize = 24
)

// watchPowerButton turns the ACPI power button (QEMU's system_powerdown)
// into a SIGPWR on sigs, the same path as SIGTERM. The button driver
// registers its input device during boot; devices present within
// deviceWait are watched.
func watchPowerButton(log *slog.Logger, sigs chan<- os.Signal) {
	seen := map[string]bool{}
	deadline := time.Now().Add(deviceWait)
	for time.Now().Before(deadline) {
		paths, _ := filepath.Glob("/dev/input/event*")
		for _, p := range paths {
			if seen[p] {
				continue
			}
			seen[p] = true
			f, err := os.Open(p)
			if err != nil {
				log.Warn("input device", "path", p, "err", err)
				continue
			}
			go readPowerKey(log, f, sigs)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(seen) == 0 {
		log.Warn("no input devices: the host's system_powerdown will not reach init (button, evdev modules?)")
	}
}

func readPowerKey(log *slog.Logger, f *os.File, sigs chan<- os.Signal) {
	defer f.Close()
	buf := make([]byte, inputEventSize*16)
	for {
		n, err := f.Read(buf)
		if err != nil {
			return
		}
		for off := 0; off+inputEventSize <= n; off += inputEventSize {
			if isPowerPress(buf[off : off+inputEventSize]) {
				log.Info("power button", "dev", f.Name())
				select {
				case sigs <- unix.SIGPWR:
				default:
				}
			}
		}
	}
}

// isPowerPress reports whether a raw struct input_event is KEY_POWER down.
func isPowerPress(ev []byte) bool {
	typ := binary.NativeEndian.Uint16(ev[16:])
	code := binary.NativeEndian.Uint16(ev[18:])
	val := int32(binary.NativeEndian.Uint32(ev[20:]))
	return typ == evKey && code == keyPower && val == 1
}
