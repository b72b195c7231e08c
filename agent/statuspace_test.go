package agent

import (
	"fmt"
	"strings"
	"testing"
	"time"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

func TestStatusPacer_WaitsAShareOfTheWindowAndAtMostOneStatusPerWindow(t *testing.T) {
	const window = 200 * time.Millisecond
	p := newStatusPacer("edge-1", window)
	start := time.Unix(1_700_000_000, 0)
	// The first change waits a share of the window.
	d := p.delay(start)
	if d < 0 || d >= window {
		t.Fatalf("first delay %s, want within [0, %s)", d, window)
	}
	sentAt := start.Add(d)
	p.sent(sentAt)
	// A change right after a status waits until a window has passed since.
	for _, after := range []time.Duration{0, time.Millisecond, window / 2, window - time.Nanosecond} {
		now := sentAt.Add(after)
		if got := p.delay(now); now.Add(got).Before(sentAt.Add(window)) {
			t.Errorf("change %s after a status: due %s after it, want at least %s", after, now.Add(got).Sub(sentAt), window)
		}
	}
	// A change long after the last status waits a share of the window only.
	for range 1000 {
		if got := p.delay(sentAt.Add(time.Hour)); got < 0 || got >= window {
			t.Fatalf("delay %s after a quiet hour, want within [0, %s)", got, window)
		}
	}
}

func TestStatusPacer_AFleetThatChangedTogetherSpreadsOverTheWindow(t *testing.T) {
	const (
		window = 200 * time.Millisecond
		nodes  = 10_000
		slots  = 20
	)
	now := time.Unix(1_700_000_000, 0)
	var per [slots]int
	for i := range nodes {
		d := newStatusPacer(fmt.Sprintf("edge-%05d", i), window).delay(now)
		if d < 0 || d >= window {
			t.Fatalf("node %d: delay %s, want within [0, %s)", i, d, window)
		}
		per[int(d*slots/window)]++
	}
	// Uniform: each 10 ms slot holds ~500; none may hold twice that or half.
	for i, c := range per {
		if c < nodes/slots/2 || c > 2*nodes/slots {
			t.Errorf("slot %d of %d holds %d statuses of %d: %v", i, slots, c, nodes, per)
		}
	}
}

func TestConfig_StatusWindowIsOffByDefaultNeverNegativeAndWithinTheHeartbeat(t *testing.T) {
	cfg := testConfig(t, "nats://127.0.0.1:1")
	cfg.setDefaults()
	if cfg.StatusWindow != DefaultStatusWindow {
		t.Fatalf("default statusWindow %s, want %s", cfg.StatusWindow, DefaultStatusWindow)
	}
	for _, tc := range []struct {
		window, heartbeat time.Duration
		want              string
	}{
		{-time.Millisecond, time.Second, "statusWindow: -1ms: must not be negative (0 turns the window off)"},
		{2 * time.Second, time.Second, "statusWindow: 2s: must not exceed heartbeat (1s)"},
	} {
		c := testConfig(t, "nats://127.0.0.1:1")
		c.StatusWindow, c.Heartbeat = tc.window, tc.heartbeat
		_, err := New(c, Options{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("statusWindow %s, heartbeat %s: got %v, want an error containing %q", tc.window, tc.heartbeat, err, tc.want)
		}
	}
}

// A burst of documents costs few statuses: every status is newer than the
// one before, at least a window apart by the agent's clock, the newest
// generation is reported, no generation is applied twice or after a newer
// one, and what was applied survives a restart.
func TestAgent_StatusesAreCoalescedTheLastChangeWinsAndThePersistedStateSurvives(t *testing.T) {
	const window = 300 * time.Millisecond
	b := startBus(t)
	statuses := b.statuses(t, "edge-1")
	cfg := testConfig(t, b.url)
	cfg.StatusWindow = window
	drv := newFakeDriver()
	ra := startAgent(t, cfg, map[string]*fakeDriver{"web": drv})

	const last = 8
	for gen := uint64(1); gen <= last; gen++ {
		b.put(t, defaults(gen, map[string]uint32{"blue": 100 - uint32(gen), "green": uint32(gen)}))
	}
	var got []*sv1.AgentStatus
	waitStatus(t, statuses, fmt.Sprintf("generation %d", last), func(st *sv1.AgentStatus) bool {
		got = append(got, st)
		s := serviceStatus(st, "web")
		return s.GetAppliedGeneration() == last && s.GetObservedMatches()
	})
	t.Logf("%d documents, %d statuses", last, len(got))
	var prevGen uint64
	var prevAt time.Time
	for i, st := range got {
		gen := serviceStatus(st, "web").GetAppliedGeneration()
		if gen < prevGen {
			t.Errorf("status %d reports generation %d after %d", i, gen, prevGen)
		}
		prevGen = gen
		at := st.GetAt().AsTime()
		if i > 0 && !st.GetHeartbeat() && at.Sub(prevAt) < window {
			t.Errorf("status %d went out %s after the one before, want at least %s", i, at.Sub(prevAt), window)
		}
		prevAt = at
	}
	applies, _ := drv.recorded()
	var prevGreen uint32
	for i, w := range applies {
		if w["green"] <= prevGreen {
			t.Errorf("apply %d set green %d after %d: a generation applied twice or after a newer one (%v)", i, w["green"], prevGreen, applies)
		}
		prevGreen = w["green"]
	}
	if prevGreen != last {
		t.Errorf("last apply set green %d, want %d", prevGreen, last)
	}

	// A restart on the same state directory reports the persisted
	// generation before any document arrives.
	ra.stop(t)
	b.srv.Shutdown()
	b.srv.WaitForShutdown()
	restarted := startAgent(t, cfg, map[string]*fakeDriver{"web": newFakeDriver()})
	if w := restarted.waitApplied(t, "web", last); w["green"] != last {
		t.Errorf("after a restart: weights %v, want green %d", w, last)
	}
}
