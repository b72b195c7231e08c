package envoy

import (
	"context"
	"encoding/json"
	"maps"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchyard/switchyard/agent/driver"
)

// TestEnvoy_RestartDoesNotInjectAFaultAgain: a restarted agent reverts
// every fault it journaled and injects none again; the routing it serves
// before the bus speaks must not bring a drill's fault back.
func TestEnvoy_RestartDoesNotInjectAFaultAgain(t *testing.T) {
	f := newFixture(t)
	d := f.open(t)
	if err := d.Apply(context.Background(), map[string]uint32{"blue": 20, "green": 80}); err != nil {
		t.Fatal(err)
	}
	if err := d.SetFault(context.Background(), "green", &Fault{AbortPercent: 100, AbortStatus: 503}); err != nil {
		t.Fatal(err)
	}
	d.Close()
	d2 := f.open(t)
	if w, _ := d2.Weights(context.Background()); w["blue"] != 20 || w["green"] != 80 {
		t.Errorf("restarted driver serves %v, want the saved blue 20 green 80", w)
	}
	if fs := d2.Faults(); len(fs) != 0 {
		t.Errorf("restarted driver serves faults %v, want none: a restart injects no fault", fs)
	}
}

// TestEnvoy_ConcurrentChangesKeepOnDiskWhatIsServed: the agent's
// desired-state worker applies weights while a drill sets or reverts a
// fault; what a restart would serve is what was served last.
func TestEnvoy_ConcurrentChangesKeepOnDiskWhatIsServed(t *testing.T) {
	f := newFixture(t)
	d := f.open(t)
	path := d.statePath
	splits := []map[string]uint32{{"blue": 100, "green": 0}, {"blue": 0, "green": 100}}
	for i := range 40 {
		var wg sync.WaitGroup
		wg.Go(func() {
			if err := d.Apply(context.Background(), splits[i%2]); err != nil {
				t.Error(err)
			}
		})
		wg.Go(func() {
			var fault *Fault
			if i%2 == 0 {
				fault = &Fault{AbortPercent: 10, AbortStatus: 503}
			}
			if err := d.SetFault(context.Background(), "green", fault); err != nil {
				t.Error(err)
			}
		})
		wg.Wait()
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		var sv saved
		if err := json.Unmarshal(b, &sv); err != nil {
			t.Fatalf("round %d: the saved routing does not decode: %v\n%s", i, err, b)
		}
		served, _ := d.Weights(context.Background())
		if sv.Routing == nil || !maps.Equal(sv.Routing.Weights, served) {
			t.Fatalf("round %d: saved %s, served %v", i, b, served)
		}
	}
}

// TestEnvoy_ServicesWhoseClusterNamesCollideAreRefused: clusters are
// named "<service>-<backend>", so service web's backend api-blue and
// service web-api's backend blue would be one cluster on the shared xDS
// server, with one of the two services' endpoints, and one's load counted
// as the other's. The second service must be refused, naming both.
func TestEnvoy_ServicesWhoseClusterNamesCollideAreRefused(t *testing.T) {
	f := newFixture(t)
	f.sec.Endpoints = map[string][]string{"api-blue": {f.blue.addr}, "green": {f.green.addr}}
	f.open(t)
	other := &Section{XDS: f.sec.XDS, Endpoints: map[string][]string{"blue": {f.blue.addr}, "green": {f.green.addr}}}
	d, err := other.Open(driver.Env{Service: "web-api", Node: "n1", Registerer: prometheus.NewRegistry()})
	if err == nil {
		d.Close()
		t.Fatal("a service whose cluster web-api-blue is another service's opened")
	}
	if !strings.Contains(err.Error(), `cluster "web-api-blue"`) || !strings.Contains(err.Error(), "service web") {
		t.Errorf("error %q, want it to name the cluster and the other service", err)
	}
}
