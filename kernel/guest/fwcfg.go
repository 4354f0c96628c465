package guest

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
)

// FwCfgKeyPath is where the cluster key appears in the guest when QEMU
// passes it as the fw_cfg item opt/org.wormspace/key (qemu.FwCfgKey): the
// qemu_fw_cfg module exports every item as a root-only sysfs file.
const FwCfgKeyPath = "/sys/firmware/qemu_fw_cfg/by_name/opt/org.wormspace/key/raw"

// ErrNoFwCfgKey: QEMU passed no key item (or this is not QEMU).
var ErrNoFwCfgKey = errors.New("no cluster key in fw_cfg")

// FwCfgKey checks the key item at path and returns path for wormd's
// -key-file. It fails with ErrNoFwCfgKey when the item is absent, and
// with a description when it holds no usable key (hex of at least 32
// bytes, as the launcher writes it), so that init stops with a clear
// message instead of wormd refusing later.
func FwCfgKey(path string) (string, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", ErrNoFwCfgKey
	}
	if err != nil {
		return "", fmt.Errorf("fw_cfg key: %w", err)
	}
	k, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil {
		return "", fmt.Errorf("fw_cfg key %s: not hex: %w", path, err)
	}
	if len(k) < 32 {
		return "", fmt.Errorf("fw_cfg key %s: %d bytes, want at least 32", path, len(k))
	}
	return path, nil
}
