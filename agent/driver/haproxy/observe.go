package haproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/switchyard/switchyard/agent/driver"
)

var (
	_ driver.Observer = (*Driver)(nil)
	_ driver.Watcher  = (*Driver)(nil)
)

// Observe reads what HAProxy does now: the process ("show info": its pid
// and start time, which change on a restart or reload), and each configured
// server's runtime weight and admin state ("show servers state").
func (d *Driver) Observe(ctx context.Context) (driver.Observation, error) {
	if d.closed.Load() {
		return driver.Observation{}, errClosed
	}
	info, err := d.api.show(ctx, "show info")
	if err != nil {
		return driver.Observation{}, fmt.Errorf("haproxy driver: %w", err)
	}
	instance, err := parseInstance(info)
	if err != nil {
		return driver.Observation{}, fmt.Errorf("haproxy driver: %w", err)
	}
	state, err := d.serversState(ctx)
	if err != nil {
		return driver.Observation{}, err
	}
	obs := driver.Observation{
		Weights:  make(map[string]uint32, len(d.names)),
		Instance: instance,
	}
	for _, spec := range d.names {
		srv := d.cfg.Servers[spec]
		st, ok := state[srv]
		if !ok {
			return driver.Observation{}, noServer(d, spec, srv, state)
		}
		obs.Weights[spec] = st.Weight
		if held := st.held(); held != "" {
			if obs.Held == nil {
				obs.Held = map[string]string{}
			}
			obs.Held[spec] = held
		}
	}
	return obs, nil
}

// held names why a server takes no new traffic whatever its weight: "drain"
// when only drain bits are set, "maint" for any other admin state bit
// (forced, from the config, inherited from a tracked server or from DNS
// resolution). "" when it is in rotation.
func (s serverState) held() string {
	switch {
	case s.AdminState == 0:
		return ""
	case s.AdminState&^(adminForcedDrain|adminInheritedDrain) == 0:
		return StateDrain
	default:
		return StateMaint
	}
}

// adminInheritedDrain is SRV_ADMF_IDRAIN: drain inherited from a tracked
// server.
const adminInheritedDrain = 0x10

// parseInstance names the HAProxy process that answered "show info" by its
// pid and start time: a restart changes both, a reload (a new process
// taking over the socket) at least the pid.
func parseInstance(info string) (string, error) {
	pid, err := parseInfoCounter(info, "Pid")
	if err != nil {
		return "", err
	}
	start, err := parseInfoCounter(info, "Start_time_sec")
	if err != nil {
		// Older HAProxy lacks Start_time_sec; the pid alone still changes
		// on every restart but one that reuses it.
		return fmt.Sprintf("pid %d", pid), nil //nolint:nilerr // the pid suffices
	}
	return fmt.Sprintf("pid %d started %d", pid, start), nil
}

// Watch holds a connection to HAProxy's admin socket in interactive mode
// and calls changed(false) the moment it drops (HAProxy killed, restarting
// or reloading) and changed(true) when it is made again (HAProxy back), so
// the agent knows at once rather than at its next poll. It makes a new
// connection every 2 seconds and closes the one it held: within the CLI's
// idle timeout, and so that after a reload the old process, which serves
// the connections it has until they end, is not held running by this one.
//
// The drivers watching one socket share one connection: HAProxy's CLI
// serves 10 connections at a time unless "stats socket ... maxconn" says
// otherwise, and leaves the others unanswered in the backlog, so a
// connection held per service would leave a node of ten services of one
// HAProxy no room for a single command. A driver that starts watching a
// connection already made is told its state at once.
func (d *Driver) Watch(ctx context.Context, changed func(up bool)) {
	if d.closed.Load() {
		return
	}
	sub := &watchSub{changed: changed}
	sw := joinWatch(d.cfg.Socket, sub)
	<-ctx.Done()
	leaveWatch(d.cfg.Socket, sw, sub)
}

// watches are the shared watch connections, by admin socket path.
var watches = struct {
	mu       sync.Mutex
	bySocket map[string]*socketWatch
}{bySocket: map[string]*socketWatch{}}

// socketWatch is one held connection to an admin socket and the drivers
// told about it. Its fields are guarded by watches.mu.
type socketWatch struct {
	subs  map[*watchSub]struct{}
	up    bool
	known bool // up was reported at least once
	stop  context.CancelFunc
	done  chan struct{} // closed when the connection's goroutine ended
}

type watchSub struct{ changed func(up bool) }

// joinWatch adds sub to socket's watch, starting it for the first driver.
func joinWatch(socket string, sub *watchSub) *socketWatch {
	watches.mu.Lock()
	defer watches.mu.Unlock()
	sw := watches.bySocket[socket]
	if sw == nil {
		ctx, stop := context.WithCancel(context.Background())
		sw = &socketWatch{subs: map[*watchSub]struct{}{}, stop: stop, done: make(chan struct{})}
		watches.bySocket[socket] = sw
		go func() {
			defer close(sw.done)
			watchSocket(ctx, socket, sw.report)
		}()
	}
	sw.subs[sub] = struct{}{}
	if sw.known {
		sub.changed(sw.up) // changed must not block
	}
	return sw
}

// leaveWatch removes sub from socket's watch, and ends the watch (waiting
// for its goroutine) when sub was the last driver on it.
func leaveWatch(socket string, sw *socketWatch, sub *watchSub) {
	watches.mu.Lock()
	delete(sw.subs, sub)
	last := len(sw.subs) == 0
	if last && watches.bySocket[socket] == sw {
		delete(watches.bySocket, socket)
	}
	watches.mu.Unlock()
	if last {
		sw.stop()
		<-sw.done
	}
}

// report tells every driver on the watch, in the order the connection
// changed: under the lock, which is fine since changed must not block.
func (sw *socketWatch) report(up bool) {
	watches.mu.Lock()
	defer watches.mu.Unlock()
	sw.up, sw.known = up, true
	for sub := range sw.subs {
		sub.changed(up)
	}
}

// watchSocket holds a connection to socket until ctx ends, calling
// changed(false) when it drops or cannot be made and changed(true) on
// every connect.
func watchSocket(ctx context.Context, socket string, changed func(up bool)) {
	const (
		redialMin = 5 * time.Millisecond
		redialMax = 50 * time.Millisecond
		// renewAfter is how long one connection is held: under the CLI's
		// idle timeout (stats timeout, 10s by default), and short, since
		// after a reload the connection is the old process's and keeps it
		// running until it ends.
		renewAfter = 2 * time.Second
		dialBudget = time.Second
	)
	delay := redialMin
	up := true // assume up at first, so a first failure is reported
	var held net.Conn
	defer func() {
		if held != nil {
			held.Close()
		}
	}()
	for ctx.Err() == nil {
		dctx, cancel := context.WithTimeout(ctx, dialBudget)
		var dialer net.Dialer
		conn, err := dialer.DialContext(dctx, "unix", socket)
		cancel()
		if err == nil {
			if _, err = io.WriteString(conn, "prompt\n"); err != nil {
				conn.Close()
			}
		}
		// The connection held so far goes once the next one is made, or
		// cannot be: it may be a reloaded process's.
		if held != nil {
			held.Close()
			held = nil
		}
		if err != nil {
			if up {
				up = false
				changed(false)
			}
			// Short and capped: a dial that fails costs next to nothing,
			// and the sooner HAProxy is seen back the sooner it is repaired.
			if !sleepCtx(ctx, delay) {
				return
			}
			delay = min(delay*2, redialMax)
			continue
		}
		delay = redialMin
		up = true
		held = conn
		// Every connect reports: a new connection may be a new process.
		changed(true)
		if !holdWatch(ctx, conn, renewAfter) || ctx.Err() != nil {
			continue // renewed, or the loop ends
		}
		held.Close()
		held = nil
		up = false
		changed(false)
	}
}

// holdWatch reads and discards what HAProxy sends on conn until the
// connection ends (dropped) or hold has passed or ctx ends (not dropped).
func holdWatch(ctx context.Context, conn net.Conn, hold time.Duration) (dropped bool) {
	_ = conn.SetReadDeadline(time.Now().Add(hold))
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	buf := make([]byte, 512)
	for {
		if _, err := conn.Read(buf); err != nil {
			var ne net.Error
			return !errors.As(err, &ne) || !ne.Timeout()
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
