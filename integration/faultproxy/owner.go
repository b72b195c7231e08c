package faultproxy

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Owner returns an Options.Source that names the process holding the other
// end of an accepted connection, among pids (pid → name, asked on every
// connection, so a restarted process is found under its new pid); "" when
// none of them holds it. It reads /proc/net/tcp and /proc/PID/fd, so it
// works on Linux for connections from this machine.
func Owner(pids func() map[int]string) func(net.Addr) string {
	return func(remote net.Addr) string {
		tcp, ok := remote.(*net.TCPAddr)
		if !ok {
			return ""
		}
		// /proc/net/tcp is read in pieces, not as one snapshot: while
		// other sockets open and close, a read can miss a line. A
		// connection not found is looked for again a few times before it
		// counts as no one's (it would then pass every source's fault).
		for attempt := range ownerAttempts {
			if attempt > 0 {
				time.Sleep(time.Duration(attempt) * time.Millisecond)
			}
			if name := owner(tcp, pids()); name != "" {
				return name
			}
		}
		return ""
	}
}

// ownerAttempts is how many times Owner looks for a connection's owner.
const ownerAttempts = 5

// owner names the process among pids that holds the TCP socket whose local
// address is a, or "".
func owner(a *net.TCPAddr, pids map[int]string) string {
	inode := socketInode(a)
	if inode == "" {
		return ""
	}
	want := "socket:[" + inode + "]"
	for pid, name := range pids {
		dir := filepath.Join("/proc", fmt.Sprint(pid), "fd")
		ents, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range ents {
			if l, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && l == want {
				return name
			}
		}
	}
	return ""
}

// socketInode finds the inode of the TCP socket whose local address is a
// (an IPv4 address), or "".
func socketInode(a *net.TCPAddr) string {
	ip := a.IP.To4()
	if ip == nil {
		return ""
	}
	data, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return ""
	}
	// /proc/net/tcp spells an address as the IPv4 bytes in host (little
	// endian) order and the port in hex.
	local := fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], a.Port)
	for _, line := range strings.Split(string(data), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 9 && f[1] == local && f[9] != "0" {
			return f[9]
		}
	}
	return ""
}
