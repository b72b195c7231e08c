package agent

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// processBackendEnv makes the test binary a green backend of its own (see
// init): the process fault pauses a process, and it must not be this one.
const processBackendEnv = "SWITCHYARD_AGENT_TEST_GREEN_BACKEND"

func init() {
	if os.Getenv(processBackendEnv) != "1" {
		return
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(ln.Addr().String())
	go func() {
		// The parent closing stdin (or dying) ends the backend.
		io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "green") }))
	os.Exit(0)
}

// startProcessBackend runs a green backend in a child process and returns
// its address and pid.
func startProcessBackend(t *testing.T) (addr string, pid int) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), processBackendEnv+"=1")
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// A paused child must be resumed to exit on its own.
		_ = cmd.Process.Signal(syscall.SIGCONT)
		stdin.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("green backend process said nothing: %v", err)
	}
	return strings.TrimSpace(line), cmd.Process.Pid
}

func procState(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	return strings.Fields(s[strings.LastIndex(s, ")")+2:])[0]
}

func TestDrillsLive_ProcessPauseAndKill(t *testing.T) {
	greenAddr, pid := startProcessBackend(t)
	b := startBus(t)
	p := startChaosProxy(t, greenAddr)
	cfg := liveConfig(t, b.url, p.liveProxy)
	cfg.Processes = map[string]ProcessConfig{"green": {PIDFile: pidFile(t, t.TempDir(), pid)}}
	ra := startLiveAgent(t, cfg)
	b.put(t, progressing(1, allGreen))
	ra.waitApplied(t, "web", 1)
	if s := measure(t, p.frontend, 50, 2, 2*time.Second); s.byBody["green"] != s.n {
		t.Fatalf("before the fault: %v", s)
	}

	doc := drillDoc("green-paused", 2, &sv1.Fault{Kind: &sv1.Fault_Process{Process: &sv1.ProcessFault{Process: "green", Action: "pause"}}}, time.Now(), 4*time.Second)
	b.putDrill(t, doc)
	ra.waitFault(t, 5*time.Second, doc.GetDrill(), true)
	// The kernel stops the process a moment after the signal is sent.
	waitFor(t, 2*time.Second, "the green backend process stopped", func() error {
		if st := procState(t, pid); st != "T" {
			return fmt.Errorf("process state %q, want T (stopped)", st)
		}
		return nil
	})
	s := measure(t, p.frontend, 4, 4, 500*time.Millisecond)
	inFault(t, s, doc.GetEndAt().AsTime())
	t.Logf("green paused: %v", s)
	if s.failures != s.n {
		t.Fatalf("green paused: %v, want no answer within 500ms", s)
	}
	gone := ra.waitFault(t, 15*time.Second, doc.GetDrill(), false)
	if late := gone.Sub(doc.GetEndAt().AsTime()); late > revertSlack {
		t.Fatalf("reverted %v after the end", late)
	}
	waitFor(t, 5*time.Second, "green serving again", func() error {
		if s := measure(t, p.frontend, 20, 2, 2*time.Second); s.byBody["green"] != s.n {
			return fmt.Errorf("%v", s)
		}
		return nil
	})

	// A kill is not undone: the process stays dead after the drill (its
	// supervisor, not the agent, starts it again).
	doc = drillDoc("green-killed", 3, &sv1.Fault{Kind: &sv1.Fault_Process{Process: &sv1.ProcessFault{Process: "green", Action: "kill"}}}, time.Now(), 2*time.Second)
	b.putDrill(t, doc)
	ra.waitFault(t, 5*time.Second, doc.GetDrill(), true)
	waitFor(t, 5*time.Second, "the green backend process gone", func() error {
		if err := syscall.Kill(pid, 0); err == nil {
			if st := procState(t, pid); st != "Z" {
				return fmt.Errorf("pid %d in state %s", pid, st)
			}
		}
		return nil
	})
	ra.waitFault(t, 10*time.Second, doc.GetDrill(), false)
	if s := measure(t, p.frontend, 4, 4, 2*time.Second); s.byBody["green"] != 0 {
		t.Fatalf("after a kill drill: %v, want green still down", s)
	}

	// A process the config does not name is refused, never guessed.
	doc = drillDoc("blue-paused", 4, &sv1.Fault{Kind: &sv1.Fault_Process{Process: &sv1.ProcessFault{Process: "blue", Action: "kill"}}}, time.Now(), 4*time.Second)
	b.putDrill(t, doc)
	ra.waitMetric(t, 1, "switchyard_agent_faults_total", "kind", "process", "result", "refused")
	if len(ra.Status().GetFaults()) != 0 {
		t.Fatalf("faults %v after a refused drill", ra.Status().GetFaults())
	}
}
