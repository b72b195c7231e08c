package agent

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchyard/switchyard/agent/driver/haproxy"
	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/internal/clock"
	"github.com/switchyard/switchyard/internal/desired"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// marshalStore encodes every applied state as the bbolt store does,
// without the disk.
type marshalStore struct{ last []byte }

func (s *marshalStore) Load(string) (*sv1.AppliedState, error) { return nil, nil }
func (s *marshalStore) Save(st *sv1.AppliedState) error {
	b, err := st.MarshalVT()
	s.last = b
	return err
}
func (s *marshalStore) Close() error { return nil }

// BenchmarkAgent_ApplyPath is one agent's CPU and allocations for one new
// document, everything but the bus: verify and decode the push, fence it,
// apply it to a driver, save the applied state (encoded, no disk), read the
// proxy back, build the service status and the agent status and encode it,
// with an info-level text log going nowhere. keyring=own checks every
// signature (one node's real cost); keyring=shared finds it checked already
// (what in-process fleet benchmarks with a shared keyring leave per agent).
func BenchmarkAgent_ApplyPath(b *testing.B) {
	benchmarkApplyPath(b, func(gen uint64) *sv1.DesiredState {
		green := uint32(gen % 101)
		return defaults(gen, map[string]uint32{"blue": 100 - green, "green": green})
	})
}

// BenchmarkAgent_ApplyPathOutsideTheWaves is the same for the document most
// nodes get during a rollout: the coordinator's, with waves that do not take
// this node (a canary share of its region it is not in, other regions) and
// no default weights. The node keeps its weights; it still verifies, fences,
// saves and reports the document.
func BenchmarkAgent_ApplyPathOutsideTheWaves(b *testing.B) {
	// The node's bucket is not below the canary's share: outside it.
	share := desired.Bucket("r1", "edge-1")
	benchmarkApplyPath(b, func(gen uint64) *sv1.DesiredState {
		green := uint32(gen % 101)
		split := map[string]uint32{"blue": 100 - green, "green": green}
		return &sv1.DesiredState{
			Service: "web", Generation: gen, RolloutId: "r1", Phase: sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING,
			FromBackend: "blue", ToBackend: "green",
			Waves: []*sv1.WaveWeights{
				{Index: 0, Name: "canary", Selector: map[string]string{"region": "eu"}, BasisPoints: share, Weights: split},
				{Index: 1, Name: "us", Selector: map[string]string{"region": "us"}, BasisPoints: desired.FullBasisPoints, Weights: split},
				{Index: 2, Name: "ap", Selector: map[string]string{"region": "ap"}, BasisPoints: desired.FullBasisPoints, Weights: split},
			},
		}
	})
}

func benchmarkApplyPath(b *testing.B, document func(gen uint64) *sv1.DesiredState) {
	for _, shared := range []bool{false, true} {
		name := "keyring=own"
		if shared {
			name = "keyring=shared"
		}
		b.Run(name, func(b *testing.B) {
			cfg := &Config{
				Node: "edge-1", Labels: map[string]string{"region": "eu"}, NATS: "nats://127.0.0.1:1", StateDir: b.TempDir(),
				Trust: testTrust(),
				Services: map[string]ServiceConfig{"web": {Proxy: &haproxy.Section{
					Socket: "/nonexistent/admin.sock", Backend: "web", Servers: map[string]string{"blue": "blue", "green": "green"},
				}}},
			}
			a, err := New(cfg, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Registerer: prometheus.NewRegistry()})
			if err != nil {
				b.Fatal(err)
			}
			ring, err := bus.NewKeyring(testSigner.Public())
			if err != nil {
				b.Fatal(err)
			}
			drv := newFakeDriver()
			w := &serviceWorker{
				name: "web", node: "edge-1", drv: drv, store: &marshalStore{}, log: a.log.With("service", "web"),
				m: a.m, series: a.m.seriesOf("web"), clock: clock.Real{},
				timing: timing{retryMin: time.Millisecond, retryMax: time.Second, applyTimeout: time.Second},
				report: a.setServiceStatus, inbox: newInbox[delivery](inboxCap), trust: ring,
				prober: &prober{service: "web", buf: &probeBuffer{}, m: a.m, clock: clock.Real{}, log: a.log},
			}
			w.publishView()
			ctx := context.Background()
			// Documents are sealed ahead, a batch at a time, outside the
			// timing; a shared keyring has checked them already.
			const batch = 128
			var docs [][]byte
			gen := uint64(0)
			var body []byte
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				if i%batch == 0 {
					b.StopTimer()
					docs = docs[:0]
					for range batch {
						gen++
						raw, err := testSigner.SealDesired(document(gen), time.Now())
						if err != nil {
							b.Fatal(err)
						}
						if shared {
							if _, _, err := ring.OpenDesired(raw, "web", time.Now()); err != nil {
								b.Fatal(err)
							}
						}
						docs = append(docs, raw)
					}
					b.StartTimer()
				}
				if !w.consider(delivery{raw: docs[i%batch], at: time.Now()}) {
					b.Fatalf("document %d not taken", i)
				}
				if err := w.step(ctx); err != nil {
					b.Fatal(err)
				}
				w.sendStatus()
				body, err = appendEncoded(body[:0], a.status(false))
				if err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			if got, _ := a.Applied("web"); got != uint64(b.N) {
				b.Fatalf("applied generation %d after %d documents", got, b.N)
			}
		})
	}
}
