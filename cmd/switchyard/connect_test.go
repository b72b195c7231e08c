package main

import (
	"context"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// silentServer accepts TCP connections on 127.0.0.1 and never says a
// word, as a NATS server whose process hung or whose host stopped
// answering after the kernel took the connection. It returns its URL.
func silentServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var held []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.Close()
		}
	})
	return "nats://" + ln.Addr().String()
}

// A read with a silent server in --nats beside a working one is answered:
// the silent one costs one connect attempt (whichever order the client
// tries them in), not the whole --timeout.
func TestCLI_ConnectLeavesASilentServerForTheNext(t *testing.T) {
	url, nc := runNATS(t)
	answerRollouts(t, nc, &sv1.RolloutsAnswer{})
	silent := silentServer(t)
	for i := range 4 {
		start := time.Now()
		code, stdout, stderr := runCLI(t, "rollout", "list", "--nats", silent+","+url, "--timeout", "10s", "-o", "json")
		if code != exitOK {
			t.Fatalf("try %d: exit %d: %s%s", i, code, stdout, stderr)
		}
		t.Logf("try %d answered after %s", i, time.Since(start).Round(time.Millisecond))
		// A loose bound: one attempt at the silent server is 2 s.
		if took := time.Since(start); took > 8*time.Second {
			t.Fatalf("try %d took %s", i, took)
		}
	}
}

// With every server in --nats silent, a command gives up within --timeout
// and says which servers it tried.
func TestCLI_ConnectToSilentServersEndsWithinTimeout(t *testing.T) {
	urls := silentServer(t) + "," + silentServer(t) + "," + silentServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := clientFlags{nats: urls, timeout: 3 * time.Second}
	start := time.Now()
	_, err := c.connect(ctx)
	if err == nil {
		t.Fatal("connected to silent servers")
	}
	if !strings.Contains(err.Error(), urls) {
		t.Errorf("the error does not name the servers tried: %v", err)
	}
	// Three servers of 2 s each would be 6 s; --timeout says 3.
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("gave up after %s, want about --timeout 3s: %v", took, err)
	}
	// A query through the CLI the same way, with its exit code.
	code, _, stderr := runCLI(t, "rollout", "list", "--nats", urls, "--timeout", "2s")
	if code == exitOK || !strings.Contains(stderr, "within --timeout 2s") {
		t.Errorf("exit %d: %s", code, stderr)
	}
}

// A server that refuses the connection (nothing listens) ends the connect
// at once, as before: a wrong --nats is reported without waiting.
func TestCLI_ConnectRefusedEndsAtOnce(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "nats://" + ln.Addr().String()
	ln.Close()
	c := clientFlags{nats: url, timeout: 30 * time.Second}
	start := time.Now()
	if _, err := c.connect(context.Background()); err == nil {
		t.Fatal("connected to a closed port")
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("a refused connect took %s of --timeout 30s", took)
	}
}

// slowServer accepts TCP connections on 127.0.0.1 and passes each on to
// target after delay, as a NATS server too loaded to say a word sooner.
// It returns its URL.
func slowServer(t *testing.T, target string, delay time.Duration) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				time.Sleep(delay)
				s, err := net.Dial("tcp", strings.TrimPrefix(target, "nats://"))
				if err != nil {
					return
				}
				defer s.Close()
				go func() { _, _ = io.Copy(s, c); s.Close() }()
				_, _ = io.Copy(c, s)
			})
		}
	})
	return "nats://" + ln.Addr().String()
}

// A server that answers only after 2.5 s is left after the first 2 s, but
// the next round gives it 4 s and gets in, within --timeout.
func TestCLI_ConnectGivesASlowServerLongerEachRound(t *testing.T) {
	url, _ := runNATS(t)
	slow := slowServer(t, url, 2500*time.Millisecond)
	c := clientFlags{nats: slow, timeout: 20 * time.Second}
	start := time.Now()
	nc, err := c.connect(context.Background())
	if err != nil {
		t.Fatalf("after %s: %v", time.Since(start).Round(time.Millisecond), err)
	}
	nc.Close()
	t.Logf("connected through the slow server after %s", time.Since(start).Round(time.Millisecond))
}
