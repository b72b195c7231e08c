package agent

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// timedAnswers records when each request through HAProxy started and which
// backend answered it.
type timedAnswers struct {
	mu      sync.Mutex
	answers []timedAnswer
}

type timedAnswer struct {
	start, end time.Time
	backend    string // "" when the request failed
}

// startTimedLoad makes requests through url with workers keep-alive
// clients until ctx ends.
func startTimedLoad(ctx context.Context, url string, workers int) (*timedAnswers, *sync.WaitGroup) {
	res := &timedAnswers{}
	tr := &http.Transport{MaxIdleConnsPerHost: workers, DialContext: (&net.Dialer{Timeout: time.Second}).DialContext}
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			defer tr.CloseIdleConnections()
			for ctx.Err() == nil {
				start := time.Now()
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
				var backend string
				if resp, err := client.Do(req); err == nil {
					body, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode == http.StatusOK {
						backend = string(body)
					}
				}
				res.mu.Lock()
				res.answers = append(res.answers, timedAnswer{start: start, end: time.Now(), backend: backend})
				res.mu.Unlock()
			}
		})
	}
	return res, &wg
}

// TestAgentLive_HAProxyKilledAndRestartedRepairedFromObservation kills
// HAProxy with SIGKILL and starts it again from its config (blue) 20 times
// while the node is on green. The agent sees the admin socket drop and the
// new process, puts green back, and never reports the proxy as matching
// while it serves blue; once repaired, no request reaches blue. The times
// are logged as figures, not asserted.
func TestAgentLive_HAProxyKilledAndRestartedRepairedFromObservation(t *testing.T) {
	const restarts = 20
	b := startBus(t)
	lp := startProxy(t, false)
	cfg := liveConfig(t, b.url, lp)
	cfg.Resync = time.Hour // the resync must play no part
	ra := startLiveAgent(t, cfg)
	b.put(t, progressing(2, allGreen))
	ra.waitApplied(t, "web", 2)
	lp.waitWeights(t, 5*time.Second, allGreen)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	answers, loadWG := startTimedLoad(ctx, lp.frontend, 4)

	// The sampler reads HAProxy before and after reading the agent's
	// status; a status that claims a match while HAProxy serves blue on
	// both sides of it is a lie.
	var lies, samples int
	var samplerWG sync.WaitGroup
	samplerWG.Go(func() {
		d := lp.driver(t)
		read := func() (map[string]uint32, bool) {
			rctx, rcancel := context.WithTimeout(ctx, time.Second)
			defer rcancel()
			w, err := d.Weights(rctx)
			return w, err == nil
		}
		for ctx.Err() == nil {
			before, ok1 := read()
			st := ra.Status()
			after, ok2 := read()
			if !ok1 || !ok2 {
				continue
			}
			samples++
			svc := serviceStatus(st, "web")
			claims := svc.GetObservedMatches() && maps.Equal(svc.GetObservedWeights(), allGreen)
			if claims && maps.Equal(before, allBlue) && maps.Equal(after, allBlue) {
				lies++
				if lies < 5 {
					t.Logf("lie at %s: status %v, haproxy pid %d", time.Now().Format("15:04:05.000000"), svc, lp.proc.Pid())
				}
			}
		}
	})

	d := lp.driver(t)
	var fromKill, fromReady []time.Duration
	var repairedAt, killedAt []time.Time
	for i := range restarts {
		killed := time.Now()
		killedAt = append(killedAt, killed)
		if err := lp.proc.Kill(); err != nil {
			t.Fatal(err)
		}
		rctx, rcancel := context.WithTimeout(context.Background(), 15*time.Second)
		err := lp.proc.Restart(rctx)
		rcancel()
		if err != nil {
			t.Fatal(err)
		}
		ready := time.Now()
		var back time.Time
		deadline := time.Now().Add(10 * time.Second)
		for back.IsZero() {
			if time.Now().After(deadline) {
				w, _ := d.Weights(context.Background())
				t.Fatalf("restart %d: HAProxy still has %v 10s after it came back, want %v", i+1, w, allGreen)
			}
			if w, err := d.Weights(context.Background()); err == nil && maps.Equal(w, allGreen) {
				back = time.Now()
				break
			}
			time.Sleep(time.Millisecond)
		}
		fromKill = append(fromKill, back.Sub(killed))
		fromReady = append(fromReady, max(0, back.Sub(ready)))
		repairedAt = append(repairedAt, back)
		// Let traffic flow on the repaired proxy before the next kill.
		time.Sleep(150 * time.Millisecond)
	}
	cancel()
	loadWG.Wait()
	samplerWG.Wait()

	// Requests that started after a repair and were answered before the
	// next kill must all have gone to green. (One that straddles the kill
	// is sent again by the HTTP client on a new connection, to the new
	// HAProxy, which serves blue until it is repaired.)
	answers.mu.Lock()
	var wrong, afterRepair, blueTotal int
	for _, a := range answers.answers {
		if a.backend == "blue" {
			blueTotal++
		}
		for i, r := range repairedAt {
			end := time.Now()
			if i+1 < len(killedAt) {
				end = killedAt[i+1]
			}
			if a.start.After(r) && a.end.Before(end) {
				afterRepair++
				if a.backend == "blue" {
					wrong++
				}
				break
			}
		}
	}
	total := len(answers.answers)
	answers.mu.Unlock()

	if lies > 0 {
		t.Errorf("the agent's status claimed green read back while HAProxy served blue in %d of %d samples", lies, samples)
	}
	if wrong > 0 {
		t.Errorf("%d of %d requests made after a repair reached blue", wrong, afterRepair)
	}
	if n := ra.metric(t, "switchyard_agent_drift_total", "service", "web"); n < restarts {
		t.Errorf("switchyard_agent_drift_total = %v after %d restarts, want at least %d", n, restarts, restarts)
	}
	if gen, _ := ra.Applied("web"); gen != 2 {
		t.Errorf("applied generation = %d, want 2 (a repair is not a new generation)", gen)
	}
	t.Logf("%d SIGKILL+restarts: desired weights back after the kill p50 %s max %s; after HAProxy answered again p50 %s max %s",
		restarts, pct(fromKill, 50), pct(fromKill, 100), pct(fromReady, 50), pct(fromReady, 100))
	t.Logf("%d requests, %d made after a repair, %d of those to blue; %d answered by blue in all (before repairs); %d status samples, %d claimed a match while blue",
		total, afterRepair, wrong, blueTotal, samples, lies)
}

// pct is the p-th percentile of ds (nearest rank).
func pct(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	i := (p*len(s) + 99) / 100
	return s[max(0, min(len(s)-1, i-1))].Round(100 * time.Microsecond)
}

// reconfigure rewrites lp's haproxy.cfg with edit and restarts HAProxy
// from it, as an operator's reload with a changed config does.
func (lp *liveProxy) reconfigure(t *testing.T, edit func(string) string) {
	t.Helper()
	text, err := os.ReadFile(lp.proc.ConfigPath())
	if err != nil {
		t.Fatal(err)
	}
	changed := edit(string(text))
	if changed == string(text) {
		t.Fatal("the edit changed nothing in haproxy.cfg")
	}
	if err := os.WriteFile(lp.proc.ConfigPath(), []byte(changed), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := lp.proc.Restart(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestAgentLive_PartialApplyIsReportedAsReadBack: HAProxy takes one
// server's new weight and refuses the other's (a static balance algorithm
// accepts only 0 and the config's weight). The node is not on the new
// generation, and its status and /metrics say what HAProxy does now, read
// back after the failed apply, not what it did before: green has traffic
// the applied generation does not give it.
func TestAgentLive_PartialApplyIsReportedAsReadBack(t *testing.T) {
	b := startBus(t)
	lp := startProxy(t, false)
	lp.reconfigure(t, func(cfg string) string {
		cfg = strings.Replace(cfg, "balance roundrobin", "balance static-rr", 1)
		return regexp.MustCompile(`(server green \S+) weight 0`).ReplaceAllString(cfg, "$1 weight 10")
	})
	cfg := liveConfig(t, b.url, lp)
	cfg.ObserveInterval = 20 * time.Millisecond
	ra := startLiveAgent(t, cfg)
	b.put(t, progressing(1, allBlue))
	ra.waitApplied(t, "web", 1)
	lp.waitWeights(t, 5*time.Second, allBlue)

	// Green is raised first (to its config weight: taken), then blue
	// lowered to 90 (refused).
	b.put(t, progressing(2, map[string]uint32{"blue": 90, "green": 10}))
	partial := map[string]uint32{"blue": 100, "green": 10}
	lp.waitWeights(t, 5*time.Second, partial)
	waitFor(t, 5*time.Second, "the status reads back the partial apply", func() error {
		s := serviceStatus(ra.Status(), "web")
		if s.GetDriver() != sv1.DriverHealth_DRIVER_HEALTH_DEGRADED || s.GetObservedMatches() || !maps.Equal(s.GetObservedWeights(), partial) {
			return fmt.Errorf("status %v", s)
		}
		if !strings.Contains(s.GetDrift(), "green weight 10 (want 0)") || !strings.Contains(s.GetDrift(), "generation 2") {
			return fmt.Errorf("drift %q, want it to name generation 2 and green weight 10 (want 0)", s.GetDrift())
		}
		return nil
	})
	if gen, _ := ra.Applied("web"); gen != 1 {
		t.Errorf("applied generation %d, want 1: generation 2 was set only in part", gen)
	}
	if v := ra.metric(t, "switchyard_agent_observed_match", "service", "web"); v != 0 {
		t.Errorf("switchyard_agent_observed_match = %v while HAProxy does not do what was applied", v)
	}
}

// TestAgentLive_DriftTheAgentCannotRepairIsCountedOnce: HAProxy is
// reloaded with a config that refuses the applied weights (a static
// balance algorithm). The agent says so in its status and keeps trying,
// but the drift is one drift: counted once, not again at every look.
func TestAgentLive_DriftTheAgentCannotRepairIsCountedOnce(t *testing.T) {
	b := startBus(t)
	lp := startProxy(t, false)
	cfg := liveConfig(t, b.url, lp)
	cfg.ObserveInterval = 20 * time.Millisecond
	ra := startLiveAgent(t, cfg)
	canary := map[string]uint32{"blue": 90, "green": 10}
	b.put(t, progressing(1, canary))
	ra.waitApplied(t, "web", 1)
	lp.waitWeights(t, 5*time.Second, canary)

	lp.reconfigure(t, func(cfg string) string {
		return strings.Replace(cfg, "balance roundrobin", "balance static-rr", 1)
	})
	waitFor(t, 10*time.Second, "the drift reported", func() error {
		s := serviceStatus(ra.Status(), "web")
		if s.GetObservedMatches() || !strings.Contains(s.GetDrift(), "green weight 0 (want 10)") {
			return fmt.Errorf("status %v", s)
		}
		return nil
	})
	// Many looks, each trying the repair again and failing.
	waitFor(t, 10*time.Second, "repeated repairs", func() error {
		if n := ra.metric(t, "switchyard_agent_applies_total", "service", "web", "result", "error"); n < 20 {
			return fmt.Errorf("%v failed applies", n)
		}
		return nil
	})
	if n := ra.metric(t, "switchyard_agent_drift_total", "service", "web"); n != 1 {
		t.Errorf("switchyard_agent_drift_total = %v after one reload, want 1", n)
	}
	if r := serviceStatus(ra.Status(), "web").GetDriftRepairs(); r != 1 {
		t.Errorf("status drift_repairs = %d after one reload, want 1", r)
	}
}

// TestAgentLive_AppliedGenerationReportedBeforePostTrafficHooks: a
// post-traffic hook runs after HAProxy took the new weights, for as long
// as it takes. Meanwhile the node's status says what HAProxy does, read
// back: the new generation, not the previous one with the weights HAProxy
// had before.
func TestAgentLive_AppliedGenerationReportedBeforePostTrafficHooks(t *testing.T) {
	b := startBus(t)
	lp := startProxy(t, false)
	cfg := liveConfig(t, b.url, lp)
	hook, started, release := blockingHook(t)
	cfg.Hooks = map[string]HookConfig{"check-green": hook}
	ra := startLiveAgent(t, cfg)
	b.put(t, rolloutDoc(1, 0, sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING, nil))
	ra.waitApplied(t, "web", 1)
	lp.waitWeights(t, 5*time.Second, allBlue)

	hooks := &sv1.AgentHooks{PostTraffic: []string{"check-green"}}
	b.put(t, rolloutDoc(2, 20, sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING, hooks))
	canary := map[string]uint32{"blue": 80, "green": 20}
	lp.waitWeights(t, 5*time.Second, canary)
	waitFor(t, 5*time.Second, "the post-traffic hook running", func() error {
		_, err := os.Stat(started)
		return err
	})
	defer release()
	waitFor(t, 5*time.Second, "generation 2 reported, read back, while its hook runs", func() error {
		s := serviceStatus(ra.Status(), "web")
		if s.GetAppliedGeneration() != 2 || !s.GetObservedMatches() || !maps.Equal(s.GetObservedWeights(), canary) {
			return fmt.Errorf("status %v", s)
		}
		return nil
	})
}

// blockingHook is a hook that runs until release is called: it creates
// the file started, then waits.
func blockingHook(t *testing.T) (hook HookConfig, started string, release func()) {
	t.Helper()
	dir := t.TempDir()
	gate := filepath.Join(dir, "release")
	started = filepath.Join(dir, "started")
	release = func() {
		if err := os.WriteFile(gate, nil, 0o600); err != nil {
			t.Error(err)
		}
	}
	t.Cleanup(release)
	return HookConfig{
		Command: []string{"/bin/sh", "-c", `: > "$1"; while [ ! -e "$0" ]; do sleep 0.02; done`, gate, started},
		Timeout: time.Minute,
	}, started, release
}

// TestAgentLive_ProxyLostDuringAHookSaysSoInMetricsToo: while a hook keeps
// the service busy, HAProxy is killed. The status says at once that the
// proxy is not known to do what was applied; /metrics says the same.
func TestAgentLive_ProxyLostDuringAHookSaysSoInMetricsToo(t *testing.T) {
	b := startBus(t)
	lp := startProxy(t, false)
	cfg := liveConfig(t, b.url, lp)
	hook, started, release := blockingHook(t)
	cfg.Hooks = map[string]HookConfig{"check-green": hook}
	ra := startLiveAgent(t, cfg)
	b.put(t, rolloutDoc(1, 0, sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING, nil))
	ra.waitApplied(t, "web", 1)
	hooks := &sv1.AgentHooks{PostTraffic: []string{"check-green"}}
	b.put(t, rolloutDoc(2, 20, sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING, hooks))
	waitFor(t, 5*time.Second, "the post-traffic hook running", func() error {
		_, err := os.Stat(started)
		return err
	})
	defer release()
	ra.waitMetric(t, 1, "switchyard_agent_observed_match", "service", "web")

	if err := lp.proc.Kill(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the status saying the proxy is lost", func() error {
		if s := serviceStatus(ra.Status(), "web"); s.GetObservedMatches() {
			return fmt.Errorf("status %v", s)
		}
		return nil
	})
	// The metric follows the same read of the proxy (the status may say
	// "not matching" a moment earlier, while the read-back of generation
	// 2 is pending).
	ra.waitMetric(t, 0, "switchyard_agent_observed_match", "service", "web")
}
