package qemu

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// isOurQEMU reports whether pid is alive (not a zombie) and its command
// line carries `-name NAME`. The check guards every signal sent to a pid
// read from a state file, so a recycled pid is never killed.
func isOurQEMU(pid int, name string) bool {
	if pid <= 0 {
		return false
	}
	p := "/proc/" + strconv.Itoa(pid)
	stat, err := os.ReadFile(p + "/stat")
	if err != nil {
		return false
	}
	// The state field follows the parenthesised command name, which may
	// itself contain spaces or parentheses.
	if i := bytes.LastIndexByte(stat, ')'); i < 0 || i+2 >= len(stat) || stat[i+2] == 'Z' || stat[i+2] == 'X' {
		return false
	}
	cl, err := os.ReadFile(p + "/cmdline")
	if err != nil {
		return false
	}
	args := strings.Split(string(cl), "\x00")
	for i := 0; i+1 < len(args); i++ {
		if args[i] == "-name" && args[i+1] == name {
			return true
		}
	}
	return false
}

// watchPid closes done once pid stops being our QEMU. It is used for VMs
// started by another process, which this process cannot wait(2) for.
func watchPid(pid int, name string, done chan<- struct{}) {
	for isOurQEMU(pid, name) {
		time.Sleep(50 * time.Millisecond)
	}
	close(done)
}

// signalPid sends sig to pid if it is still our QEMU.
func signalPid(pid int, name string, sig syscall.Signal) error {
	if !isOurQEMU(pid, name) {
		return nil
	}
	if err := syscall.Kill(pid, sig); err != nil && err != syscall.ESRCH {
		return err
	}
	return nil
}
