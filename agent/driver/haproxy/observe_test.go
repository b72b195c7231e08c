package haproxy

import (
	"os"
	"testing"
)

func TestParseInstance_PidAndStart(t *testing.T) {
	cases := []struct {
		info, want string
		err        bool
	}{
		{"Name: HAProxy\nVersion: 2.6.12\nPid: 4242\nUptime_sec: 3\nStart_time_sec: 1795985747\n", "pid 4242 started 1795985747", false},
		{"Name: HAProxy\nPid: 17\n", "pid 17", false},
		{"Name: HAProxy\nUptime_sec: 3\n", "", true},
		{"Unknown command.", "", true},
	}
	for _, c := range cases {
		got, err := parseInstance(c.info)
		if got != c.want || (err != nil) != c.err {
			t.Errorf("parseInstance(%q) = %q, %v; want %q, error %v", c.info, got, err, c.want, c.err)
		}
	}
}

func TestServerState_HeldFromRealAnswers(t *testing.T) {
	cases := []struct {
		file          string
		blue, green   string
		blueW, greenW uint32
	}{
		{"testdata/haproxy26-show-servers-state-maint.txt", "maint", "", 0, 100},
		{"testdata/haproxy26-show-servers-state-drain.txt", "", "", 0, 0},
	}
	for _, c := range cases {
		b, err := os.ReadFile(c.file)
		if err != nil {
			t.Fatal(err)
		}
		st, err := parseServersState(string(b), "web")
		if err != nil {
			t.Fatal(err)
		}
		if c.file == "testdata/haproxy26-show-servers-state-drain.txt" {
			// Whichever server the capture drained is held in drain.
			drained := 0
			for _, s := range st {
				if s.held() == StateDrain {
					drained++
				}
			}
			if drained != 1 {
				t.Errorf("%s: %d servers held in drain, want 1: %+v", c.file, drained, st)
			}
			continue
		}
		if got := st["blue"].held(); got != c.blue {
			t.Errorf("%s: blue held %q, want %q", c.file, got, c.blue)
		}
		if got := st["green"].held(); got != c.green {
			t.Errorf("%s: green held %q, want %q", c.file, got, c.green)
		}
		if st["green"].Weight != c.greenW || st["blue"].Weight != c.blueW {
			t.Errorf("%s: weights blue %d green %d", c.file, st["blue"].Weight, st["green"].Weight)
		}
	}
	if (serverState{AdminState: adminForcedDrain | adminForcedMaint}).held() != StateMaint {
		t.Error("maint with drain is maint")
	}
}
