package haproxy

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseLogLine(t *testing.T) {
	tests := []struct {
		name    string
		line    string
		backend string
		server  string
		status  int
		ta      int64
		term    string
		failed  bool
		wantErr string
	}{
		// Lines as HAProxy 2.6 sent them with haproxyproc.LogFormat.
		{name: "ok", line: "backend=web server=blue status=200 tt=0 ta=0 tr=0 tw=0 tc=0 bytes=121 term=----\n",
			backend: "web", server: "blue", status: 200, ta: 0, term: "----"},
		{name: "server 503", line: "backend=web server=blue status=503 tt=101 ta=52 tr=52 tw=0 tc=0 bytes=99 term=----\n",
			backend: "web", server: "blue", status: 503, ta: 52, term: "----", failed: true},
		{name: "server closed before headers", line: "backend=web server=blue status=502 tt=0 ta=0 tr=-1 tw=0 tc=0 bytes=209 term=SH--\n",
			backend: "web", server: "blue", status: 502, ta: 0, term: "SH--", failed: true},
		{name: "truncated body logged as 200", line: "backend=web server=blue status=200 tt=101 ta=0 tr=0 tw=0 tc=0 bytes=54 term=SD--\n",
			backend: "web", server: "blue", status: 200, ta: 0, term: "SD--", failed: true},
		{name: "invalid response blocked", line: "backend=web server=blue status=502 tt=0 ta=0 tr=-1 tw=0 tc=0 bytes=209 term=PH--\n",
			backend: "web", server: "blue", status: 502, ta: 0, term: "PH--", failed: true},
		{name: "connection refused", line: "backend=web server=green status=503 tt=2105 ta=2004 tr=-1 tw=2003 tc=-1 bytes=217 term=SC--\n",
			backend: "web", server: "green", status: 503, ta: 2004, term: "SC--", failed: true},
		{name: "no server", line: "backend=web server=<NOSRV> status=503 tt=101 ta=0 tr=-1 tw=-1 tc=-1 bytes=217 term=SC--\n",
			backend: "web", server: NoServer, status: 503, ta: 0, term: "SC--", failed: true},
		{name: "client aborted, no response", line: "backend=web server=blue status=-1 tt=30 ta=30 tr=-1 tw=0 tc=0 bytes=0 term=CH--",
			backend: "web", server: "blue", status: -1, ta: 30, term: "CH--"},
		{name: "server timeout", line: "backend=web server=blue status=504 tt=30001 ta=30001 tr=-1 tw=0 tc=0 bytes=194 term=sH--",
			backend: "web", server: "blue", status: 504, ta: 30001, term: "sH--", failed: true},
		{name: "request denied by the proxy is not the backend's", line: "backend=web server=<NOSRV> status=403 tt=0 ta=0 tr=-1 tw=-1 tc=-1 bytes=192 term=PR--",
			backend: "web", server: NoServer, status: 403, ta: 0, term: "PR--"},
		{name: "killed by an admin", line: "backend=web server=green status=200 tt=5 ta=5 tr=1 tw=0 tc=0 bytes=10 term=KD--",
			backend: "web", server: "green", status: 200, ta: 5, term: "KD--", failed: true},
		{name: "no response, no cause", line: "backend=web server=blue status=-1 ta=-1 term=--",
			backend: "web", server: "blue", status: -1, ta: -1, term: "--", failed: true},
		{name: "4xx is the client's", line: "backend=web server=blue status=404 ta=3 term=----",
			backend: "web", server: "blue", status: 404, ta: 3, term: "----"},
		{name: "logasap plus sign, syslog header, unknown key", line: "<134>Jan  2 03:04:05 haproxy[7]: backend=api server=g1 status=200 tt=+12 ta=+12 id=abc term=--",
			backend: "api", server: "g1", status: 200, ta: 12, term: "--"},

		{name: "alert line", line: "backend web has no server available!\n", wantErr: "not a request log line"},
		{name: "empty", line: "", wantErr: "not a request log line"},
		{name: "missing term", line: "backend=web server=blue status=200 ta=1", wantErr: "not a request log line"},
		{name: "bad status", line: "backend=web server=blue status=2x0 ta=1 term=----", wantErr: `status "2x0"`},
		{name: "status out of range", line: "backend=web server=blue status=1000 ta=1 term=----", wantErr: `status "1000"`},
		{name: "bad ta", line: "backend=web server=blue status=200 ta=-5 term=----", wantErr: `ta "-5"`},
		{name: "huge ta", line: "backend=web server=blue status=200 ta=99999999999999999999 term=----", wantErr: `ta "9999`},
		{name: "bad term", line: "backend=web server=blue status=200 ta=1 term=---", wantErr: `term "---"`},
		{name: "empty backend", line: "backend= server=blue status=200 ta=1 term=----", wantErr: "empty backend"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var rec LogRecord
			err := ParseLogLine([]byte(tt.line), &rec)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, ErrNotRequestLog) {
					t.Fatalf("err = %v, want ErrNotRequestLog mentioning %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := fmt.Sprintf("%s %s %d %d %s %v", rec.Backend, rec.Server, rec.Status, rec.ActiveMillis, rec.Term, rec.Failed())
			want := fmt.Sprintf("%s %s %d %d %s %v", tt.backend, tt.server, tt.status, tt.ta, tt.term, tt.failed)
			if got != want {
				t.Fatalf("parsed %q, want %q", got, want)
			}
		})
	}
}

func TestParseLogLine_DoesNotAllocate(t *testing.T) {
	line := []byte("backend=web server=green status=200 tt=51 ta=51 tr=50 tw=0 tc=0 bytes=130 term=----\n")
	var rec LogRecord
	allocs := testing.AllocsPerRun(100, func() {
		if err := ParseLogLine(line, &rec); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("ParseLogLine allocates %v times per line, want 0", allocs)
	}
}

// FuzzParseLogLine: the log socket takes datagrams from any local writer,
// so the parser must never panic, and what it accepts must be coherent.
// The seed corpus is in testdata/fuzz/FuzzParseLogLine.
func FuzzParseLogLine(f *testing.F) {
	f.Add([]byte("backend=web server=blue status=200 tt=0 ta=0 tr=0 tw=0 tc=0 bytes=121 term=----\n"))
	f.Fuzz(func(t *testing.T, line []byte) {
		var rec LogRecord
		err := ParseLogLine(line, &rec)
		if err != nil {
			if !errors.Is(err, ErrNotRequestLog) {
				t.Fatalf("error %v does not wrap ErrNotRequestLog", err)
			}
			return
		}
		if len(rec.Backend) == 0 || len(rec.Server) == 0 {
			t.Fatalf("accepted a line without backend or server: %q", line)
		}
		if rec.Status < -1 || rec.Status > 999 || rec.ActiveMillis < -1 || (len(rec.Term) != 2 && len(rec.Term) != 4) {
			t.Fatalf("accepted %+v from %q", rec, line)
		}
		if d, ok := rec.Latency(); ok && d < 0 {
			t.Fatalf("negative latency %v from %q", d, line)
		}
		_ = rec.Failed()
	})
}

func TestLogListener_ReceivesAndReplacesStaleSocket(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "log.sock")
	if len(path) > 100 {
		t.Fatalf("temp dir too deep for a unix socket: %s", path)
	}
	l, err := ListenLog(path)
	if err != nil {
		t.Fatal(err)
	}
	// A second listener on a live socket is refused rather than stealing it.
	if _, err := ListenLog(path); err == nil || !strings.Contains(err.Error(), "another process listens") {
		t.Fatalf("second ListenLog = %v, want refusal", err)
	}
	got := make(chan string, 4)
	done := make(chan error, 1)
	go func() { done <- l.Serve(func(line []byte) { got <- string(line) }) }()

	c, err := net.Dial("unixgram", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("backend=web server=blue status=200 ta=1 term=----")); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-got:
		if !strings.HasPrefix(s, "backend=web") {
			t.Fatalf("received %q", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no datagram within 5s")
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve = %v after Close, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after Close")
	}

	// A socket file left behind by a listener that died is replaced
	// (closing a datagram socket leaves its file).
	dead, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	dead.Close()
	l2, err := ListenLog(path)
	if err != nil {
		t.Fatalf("ListenLog over a stale socket: %v", err)
	}
	l2.Close()

	// A regular file is never removed.
	if err := writeFile(path); err != nil {
		t.Fatal(err)
	}
	if _, err := ListenLog(path); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("ListenLog over a regular file = %v, want refusal", err)
	}
}

func writeFile(path string) error {
	return os.WriteFile(path, []byte("keep me"), 0o600)
}

func BenchmarkParseLogLine(b *testing.B) {
	line := []byte("backend=web server=green status=200 tt=51 ta=51 tr=50 tw=0 tc=0 bytes=130 term=----\n")
	var rec LogRecord
	b.SetBytes(int64(len(line)))
	b.ReportAllocs()
	for b.Loop() {
		if err := ParseLogLine(line, &rec); err != nil {
			b.Fatal(err)
		}
		_ = rec.Failed()
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "lines/s")
}
