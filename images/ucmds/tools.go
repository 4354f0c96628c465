//go:build tools

// Package ucmds only records, for `go mod tidy`, which u-root commands the
// image builder compiles from this module. See go.mod.
package ucmds

import (
	_ "github.com/u-root/u-root/cmds/core/cat"
	_ "github.com/u-root/u-root/cmds/core/dmesg"
	_ "github.com/u-root/u-root/cmds/core/gosh"
	_ "github.com/u-root/u-root/cmds/core/ip"
)

// makebb compiles the commands into one busybox-style binary.
import _ "github.com/u-root/gobusybox/src/cmd/makebb"
