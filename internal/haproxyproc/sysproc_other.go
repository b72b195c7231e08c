//go:build unix && !linux

package haproxyproc

import "syscall"

// sysProcAttr puts HAProxy in its own process group. Outside Linux there is
// no parent-death signal, so a crashed caller can leave HAProxy running.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
