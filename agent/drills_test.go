package agent

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/agent/driver"
	"github.com/switchyard/switchyard/agent/state"
	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/chaos"
	"github.com/switchyard/switchyard/internal/clock"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// fuzzNow is the fake time of the follower under fuzzing; seeds run around
// it.
var fuzzNow = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

// eventLog records, in order, what a fake driver and journal were asked.
type eventLog struct {
	mu     sync.Mutex
	events []string
}

func (l *eventLog) add(format string, args ...any) {
	l.mu.Lock()
	l.events = append(l.events, fmt.Sprintf(format, args...))
	l.mu.Unlock()
}

func (l *eventLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.events, "; ")
}

// chaosDriver is a fake driver that can re-point servers and set states.
type chaosDriver struct {
	*fakeDriver
	log   *eventLog
	mu    sync.Mutex
	addrs map[string]string
	// failAddr fails this many more SetServerAddr calls.
	failAddr int
	// states are the servers' states SetState set; ready when unset.
	states map[string]string
}

var (
	_ driver.ServerAddresser = (*chaosDriver)(nil)
	_ driver.StateSetter     = (*chaosDriver)(nil)
	_ driver.StateReader     = (*chaosDriver)(nil)
)

func newChaosDriver(log *eventLog) *chaosDriver {
	return &chaosDriver{fakeDriver: newFakeDriver(), log: log, addrs: map[string]string{"blue": "127.0.0.1:9001", "green": "127.0.0.1:9002"}}
}

func (d *chaosDriver) ServerAddr(_ context.Context, backend string) (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	a, ok := d.addrs[backend]
	if !ok {
		return "", fmt.Errorf("backend %q: %w", backend, driver.ErrUnknownBackend)
	}
	return a, nil
}

func (d *chaosDriver) SetServerAddr(_ context.Context, backend, addr string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.failAddr > 0 {
		d.failAddr--
		d.log.add("addr %s %s failed", backend, addr)
		return errProxyDown
	}
	d.log.add("addr %s %s", backend, addr)
	d.addrs[backend] = addr
	return nil
}

func (d *chaosDriver) SetState(_ context.Context, backend, st string) error {
	d.log.add("state %s %s", backend, st)
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.states == nil {
		d.states = map[string]string{}
	}
	d.states[backend] = st
	return nil
}

func (d *chaosDriver) ServerState(_ context.Context, backend string) (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return cmp.Or(d.states[backend], "ready"), nil
}

// loggingJournal is a memJournal that records its writes.
type loggingJournal struct {
	*memJournal
	log *eventLog
}

func (j *loggingJournal) SaveFault(r state.FaultRecord) error {
	j.log.add("journal %s reverted=%v", r.Drill, r.Reverted)
	return j.memJournal.SaveFault(r)
}

// testFollower is a follower of node edge-1 (region eu) with service web
// on a fake driver, at a fake time.
func testFollower(t testing.TB, m *metrics, now time.Time) (*drillFollower, *eventLog, *loggingJournal) {
	t.Helper()
	log := &eventLog{}
	j := &loggingJournal{memJournal: newMemJournal(), log: log}
	f := &drillFollower{
		node: "edge-1", labels: map[string]string{"region": "eu"},
		drivers:      map[string]driver.Driver{"web": newChaosDriver(log)},
		backends:     map[string][]string{"web": {"blue", "green"}},
		processes:    map[string]ProcessConfig{},
		journal:      j,
		trust:        testRing,
		gate:         newBusGate(),
		conn:         func() *nats.Conn { return nil },
		announce:     func() {},
		changed:      func() {},
		clock:        clock.NewFake(now),
		log:          slog.New(slog.DiscardHandler),
		m:            m,
		timeout:      time.Second,
		resync:       time.Hour,
		retryMin:     time.Millisecond,
		retryMax:     time.Millisecond,
		shutdownWait: shutdownRevertTimeout,
		newProxy: func(target string, fault *sv1.Fault) *chaos.FaultProxy {
			if h := fault.GetHttp(); h != nil {
				return chaos.NewHTTPFaultProxy(target, h)
			}
			return chaos.NewTCPFaultProxy(target, fault.GetTcp())
		},
		inbox:   newInbox[drillDelivery](0),
		pollReq: make(chan struct{}, 1),
		due:     map[string]bool{},
		dueWake: make(chan struct{}, 1),
		docs:    map[string]*sv1.DrillDocument{},
		faults:  map[string]*nodeFault{},
		done:    map[string]time.Time{},
		retry:   map[string]time.Time{},
		tries:   map[string]time.Duration{},
		timers:  map[string]*time.Timer{},
	}
	return f, log, j
}

// marshalDrill seals doc with the test coordinator key.
func marshalDrill(t testing.TB, doc *sv1.DrillDocument) []byte {
	t.Helper()
	b, err := testSigner.SealDrill(doc, fuzzNow.Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDrills_DecodeRefuses(t *testing.T) {
	good := drillDoc("green-errors", 3, green100, fuzzNow, time.Minute)
	cases := []struct {
		name   string
		mutate func(*sv1.DrillDocument)
		key    string
		want   string
	}{
		{"no name", func(d *sv1.DrillDocument) { d.Drill = "" }, "", "drill name"},
		{"other key", func(*sv1.DrillDocument) {}, "other", `signed for "green-errors", read under "other"`},
		{"generation 0", func(d *sv1.DrillDocument) { d.Generation = 0 }, "", "generation is 0"},
		{"no spec", func(d *sv1.DrillDocument) { d.Spec = nil }, "", "no spec"},
		{"spec of another drill", func(d *sv1.DrillDocument) { d.Spec.Name = "other" }, "", `spec of drill "other"`},
		{"invalid spec", func(d *sv1.DrillDocument) { d.Spec.MaxNodes = 0 }, "", "drill.maxNodes"},
		{"no end", func(d *sv1.DrillDocument) { d.EndAt = nil }, "", "end_at are required"},
		{"ends before it starts", func(d *sv1.DrillDocument) { d.EndAt = timestamppb.New(fuzzNow.Add(-time.Second)) }, "", "want an end not before the start"},
		{"longer than allowed", func(d *sv1.DrillDocument) { d.EndAt = timestamppb.New(fuzzNow.Add(chaos.MaxDuration + time.Second)) }, "", "at most 12h0m0s later"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := proto.CloneOf(good)
			c.mutate(d)
			_, err := decodeDrill(testRing, marshalDrill(t, d), c.key, fuzzNow)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("decode: %v, want an error containing %q", err, c.want)
			}
		})
	}
	if _, err := decodeDrill(testRing, marshalDrill(t, good), "green-errors", fuzzNow); err != nil {
		t.Fatal(err)
	}
}

// TestDrills_JournalBeforeApply checks the order that makes crash recovery
// possible: the record (with the server's address) is durable before the
// server is touched, and marked reverted only after it is back.
func TestDrills_JournalBeforeApply(t *testing.T) {
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	f, log, j := testFollower(t, m, fuzzNow)
	ctx := context.Background()
	f.deliver(ctx, drillDelivery{key: "d1", raw: marshalDrill(t, drillDoc("d1", 1, green100, fuzzNow, time.Minute))})
	if f.faults["d1"] == nil {
		t.Fatalf("fault not injected: %s", log)
	}
	aborted := drillDoc("d1", 2, green100, fuzzNow, time.Minute)
	aborted.Aborted = true
	f.deliver(ctx, drillDelivery{key: "d1", raw: marshalDrill(t, aborted)})
	events := strings.Split(log.String(), "; ")
	if len(events) != 4 || events[0] != "journal d1 reverted=false" || !strings.HasPrefix(events[1], "addr green 127.0.0.1:") ||
		events[2] != "addr green 127.0.0.1:9002" || events[3] != "journal d1 reverted=true" {
		t.Fatalf("events %s; want journal, re-point, point back, journal reverted", log)
	}
	recs, _, _ := j.LoadFaults()
	if len(recs) != 1 || recs[0].OrigAddr != "127.0.0.1:9002" {
		t.Fatalf("journal %+v", recs)
	}
	f.shutdown()
}

func TestDrills_TelemetryTagOverlapsTheFault(t *testing.T) {
	f := &drillFollower{}
	t0 := fuzzNow
	f.addSpan(state.FaultRecord{Drill: "b", Kind: kindHTTP, Service: "web", Since: t0.Add(2 * time.Second), Until: t0.Add(time.Hour)})
	f.addSpan(state.FaultRecord{Drill: "a", Kind: kindCPUBurn, Service: "web", Since: t0, Until: t0.Add(time.Hour)})
	f.endSpan("a", t0.Add(5*time.Second))
	for _, c := range []struct {
		service    string
		start, end time.Duration
		want       string
	}{
		{"web", -2 * time.Second, -time.Second, ""},
		{"web", -time.Second, time.Second, "a"},
		{"web", 4 * time.Second, 6 * time.Second, "a"},
		{"web", 6 * time.Second, 7 * time.Second, "b"},
		{"api", 0, 7 * time.Second, ""},
	} {
		if got := f.drillDuring(c.service, t0.Add(c.start), t0.Add(c.end)); got != c.want {
			t.Errorf("%s window %v..%v tagged %q, want %q", c.service, c.start, c.end, got, c.want)
		}
	}
	if af := f.activeFaults(); len(af) != 1 || af[0].GetDrill() != "b" {
		t.Errorf("active faults %v, want only b", af)
	}
}

// FuzzAgent_DrillDocument feeds arbitrary bus bytes, pushed or polled, to
// the drill follower: it must never panic, and whatever fault it holds
// afterwards must belong to a document that targets this node, is running
// now, and is journaled.
func FuzzAgent_DrillDocument(f *testing.F) {
	seed := func(doc *sv1.DrillDocument) []byte { return marshalDrill(f, doc) }
	running := drillDoc("green-errors", 5, green100, fuzzNow.Add(-time.Second), time.Minute)
	runningRaw := seed(running)
	f.Add(runningRaw, "green-errors", false)
	aborted := proto.CloneOf(running)
	aborted.Aborted = true
	f.Add(seed(aborted), "green-errors", true)
	over := proto.CloneOf(running)
	over.Targets = []string{"edge-1", "edge-2"}
	f.Add(seed(over), "green-errors", false)
	f.Add(seed(drillDoc("later", 2, stateFaultOf("green", "maint"), fuzzNow.Add(time.Hour), time.Minute)), "later", false)
	f.Add(seed(drillDoc("ended", 2, stateFaultOf("green", "drain"), fuzzNow.Add(-time.Hour), time.Minute)), "ended", false)
	f.Add(seed(drillDoc("unknown", 2, stateFaultOf("purple", "maint"), fuzzNow, time.Minute)), "unknown", false)
	f.Add([]byte{0x0a, 0x03, 'a', 'b', 'c', 0x10, 0x01}, "abc", false)
	f.Add([]byte("\xff\x00"), "", true)

	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, raw []byte, key string, poll bool) {
		fl, _, j := testFollower(t, m, fuzzNow)
		defer fl.shutdown()
		ctx := context.Background()
		// The running drill first, so fencing and untargeting are reached.
		fl.deliver(ctx, drillDelivery{key: "green-errors", raw: runningRaw})
		fl.deliver(ctx, drillDelivery{key: key, raw: raw, poll: poll})
		recs, _, _ := j.LoadFaults()
		journaled := map[string]bool{}
		for _, r := range recs {
			journaled[r.Drill] = !r.Reverted
		}
		for name, nf := range fl.faults {
			doc := fl.docs[name]
			if doc == nil || doc.GetAborted() || !chaos.Targets(doc, "edge-1", fl.labels) || doc.GetSpec().GetService() != "web" ||
				fuzzNow.Before(doc.GetStartAt().AsTime()) || !fuzzNow.Before(doc.GetEndAt().AsTime()) {
				t.Fatalf("fault of %s active for document %v", name, doc)
			}
			if !journaled[name] || nf.reverting {
				t.Fatalf("fault of %s active but journaled=%v reverting=%v", name, journaled[name], nf.reverting)
			}
		}
	})
}

// TestDrills_FailuresAreRetried: a fault that cannot be applied is undone
// and tried again; a fault that cannot be reverted stays reported and is
// reverted again until it is gone.
func TestDrills_FailuresAreRetried(t *testing.T) {
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	f, log, j := testFollower(t, m, fuzzNow)
	defer f.shutdown()
	drv := f.drivers["web"].(*chaosDriver)
	ctx := context.Background()

	drv.failAddr = 1
	f.deliver(ctx, drillDelivery{key: "d1", raw: marshalDrill(t, drillDoc("d1", 1, green100, fuzzNow, time.Minute))})
	if f.faults["d1"] != nil || len(f.activeFaults()) != 0 {
		t.Fatalf("a fault that failed to apply is held: %s", log)
	}
	if recs, _, _ := j.LoadFaults(); len(recs) != 0 {
		t.Fatalf("journal keeps a fault that was undone: %+v", recs)
	}
	if got := testCounter(t, m.faults.WithLabelValues(kindHTTP, faultFailed)); got != 1 {
		t.Fatalf("failed = %v", got)
	}
	f.clock.(*clock.Fake).Advance(time.Second) // past the retry's backoff
	f.reconcile(ctx, "d1")
	if f.faults["d1"] == nil || len(f.activeFaults()) != 1 {
		t.Fatalf("the retry did not inject: %s", log)
	}

	drv.failAddr = 2
	ab := drillDoc("d1", 2, green100, fuzzNow, time.Minute)
	ab.Aborted = true
	f.deliver(ctx, drillDelivery{key: "d1", raw: marshalDrill(t, ab)})
	if nf := f.faults["d1"]; nf == nil || !nf.reverting || len(f.activeFaults()) != 1 {
		t.Fatalf("a fault that failed to revert is not held as reverting and reported: %s", log)
	}
	f.reconcile(ctx, "d1") // the second failure
	f.reconcile(ctx, "d1")
	if f.faults["d1"] != nil || len(f.activeFaults()) != 0 {
		t.Fatalf("fault still held after a successful revert: %s", log)
	}
	if got := testCounter(t, m.faults.WithLabelValues(kindHTTP, faultRevertFailed)); got != 2 {
		t.Fatalf("revert_failed = %v, want 2", got)
	}
	if got, _ := drv.ServerAddr(ctx, "green"); got != "127.0.0.1:9002" {
		t.Fatalf("green at %s after the revert", got)
	}
	recs, _, _ := j.LoadFaults()
	if len(recs) != 1 || !recs[0].Reverted {
		t.Fatalf("journal %+v, want the record reverted", recs)
	}
}

// hangingAddrDriver is a chaosDriver whose SetServerAddr, once hang is
// set, waits until its context ends (HAProxy's socket accepting and never
// answering).
type hangingAddrDriver struct {
	*chaosDriver
	hang atomic.Bool
}

func (d *hangingAddrDriver) SetServerAddr(ctx context.Context, backend, addr string) error {
	if d.hang.Load() {
		<-ctx.Done()
		return ctx.Err()
	}
	return d.chaosDriver.SetServerAddr(ctx, backend, addr)
}

// TestDrills_ShutdownBoundsAllRevertsTogether: a stopping agent whose
// proxy does not answer gives up on all its reverts by one deadline, not
// one apply timeout per fault; the journal keeps them for the next start.
func TestDrills_ShutdownBoundsAllRevertsTogether(t *testing.T) {
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	f, log, j := testFollower(t, m, fuzzNow)
	drv := &hangingAddrDriver{chaosDriver: f.drivers["web"].(*chaosDriver)}
	f.drivers["web"] = drv
	f.timeout = 4 * time.Second
	f.shutdownWait = time.Second
	ctx := context.Background()
	f.deliver(ctx, drillDelivery{key: "d1", raw: marshalDrill(t, drillDoc("d1", 1, green100, fuzzNow, time.Minute))})
	f.deliver(ctx, drillDelivery{key: "d2", raw: marshalDrill(t, drillDoc("d2", 1, httpFault(&sv1.HTTPFault{Backend: "blue", ErrorPercent: 100}), fuzzNow, time.Minute))})
	if len(f.faults) != 2 {
		t.Fatalf("faults %v: %s", f.faults, log)
	}
	drv.hang.Store(true)
	start := time.Now()
	f.shutdown()
	// Each revert alone would wait its 4 s apply timeout: 8 s in all.
	if took := time.Since(start); took > f.shutdownWait+time.Second {
		t.Fatalf("shutdown took %v; it is bounded by %v", took, f.shutdownWait)
	}
	recs, _, _ := j.LoadFaults()
	if len(recs) != 2 || recs[0].Reverted || recs[1].Reverted {
		t.Fatalf("journal %+v, want both faults kept unreverted for the next start", recs)
	}
}

// TestDrills_DamagedJournalRecordDoesNotBlockTheOthers: an undecodable
// journal record is reported, counted and moved aside; the good records
// are still reverted, and the next start does not meet the bad one again.
func TestDrills_DamagedJournalRecordDoesNotBlockTheOthers(t *testing.T) {
	dir := t.TempDir()
	st, err := state.Open(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.SaveFault(state.FaultRecord{Drill: "good", Generation: 1, Kind: kindBackendState, Service: "web", Backend: "green",
		Since: fuzzNow.Add(-time.Minute), Until: fuzzNow.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	st.Close()
	db, err := bolt.Open(filepath.Join(dir, state.FileName), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("faults")).Put([]byte("zzz-damaged"), []byte("{not json"))
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	st, err = state.Open(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()

	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	f, log, _ := testFollower(t, m, fuzzNow)
	var logged strings.Builder
	f.log = slog.New(slog.NewTextHandler(&logged, nil))
	f.journal = st
	f.recoverJournal(context.Background())
	defer f.shutdown()
	if !strings.Contains(log.String(), "state green ready") {
		t.Fatalf("the good record's fault (green in maint) was not reverted; driver saw %q", log)
	}
	if !strings.Contains(logged.String(), "key=zzz-damaged") {
		t.Fatalf("the damaged record is not named in the log:\n%s", logged.String())
	}
	if got := testCounter(t, m.journalDamaged); got != 1 {
		t.Fatalf("damaged records counted %v, want 1", got)
	}
	if f.done["zzz-damaged"].IsZero() {
		t.Fatal("the drill of the damaged record may be injected again")
	}
	recs, damaged, err := st.LoadFaults()
	if err != nil || len(damaged) != 0 || len(recs) != 1 || !recs[0].Reverted {
		t.Fatalf("journal after recovery: %+v, damaged %+v, %v; want the good record reverted and the bad one gone", recs, damaged, err)
	}
}

// TestDrills_ListingOlderThanAPushDoesNotUndoIt: a bucket read that began
// before a push and ends after it cannot know of it. It neither reverts a
// drill pushed meanwhile as "no longer in the bucket" nor brings back a
// drill deleted meanwhile; a read begun after the push still does both.
func TestDrills_ListingOlderThanAPushDoesNotUndoIt(t *testing.T) {
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	f, log, _ := testFollower(t, m, fuzzNow)
	defer f.shutdown()
	ctx := context.Background()
	later := marshalDrill(t, drillDoc("later", 1, stateFaultOf("green", "maint"), fuzzNow.Add(time.Hour), time.Minute))
	f.deliver(ctx, drillDelivery{key: "later", raw: later})

	// The read begins, finds the bucket without d1 and with "later"; d1 is
	// pushed and "later" deleted before its result is queued.
	f.deliver(ctx, drillDelivery{listing: true})
	f.deliver(ctx, drillDelivery{key: "d1", raw: marshalDrill(t, drillDoc("d1", 1, green100, fuzzNow, time.Minute))})
	if f.faults["d1"] == nil {
		t.Fatalf("not injected: %s", log)
	}
	f.deliver(ctx, drillDelivery{key: "later", deleted: true})
	f.deliver(ctx, drillDelivery{key: "later", raw: later, poll: true})
	f.deliver(ctx, drillDelivery{listed: map[string]bool{"later": true}})
	if f.faults["d1"] == nil || !f.done["d1"].IsZero() {
		t.Fatalf("a read begun before d1's push reverted it (done until %v): %s", f.done["d1"], log)
	}
	if f.docs["later"] != nil {
		t.Fatal("a read begun before the delete of drill later brought it back")
	}

	// A read begun after the push is the truth.
	f.deliver(ctx, drillDelivery{listing: true})
	f.deliver(ctx, drillDelivery{listed: map[string]bool{}})
	if f.faults["d1"] != nil {
		t.Fatalf("a read begun after d1's push, without it, left its fault: %s", log)
	}
}

// TestDrills_JournaledFaultTheAgentCannotRevertStaysJournaled: a fault
// journaled for a service the agent no longer drives (removed or renamed
// in its config) is not taken for reverted: the record stays unreverted,
// the failure is counted and logged with what to restore by hand. A
// cpu_burn died with the process that injected it and is reverted.
func TestDrills_JournaledFaultTheAgentCannotRevertStaysJournaled(t *testing.T) {
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	f, _, j := testFollower(t, m, fuzzNow)
	var logged strings.Builder
	f.log = slog.New(slog.NewTextHandler(&logged, nil))
	defer f.shutdown()
	for _, r := range []state.FaultRecord{
		{Drill: "old", Generation: 3, Kind: kindTCP, Service: "api", Backend: "green", OrigAddr: "10.0.0.7:8080"},
		{Drill: "state", Generation: 1, Kind: kindBackendState, Service: "api", Backend: "blue"},
		{Drill: "burn", Generation: 1, Kind: kindCPUBurn, Service: "web"},
	} {
		r.Since, r.Until = fuzzNow.Add(-time.Minute), fuzzNow.Add(time.Hour)
		if err := j.memJournal.SaveFault(r); err != nil {
			t.Fatal(err)
		}
	}
	f.recoverJournal(context.Background())
	recs, _, _ := j.LoadFaults()
	reverted := map[string]bool{}
	for _, r := range recs {
		reverted[r.Drill] = r.Reverted
	}
	if reverted["old"] || reverted["state"] || !reverted["burn"] {
		t.Fatalf("journal reverted=%v; want only burn reverted", reverted)
	}
	if got := testCounter(t, m.faults.WithLabelValues(kindTCP, faultReverted)); got != 0 {
		t.Fatalf("tcp reverted counted %v with nothing reverted", got)
	}
	if got := testCounter(t, m.faults.WithLabelValues(kindTCP, faultRevertFailed)); got != 1 {
		t.Fatalf("tcp revert_failed = %v, want 1", got)
	}
	for _, want := range []string{"point the server of backend green back at 10.0.0.7:8080", "service api is not in this agent's config",
		"set the server of backend blue back to ready"} {
		if !strings.Contains(logged.String(), want) {
			t.Errorf("log does not say %q:\n%s", want, logged.String())
		}
	}
	if f.done["old"].IsZero() || f.faults["old"] != nil {
		t.Fatalf("drill old: done %v, fault %v; want it done and not held", f.done["old"], f.faults["old"])
	}
}

// TestDrills_UnsignedDocumentRefused: drill documents are verified like
// desired state (docs/agent.md, "Chaos faults"); an unsigned one is
// refused and counted as malformed.
func TestDrills_UnsignedDocumentRefused(t *testing.T) {
	raw, err := proto.Marshal(drillDoc("d1", 1, green100, fuzzNow, time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	_, err = decodeDrill(testRing, raw, "d1", fuzzNow)
	if err == nil {
		t.Fatal("an unsigned drill document was accepted")
	}
	if reason := bus.RejectReason(err); reason != drillMalformed {
		t.Fatalf("unsigned drill refused as %s (%v), want %s as docs/agent.md says", reason, err, drillMalformed)
	}
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	f, log, _ := testFollower(t, m, fuzzNow)
	defer f.shutdown()
	f.deliver(context.Background(), drillDelivery{key: "d1", raw: raw})
	if f.faults["d1"] != nil || f.docs["d1"] != nil {
		t.Fatalf("an unsigned drill was taken: %s", log)
	}
	if got := testCounter(t, m.drillRejected.WithLabelValues(drillMalformed)); got != 1 {
		t.Fatalf("malformed drill documents counted %v, want 1", got)
	}
}

// TestDrills_StateFaultRevertsToTheStateItFound: a backend_state fault
// puts back the state it found the server in, journaled with the fault, so
// an operator's drain outlives a maintenance drill, also across an agent
// crash. A second state fault on the same backend while one holds it is
// not injected on this node: each reverts to what it found.
func TestDrills_StateFaultRevertsToTheStateItFound(t *testing.T) {
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	f, log, j := testFollower(t, m, fuzzNow)
	defer f.shutdown()
	ctx := context.Background()
	drv := f.drivers["web"].(*chaosDriver)
	if err := drv.SetState(ctx, "green", "drain"); err != nil { // the operator's
		t.Fatal(err)
	}
	f.deliver(ctx, drillDelivery{key: "s1", raw: marshalDrill(t, drillDoc("s1", 1, stateFaultOf("green", "maint"), fuzzNow, time.Minute))})
	if f.faults["s1"] == nil {
		t.Fatalf("not injected: %s", log)
	}
	if rec := j.m["s1"]; rec.PrevState != "drain" {
		t.Fatalf("journaled %+v, want the state found, drain", rec)
	}
	f.deliver(ctx, drillDelivery{key: "s2", raw: marshalDrill(t, drillDoc("s2", 1, stateFaultOf("green", "drain"), fuzzNow, time.Minute))})
	if f.faults["s2"] != nil {
		t.Fatalf("a second state fault on green was injected while s1 holds it: %s", log)
	}
	f.deliver(ctx, drillDelivery{key: "s1", deleted: true})
	if got, _ := drv.ServerState(ctx, "green"); got != "drain" || !strings.Contains(log.String(), "state green maint; state green drain") {
		t.Fatalf("green is %s after the drill, want the operator's drain back: %s", got, log)
	}

	// From the journal, after a crash: the recorded state.
	inj, err := f.revertOnly(state.FaultRecord{Drill: "s3", Kind: kindBackendState, Service: "web", Backend: "green", PrevState: "maint"})
	if err != nil {
		t.Fatal(err)
	}
	if err := inj.Revert(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := drv.ServerState(ctx, "green"); got != "maint" {
		t.Fatalf("journaled fault reverted green to %s, want maint", got)
	}
}

// TestDrills_DeletedDrillKeepsItsFence: a delete of a drill's key is not
// signed, so it must not lower the drill's fence. After a drill was
// aborted and its key deleted (or found missing by a full read), a replay
// of its older, genuine document that is not aborted is refused as stale
// and never injects the fault; the coordinators' own document of the same
// fence as the last one the node held is taken back.
func TestDrills_DeletedDrillKeepsItsFence(t *testing.T) {
	for _, gone := range []string{"deleted", "missing from a full read"} {
		t.Run(gone, func(t *testing.T) {
			m, err := newMetrics(prometheus.NewRegistry())
			if err != nil {
				t.Fatal(err)
			}
			f, log, _ := testFollower(t, m, fuzzNow)
			defer f.shutdown()
			ctx := context.Background()
			start := fuzzNow.Add(time.Minute)
			running := marshalDrill(t, drillDoc("d1", 1, green100, start, time.Minute))
			abortedDoc := drillDoc("d1", 2, green100, start, time.Minute)
			abortedDoc.Aborted = true
			aborted := marshalDrill(t, abortedDoc)
			f.deliver(ctx, drillDelivery{key: "d1", raw: running})
			f.deliver(ctx, drillDelivery{key: "d1", raw: aborted})
			if gone == "deleted" {
				f.deliver(ctx, drillDelivery{key: "d1", deleted: true})
			} else {
				f.deliver(ctx, drillDelivery{listing: true})
				f.deliver(ctx, drillDelivery{listed: map[string]bool{}})
			}
			before := testutil.ToFloat64(m.drillRejected.WithLabelValues(drillStale))

			f.deliver(ctx, drillDelivery{key: "d1", raw: running})
			if d := f.docs["d1"]; d != nil {
				t.Fatalf("the replayed generation 1 was taken after generation 2 aborted the drill and its key went: %v", d)
			}
			if got := testutil.ToFloat64(m.drillRejected.WithLabelValues(drillStale)) - before; got != 1 {
				t.Errorf("%v replays counted as stale, want 1", got)
			}
			f.clock.(*clock.Fake).Advance(90 * time.Second) // between start and end
			f.reconcile(ctx, "d1")
			if f.faults["d1"] != nil {
				t.Fatalf("an aborted drill's fault was injected from a replayed document: %s", log)
			}

			f.deliver(ctx, drillDelivery{key: "d1", raw: aborted})
			if d := f.docs["d1"]; d == nil || !d.GetAborted() {
				t.Fatalf("the document of the fence the node held was not taken back: %v", d)
			}
		})
	}
}
