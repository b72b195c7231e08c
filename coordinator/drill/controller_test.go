package drill

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/chaos"
	"github.com/switchyard/switchyard/coordinator/state"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

type memRaft struct {
	st    *state.State
	index uint64
}

func (m *memRaft) next() uint64 { m.index++; return m.index }
func (m *memRaft) Start(e *sv1.DrillStartEntry) error {
	m.st.ApplyDrillStart(m.next(), e)
	return nil
}
func (m *memRaft) End(e *sv1.DrillEndEntry) error { m.st.ApplyDrillEnd(m.next(), e); return nil }
func (m *memRaft) Report(e *sv1.DrillReportEntry) error {
	m.st.ApplyDrillReport(m.next(), e)
	return nil
}

type fakeFleet struct {
	live []chaos.Node
	seen map[string]time.Time
	// young is a coordinator's view just after it started.
	young bool
}

func (f *fakeFleet) Settled() bool { return !f.young }

func (f *fakeFleet) Live(string) []chaos.Node { return f.live }
func (f *fakeFleet) FaultSeen(node, _ string) (time.Time, bool) {
	t, ok := f.seen[node]
	return t, ok
}

type fakeHealth struct{ req, errs uint64 }

func (h *fakeHealth) NodeHealth(string, map[string]bool, time.Time, time.Time) (uint64, uint64, int) {
	return h.req, h.errs, 3
}

func nodes(ids ...string) []chaos.Node {
	var out []chaos.Node
	for _, id := range ids {
		out = append(out, chaos.Node{ID: id})
	}
	return out
}

func setup(t *testing.T, yaml string, live []chaos.Node) (*state.State, *Controller, *fakeFleet, *fakeHealth) {
	t.Helper()
	sp, err := chaos.ParseDrill([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	st := state.New()
	r := &memRaft{st: st, index: 1}
	a := st.ApplyIntent(1, &sv1.IntentEntry{StampedAt: timestamppb.New(t0), Intent: &sv1.Intent{Id: "i", Operator: "sre",
		Action: &sv1.Intent_RunDrill{RunDrill: &sv1.RunDrill{Spec: sp}}}})
	if !a.Result.GetAccepted() {
		t.Fatal(a.Result)
	}
	fl := &fakeFleet{live: live, seen: map[string]time.Time{}}
	h := &fakeHealth{}
	return st, &Controller{State: st, Raft: r, Fleet: fl, Health: h}, fl, h
}

const drillYAML = `
version: v1
name: d1
service: web
maxNodes: 2
maxPercent: 50
startAfter: 5s
duration: 30s
fault:
  http: {backend: green, errorPercent: 20}
`

func TestDrill_StartsOnTimeRunsAndEnds(t *testing.T) {
	st, c, fl, _ := setup(t, drillYAML, nodes("a", "b", "c", "d"))
	_ = c.Step(t0.Add(4 * time.Second))
	if p := st.Drill("d1").GetPhase(); p != sv1.DrillPhase_DRILL_PHASE_SCHEDULED {
		t.Fatalf("started early: %v", p)
	}
	// 4 live nodes, 100% selected = 4 > maxNodes 2: refused at start.
	_ = c.Step(t0.Add(5 * time.Second))
	d := st.Drill("d1")
	if d.GetPhase() != sv1.DrillPhase_DRILL_PHASE_ABORTED || !strings.Contains(d.GetAbortReason(), "more than drill.maxNodes 2") {
		t.Fatalf("over the cap: %v %q", d.GetPhase(), d.GetAbortReason())
	}
	if st.DrillDocument("d1") != nil {
		t.Fatal("a drill that never started was published")
	}
	_ = fl
}

// A coordinator that has just started does not choose a drill's targets,
// nor check its cap, from the few nodes it has heard from.
func TestDrill_DoesNotStartOnAYoungFleetView(t *testing.T) {
	st, c, fl, _ := setup(t, drillYAML, nodes("a"))
	fl.young = true
	_ = c.Step(t0.Add(6 * time.Second))
	if p := st.Drill("d1").GetPhase(); p != sv1.DrillPhase_DRILL_PHASE_SCHEDULED {
		t.Fatalf("started on a young view of one node: %v", p)
	}
	// Heard from everyone: 4 nodes, over maxNodes 2.
	fl.young, fl.live = false, nodes("a", "b", "c", "d")
	_ = c.Step(t0.Add(7 * time.Second))
	if d := st.Drill("d1"); d.GetPhase() != sv1.DrillPhase_DRILL_PHASE_ABORTED || !strings.Contains(d.GetAbortReason(), "more than drill.maxNodes 2") {
		t.Fatalf("once settled: %v %q", d.GetPhase(), d.GetAbortReason())
	}
}

func TestDrill_RunsWithinCapAndReports(t *testing.T) {
	yaml := strings.Replace(drillYAML, "maxNodes: 2", "maxNodes: 4", 1)
	yaml = strings.Replace(yaml, "maxPercent: 50", "maxPercent: 100", 1)
	st, c, fl, _ := setup(t, yaml, nodes("a", "b", "c"))
	_ = c.Step(t0.Add(5 * time.Second))
	d := st.Drill("d1")
	if d.GetPhase() != sv1.DrillPhase_DRILL_PHASE_RUNNING || len(d.GetTargets()) != 3 {
		t.Fatalf("running: %v targets %v", d.GetPhase(), d.GetTargets())
	}
	doc := st.DrillDocument("d1")
	if doc.GetGeneration() == 0 || !doc.GetEndAt().AsTime().Equal(t0.Add(35*time.Second)) {
		t.Fatalf("document %v", doc)
	}
	fl.seen = map[string]time.Time{"a": t0.Add(6 * time.Second), "b": t0.Add(6 * time.Second), "c": t0.Add(7 * time.Second)}
	_ = c.Step(t0.Add(20 * time.Second))
	if st.Drill("d1").GetPhase() != sv1.DrillPhase_DRILL_PHASE_RUNNING {
		t.Fatal("ended early")
	}
	_ = c.Step(t0.Add(35 * time.Second))
	_ = c.Step(t0.Add(36 * time.Second))
	d = st.Drill("d1")
	if d.GetPhase() != sv1.DrillPhase_DRILL_PHASE_ENDED || d.GetReport().GetVerdict() != "pass" || len(d.GetReport().GetInjected()) != 3 {
		t.Fatalf("ended: %v report %v", d.GetPhase(), d.GetReport())
	}
}

func TestDrill_AbortsWhenTheRestOfTheFleetSuffers(t *testing.T) {
	yaml := strings.Replace(drillYAML, "maxNodes: 2", "maxNodes: 4", 1)
	yaml = strings.Replace(yaml, "maxPercent: 50", "maxPercent: 100", 1)
	st, c, _, h := setup(t, yaml, nodes("a", "b"))
	_ = c.Step(t0.Add(5 * time.Second))
	h.req, h.errs = 1000, 200
	_ = c.Step(t0.Add(10 * time.Second))
	d := st.Drill("d1")
	if d.GetPhase() != sv1.DrillPhase_DRILL_PHASE_ABORTED || !strings.Contains(d.GetAbortReason(), "outside the drill's targets") {
		t.Fatalf("%v %q", d.GetPhase(), d.GetAbortReason())
	}
	if !st.DrillDocument("d1").GetAborted() {
		t.Fatal("agents were not told to revert")
	}
}

func TestDrill_StopAllEndsEveryDrill(t *testing.T) {
	yaml := strings.Replace(drillYAML, "maxNodes: 2", "maxNodes: 4", 1)
	yaml = strings.Replace(yaml, "maxPercent: 50", "maxPercent: 100", 1)
	st, c, _, _ := setup(t, yaml, nodes("a"))
	_ = c.Step(t0.Add(5 * time.Second))
	a := st.ApplyIntent(10, &sv1.IntentEntry{StampedAt: timestamppb.New(t0.Add(6 * time.Second)), Intent: &sv1.Intent{Id: "stop",
		Operator: "sre", Action: &sv1.Intent_StopAllDrills{StopAllDrills: &sv1.StopAllDrills{}}}})
	if !a.Result.GetAccepted() || len(a.Drills) != 1 {
		t.Fatalf("stop-all: %v", a)
	}
	if !st.DrillDocument("d1").GetAborted() {
		t.Fatal("document not marked aborted")
	}
}

// A rollback drill aborts, like any drill without keepOnBreach, when the
// nodes outside its targets suffer: proving that guardrails catch a bad
// green on one wave must not keep hurting the rest of the fleet until the
// drill's duration is over.
func TestDrill_RollbackDrillAbortsWhenTheRestOfTheFleetSuffers(t *testing.T) {
	st := state.New()
	sp := &sv1.RolloutSpec{Name: "web-1", Service: "web", From: "blue", To: "green",
		Strategy: &sv1.Strategy{Kind: &sv1.Strategy_Canary{Canary: &sv1.Canary{Steps: []*sv1.Step{
			{Kind: &sv1.Step_SetWeight{SetWeight: 20}}, {Kind: &sv1.Step_Pause{Pause: &sv1.Pause{}}}}}}},
		Waves: []*sv1.WaveSpec{{Name: "eu", Selector: map[string]string{"region": "eu"}, BasisPoints: 10000}, {Name: "rest", BasisPoints: 10000}}}
	if a := st.ApplyIntent(1, &sv1.IntentEntry{StampedAt: timestamppb.New(t0), Intent: &sv1.Intent{Id: "r", Operator: "ana",
		Action: &sv1.Intent_ApplyRollout{ApplyRollout: &sv1.ApplyRollout{Spec: sp}}}}); !a.Result.GetAccepted() {
		t.Fatal(a.Result)
	}
	ds, err := chaos.ParseDrill([]byte(`
version: v1
name: d1
service: web
rollout: web-1
maxNodes: 1
maxPercent: 50
duration: 10m
fault:
  http: {backend: green, errorPercent: 50}
`))
	if err != nil {
		t.Fatal(err)
	}
	if a := st.ApplyIntent(2, &sv1.IntentEntry{StampedAt: timestamppb.New(t0), Intent: &sv1.Intent{Id: "d", Operator: "sre",
		Action: &sv1.Intent_RunDrill{RunDrill: &sv1.RunDrill{Spec: ds}}}}); !a.Result.GetAccepted() {
		t.Fatal(a.Result)
	}
	live := []chaos.Node{{ID: "a", Labels: map[string]string{"region": "eu"}}, {ID: "b", Labels: map[string]string{"region": "us"}},
		{ID: "c", Labels: map[string]string{"region": "us"}}}
	h := &fakeHealth{}
	c := &Controller{State: st, Raft: &memRaft{st: st, index: 2}, Fleet: &fakeFleet{live: live}, Health: h}
	_ = c.Step(t0.Add(time.Second))
	if d := st.Drill("d1"); d.GetPhase() != sv1.DrillPhase_DRILL_PHASE_RUNNING || strings.Join(d.GetTargets(), ",") != "a" {
		t.Fatalf("rollback drill: %v targets %v (%q)", d.GetPhase(), d.GetTargets(), d.GetAbortReason())
	}
	h.req, h.errs = 1000, 200 // 20% errors on b and c, which the drill does not target
	_ = c.Step(t0.Add(10 * time.Second))
	d := st.Drill("d1")
	if d.GetPhase() != sv1.DrillPhase_DRILL_PHASE_ABORTED || !strings.Contains(d.GetAbortReason(), "outside the drill's targets") {
		t.Fatalf("rollback drill with 20%% errors outside its targets: %v %q", d.GetPhase(), d.GetAbortReason())
	}
}

// A rollback drill's targets are the nodes of its rollout's current wave
// that its selector and percent take: percent narrows them as it does for
// any drill, rather than being ignored.
func TestDrill_RollbackDrillTakesItsPercentOfTheWave(t *testing.T) {
	st := state.New()
	sp := &sv1.RolloutSpec{Name: "web-1", Service: "web", From: "blue", To: "green",
		Strategy: &sv1.Strategy{Kind: &sv1.Strategy_Canary{Canary: &sv1.Canary{Steps: []*sv1.Step{
			{Kind: &sv1.Step_SetWeight{SetWeight: 20}}, {Kind: &sv1.Step_Pause{Pause: &sv1.Pause{}}}}}}}}
	if a := st.ApplyIntent(1, &sv1.IntentEntry{StampedAt: timestamppb.New(t0), Intent: &sv1.Intent{Id: "r", Operator: "ana",
		Action: &sv1.Intent_ApplyRollout{ApplyRollout: &sv1.ApplyRollout{Spec: sp}}}}); !a.Result.GetAccepted() {
		t.Fatal(a.Result)
	}
	ds, err := chaos.ParseDrill([]byte(`
version: v1
name: d1
service: web
rollout: web-1
percent: 30
maxNodes: 20
maxPercent: 100
duration: 10m
fault:
  http: {backend: green, errorPercent: 50}
`))
	if err != nil {
		t.Fatal(err)
	}
	var live []chaos.Node
	for _, id := range []string{"e1", "e2", "e3", "e4", "e5", "e6", "e7", "e8", "e9", "e10", "e11", "e12"} {
		live = append(live, chaos.Node{ID: id})
	}
	want := chaos.Select(ds, live)
	if len(want) == 0 || len(want) == len(live) {
		t.Fatalf("test needs a percent that takes some of the wave, took %v", want)
	}
	got, err := Targets(&sv1.Drill{Spec: ds}, st, live)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("rollback drill at 30%% of a wave of %d nodes targets %v, want %v", len(live), got, want)
	}
}

// The admins' blast-radius caps hold when a drill starts, not only when it
// is scheduled: a drill scheduled before the admins lowered them does not
// start over them.
func TestDrill_AdminsCapLoweredAfterSchedulingHoldsAtStart(t *testing.T) {
	yaml := strings.Replace(drillYAML, "maxNodes: 2", "maxNodes: 4", 1)
	yaml = strings.Replace(yaml, "maxPercent: 50", "maxPercent: 100", 1)
	st, c, _, _ := setup(t, yaml, nodes("a", "b", "c"))
	st.ApplyAclBootstrap(2, &sv1.AclBootstrapEntry{Key: "UADMIN", Name: "root", StampedAt: timestamppb.New(t0)})
	pol := &sv1.IntentEntry{StampedAt: timestamppb.New(t0), Signer: "UADMIN", Rules: state.Rules, Intent: &sv1.Intent{Id: "caps",
		Action: &sv1.Intent_Acl{Acl: &sv1.AclChange{Change: &sv1.AclChange_Policy{Policy: &sv1.AclPolicy{DrillMaxNodes: 2}}}}}}
	if a := st.ApplyIntent(3, pol); !a.Result.GetAccepted() {
		t.Fatal(a.Result)
	}
	c.Raft.(*memRaft).index = 3
	_ = c.Step(t0.Add(6 * time.Second))
	d := st.Drill("d1")
	if d.GetPhase() != sv1.DrillPhase_DRILL_PHASE_ABORTED || !strings.Contains(d.GetAbortReason(), "admins' cap of 2 nodes") {
		t.Fatalf("drill over the admins' lowered cap: %v %q, targets %v", d.GetPhase(), d.GetAbortReason(), d.GetTargets())
	}
}

// A drill whose whole window passed with no leader to start it (the
// coordinators lost their quorum for longer than it would have run) does
// not start when a leader is back: nobody chose that time for its faults,
// and it would be right after an outage.
func TestDrill_WindowPassedWithoutALeaderDoesNotStart(t *testing.T) {
	yaml := strings.Replace(drillYAML, "maxNodes: 2", "maxNodes: 4", 1)
	yaml = strings.Replace(yaml, "maxPercent: 50", "maxPercent: 100", 1)
	st, c, _, _ := setup(t, yaml, nodes("a", "b", "c"))
	// Scheduled for t0+5s, for 30 s; the next leader steps an hour later.
	_ = c.Step(t0.Add(time.Hour))
	d := st.Drill("d1")
	if d.GetPhase() != sv1.DrillPhase_DRILL_PHASE_ABORTED || !strings.Contains(d.GetAbortReason(), "not started") ||
		!strings.Contains(d.GetAbortReason(), "no leader") {
		t.Fatalf("an hour late: %v %q, want aborted without starting", d.GetPhase(), d.GetAbortReason())
	}
	if st.DrillDocument("d1") != nil {
		t.Fatal("a drill whose window had passed was published")
	}

	// Late by less than its duration, it starts, for its whole duration.
	st, c, _, _ = setup(t, yaml, nodes("a", "b", "c"))
	at := t0.Add(5*time.Second + 29*time.Second)
	_ = c.Step(at)
	if d := st.Drill("d1"); d.GetPhase() != sv1.DrillPhase_DRILL_PHASE_RUNNING || !d.GetEndAt().AsTime().Equal(at.Add(30*time.Second)) {
		t.Fatalf("29 s late: %v until %v", d.GetPhase(), d.GetEndAt().AsTime())
	}
}
