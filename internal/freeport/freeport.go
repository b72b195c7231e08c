// Package freeport picks TCP ports on 127.0.0.1 for processes that bind
// them a moment later (HAProxy frontends, test coordinators, NATS servers).
//
// A port the kernel hands out for ":0" comes from its ephemeral range
// (net.ipv4.ip_local_port_range), which is also where it takes the local
// port of every outgoing connection: between the probe and the child's
// bind, any client connecting anywhere could take it. Pick chooses at
// random below that range instead, where no outgoing connection lands,
// and the random choice keeps processes probing at the same time apart.
// The window is not closed (another process may still bind the port
// first), only made unlikely; callers that can retry on "address in use"
// still should.
package freeport

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

// floor is the lowest port picked: above the well-known ports and the
// fixed ones services usually take.
const floor = 20000

// rangeFile holds the kernel's ephemeral range, "low high".
const rangeFile = "/proc/sys/net/ipv4/ip_local_port_range"

// Pick returns a port on 127.0.0.1 that was free a moment ago.
func Pick() (int, error) {
	lo := ephemeralLow()
	if lo-floor < 1000 {
		// No room below the range: the kernel's pick it is.
		return probe(0)
	}
	for range 100 {
		p, err := probe(floor + rand.IntN(lo-floor))
		if err == nil && handOut(p) {
			return p, nil
		}
	}
	return 0, fmt.Errorf("freeport: no free port in [%d, %d) after 100 tries", floor, lo)
}

// probe binds port (0: any) on 127.0.0.1 and releases it.
// given are the ports Pick handed out in this process. A port is free when
// picked and used later, so without this two picks a few calls apart (a
// node's proxy frontend and its agent's HTTP address) could get the same
// port: among thirty picks in the range the odds are some 3 %.
var given = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// handOut marks p handed out, and says whether it was not already.
func handOut(p int) bool {
	given.Lock()
	defer given.Unlock()
	if given.ports[p] {
		return false
	}
	given.ports[p] = true
	return true
}

func probe(port int) (int, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return 0, fmt.Errorf("freeport: %w", err)
	}
	defer ln.Close()
	addr, ok := ln.Addr().(*net.TCPAddr)
	if !ok {
		return 0, errors.New("freeport: listener has no TCP address")
	}
	return addr.Port, nil
}

// ephemeralLow is the low end of the kernel's ephemeral range, Linux's
// default when the file cannot be read.
func ephemeralLow() int {
	const linuxDefault = 32768
	b, err := os.ReadFile(rangeFile)
	if err != nil {
		return linuxDefault
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return linuxDefault
	}
	lo, err := strconv.Atoi(f[0])
	if err != nil || lo <= 0 {
		return linuxDefault
	}
	return lo
}
