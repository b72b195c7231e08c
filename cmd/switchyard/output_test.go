package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/coordinator"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// readPlane is an embedded NATS server and one coordinator with its HTTP
// read API, in the test process.
type readPlane struct {
	natsURL, httpAddr string
	nc                *nats.Conn
}

func startReadPlane(t *testing.T) *readPlane {
	t.Helper()
	ns, err := bus.RunEmbedded(bus.EmbeddedOptions{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	key := filepath.Join(t.TempDir(), "coordinator.key")
	if code, _, stderr := runCLI(t, "keys", "generate", "--out", key); code != exitOK {
		t.Fatalf("keys generate: %s", stderr)
	}
	sc, err := signingFlags{Key: key}.load()
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	srv, err := coordinator.New(coordinator.Config{NodeID: "c1", DataDir: t.TempDir(), RaftAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		NATSURL: ns.ClientURL(), BootstrapExpect: 1, Registerer: reg, Gatherer: reg, Signing: sc, TickInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	p := &readPlane{natsURL: ns.ClientURL(), httpAddr: srv.HTTPAddr(), nc: nc}
	deadline := time.Now().Add(10 * time.Second)
	for !srv.IsLeader() {
		if time.Now().After(deadline) {
			t.Fatal("no leader within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return p
}

func (p *readPlane) get(t *testing.T, path string) []byte {
	t.Helper()
	resp, err := http.Get("http://" + p.httpAddr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
	}
	return b
}

// sameShape decodes both documents into m's type, clears what moves
// between two reads (node ages), and compares.
func sameShape(t *testing.T, what string, m proto.Message, cli, api []byte) {
	t.Helper()
	a, b := m.ProtoReflect().New().Interface(), m.ProtoReflect().New().Interface()
	if err := protojson.Unmarshal(cli, a); err != nil {
		t.Fatalf("%s: CLI output is not %T: %v\n%s", what, m, err, cli)
	}
	if err := protojson.Unmarshal(api, b); err != nil {
		t.Fatalf("%s: API answer is not %T: %v", what, m, err)
	}
	for _, x := range []proto.Message{a, b} {
		clearAges(x.ProtoReflect())
	}
	if !proto.Equal(a, b) {
		t.Fatalf("%s: CLI -o json and the read API differ:\nCLI %v\nAPI %v", what, a, b)
	}
}

func shapeEqual(m proto.Message, cli, api []byte) bool {
	a, b := m.ProtoReflect().New().Interface(), m.ProtoReflect().New().Interface()
	if protojson.Unmarshal(cli, a) != nil || protojson.Unmarshal(api, b) != nil {
		return false
	}
	clearAges(a.ProtoReflect())
	clearAges(b.ProtoReflect())
	return proto.Equal(a, b)
}

func clearAges(m interface {
	Interface() proto.Message
}) {
	switch v := m.Interface().(type) {
	case *sv1.NodeView:
		v.SecondsSinceSeen = 0
	case *sv1.RolloutsAnswer:
		for _, r := range v.GetRollouts() {
			for _, n := range r.GetNodes() {
				n.SecondsSinceSeen = 0
			}
		}
	case *sv1.FleetStatus:
		for _, s := range v.GetServices() {
			for _, w := range s.GetWaves() {
				for _, n := range w.GetNodes() {
					n.SecondsSinceSeen = 0
				}
			}
		}
	}
}

// Every read verb prints a table by default and, with -o json, exactly what
// the read API answers for the same question.
func TestCLI_ReadVerbsPrintTheReadAPIsJSON(t *testing.T) {
	p := startReadPlane(t)
	spec := filepath.Join(t.TempDir(), "canary.yaml")
	if err := os.WriteFile(spec, []byte(`version: v1
name: web-json
service: web
from: blue
to: green
strategy:
  canary:
    steps:
      - setWeight: 20
      - pause: {}
waves:
  - name: eu
    selector: {region: eu}
  - name: everyone
`), 0o600); err != nil {
		t.Fatal(err)
	}
	nats := []string{"--nats", p.natsURL}
	if code, out, stderr := runCLI(t, append([]string{"rollout", "apply", "-f", spec, "--publish-timeout", "10s"}, nats...)...); code != exitOK {
		t.Fatalf("apply: exit %d: %s %s", code, out, stderr)
	}
	status := func(gen uint64) {
		for _, n := range []struct{ node, region string }{{"edge-eu", "eu"}, {"edge-us", "us"}} {
			b, _ := proto.Marshal(&sv1.AgentStatus{Node: n.node, Labels: map[string]string{"region": n.region}, Services: []*sv1.ServiceStatus{{
				Service: "web", AppliedGeneration: gen, AppliedEpoch: 1, Driver: sv1.DriverHealth_DRIVER_HEALTH_OK,
				Weights: map[string]uint32{"blue": 100}, ObservedWeights: map[string]uint32{"blue": 100}, ObservedMatches: true,
			}}})
			if err := p.nc.Publish(bus.StatusSubject(n.node), b); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The nodes follow each generation until the rollout rests at
	// "pause: {}".
	deadline := time.Now().Add(15 * time.Second)
	for {
		var rs sv1.RolloutsAnswer
		_, rout, _ := runCLI(t, append([]string{"rollout", "status", "web-json", "-o", "json"}, nats...)...)
		_ = protojson.Unmarshal([]byte(rout), &rs)
		if len(rs.GetRollouts()) == 1 {
			v := rs.GetRollouts()[0]
			status(v.GetRollout().GetGeneration())
			if v.GetRollout().GetStep() == 1 && v.GetConverged() == 2 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("rollout not at its pause with both nodes converged:\n%s", rout)
		}
		time.Sleep(100 * time.Millisecond)
	}

	for _, c := range []struct {
		args []string
		path string
		m    proto.Message
	}{
		{[]string{"rollout", "status"}, "/v1/rollouts?summary=true", &sv1.RolloutsAnswer{}},
		{[]string{"rollout", "list"}, "/v1/rollouts?summary=true", &sv1.RolloutsAnswer{}},
		{[]string{"rollout", "status", "web-json"}, "/v1/rollouts/web-json", &sv1.RolloutsAnswer{}},
		{[]string{"rollout", "series", "web-json"}, "/v1/rollouts/web-json/series", &sv1.RolloutSeries{}},
		{[]string{"fleet", "status"}, "/v1/fleet", &sv1.FleetStatus{}},
		{[]string{"fleet", "status", "web"}, "/v1/fleet?service=web", &sv1.FleetStatus{}},
		{[]string{"chaos", "status"}, "/v1/drills", &sv1.DrillsAnswer{}},
	} {
		what := strings.Join(c.args, " ")
		// The latest analysis windows move every few seconds; a read
		// that straddles a window's end is asked again.
		var cliOut, apiOut []byte
		for try := 0; try < 3; try++ {
			code, out, stderr := runCLI(t, append(append(c.args, "-o", "json"), nats...)...)
			if code != exitOK {
				t.Fatalf("%s -o json: exit %d: %s", what, code, stderr)
			}
			cliOut, apiOut = []byte(out), p.get(t, c.path)
			if shapeEqual(c.m, cliOut, apiOut) {
				break
			}
		}
		sameShape(t, what, c.m, cliOut, apiOut)
	}

	// history -o json is the rollout object the API nests in its answer.
	code, out, _ := runCLI(t, append([]string{"rollout", "history", "web-json", "-o", "json"}, nats...)...)
	var api sv1.RolloutsAnswer
	if err := protojson.Unmarshal(p.get(t, "/v1/rollouts/web-json"), &api); err != nil {
		t.Fatal(err)
	}
	var hist sv1.Rollout
	if err := protojson.Unmarshal([]byte(out), &hist); code != exitOK || err != nil || !proto.Equal(&hist, api.GetRollouts()[0].GetRollout()) {
		t.Fatalf("history -o json: exit %d, %v\n%s", code, err, out)
	}

	// watch -o json prints one view per change, each what the API holds
	// for the rollout; it returns when its context ends.
	wctx, wcancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	var wout, werr strings.Builder
	wcode := run(wctx, append([]string{"rollout", "watch", "web-json", "-o", "json"}, nats...), &wout, &werr)
	wcancel()
	lines := strings.Split(strings.TrimSpace(wout.String()), "\n")
	var watched sv1.RolloutView
	if err := protojson.Unmarshal([]byte(lines[0]), &watched); wcode != exitOK || err != nil || watched.GetRollout().GetId() != "web-json" ||
		watched.GetPosition() == "" || len(watched.GetNodes()) != 2 {
		t.Fatalf("watch -o json: exit %d, %v, %s\n%s", wcode, err, werr.String(), wout.String())
	}

	// coordinator members -o json is what GET /v1/cluster/members answers.
	// The two reads are a moment apart and the log's indexes move when an
	// entry commits in between (a busy machine): read both again until
	// they agree.
	var cj, aj string
	for range 20 {
		code, out, stderr := runCLI(t, "coordinator", "members", "--http", p.httpAddr, "-o", "json")
		var cli, viaAPI map[string]any
		if err := json.Unmarshal([]byte(out), &cli); code != exitOK || err != nil {
			t.Fatalf("members -o json: exit %d %v %s", code, err, stderr)
		}
		if err := json.Unmarshal(p.get(t, "/v1/cluster/members"), &viaAPI); err != nil {
			t.Fatal(err)
		}
		delete(cli, "streams")
		delete(viaAPI, "streams")
		if cj, aj = mustJSON(cli), mustJSON(viaAPI); cj == aj {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if cj != aj {
		t.Fatalf("members: CLI %s\nAPI %s", cj, aj)
	}

	// The default tables.
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"fleet", "status"}, []string{"Service web: desired 1/", "(rollout web-json), 2/2 live nodes converged", "WAVE", "eu", "edge-eu", "everyone", "edge-us", "blue=100"}},
		{[]string{"rollout", "list"}, []string{"ROLLOUT", "web-json", "progressing"}},
		{[]string{"rollout", "status", "web-json"}, []string{"Position:    wave 1/2 eu, step 2/2 pause until approved"}},
		{[]string{"rollout", "series", "web-json"}, []string{"Rollout web-json (web), one row per 1s", "ERROR RATE"}},
		{[]string{"chaos", "status"}, []string{"no drills"}},
	} {
		code, out, stderr := runCLI(t, append(c.args, nats...)...)
		if code != exitOK {
			t.Fatalf("%v: exit %d %s", c.args, code, stderr)
		}
		for _, w := range c.want {
			if !strings.Contains(out, w) {
				t.Errorf("%v lacks %q:\n%s", c.args, w, out)
			}
		}
	}

	// Wrong input names what was wrong.
	for _, c := range []struct {
		args []string
		code int
		says string
	}{
		{[]string{"fleet", "status", "nope"}, exitFailure, `service: no node runs "nope"`},
		{[]string{"fleet", "status", "a", "b"}, exitUsage, "want at most one SERVICE"},
		{[]string{"fleet", "status", "-o", "yaml"}, exitUsage, `-o "yaml": want table or json`},
		{[]string{"fleet"}, exitUsage, "switchyard fleet status"},
		{[]string{"rollout", "series", "nope"}, exitFailure, `rollout: no rollout named "nope"`},
		{[]string{"rollout", "list", "web-json"}, exitUsage, "takes no NAME"},
		{[]string{"coordinator", "members", "--http", p.httpAddr, "-o", "yaml"}, exitUsage, `-o "yaml": want table or json`},
	} {
		args := c.args
		if args[0] != "coordinator" {
			args = append(args, nats...)
		}
		code, _, stderr := runCLI(t, args...)
		if code != c.code || !strings.Contains(stderr, c.says) {
			t.Errorf("%v: exit %d, stderr %q; want exit %d and %q", c.args, code, stderr, c.code, c.says)
		}
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
