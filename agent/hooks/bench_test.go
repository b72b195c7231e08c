package hooks

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/switchyard/switchyard/agent/state"
)

// BenchmarkHooks_RunJournaled measures what a hook costs the agent beyond
// the command's own work: two durable journal writes (bbolt, fsync) around
// a fork and exec of /bin/true.
func BenchmarkHooks_RunJournaled(b *testing.B) {
	db, err := state.Open(b.TempDir(), 0)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	r := &Runner{Hooks: map[string]Hook{"noop": {Command: []string{"/bin/true"}, Timeout: 5 * time.Second}},
		Journal: db, Log: slog.New(slog.DiscardHandler), Now: time.Now}
	b.ResetTimer()
	for i := range b.N {
		run := r.Run(context.Background(), req("noop", uint64(i+1)))
		if run.GetState() != StateSucceeded {
			b.Fatalf("run %v", run)
		}
	}
}

// BenchmarkHooks_JournalHit measures the answer for a hook already run at
// this generation (an agent restart, a repeated document): a journal read.
func BenchmarkHooks_JournalHit(b *testing.B) {
	db, err := state.Open(b.TempDir(), 0)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	r := &Runner{Hooks: map[string]Hook{"noop": {Command: []string{"/bin/true"}, Timeout: 5 * time.Second}},
		Journal: db, Log: slog.New(slog.DiscardHandler), Now: time.Now}
	r.Run(context.Background(), req("noop", 1))
	b.ResetTimer()
	for range b.N {
		if run := r.Run(context.Background(), req("noop", 1)); run.GetState() != StateSucceeded {
			b.Fatalf("run %v", run)
		}
	}
}
