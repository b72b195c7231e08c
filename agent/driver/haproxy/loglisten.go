package haproxy

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"syscall"
)

// logReadBuffer is the receive buffer asked for on the log socket: HAProxy
// never blocks on a full log socket, it drops the line, so a burst must fit
// while the reader is descheduled. At ~150 bytes a line, 4 MiB holds about
// five seconds of 5,000 requests per second. The kernel caps it at
// net.core.rmem_max.
const logReadBuffer = 4 << 20

// maxLogLine is the longest datagram read; haproxyproc renders "len 4096".
const maxLogLine = 8 << 10

// LogSocketMode is the permission the log socket gets: HAProxy usually runs
// as another user and must be able to write to it. Who may reach it is
// decided by the permissions of the directory it is in.
const LogSocketMode fs.FileMode = 0o666

// LogListener receives HAProxy's per-request log lines as datagrams on a
// unix socket ("log /path/to/socket ... format raw" in haproxy.cfg). HAProxy
// sends to the path each time, so the listener may start, stop and start
// again while HAProxy runs; lines sent while nobody listens are lost.
type LogListener struct {
	conn *net.UnixConn
	path string
}

// ListenLog binds the unix datagram socket at path. A socket file left by an
// agent that died is replaced; a socket someone still listens on, or a file
// that is not a socket, is an error.
func ListenLog(path string) (*LogListener, error) {
	if path == "" {
		return nil, errors.New("haproxy log socket: path is empty")
	}
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("haproxy log socket %q: want an absolute path", path)
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("haproxy log socket %q: %w", path, err)
	}
	if err := os.Chmod(path, LogSocketMode); err != nil {
		conn.Close()
		os.Remove(path)
		return nil, fmt.Errorf("haproxy log socket %q: %w", path, err)
	}
	// Best effort: a smaller buffer only means lines lost in bursts, which
	// the log-lines metric shows as fewer requests than "show stat".
	_ = conn.SetReadBuffer(logReadBuffer)
	return &LogListener{conn: conn, path: path}, nil
}

// removeStaleSocket removes path if it is a socket nobody listens on.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("haproxy log socket %q: %w", path, err)
	}
	if fi.Mode()&fs.ModeSocket == 0 {
		return fmt.Errorf("haproxy log socket %q: a %s is in the way, not a socket", path, fi.Mode().Type())
	}
	c, err := net.Dial("unixgram", path)
	if err == nil {
		c.Close()
		return fmt.Errorf("haproxy log socket %q: another process listens on it", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("haproxy log socket %q: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("haproxy log socket %q: remove stale socket: %w", path, err)
	}
	return nil
}

// Path is the socket's path.
func (l *LogListener) Path() string { return l.path }

// Serve reads datagrams and hands each to handle, one at a time on the
// calling goroutine, until Close; then it returns nil. The slice handle gets
// is only valid during the call. Any other read error is returned.
//
// The kernel queues at most net.unix.max_dgram_qlen datagrams on the socket
// (10 by default) and HAProxy drops a line rather than wait, so each wake-up
// first empties the whole queue into a batch and only then handles it.
// (Handing batches to a second goroutine drained no faster in measurements
// and cost 60% more CPU at 5,000 lines per second: a goroutine wake-up per
// line.)
func (l *LogListener) Serve(handle func(line []byte)) error {
	b := &logBatch{buf: make([]byte, logBatchBytes)}
	err := l.read(b, func() {
		prev := 0
		for _, end := range b.ends {
			handle(b.buf[prev:end])
			prev = end
		}
		b.ends = b.ends[:0]
	})
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("haproxy log socket %q: %w", l.path, err)
	}
	return nil
}

// logBatchBytes is the most one batch holds: eight maximal lines, or
// hundreds of usual ones.
const logBatchBytes = 64 << 10

// logBatch is datagrams laid end to end in buf; ends[i] is where the i-th
// ends.
type logBatch struct {
	buf  []byte
	ends []int
}

func (b *logBatch) used() int {
	if len(b.ends) == 0 {
		return 0
	}
	return b.ends[len(b.ends)-1]
}

// room is the space for the next datagram; nil when the batch is full.
func (b *logBatch) room() []byte {
	u := b.used()
	if len(b.buf)-u < maxLogLine {
		return nil
	}
	return b.buf[u : u+maxLogLine]
}

// Close stops Serve and removes the socket file.
func (l *LogListener) Close() error {
	err := l.conn.Close()
	if rerr := os.Remove(l.path); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) && err == nil {
		err = rerr
	}
	return err
}
