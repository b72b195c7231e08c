//go:build linux

package haproxyproc

import "syscall"

// sysProcAttr puts HAProxy in its own process group (a terminal's Ctrl-C
// reaches us, and we stop it in order) and has the kernel kill it if we die
// without stopping it, so a crashed test leaves no proxy holding ports.
// Pdeathsig fires when the OS thread that started the child exits; Go only
// retires threads whose goroutine died while locked to them, which this
// package never does.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
