package coordinator

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/switchyard/switchyard/bus"
)

// lockedBuffer is a log sink safe for the coordinator's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// A coordinator whose state machine hangs (here: a committed entry whose
// apply never returns) cannot take its snapshot or stop Raft; it must still
// return from Run once StopTimeout has passed, say so, and show where it
// waited, so that a supervisor's SIGTERM ends the process.
func TestCoordinator_StopIsBoundedWhenTheStateMachineHangs(t *testing.T) {
	nc, url := startNATS(t)
	logs := &lockedBuffer{}
	reg := prometheus.NewRegistry()
	srv, err := New(Config{
		NodeID: "c1", DataDir: t.TempDir(), RaftAddr: "127.0.0.1:0",
		NATSURL: url, BootstrapExpect: 1, Registerer: reg, Gatherer: reg,
		TickInterval: 50 * time.Millisecond, Signing: testSigning,
		Logger:      slog.New(slog.NewTextHandler(logs, nil)),
		StopTimeout: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- srv.Run(ctx) }()
	waitFor(t, "leadership", 10*time.Second, func() bool { return testutil.ToFloat64(srv.metrics.isLeader) == 1 })

	// The state machine tells the publisher of every changed service; with
	// the publisher's lock held, the apply of the next rollout never
	// returns. Released at the end so the goroutines left behind finish.
	srv.publisher.mu.Lock()
	var once sync.Once
	release := func() { once.Do(srv.publisher.mu.Unlock) }
	defer release()
	go func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		_, _ = bus.SendIntent(sctx, nc, bus.IntentKindRollout, applyIntent("stuck-1", "stuck"))
	}()
	// The publisher's own republishing also waits in mark: only a
	// goroutine in both the state machine's Apply and mark will do.
	waitFor(t, "the state machine waiting in the publisher", 10*time.Second, func() bool {
		var stacks strings.Builder
		_ = pprof.Lookup("goroutine").WriteTo(&stacks, 2)
		for _, g := range strings.Split(stacks.String(), "\n\n") {
			if strings.Contains(g, "(*publisher).mark") && strings.Contains(g, "(*FSM).Apply") {
				return true
			}
		}
		return false
	})

	cancel()
	select {
	case err := <-runErr:
		if err == nil || !strings.Contains(err.Error(), "stopping took longer than 2s") {
			t.Fatalf("Run returned %v, want the stop timeout named", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("Run did not return: stopping is not bounded")
	}
	out := logs.String()
	for _, want := range []string{"coordinator did not stop in time", "goroutines=", "(*FSM).Apply"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q", want)
		}
	}
	release()
}

func TestConfig_StopTimeoutDefaultsAndMustNotBeNegative(t *testing.T) {
	c := Config{NodeID: "c1", DataDir: t.TempDir(), BootstrapExpect: 1}
	if err := c.setDefaults(); err != nil {
		t.Fatal(err)
	}
	if c.StopTimeout != DefaultStopTimeout {
		t.Errorf("StopTimeout %s, want %s", c.StopTimeout, DefaultStopTimeout)
	}
	c = Config{NodeID: "c1", DataDir: t.TempDir(), BootstrapExpect: 1, StopTimeout: -time.Second}
	if err := c.setDefaults(); err == nil || !strings.Contains(err.Error(), "stop timeout") {
		t.Errorf("negative stop timeout: %v", err)
	}
}

// Raft's pipelined replication can deadlock after a follower refuses an
// append (replication to it stops for good and Shutdown never returns);
// the coordinator's transport must not offer it.
func TestCoordinator_RaftReplicatesWithoutAPipeline(t *testing.T) {
	_, url := startNATS(t)
	c := startCoordinator(t, url, t.TempDir())
	_, err := c.srv.transport.AppendEntriesPipeline("peer", "127.0.0.1:1")
	if !errors.Is(err, raft.ErrPipelineReplicationNotSupported) {
		t.Fatalf("AppendEntriesPipeline: %v, want %v", err, raft.ErrPipelineReplicationNotSupported)
	}
}
