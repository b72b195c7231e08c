package agent

import (
	"context"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/internal/clock"
	"github.com/switchyard/switchyard/internal/desired"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// FuzzAgent_DesiredDocument feeds arbitrary bus bytes to a service's
// decoder and fence: it must never panic, and a document it accepts must be
// for its service and newer than anything it has.
func FuzzAgent_DesiredDocument(f *testing.F) {
	seed := func(ds *sv1.DesiredState) []byte { return mustMarshal(f, ds) }
	f.Add(seed(&sv1.DesiredState{Service: "web", Generation: 8, DefaultWeights: map[string]uint32{"blue": 100}}), false)
	f.Add(seed(&sv1.DesiredState{Service: "web", Generation: 7}), true)
	f.Add(seed(&sv1.DesiredState{Service: "api", Generation: 9}), false)
	f.Add(seed(&sv1.DesiredState{Service: "web", Generation: 9, Waves: []*sv1.WaveWeights{{BasisPoints: 20000}}}), false)
	f.Add([]byte{0x0a, 0x05, 'w'}, false)
	plain, _ := proto.Marshal(&sv1.DesiredState{Service: "web", Generation: 9})
	f.Add(plain, false)
	forged, _ := strangerSigner.SealDesired(&sv1.DesiredState{Service: "web", Generation: 1 << 62}, time.Now())
	f.Add(forged, false)
	f.Add([]byte{}, true)

	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, raw []byte, poll bool) {
		w := &serviceWorker{
			name:   "web",
			log:    slog.New(slog.DiscardHandler),
			m:      m,
			series: m.seriesOf("web"),
			inbox:  newInbox[delivery](inboxCap),
			trust:  testRing,
			clock:  clock.Real{},
			store:  discardStore{},
			// Applied as an agent applies it: in no wave, as the document
			// has none.
			applied: &sv1.AppliedState{Service: "web", Desired: &sv1.DesiredState{Service: "web", Generation: 7}, Wave: desired.NoWave},
		}
		if !w.consider(delivery{raw: raw, poll: poll}) {
			if w.applied.GetDesired().GetGeneration() != 7 {
				t.Fatalf("rejected, but the applied document changed to %v", w.applied.GetDesired())
			}
			if w.pending != nil {
				t.Fatalf("rejected, but pending = %v", w.pending)
			}
			return
		}
		if w.pending == nil {
			// A renewal: the same document signed again; only its
			// expiry moved.
			if !proto.Equal(w.applied.GetDesired(), &sv1.DesiredState{Service: "web", Generation: 7}) {
				t.Fatalf("renewal changed the applied document to %v", w.applied.GetDesired())
			}
			return
		}
		if w.pending.GetService() != "web" || w.pending.GetGeneration() <= 7 {
			t.Fatalf("accepted %v over applied generation 7", w.pending)
		}
		if checkDocument(w.pending) != nil {
			t.Fatalf("accepted a document checkDocument refuses: %v", w.pending)
		}
	})
}

func TestAgent_ConsiderFencesOnNewestKnownGeneration(t *testing.T) {
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	w := &serviceWorker{name: "web", log: slog.New(slog.DiscardHandler), m: m, series: m.seriesOf("web"), inbox: newInbox[delivery](inboxCap), trust: testRing, clock: clock.Real{}, store: discardStore{}}
	doc := func(gen uint64) []byte { return mustMarshal(t, &sv1.DesiredState{Service: "web", Generation: gen}) }
	steps := []struct {
		gen      uint64
		poll     bool
		accepted bool
	}{
		{3, true, true},   // first document
		{3, true, false},  // the same one on resync: silent
		{3, false, false}, // pushed again: a renewal of the pending one, not a rejection
		{5, false, true},  // newer, supersedes the pending 3
		{4, false, false}, // older than the pending 5: stale
		{4, true, false},  // a resync read that a push overtook: silent
		{6, true, true},
	}
	for i, s := range steps {
		if got := w.consider(delivery{raw: doc(s.gen), poll: s.poll}); got != s.accepted {
			t.Fatalf("step %d (generation %d, poll %v): accepted = %v, want %v", i, s.gen, s.poll, got, s.accepted)
		}
	}
	if w.pending.GetGeneration() != 6 {
		t.Fatalf("pending generation = %d, want 6", w.pending.GetGeneration())
	}
	if got := testCounter(t, m.rejected.WithLabelValues("web", reasonStale)); got != 1 {
		t.Errorf("stale = %v, want 1", got)
	}
}

func TestAgent_BackoffDoublesToCap(t *testing.T) {
	var got []time.Duration
	d := time.Duration(0)
	for range 8 {
		d = nextBackoff(d, 250*time.Millisecond, 10*time.Second)
		got = append(got, d)
	}
	want := []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 10 * time.Second, 10 * time.Second}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("backoff = %v, want %v", got, want)
		}
	}
}

func TestAgent_InboxDropsOldestWhenFull(t *testing.T) {
	b := newInbox[delivery](inboxCap)
	for i := range inboxCap + 3 {
		dropped := b.put(delivery{raw: []byte{byte(i)}})
		if dropped != (i >= inboxCap) {
			t.Fatalf("put %d: dropped = %v", i, dropped)
		}
	}
	items := b.drain()
	if len(items) != inboxCap || items[0].raw[0] != 3 || items[len(items)-1].raw[0] != inboxCap+2 {
		t.Fatalf("inbox kept %d items from %d to %d", len(items), items[0].raw[0], items[len(items)-1].raw[0])
	}
	if len(b.drain()) != 0 {
		t.Fatal("drain did not empty the inbox")
	}
}

// TestAgent_InboxDropsAreCounted: a push that pushes the oldest queued
// document out of a busy service's inbox is counted, not only logged.
func TestAgent_InboxDropsAreCounted(t *testing.T) {
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	w := &serviceWorker{name: "web", log: slog.New(slog.DiscardHandler), m: m, series: m.seriesOf("web"), inbox: newInbox[delivery](inboxCap), clock: clock.Real{}}
	for range inboxCap + 3 {
		w.onMsg(&nats.Msg{Subject: "x", Data: []byte{1}})
	}
	if got := testCounter(t, m.inboxDropped.WithLabelValues("web")); got != 3 {
		t.Fatalf("dropped documents counted %v, want 3", got)
	}
}

// TestAgent_PendingDocumentExpiredWhileHeldIsNotApplied: a document held
// back (by a failing preflight) until its signature's validity ended is
// refused as expired, as it would be on arrival, not applied late.
func TestAgent_PendingDocumentExpiredWhileHeldIsNotApplied(t *testing.T) {
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	clk := clock.NewFake(time.Now())
	w := &serviceWorker{name: "web", log: slog.New(slog.DiscardHandler), m: m, series: m.seriesOf("web"), inbox: newInbox[delivery](inboxCap),
		trust: testRing, clock: clk, store: discardStore{}}
	if !w.consider(delivery{raw: mustMarshal(t, &sv1.DesiredState{Service: "web", Generation: 3})}) || w.pending == nil {
		t.Fatal("the document was not taken")
	}
	w.preflightMsg = "preflight of green failed"
	clk.Advance(w.pendingExpires.Sub(clk.Now()) + time.Second)
	if err := w.applyPending(context.Background()); err != nil {
		t.Fatal(err)
	}
	if w.pending != nil || w.applied != nil {
		t.Fatalf("an expired document was applied or kept pending (applied %v)", w.applied)
	}
	if got := testCounter(t, m.rejected.WithLabelValues("web", "expired")); got != 1 {
		t.Fatalf("expired = %v, want 1", got)
	}
}

func testCounter(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// discardStore is a StateStore that keeps nothing, for tests of the fence.
type discardStore struct{}

func (discardStore) Load(string) (*sv1.AppliedState, error) { return nil, nil }
func (discardStore) Save(*sv1.AppliedState) error           { return nil }
func (discardStore) Close() error                           { return nil }

var _ StateStore = discardStore{}

// TestAgent_LocalRollbackPreflightsTheOldBackend: a node at the last step
// of a canary (green 100, blue 0) is cut off and green fails. Blue had no
// weight, so nothing has looked at it since; if it is down, the guard's move
// would turn a failing backend into a dead one for every request of the
// node. A coordinator's rollback document giving blue its weight back is
// preflighted; the guard's move must be too, and must not happen while
// blue's preflight fails.
func TestAgent_LocalRollbackPreflightsTheOldBackend(t *testing.T) {
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	var blueUp atomic.Bool
	blue := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, _ *http.Request) {
		if !blueUp.Load() {
			http.Error(rw, "down", http.StatusServiceUnavailable)
		}
	}))
	t.Cleanup(blue.Close)
	log := slog.New(slog.NewTextHandler(t.Output(), nil))
	drv := newFakeDriver()
	green := map[string]uint32{"blue": 0, "green": 100}
	drv.setWeights(green)
	w := &serviceWorker{
		name: "web", log: log, m: m, series: m.seriesOf("web"), clock: clock.Real{}, store: discardStore{}, drv: drv,
		timing: timing{applyTimeout: time.Second},
		prober: &prober{service: "web", buf: &probeBuffer{}, m: m, clock: clock.Real{}, log: log,
			cfg: &ProbesConfig{Preflight: map[string]*HTTPCheck{"blue": {Method: http.MethodGet, URL: blue.URL + "/healthz", ExpectStatus: http.StatusOK, Timeout: 2 * time.Second}}}},
		applied: &sv1.AppliedState{Service: "web", Weights: green, FromBackend: "blue", ToBackend: "green",
			Desired: &sv1.DesiredState{Service: "web", Generation: 4, RolloutId: "r1", Phase: sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING}},
	}
	w.publishView()
	req := func() localRollbackRequest {
		v := w.currentView()
		return localRollbackRequest{generation: 4, seq: v.seq, from: "blue", to: "green", reason: `backend "green" error rate 60.0%`, cutOffFor: time.Minute, cutOffHow: "bus lost"}
	}

	if w.localRollback(context.Background(), req()) {
		t.Fatal("the guard moved the node to blue although blue's preflight fails")
	}
	if got, _ := drv.Weights(context.Background()); !maps.Equal(got, green) {
		t.Fatalf("the proxy has %v, want green's %v while blue's preflight fails", got, green)
	}
	if w.applied.GetLocalRollback() != nil {
		t.Fatalf("a local rollback was recorded: %v", w.applied.GetLocalRollback())
	}

	// Blue answers again: the next window's request moves the node.
	blueUp.Store(true)
	if !w.localRollback(context.Background(), req()) {
		t.Fatal("the guard did not move the node once blue's preflight passed")
	}
	if got, _ := drv.Weights(context.Background()); !maps.Equal(got, map[string]uint32{"blue": 100, "green": 0}) {
		t.Fatalf("the proxy has %v after the local rollback", got)
	}
}
