package agent

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/internal/clock"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// clockedDriver is a fake driver whose Apply takes took on a fake clock.
type clockedDriver struct {
	*fakeDriver
	clock *clock.Fake
	took  time.Duration
}

func (d *clockedDriver) Apply(ctx context.Context, w map[string]uint32) error {
	d.clock.Advance(d.took)
	return d.fakeDriver.Apply(ctx, w)
}

// recordingStore remembers the generation of every save, each taking took
// on a fake clock (nil: no time).
type recordingStore struct {
	mu    sync.Mutex
	gens  []uint64
	clock *clock.Fake
	took  time.Duration
}

func (s *recordingStore) Load(string) (*sv1.AppliedState, error) { return nil, nil }
func (s *recordingStore) Save(st *sv1.AppliedState) error {
	if s.clock != nil {
		s.clock.Advance(s.took)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gens = append(s.gens, st.GetDesired().GetGeneration())
	return nil
}
func (s *recordingStore) Close() error { return nil }

func (s *recordingStore) saved() []uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]uint64(nil), s.gens...)
}

var _ StateStore = (*recordingStore)(nil)

// histogram reads one series of a histogram vector: its count and sum.
func histogram(t *testing.T, h *prometheus.HistogramVec, labels ...string) (count uint64, sum float64) {
	t.Helper()
	var m dto.Metric
	if err := h.WithLabelValues(labels...).(prometheus.Histogram).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum()
}

// stageWorker is a service worker on a fake clock, with no bus.
func stageWorker(t *testing.T, fc *clock.Fake, drv *clockedDriver, store StateStore, report func(*sv1.ServiceStatus)) *serviceWorker {
	t.Helper()
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	m.initService("web")
	log := slog.New(slog.DiscardHandler)
	w := &serviceWorker{
		name: "web", node: "edge-1", drv: drv, store: store, log: log, m: m, series: m.seriesOf("web"), clock: fc,
		timing: timing{retryMin: time.Millisecond, retryMax: time.Second, applyTimeout: time.Second},
		report: report, inbox: newInbox[delivery](inboxCap), trust: testRing,
		prober: &prober{service: "web", buf: &probeBuffer{}, m: m, clock: fc, log: log},
	}
	w.publishView()
	return w
}

func TestAgent_ApplyStagesAreTimedOnTheAgentsClock(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 3, 0, 0, 0, time.UTC)
	fc := clock.NewFake(t0)
	var sent *sv1.ServiceStatus
	w := stageWorker(t, fc, &clockedDriver{fakeDriver: newFakeDriver(), clock: fc, took: 3 * time.Millisecond},
		&recordingStore{clock: fc, took: 2 * time.Millisecond}, func(st *sv1.ServiceStatus) { sent = st })

	// Signed by the coordinator 40 ms before it arrives here.
	raw, err := testSigner.SealDesired(defaults(7, map[string]uint32{"blue": 20, "green": 80}), t0.Add(-40*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	d := delivery{raw: raw, at: fc.Now()}
	fc.Advance(time.Millisecond) // waiting for the service goroutine
	if !w.consider(d) {
		t.Fatal("the document was not taken")
	}
	fc.Advance(4 * time.Millisecond) // before the step runs
	if err := w.step(context.Background()); err != nil {
		t.Fatal(err)
	}
	w.sendStatus()

	want := map[string]time.Duration{
		stageDeliver: 40 * time.Millisecond,
		stageVerify:  time.Millisecond,
		stageApply:   7 * time.Millisecond, // 4 ms waiting + 3 ms in the driver
		stagePersist: 2 * time.Millisecond,
	}
	for stage, d := range want {
		n, sum := histogram(t, w.m.applyStages, "web", stage)
		if n != 1 || time.Duration(sum*1e9).Round(time.Microsecond) != d {
			t.Errorf("stage %s: %d observations, sum %v; want 1 of %v", stage, n, time.Duration(sum*1e9), d)
		}
	}
	tm := sent.GetApplyTiming()
	wantTiming := &sv1.ApplyTiming{
		Generation:  7,
		DeliveredAt: timestamppb.New(t0),
		VerifiedAt:  timestamppb.New(t0.Add(time.Millisecond)),
		AppliedAt:   timestamppb.New(t0.Add(8 * time.Millisecond)),
		PersistedAt: timestamppb.New(t0.Add(10 * time.Millisecond)),
	}
	if !proto.Equal(tm, wantTiming) {
		t.Fatalf("status carries %v, want %v", tm, wantTiming)
	}

	// The status goes out 5 ms after the save; a heartbeat repeating the
	// same stamps counts nothing more.
	reported := map[string]*statusSeen{}
	st := &sv1.AgentStatus{Node: "edge-1", At: timestamppb.New(t0.Add(15 * time.Millisecond)), Services: []*sv1.ServiceStatus{sent}}
	w.m.statusStages(st, reported)
	st.At = timestamppb.New(t0.Add(5 * time.Second))
	w.m.statusStages(st, reported)
	if n, sum := histogram(t, w.m.applyStages, "web", stageStatus); n != 1 || time.Duration(sum*1e9).Round(time.Microsecond) != 5*time.Millisecond {
		t.Errorf("stage status: %d observations, sum %v; want 1 of 5ms", n, time.Duration(sum*1e9))
	}

	// An unchanged status is not handed to the agent again.
	sent = nil
	w.sendStatus()
	if sent != nil {
		t.Errorf("an unchanged status was sent again: %v", sent)
	}
	w.resend.Store(true)
	w.sendStatus()
	if sent == nil {
		t.Error("a status marked lost by another goroutine was not sent again")
	}
}

// Pushes on the key's subject and the agent's own reads of the bucket
// (start, reconnect, resync) arrive in any order, again and again: the
// proxy must only ever move to a higher generation, each at most once, and
// end on the newest.
func TestAgent_LiveDeliveryAndCatchUpNeverApplyALowerOrRepeatedGeneration(t *testing.T) {
	rng := rand.New(rand.NewPCG(80, 13))
	for round := range 50 {
		fc := clock.NewFake(time.Date(2026, 11, 30, 3, 0, 0, 0, time.UTC))
		store := &recordingStore{}
		w := stageWorker(t, fc, &clockedDriver{fakeDriver: newFakeDriver(), clock: fc}, store, func(*sv1.ServiceStatus) {})
		docs := map[uint64][]byte{}
		doc := func(gen uint64) []byte {
			if docs[gen] == nil {
				docs[gen] = mustMarshal(t, defaults(gen, map[string]uint32{"blue": uint32(100 - gen), "green": uint32(gen)}))
			}
			return docs[gen]
		}
		var newest uint64
		for range 60 {
			// The bus moves on now and then; pushes may come late, twice
			// or out of order, and reads return what the bucket had.
			if rng.IntN(3) == 0 {
				newest++
			}
			if newest == 0 {
				continue
			}
			gen := newest - uint64(rng.IntN(int(min(newest, 4))))
			w.inbox.put(delivery{raw: doc(gen), poll: rng.IntN(2) == 0, at: fc.Now()})
			if rng.IntN(3) == 0 {
				changed := false
				for _, d := range w.inbox.drain() {
					if w.consider(d) {
						changed = true
					}
				}
				if changed {
					if err := w.step(context.Background()); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
		// A final resync reads the newest document.
		w.inbox.put(delivery{raw: doc(newest), poll: true, at: fc.Now()})
		for _, d := range w.inbox.drain() {
			w.consider(d)
		}
		if err := w.step(context.Background()); err != nil {
			t.Fatal(err)
		}
		saved := store.saved()
		for i := 1; i < len(saved); i++ {
			if saved[i] <= saved[i-1] {
				t.Fatalf("round %d: applied generations %v: %d after %d", round, saved, saved[i], saved[i-1])
			}
		}
		if len(saved) == 0 || saved[len(saved)-1] != newest {
			t.Fatalf("round %d: applied generations %v, want to end on %d", round, saved, newest)
		}
		applies, _ := w.drv.(*clockedDriver).recorded()
		if len(applies) != len(saved) {
			t.Fatalf("round %d: %d driver applies for %d generations applied", round, len(applies), len(saved))
		}
		if got := fmt.Sprint(applies[len(applies)-1]); got != fmt.Sprint(map[string]uint32{"blue": uint32(100 - newest), "green": uint32(newest)}) {
			t.Fatalf("round %d: proxy ends on %s, want generation %d's weights", round, got, newest)
		}
	}
}

// The same on a real bus: documents pushed in quick succession while the
// agent reads the bucket every few milliseconds.
func TestAgent_PushesAndResyncReadsOnTheBusApplyEachGenerationOnceInOrder(t *testing.T) {
	b := startBus(t)
	cfg := testConfig(t, b.url)
	cfg.Resync = 5 * time.Millisecond
	drv := newFakeDriver()
	ra := startAgent(t, cfg, map[string]*fakeDriver{"web": drv})
	const last = 40
	for gen := uint64(1); gen <= last; gen++ {
		b.put(t, defaults(gen, map[string]uint32{"blue": uint32(100 - gen), "green": uint32(gen)}))
	}
	ra.waitApplied(t, "web", last)
	applies, _ := drv.recorded()
	prev := -1
	for _, a := range applies {
		g := int(a["green"])
		if g <= prev {
			t.Fatalf("the proxy was set to generation %d's weights after %d's: %v", g, prev, applies)
		}
		prev = g
	}
	if prev != last {
		t.Fatalf("the proxy ends on generation %d's weights, want %d", prev, last)
	}
	if got := ra.metric(t, "switchyard_agent_documents_rejected_total", "service", "web", "reason", reasonStale); got != 0 {
		t.Errorf("%v documents refused as stale: the agent's own reads must not count as replays", got)
	}
}

// The stamps of an applied document are made in one block; each must be
// its own time, sub-second part included, and a stage never stamped (a
// document read before delivery times were kept) is left out, not zero.
func TestStages_AppliedStampsAreEachTheirOwnTime(t *testing.T) {
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	m.initService("web")
	t0 := time.Date(2026, 11, 30, 3, 0, 0, 123456789, time.UTC)
	ds := &sv1.DesiredState{Service: "web", Epoch: 2, Generation: 9}
	for _, tc := range []struct {
		name string
		p    pendingStages
		want *sv1.ApplyTiming
	}{
		{"every stage", pendingStages{signedAt: t0, deliveredAt: t0.Add(time.Nanosecond), verifiedAt: t0.Add(time.Second)},
			&sv1.ApplyTiming{Epoch: 2, Generation: 9, DeliveredAt: timestamppb.New(t0.Add(time.Nanosecond)), VerifiedAt: timestamppb.New(t0.Add(time.Second)),
				AppliedAt: timestamppb.New(t0.Add(2 * time.Second)), PersistedAt: timestamppb.New(t0.Add(3*time.Second + time.Millisecond))}},
		{"neither delivered nor verified", pendingStages{},
			&sv1.ApplyTiming{Epoch: 2, Generation: 9, AppliedAt: timestamppb.New(t0.Add(2 * time.Second)), PersistedAt: timestamppb.New(t0.Add(3*time.Second + time.Millisecond))}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.p.applied(m.seriesOf("web"), ds, t0.Add(2*time.Second), t0.Add(3*time.Second+time.Millisecond))
			if !proto.Equal(got, tc.want) {
				t.Fatalf("applied stamps %v, want %v", got, tc.want)
			}
		})
	}
}
