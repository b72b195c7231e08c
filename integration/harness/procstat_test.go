package harness

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestProc_ReadsMemoryAndCPUOfAProcess(t *testing.T) {
	before, err := ReadProc(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if before.RSS <= 0 || before.PSS <= 0 || before.PSS > before.RSS {
		t.Fatalf("RSS %d, PSS %d bytes: want both above zero, PSS ≤ RSS", before.RSS, before.PSS)
	}
	// Spin until /proc shows more CPU (it counts in 10 ms ticks), bounded.
	deadline := time.Now().Add(10 * time.Second)
	var after ProcSample
	for x := 0; ; x++ {
		if x%1_000_000 == 0 {
			if after, err = ReadProc(os.Getpid()); err != nil {
				t.Fatal(err)
			}
			if after.CPU > before.CPU {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("CPU stayed at %v for 10 s of spinning", after.CPU)
			}
		}
	}
	if share := CPUShare(before, after); share <= 0 || share > 64*time.Second {
		t.Errorf("CPU share %v per second; want above zero and at most the machine's cores", share)
	}
}

func TestProc_AMissingProcessIsAnErrorNamingIt(t *testing.T) {
	// Above the largest pid Linux hands out (pid_max ≤ 2^22).
	const pid = 1 << 23
	_, err := ReadProc(pid)
	if err == nil || !strings.Contains(err.Error(), strconv.Itoa(pid)) {
		t.Errorf("ReadProc(%d) = %v, want an error naming the pid", pid, err)
	}
	if _, err := ReadProcs([]int{os.Getpid(), pid}); err == nil || !strings.Contains(err.Error(), strconv.Itoa(pid)) {
		t.Errorf("ReadProcs = %v, want the missing pid named", err)
	}
}

func TestProc_ReniceAddsToEveryThread(t *testing.T) {
	p, err := StartProcess(ProcessSpec{Name: "sleeper", Path: "/bin/sh", Args: []string{"-c", "while :; do sleep 0.1; done"}, LogDir: t.TempDir(), StopTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Stop() })
	nice := func(pid int) int {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			t.Fatal(err)
		}
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		n, err := strconv.Atoi(f[16]) // field 19, nice
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := nice(p.Pid())
	if err := Renice(p.Pid(), 3); err != nil {
		t.Fatal(err)
	}
	if got, want := nice(p.Pid()), min(before+3, 19); got != want {
		t.Errorf("niceness %d after Renice +3 from %d, want %d", got, before, want)
	}
}
