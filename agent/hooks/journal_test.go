package hooks_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/switchyard/switchyard/agent/hooks"
	"github.com/switchyard/switchyard/agent/state"
)

// A node runs hooks for every rollout of its services, hundreds a day
// from CI. The journal kept each run (with up to 2 KB of output) in the
// agent's bolt file for good: 3,000 rollouts of a five-step canary grew
// it without end. A run is looked up again only for documents of the
// same rollout (fencing never lets an older rollout's document back), so
// the journal keeps each service's current rollout's runs: a run is still
// not repeated after a restart, and the file stops growing.
func TestHooks_JournalKeepsOnlyEachServicesCurrentRollout(t *testing.T) {
	dir := t.TempDir()
	db, err := state.Open(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	r := &hooks.Runner{Hooks: map[string]hooks.Hook{"ok": {Command: []string{"true"}, Timeout: 5 * time.Second}},
		Journal: db, Log: slog.New(slog.DiscardHandler), Now: time.Now}
	ctx := context.Background()
	run := func(service, rollout string, gen uint64) {
		t.Helper()
		got := r.Run(ctx, hooks.Request{Service: service, Node: "n1", Hook: "ok", Point: hooks.PostTraffic, RolloutID: rollout, Generation: gen, From: "blue", To: "green"})
		if got.GetState() != hooks.StateSucceeded {
			t.Fatalf("%s %s %d: %v", service, rollout, gen, got)
		}
	}
	for i := range 40 {
		for step := range 3 {
			run("web", fmt.Sprintf("web-%d", i), uint64(10*i+step+1))
		}
	}
	run("api", "api-1", 5)
	keys, err := db.HookRunKeys()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"api/api-1/postTraffic/ok/5", "web/web-39/postTraffic/ok/391", "web/web-39/postTraffic/ok/392", "web/web-39/postTraffic/ok/393"}
	if fmt.Sprint(keys) != fmt.Sprint(want) {
		t.Fatalf("journal holds %d runs %v; want the current rollout's of each service: %v", len(keys), keys, want)
	}
	// The current rollout's runs are still answered from the journal.
	marker := dir + "/ran-again"
	r.Hooks["ok"] = hooks.Hook{Command: []string{"touch", marker}, Timeout: 5 * time.Second}
	run("web", "web-39", 393)
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("a journaled run of the current rollout ran again")
	}
}
