package agent

import (
	"fmt"
	"io"
	"maps"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/agent/driver"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

func TestMismatch_NamesWhatDiffers(t *testing.T) {
	want := map[string]uint32{"blue": 0, "green": 100}
	cases := []struct {
		name   string
		obs    driver.Observation
		heldOK func(string) bool
		want   string
	}{
		{"same", driver.Observation{Weights: map[string]uint32{"blue": 0, "green": 100}}, nil, ""},
		{"extra backend is not ours", driver.Observation{Weights: map[string]uint32{"blue": 0, "green": 100, "canary": 5}}, nil, ""},
		{"restarted from config", driver.Observation{Weights: map[string]uint32{"blue": 100, "green": 0}}, nil,
			"blue weight 100 (want 0), green weight 0 (want 100)"},
		{"missing server", driver.Observation{Weights: map[string]uint32{"blue": 0}}, nil, "green missing (want weight 100)"},
		{"green in maint by hand", driver.Observation{Weights: map[string]uint32{"blue": 0, "green": 100}, Held: map[string]string{"green": "maint"}}, nil,
			"green held in maint (want it in rotation at weight 100)"},
		{"green in maint by a drill", driver.Observation{Weights: map[string]uint32{"blue": 0, "green": 100}, Held: map[string]string{"green": "maint"}}, drillHolds("green"), ""},
		{"green in maint by hand while a drill holds blue", driver.Observation{Weights: map[string]uint32{"blue": 0, "green": 100}, Held: map[string]string{"blue": "maint", "green": "maint"}}, drillHolds("blue"),
			"green held in maint (want it in rotation at weight 100)"},
		{"blue drained at weight 0 is fine", driver.Observation{Weights: map[string]uint32{"blue": 0, "green": 100}, Held: map[string]string{"blue": "drain"}}, nil, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got, _ := mismatch(want, c.obs, c.heldOK); got != c.want {
				t.Fatalf("mismatch = %q, want %q", got, c.want)
			}
		})
	}
}

// drillHolds is a heldOK for a drill that holds backend out of rotation.
func drillHolds(backend string) func(string) bool {
	return func(b string) bool { return b == backend }
}

// A weight changed behind the agent's back is seen within the observe
// interval, not the resync period: reported in status and /healthz while it
// lasts, counted, and repaired.
func TestAgent_ObservedDriftReportedAndRepairedWithinTheObserveInterval(t *testing.T) {
	b := startBus(t)
	statuses := b.statuses(t, "edge-1")
	cfg := testConfig(t, b.url)
	cfg.Resync = time.Hour // only the observe loop can find it
	cfg.ObserveInterval = 20 * time.Millisecond
	cfg.HTTPAddr = "127.0.0.1:0"
	drv := newFakeDriver()
	ra := startAgent(t, cfg, map[string]*fakeDriver{"web": drv})
	green := map[string]uint32{"blue": 0, "green": 100}
	b.put(t, defaults(4, green))
	ra.waitApplied(t, "web", 4)
	waitStatus(t, statuses, "generation 4 read back", func(st *sv1.AgentStatus) bool {
		s := serviceStatus(st, "web")
		return s.GetAppliedGeneration() == 4 && s.GetObservedMatches() && maps.Equal(s.GetObservedWeights(), green)
	})

	healthz := func() (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + ra.HTTPAddr() + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}

	// The proxy is restarted from its config and the repair keeps failing
	// for a while: the node must say so, not claim green.
	drv.failNext(1<<30, errProxyDown)
	drv.setWeights(map[string]uint32{"blue": 100, "green": 0})
	st := waitStatus(t, statuses, "drift reported", func(st *sv1.AgentStatus) bool {
		return !serviceStatus(st, "web").GetObservedMatches()
	})
	s := serviceStatus(st, "web")
	if !strings.Contains(s.GetDrift(), "blue weight 100 (want 0)") || !maps.Equal(s.GetObservedWeights(), map[string]uint32{"blue": 100, "green": 0}) {
		t.Fatalf("status drift %q observed %v; want blue weight 100 (want 0) and the weights read back", s.GetDrift(), s.GetObservedWeights())
	}
	if !maps.Equal(s.GetWeights(), green) {
		t.Fatalf("status weights %v, want the applied %v beside the observed ones", s.GetWeights(), green)
	}
	waitFor(t, 10*time.Second, "healthz names the drift", func() error {
		code, body := healthz()
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "service web: proxy does not do what was applied: blue weight 100 (want 0)") {
			return fmt.Errorf("%d %s", code, body)
		}
		return nil
	})
	if ra.metric(t, "switchyard_agent_observed_match", "service", "web") != 0 {
		t.Fatal("switchyard_agent_observed_match is not 0 while the proxy differs")
	}

	drv.failNext(0, nil)
	waitStatus(t, statuses, "repaired and read back", func(st *sv1.AgentStatus) bool {
		s := serviceStatus(st, "web")
		return s.GetObservedMatches() && maps.Equal(s.GetObservedWeights(), green) && s.GetDrift() == "" && s.GetDriftRepairs() >= 1
	})
	waitFor(t, 10*time.Second, "healthz ok again", func() error {
		if code, body := healthz(); code != http.StatusOK {
			return fmt.Errorf("%d %s", code, body)
		}
		return nil
	})
	if n := ra.metric(t, "switchyard_agent_drift_total", "service", "web"); n < 1 {
		t.Fatalf("switchyard_agent_drift_total = %v, want at least 1", n)
	}
	if gen, _ := ra.Applied("web"); gen != 4 {
		t.Fatalf("applied generation = %d, want 4 (a repair is not a new generation)", gen)
	}
}
