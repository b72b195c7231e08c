package harness

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// userHZ is the unit of the CPU times in /proc/<pid>/stat: USER_HZ, which
// Linux fixes at 100 for every architecture it exposes to user space.
const userHZ = 100

// ProcSample is what /proc says about one process at one moment.
type ProcSample struct {
	Pid int
	At  time.Time
	// CPU is the user and system time the process has used so far.
	CPU time.Duration
	// RSS is its resident memory; PSS the same with each shared page
	// divided among the processes mapping it (the binary's text, shared by
	// every agent), the fairer per-process figure.
	RSS, PSS int64
}

// ReadProc samples process pid from /proc (Linux only).
func ReadProc(pid int) (ProcSample, error) {
	s := ProcSample{Pid: pid, At: time.Now()}
	var err error
	if s.CPU, err = ProcCPU(pid); err != nil {
		return s, err
	}
	rollup, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return s, err
	}
	sc := bufio.NewScanner(bytes.NewReader(rollup))
	for sc.Scan() {
		var into *int64
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "Rss:"):
			into = &s.RSS
		case strings.HasPrefix(line, "Pss:"):
			into = &s.PSS
		default:
			continue
		}
		f := strings.Fields(line) // "Rss: 7596 kB"
		if len(f) != 3 || f[2] != "kB" {
			return s, fmt.Errorf("/proc/%d/smaps_rollup: unexpected line %q", pid, line)
		}
		kb, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			return s, fmt.Errorf("/proc/%d/smaps_rollup: %q: %w", pid, line, err)
		}
		*into = kb << 10
	}
	if s.RSS == 0 {
		return s, fmt.Errorf("/proc/%d/smaps_rollup: no Rss line", pid)
	}
	return s, nil
}

// ProcCPU is the user and system time process pid has used so far, from
// /proc/<pid>/stat alone (in steps of 10 ms: USER_HZ); cheaper than ReadProc,
// which also reads the process's memory map.
func ProcCPU(pid int) (time.Duration, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces;
	// the fields after its closing parenthesis start at field 3 (state).
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no ')' in %q", pid, stat)
	}
	fields := strings.Fields(string(stat[i+1:]))
	if len(fields) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields after the name, want at least 13", pid, len(fields))
	}
	var ticks int64
	for _, f := range fields[11:13] { // utime (14), stime (15)
		v, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/stat: cpu time %q: %w", pid, f, err)
		}
		ticks += v
	}
	return time.Duration(ticks) * time.Second / userHZ, nil
}

// ReadProcs samples every pid; the first error names its pid.
func ReadProcs(pids []int) ([]ProcSample, error) {
	out := make([]ProcSample, len(pids))
	for i, pid := range pids {
		s, err := ReadProc(pid)
		if err != nil {
			return nil, err
		}
		out[i] = s
	}
	return out, nil
}

// CPUShare is the CPU a process used between two samples of it, per second
// of wall time (1s = one core busy).
func CPUShare(before, after ProcSample) time.Duration {
	wall := after.At.Sub(before.At)
	if wall <= 0 {
		return 0
	}
	return time.Duration(float64(after.CPU-before.CPU) / wall.Seconds())
}
