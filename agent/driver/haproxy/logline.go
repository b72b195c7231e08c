package haproxy

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"time"
)

// ErrNotRequestLog is returned for a log line that is not a per-request line
// of haproxyproc.LogFormat: HAProxy also sends its alerts ("backend web has
// no server available!") to the same log target.
var ErrNotRequestLog = errors.New("not a request log line")

// LogRecord is one request as HAProxy logged it in haproxyproc.LogFormat
// ("backend=%b server=%s status=%ST ... ta=%Ta ... term=%tsc"). Backend,
// Server and Term alias the parsed line: copy them to keep them.
type LogRecord struct {
	// Backend is the HAProxy backend (%b).
	Backend []byte
	// Server is the HAProxy server (%s); "<NOSRV>" when none was chosen.
	Server []byte
	// Status is the HTTP status sent to the client (%ST), -1 for none.
	Status int
	// ActiveMillis is the request's active time in milliseconds (%Ta): from
	// the request's first byte to the end of the response, without the idle
	// time of a keep-alive connection. -1 when unknown.
	ActiveMillis int64
	// Term is the termination state (%tsc, or %ts): two or four characters,
	// "----" for a clean end.
	Term []byte
}

// NoServer is HAProxy's %s when no server was chosen (none available, or
// the request failed before one was).
const NoServer = "<NOSRV>"

// Latency is the request's active time; ok is false when HAProxy did not
// know it.
func (r *LogRecord) Latency() (d time.Duration, ok bool) {
	if r.ActiveMillis < 0 {
		return 0, false
	}
	return time.Duration(r.ActiveMillis) * time.Millisecond, true
}

// Failed reports whether the request counts as an error of the backend: a
// 5xx answer (the server's or HAProxy's own 502/503/504), no answer at all
// unless the client gave up, or a termination state that blames the server
// side even when a status was sent (HAProxy logs 200 for a response the
// server cut short: "SD").
//
// The first character of %tsc says who ended the session (HAProxy
// configuration manual, "Session state at disconnection"):
//
//	S  the server aborted or refused the connection        → error
//	s  the server-side timeout expired                      → error
//	P  the proxy aborted it (in the request phase "PR", or
//	   tarpitted "PT", it refused the client, not a failure
//	   of the backend; "PH"/"PD" blocked a bad response)   → error unless R/T
//	R  a proxy resource ran out (sockets, memory, ports)    → error
//	I  internal error                                       → error
//	D  killed because the server went down                  → error
//	U  backup session killed because an active server came up → error
//	K  killed by an administrator                           → error
//	C  the client aborted;  c  the client-side timeout      → not the backend's
//	L  processed locally by HAProxy;  -  normal completion  → status decides
func (r *LogRecord) Failed() bool {
	if r.Status >= 500 {
		return true
	}
	var cause, phase byte = '-', '-'
	if len(r.Term) > 0 {
		cause = r.Term[0]
	}
	if len(r.Term) > 1 {
		phase = r.Term[1]
	}
	switch cause {
	case 'S', 's', 'R', 'I', 'D', 'U', 'K':
		return true
	case 'P':
		return phase != 'R' && phase != 'T'
	case 'C', 'c':
		return false
	}
	return r.Status < 0
}

// ParseLogLine parses one line of haproxyproc.LogFormat. It allocates
// nothing: the record aliases line. Tokens without '=' are skipped, so a
// syslog header in front of the line (a log target without "format raw") is
// tolerated; unknown keys are skipped so the format can grow. A line lacking
// backend, server, status, ta or term is ErrNotRequestLog.
func ParseLogLine(line []byte, rec *LogRecord) error {
	*rec = LogRecord{Status: -1, ActiveMillis: -1}
	const (
		haveBackend = 1 << iota
		haveServer
		haveStatus
		haveActive
		haveTerm
		haveAll = haveBackend | haveServer | haveStatus | haveActive | haveTerm
	)
	have := 0
	rest := line
	for len(rest) > 0 {
		var tok []byte
		if i := bytes.IndexAny(rest, " \t\r\n"); i >= 0 {
			tok, rest = rest[:i], rest[i+1:]
		} else {
			tok, rest = rest, nil
		}
		eq := bytes.IndexByte(tok, '=')
		if eq <= 0 {
			continue
		}
		key, val := tok[:eq], tok[eq+1:]
		switch string(key) { // no allocation: the compiler matches in place
		case "backend":
			if len(val) == 0 {
				return fmt.Errorf("%w: empty backend", ErrNotRequestLog)
			}
			rec.Backend = val
			have |= haveBackend
		case "server":
			if len(val) == 0 {
				return fmt.Errorf("%w: empty server", ErrNotRequestLog)
			}
			rec.Server = val
			have |= haveServer
		case "status":
			v, ok := parseLogInt(val)
			if !ok || v < -1 || v > 999 {
				return fmt.Errorf("%w: status %q is not an HTTP status or -1", ErrNotRequestLog, head(string(val)))
			}
			rec.Status = int(v)
			have |= haveStatus
		case "ta":
			v, ok := parseLogInt(val)
			if !ok || v < -1 {
				return fmt.Errorf("%w: ta %q is not a time in milliseconds or -1", ErrNotRequestLog, head(string(val)))
			}
			rec.ActiveMillis = v
			have |= haveActive
		case "term":
			if len(val) != 2 && len(val) != 4 {
				return fmt.Errorf("%w: term %q is not a termination state of 2 or 4 characters", ErrNotRequestLog, head(string(val)))
			}
			rec.Term = val
			have |= haveTerm
		}
	}
	if have != haveAll {
		return ErrNotRequestLog
	}
	return nil
}

// parseLogInt parses HAProxy's log integers: optional sign ('+' marks a
// time logged before the end with "option logasap"), decimal digits, no
// overflow.
func parseLogInt(b []byte) (int64, bool) {
	neg := false
	if len(b) > 0 && (b[0] == '-' || b[0] == '+') {
		neg = b[0] == '-'
		b = b[1:]
	}
	if len(b) == 0 || len(b) > 18 { // 18 digits cannot overflow an int64
		return 0, false
	}
	var v int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + int64(c-'0')
	}
	if v > math.MaxInt64/2 {
		return 0, false
	}
	if neg {
		v = -v
	}
	return v, true
}
