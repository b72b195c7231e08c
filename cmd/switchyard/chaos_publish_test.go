package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/bus"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// The kill switch is committed, but agents end their faults only when they
// read the ended drills' documents on the bus. chaos abort and stop-all
// wait for the bus to carry them, and say so (exit 3) when it does not,
// instead of reporting the drills stopped while every fault goes on.
func TestCLI_StopAllSaysWhenTheEndedDrillsDoNotReachTheBus(t *testing.T) {
	p := startReadPlane(t)
	nats := []string{"--nats", p.natsURL}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Two live nodes of web, heard from all along.
	go func() {
		for ctx.Err() == nil {
			for _, n := range []string{"edge-1", "edge-2"} {
				b, _ := proto.Marshal(&sv1.AgentStatus{Node: n, Services: []*sv1.ServiceStatus{{
					Service: "web", Driver: sv1.DriverHealth_DRIVER_HEALTH_OK, Weights: map[string]uint32{"blue": 100},
				}}})
				_ = p.nc.Publish(bus.StatusSubject(n), b)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}()
	run := func(name string) {
		t.Helper()
		file := filepath.Join(t.TempDir(), name+".yaml")
		if err := os.WriteFile(file, []byte(`version: v1
name: `+name+`
service: web
maxNodes: 2
maxPercent: 100
duration: 10m
fault:
  http: {backend: green, errorPercent: 20}
`), 0o600); err != nil {
			t.Fatal(err)
		}
		if code, out, stderr := runCLI(t, append([]string{"chaos", "run", "-f", file}, nats...)...); code != exitOK {
			t.Fatalf("chaos run %s: exit %d: %s %s", name, code, out, stderr)
		}
		deadline := time.Now().Add(20 * time.Second)
		for {
			var ans sv1.DrillsAnswer
			_, out, _ := runCLI(t, append([]string{"chaos", "status", name, "-o", "json"}, nats...)...)
			_ = protojson.Unmarshal([]byte(out), &ans)
			if d := ans.GetDrills(); len(d) == 1 && d[0].GetDrill().GetPhase() == sv1.DrillPhase_DRILL_PHASE_RUNNING && published(t, p, name) >= d[0].GetDrill().GetGeneration() {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("drill %s not running and published: %s", name, out)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	run("d1")
	code, out, stderr := runCLI(t, append([]string{"chaos", "abort", "d1", "--publish-timeout", "10s"}, nats...)...)
	if code != exitOK || !strings.Contains(out, "published") {
		t.Fatalf("abort with the bus working: exit %d: %s %s", code, out, stderr)
	}

	run("d2")
	// The drills bucket takes no more writes: the leader commits the kill
	// switch but cannot tell the agents.
	js, err := jetstream.New(p.nc)
	if err != nil {
		t.Fatal(err)
	}
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	s, err := js.Stream(sctx, "KV_"+bus.DrillsBucket)
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	cfg.Sealed = true
	if _, err := js.UpdateStream(sctx, cfg); err != nil {
		t.Fatal(err)
	}
	code, out, stderr = runCLI(t, append([]string{"chaos", "stop-all", "--publish-timeout", "2s"}, nats...)...)
	t.Logf("stop-all with the bucket sealed: exit %d\n%s%s", code, out, stderr)
	if code != exitNotPublished || !strings.Contains(stderr, "d2") || !strings.Contains(stderr, "did not reach the bus") {
		t.Fatalf("stop-all whose documents cannot be published: exit %d, want %d naming d2", code, exitNotPublished)
	}
}

// published is the generation of a drill's document in the bucket; 0 when
// none.
func published(t *testing.T, p *readPlane, drill string) uint64 {
	t.Helper()
	js, err := jetstream.New(p.nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, bus.DrillsBucket)
	if err != nil {
		return 0
	}
	e, err := kv.Get(ctx, drill)
	if err != nil {
		return 0
	}
	f, err := bus.PeekFence(e.Value())
	if err != nil {
		return 0
	}
	return f.Generation
}
