package integration

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard/switchyard/integration/harness"
	"github.com/switchyard/switchyard/integration/harness/harnesstest"
)

// tourStep is one command of a doc's runnable blocks with what the doc
// says it prints.
type tourStep struct {
	cmd string
	// comment is the text after the command's " # ", if any.
	comment string
	// expect are the "# " lines right after the command: what it prints.
	expect []string
}

// background tells a command that keeps running (it ends with '&').
func (s tourStep) background() bool { return strings.HasSuffix(s.cmd, "&") }

// readOnly tells a command that may be run again until it prints what the
// doc says: it changes nothing.
func (s tourStep) readOnly() bool {
	switch {
	case strings.HasPrefix(s.cmd, "curl ") && !strings.Contains(s.cmd, " -X "):
		return true
	case strings.HasPrefix(s.cmd, "switchyard rollout status"), strings.HasPrefix(s.cmd, "switchyard chaos status"),
		strings.HasPrefix(s.cmd, "cat "):
		return true
	}
	return false
}

// wantExit is the exit code the doc promises: "# exits N" after the
// command, non-zero for a printed "error:", zero otherwise.
func (s tourStep) wantExit() (code int, nonZero bool) {
	if m := regexp.MustCompile(`^exits (\d+)`).FindStringSubmatch(s.comment); m != nil {
		n, _ := strconv.Atoi(m[1])
		return n, false
	}
	for _, e := range s.expect {
		if strings.HasPrefix(e, "error:") {
			return 0, true
		}
	}
	return 0, false
}

// tourSteps reads the ```sh blocks of doc marked "<!-- run: NAME -->".
func tourSteps(t *testing.T, doc, name string) []tourStep {
	t.Helper()
	root, err := harness.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, doc))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	marker := "<!-- run: " + name + " -->"
	var steps []tourStep
	for i := 0; i < len(lines); i++ {
		if strings.TrimSpace(lines[i]) != marker {
			continue
		}
		if i+1 >= len(lines) || strings.TrimSpace(lines[i+1]) != "```sh" {
			t.Fatalf("%s:%d: %s is not followed by a ```sh block", doc, i+1, marker)
		}
		cont := ""
		for i += 2; i < len(lines) && strings.TrimSpace(lines[i]) != "```"; i++ {
			line := strings.TrimSpace(lines[i])
			switch {
			case line == "":
			case strings.HasPrefix(line, "#"):
				if len(steps) == 0 {
					t.Fatalf("%s:%d: output before any command", doc, i+1)
				}
				last := &steps[len(steps)-1]
				last.expect = append(last.expect, strings.TrimSpace(strings.TrimPrefix(line, "#")))
			case strings.HasSuffix(line, "\\"):
				cont += strings.TrimSuffix(line, "\\") + " "
			default:
				line = cont + line
				cont = ""
				cmd, comment, _ := strings.Cut(line, " # ")
				steps = append(steps, tourStep{cmd: strings.TrimSpace(cmd), comment: strings.TrimSpace(comment)})
			}
		}
	}
	if len(steps) == 0 {
		t.Fatalf("%s has no block marked %s", doc, marker)
	}
	return steps
}

// nsShell is a bash in network, mount and PID namespaces of its own: the
// doc's fixed ports and its /tmp/switchyard are private to it, and every
// process started in it dies with it.
type nsShell struct {
	t      *testing.T
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	outDir string
	n      int
}

func startNSShell(t *testing.T, ctx context.Context, dir string) *nsShell {
	t.Helper()
	args := []string{"--net", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc"}
	if os.Geteuid() != 0 {
		args = append([]string{"--map-root-user"}, args...)
	}
	args = append(args, "bash", "--noprofile", "--norc")
	cmd := exec.Command("unshare", args...)
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	outDir := harnesstest.Dir(t)
	errLog, err := os.Create(filepath.Join(outDir, "shell.stderr"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = errLog
	if err := cmd.Start(); err != nil {
		t.Fatalf("unshare (network namespaces are needed to run the tour on its documented ports): %v", err)
	}
	s := &nsShell{t: t, cmd: cmd, stdin: stdin, lines: make(chan string, 64), outDir: outDir}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
		close(s.lines)
	}()
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		errLog.Close()
	})
	// A private loopback and a private /tmp/switchyard.
	for _, setup := range []string{"ip link set lo up", "mkdir -p /tmp/switchyard", "mount -t tmpfs tmpfs /tmp/switchyard"} {
		if rc, out := s.run(ctx, setup); rc != 0 {
			t.Fatalf("%s: exit %d: %s", setup, rc, out)
		}
	}
	return s
}

// run runs one command in the shell (so exports and `source` stay) and
// returns its exit code and output.
func (s *nsShell) run(ctx context.Context, command string) (int, string) {
	s.t.Helper()
	s.n++
	out := filepath.Join(s.outDir, fmt.Sprintf("cmd-%03d.out", s.n))
	marker := fmt.Sprintf("__rc_%d", s.n)
	fmt.Fprintf(s.stdin, "{ %s\n} > %s 2>&1 < /dev/null; echo %s $?\n", command, out, marker)
	for {
		select {
		case line, ok := <-s.lines:
			if !ok {
				s.t.Fatalf("the shell ended during %q", command)
			}
			if rest, found := strings.CutPrefix(line, marker+" "); found {
				rc, _ := strconv.Atoi(rest)
				b, _ := os.ReadFile(out)
				return rc, string(b)
			}
		case <-ctx.Done():
			b, _ := os.ReadFile(out)
			s.t.Fatalf("%q did not finish: %v\n%s", command, ctx.Err(), b)
		}
	}
}

// start starts a command that keeps running; its output goes to a file.
func (s *nsShell) start(command string) (outFile string) {
	s.n++
	out := filepath.Join(s.outDir, fmt.Sprintf("bg-%03d.out", s.n))
	fmt.Fprintf(s.stdin, "{ %s\n} > %s 2>&1 < /dev/null\n", command, out)
	return out
}

// readiness says how to tell that a documented long-running command is
// ready for the next step. A new kind of background command in the doc
// needs a line here.
func readiness(cmd string) (string, bool) {
	addr := regexp.MustCompile(`--addr (\S+)`).FindStringSubmatch(cmd)
	switch {
	case strings.HasPrefix(cmd, "switchyard dev"):
		return "test -s /tmp/switchyard/dev/env", true
	case strings.Contains(cmd, "./integration/backend") && addr != nil:
		return "curl -sf -o /dev/null http://" + addr[1] + "/healthz", true
	case strings.HasPrefix(cmd, "haproxy -f examples/haproxy.cfg"):
		return "test -S /tmp/switchyard/edge-1.sock", true
	case strings.HasPrefix(cmd, "switchyard agent --config examples/agent.yaml"):
		return "curl -sf -o /dev/null http://127.0.0.1:9101/healthz", true
	case strings.Contains(cmd, "./integration/load"):
		return "true", true
	case strings.HasPrefix(cmd, "nats sub "):
		// natscli says so once its subscription is made.
		if out := regexp.MustCompile(`> (\S+) 2>&1`).FindStringSubmatch(cmd); out != nil {
			return "grep -qs 'Subscribing on' " + out[1], true
		}
	}
	return "", false
}

// TestDocs_READMETour runs the README's tour top to bottom as a newcomer
// would, every command as written, in one shell in namespaces of its own
// (its ports and /tmp/switchyard are the documented ones, and private): a
// real dev control plane, backends, HAProxy, agent and load. Each command
// must exit as the README implies and print what the README shows; the
// curls must be answered by the backend named beside them.
func TestDocs_READMETour(t *testing.T) {
	// Most of the tour waits (the canary's 30 s pause, analysis windows, a
	// judge's rollback) in namespaces of its own: it runs beside another
	// test.
	t.Parallel()
	ctx := harnesstest.Context(t, 8*time.Minute)
	binaries(t) // builds the module once; the tour's `go run`s then find it cached
	root, err := harness.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	nats := natsCLI(t)
	// The README's tour, then docs/bus.md's pipeline against the control
	// plane the tour leaves running.
	steps := append(tourSteps(t, "README.md", "readme-tour"), tourSteps(t, "docs/bus.md", "bus-pipeline")...)
	sh := startNSShell(t, ctx, root)
	if rc, out := sh.run(ctx, "export PATH=$PATH:"+filepath.Dir(nats)); rc != 0 {
		t.Fatal(out)
	}
	const retryFor = 2 * time.Minute
	for _, st := range steps {
		if st.background() {
			out := sh.start(st.cmd)
			check, ok := readiness(st.cmd)
			if !ok {
				t.Fatalf("README starts %q in the background and this test knows no readiness check for it", st.cmd)
			}
			if err := harness.Poll(ctx, 200*time.Millisecond, func(context.Context) error {
				if rc, o := sh.run(ctx, check); rc != 0 {
					return fmt.Errorf("%s: exit %d %s", check, rc, o)
				}
				b, _ := os.ReadFile(out)
				for _, want := range st.expect {
					if !strings.Contains(string(b), want) {
						return fmt.Errorf("no %q in its output yet", want)
					}
				}
				return nil
			}); err != nil {
				b, _ := os.ReadFile(out)
				t.Fatalf("$ %s\nnot ready: %v\n%s", st.cmd, err, tail(string(b), 30))
			}
			t.Logf("$ %s   (started)", st.cmd)
			continue
		}
		wantRC, wantNonZero := st.wantExit()
		deadline := time.Now().Add(retryFor)
		for {
			rc, out := sh.run(ctx, st.cmd)
			problem := ""
			switch {
			case wantNonZero && rc == 0:
				problem = "exit 0, the README shows an error"
			case !wantNonZero && rc != wantRC:
				problem = fmt.Sprintf("exit %d, want %d", rc, wantRC)
			}
			for _, want := range st.expect {
				if problem == "" && !printed(out, want) {
					problem = fmt.Sprintf("output lacks %q", want)
				}
			}
			if problem == "" && strings.HasPrefix(st.cmd, "curl ") && st.comment != "" {
				if backend := strings.Fields(st.comment)[0]; !strings.Contains(out, backend) {
					problem = fmt.Sprintf("answered by %q, the README says %s", strings.TrimSpace(out), backend)
				}
			}
			if problem == "" {
				t.Logf("$ %s\n%s", st.cmd, tail(out, 40))
				break
			}
			if !st.readOnly() || time.Now().After(deadline) {
				t.Fatalf("$ %s\n%s\n%s", st.cmd, problem, tail(out, 60))
			}
			select {
			case <-ctx.Done():
				t.Fatalf("$ %s\n%s\n%s", st.cmd, problem, tail(out, 60))
			case <-time.After(300 * time.Millisecond):
			}
		}
	}
}

// printed tells whether out shows want, a line of a doc's sample output. A
// sample ending in "...}" shows the start of a JSON object, compared without
// whitespace (protojson varies it on purpose).
func printed(out, want string) bool {
	if prefix, ok := strings.CutSuffix(want, "...}"); ok {
		squeeze := func(s string) string { return strings.Join(strings.Fields(s), "") }
		return strings.Contains(squeeze(out), squeeze(prefix))
	}
	return strings.Contains(out, want)
}

// natsCLIVersion is the nats CLI the docs' pipeline examples are run with.
const natsCLIVersion = "v0.5.0"

// natsCLI returns the `nats` CLI, built once per machine into the user's
// cache (a pipeline's NATS client, not part of the module).
func natsCLI(t *testing.T) string {
	t.Helper()
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "switchyard-test", "natscli-"+natsCLIVersion)
	bin := filepath.Join(dir, "nats")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "install", "github.com/nats-io/natscli/nats@"+natsCLIVersion)
	cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=-mod=mod")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go install natscli %s: %v\n%s", natsCLIVersion, err, out)
	}
	return bin
}

// tail is the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{"…"}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}
