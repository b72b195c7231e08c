package agent

import (
	"bytes"
	"context"
	"log/slog"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/switchyard/switchyard/internal/clock"
	"github.com/switchyard/switchyard/internal/desired"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Most nodes get a document whose waves do not take them at every step of
// a rollout: it is applied (fenced, saved, reported) without touching the
// proxy, counted, and logged at debug; only a document that sets weights
// is an info line.
func TestAgent_DocumentOutsideTheWavesIsCountedAndLoggedAtDebug(t *testing.T) {
	fc := clock.NewFake(time.Date(2026, 11, 30, 3, 0, 0, 0, time.UTC))
	drv := &clockedDriver{fakeDriver: newFakeDriver(), clock: fc}
	var sent *sv1.ServiceStatus
	w := stageWorker(t, fc, drv, &recordingStore{}, func(st *sv1.ServiceStatus) { sent = st })
	var logs bytes.Buffer
	w.log = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))

	apply := func(ds *sv1.DesiredState) {
		t.Helper()
		raw, err := testSigner.SealDesired(ds, fc.Now())
		if err != nil {
			t.Fatal(err)
		}
		if !w.consider(delivery{raw: raw, at: fc.Now()}) {
			t.Fatalf("generation %d not taken", ds.GetGeneration())
		}
		if err := w.step(context.Background()); err != nil {
			t.Fatal(err)
		}
		w.sendStatus()
	}
	blue := map[string]uint32{"blue": 100, "green": 0}
	apply(defaults(1, blue))
	apply(&sv1.DesiredState{Service: "web", Generation: 2, RolloutId: "r1", Phase: sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING,
		FromBackend: "blue", ToBackend: "green", Waves: []*sv1.WaveWeights{{
			Index: 0, Name: "us", Selector: map[string]string{"region": "us"},
			BasisPoints: desired.FullBasisPoints, Weights: map[string]uint32{"blue": 0, "green": 100},
		}}})

	if got := sent.GetAppliedGeneration(); got != 2 || !maps.Equal(sent.GetWeights(), blue) {
		t.Fatalf("status says generation %d weights %v, want 2 and the previous %v", got, sent.GetWeights(), blue)
	}
	if applies, _ := drv.recorded(); len(applies) != 1 {
		t.Fatalf("the proxy was set %d times, want once (generation 1 only)", len(applies))
	}
	if n := testutil.ToFloat64(w.series.appliesNoWave); n != 1 {
		t.Fatalf("no_wave counted %v times, want 1", n)
	}
	var noWave, applied []string
	for _, line := range strings.Split(logs.String(), "\n") {
		switch {
		case strings.Contains(line, "no wave"):
			noWave = append(noWave, line)
		case strings.Contains(line, `msg="desired state applied"`):
			applied = append(applied, line)
		}
	}
	if len(noWave) != 1 || !strings.Contains(noWave[0], "level=DEBUG") || !strings.Contains(noWave[0], "generation=2") {
		t.Errorf("no-wave lines %q, want one at debug for generation 2", noWave)
	}
	if len(applied) != 1 || !strings.Contains(applied[0], "level=INFO") || !strings.Contains(applied[0], "generation=1") {
		t.Errorf("applied lines %q, want one at info for generation 1", applied)
	}
}

func TestAgent_CheckDocumentNamesTheWeightAndWhere(t *testing.T) {
	for _, c := range []struct {
		name string
		ds   *sv1.DesiredState
		want string
	}{
		{"valid", &sv1.DesiredState{Generation: 1, DefaultWeights: map[string]uint32{"blue": 100},
			Waves: []*sv1.WaveWeights{{BasisPoints: desired.FullBasisPoints, Weights: map[string]uint32{"green": 0}}}}, ""},
		{"generation 0", &sv1.DesiredState{}, "generation is 0"},
		{"default weight", &sv1.DesiredState{Generation: 1, DefaultWeights: map[string]uint32{"blue": 101}},
			`default weights: weight of "blue" is 101, want 0..100`},
		{"wave weight", &sv1.DesiredState{Generation: 1, Waves: []*sv1.WaveWeights{{}, {Weights: map[string]uint32{"green": 200}}}},
			`wave 1: weight of "green" is 200, want 0..100`},
		{"basis points", &sv1.DesiredState{Generation: 1, Waves: []*sv1.WaveWeights{{BasisPoints: desired.FullBasisPoints + 1}}},
			"wave 0: basis points 10001, want 0..10000"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := ""
			if err := checkDocument(c.ds); err != nil {
				got = err.Error()
			}
			if got != c.want {
				t.Fatalf("checkDocument = %q, want %q", got, c.want)
			}
		})
	}
}
