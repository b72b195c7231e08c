package rollout

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/coordinator/analysis"
	"github.com/switchyard/switchyard/coordinator/hooks"
	"github.com/switchyard/switchyard/coordinator/state"
	"github.com/switchyard/switchyard/internal/clock"
	"github.com/switchyard/switchyard/internal/spec"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func setW(w uint32) *sv1.Step { return &sv1.Step{Kind: &sv1.Step_SetWeight{SetWeight: w}} }
func pause(d time.Duration) *sv1.Step {
	p := &sv1.Pause{}
	if d > 0 {
		p.Duration = durationpb.New(d)
	}
	return &sv1.Step{Kind: &sv1.Step_Pause{Pause: p}}
}
func analyse(n uint32) *sv1.Step {
	return &sv1.Step{Kind: &sv1.Step_Analysis{Analysis: &sv1.AnalysisStep{Windows: n}}}
}

func canary(steps ...*sv1.Step) *sv1.RolloutSpec {
	sp := &sv1.RolloutSpec{Name: "r", Service: "web", From: "blue", To: "green",
		Strategy: &sv1.Strategy{Kind: &sv1.Strategy_Canary{Canary: &sv1.Canary{Steps: steps}}}}
	spec.Default(sp)
	return sp
}

func at(sp *sv1.RolloutSpec, wave, step int32) *sv1.Rollout {
	return &sv1.Rollout{Id: "r", Spec: sp, Phase: sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING, Wave: wave, Step: step,
		Generation: 7, StepStartedAt: timestamppb.New(t0), CreatedAt: timestamppb.New(t0), ApprovedWave: -1, ApprovedStep: -1}
}

func passes(n int, start time.Time) analysis.Assessment {
	var a analysis.Assessment
	for i := range n {
		s := start.Add(time.Duration(i) * 5 * time.Second)
		a.Windows = append(a.Windows, analysis.WindowResult{Start: s, End: s.Add(5 * time.Second), Verdict: analysis.Pass})
	}
	return a
}

func TestRollout_Decide(t *testing.T) {
	sp := canary(setW(10), pause(30*time.Second), pause(0), analyse(2))
	twoWaves := canary(setW(50))
	twoWaves.Waves = []*sv1.WaveSpec{{Name: "a", BasisPoints: 10000}, {Name: "b", BasisPoints: 10000, ManualGate: true}}
	approvedGate := at(twoWaves, 0, 1)
	approvedGate.ApprovedWave, approvedGate.ApprovedStep = 0, 1
	approvedPause := at(sp, 0, 2)
	approvedPause.ApprovedWave, approvedPause.ApprovedStep = 0, 2
	paused := at(sp, 0, 0)
	paused.Paused = true
	promoted := at(sp, 0, 4)
	promoted.Phase = sv1.RolloutPhase_ROLLOUT_PHASE_PROMOTED
	promoted.PromotedAt = timestamppb.New(t0)
	warm := proto.Clone(promoted).(*sv1.Rollout)
	warm.Spec = canary(setW(50))
	warm.Spec.Strategy = &sv1.Strategy{Kind: &sv1.Strategy_BlueGreen{BlueGreen: &sv1.BlueGreen{KeepWarm: durationpb.New(time.Minute)}}}
	rolling := at(sp, 0, 1)
	rolling.Phase = sv1.RolloutPhase_ROLLOUT_PHASE_ROLLING_BACK
	breach := analysis.Assessment{Breach: &sv1.Evidence{Guardrail: "error_rate", Summary: "errors"}}
	firstGate := canary(setW(10))
	firstGate.Waves = []*sv1.WaveSpec{{Name: "first", BasisPoints: 10000, ManualGate: true}}
	startGated := at(firstGate, 0, 0)
	startGated.HoldStart, startGated.StartGate = true, true

	all := Observation{Now: t0.Add(time.Second), Applied: 3, Live: 3}
	with := func(o Observation, f func(*Observation)) Observation { f(&o); return o }

	cases := []struct {
		name    string
		r       *sv1.Rollout
		obs     Observation
		action  Action
		to      [2]int
		waiting string
	}{
		{"setWeight waits for nodes", at(sp, 0, 0), with(all, func(o *Observation) { o.Applied = 2 }), Wait, [2]int{}, "2 of 3 live nodes"},
		{"no nodes at all", at(sp, 0, 0), Observation{Now: t0}, Wait, [2]int{}, "no live node"},
		{"setWeight done", at(sp, 0, 0), all, Advance, [2]int{0, 1}, ""},
		{"timed pause running", at(sp, 0, 1), with(all, func(o *Observation) { o.Now = t0.Add(29 * time.Second) }), Wait, [2]int{}, "pause until"},
		{"timed pause over", at(sp, 0, 1), with(all, func(o *Observation) { o.Now = t0.Add(30 * time.Second) }), Advance, [2]int{0, 2}, ""},
		{"pause until approved", at(sp, 0, 2), all, Wait, [2]int{}, "approval to continue"},
		{"approved pause", approvedPause, all, Advance, [2]int{0, 3}, ""},
		{"analysis needs windows", at(sp, 0, 3), with(all, func(o *Observation) { o.Analysis = passes(1, t0) }), Wait, [2]int{}, "1 of 2 windows"},
		{"analysis windows before the step do not count", at(sp, 0, 3), with(all, func(o *Observation) { o.Analysis = passes(3, t0.Add(-time.Minute)) }), Wait, [2]int{}, "0 of 2"},
		{"analysis passed", at(sp, 0, 3), with(all, func(o *Observation) { o.Analysis = passes(2, t0) }), Advance, [2]int{0, 4}, ""},
		{"last wave done promotes", at(sp, 0, 4), all, Promote, [2]int{}, ""},
		{"manual gate waits", at(twoWaves, 0, 1), all, Wait, [2]int{}, "approval to start wave b"},
		{"approved gate", approvedGate, all, Advance, [2]int{1, 0}, ""},
		{"paused", paused, all, Wait, [2]int{}, "paused"},
		{"breach rolls back even when paused", paused, with(all, func(o *Observation) { o.Analysis = breach }), Rollback, [2]int{}, ""},
		{"breach rolls back while waiting for nodes", at(sp, 0, 0), with(all, func(o *Observation) { o.Applied = 0; o.Analysis = breach }), Rollback, [2]int{}, ""},
		{"promoted finishes", promoted, all, Finish, [2]int{}, ""},
		{"promoted keeps blue warm", warm, all, Wait, [2]int{}, "kept warm until"},
		{"promoted and warm still rolls back", warm, with(all, func(o *Observation) { o.Analysis = breach }), Rollback, [2]int{}, ""},
		{"rolling back waits", rolling, with(all, func(o *Observation) { o.Applied = 1 }), Wait, [2]int{}, "1 of 3"},
		{"rolling back confirmed", rolling, all, ConfirmRollback, [2]int{}, ""},
		{"rolling back with every node stale is confirmed", rolling, Observation{Now: t0, Stale: []string{"edge-1", "edge-2"}}, ConfirmRollback, [2]int{}, ""},
		{"rolling back a service no node runs is confirmed", rolling, Observation{Now: t0}, ConfirmRollback, [2]int{}, ""},
		{"rolling back waits while the fleet view is too young to tell", rolling, Observation{Now: t0, Unsettled: true}, Wait, [2]int{}, "no node of web heard from yet"},
		{"a young fleet view does not advance on the nodes heard from", at(sp, 0, 0), with(all, func(o *Observation) { o.Unsettled = true }), Wait, [2]int{}, "3 of 3 live nodes heard from so far applied generation"},
		{"a young fleet view does not confirm a rollback", rolling, with(all, func(o *Observation) { o.Unsettled = true }), Wait, [2]int{}, "still hearing from the fleet"},
		{"a young fleet view does not finish a promotion", promoted, with(all, func(o *Observation) { o.Unsettled = true }), Wait, [2]int{}, "still hearing from the fleet"},
		{"a young fleet view still rolls back on a breach", at(sp, 0, 0), with(all, func(o *Observation) { o.Unsettled = true; o.Analysis = breach }), Rollback, [2]int{}, ""},
		{"first wave's manual gate waits", startGated, all, Wait, [2]int{}, "approval to start wave first"},
		{"first wave's manual gate waits with no node", startGated, Observation{Now: t0}, Wait, [2]int{}, "approval to start wave first"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := Decide(c.r, c.obs)
			if d.Action != c.action {
				t.Fatalf("action %v (%q %q), want %v", d.Action, d.Message, d.Waiting, c.action)
			}
			if c.action == Advance && (d.ToWave != c.to[0] || d.ToStep != c.to[1]) {
				t.Fatalf("advance to %d/%d, want %v", d.ToWave, d.ToStep, c.to)
			}
			if !strings.Contains(d.Waiting, c.waiting) {
				t.Fatalf("waiting %q, want %q", d.Waiting, c.waiting)
			}
			if c.action == Rollback && d.Evidence == nil {
				t.Fatal("rollback without evidence")
			}
		})
	}
}

// memRaft applies the controller's entries to an in-memory state, as the
// simulator does.
type memRaft struct {
	st    *state.State
	index uint64
}

func (m *memRaft) next() uint64 { m.index++; return m.index }
func (m *memRaft) Advance(e *sv1.RolloutAdvanceEntry) error {
	m.st.ApplyAdvance(m.next(), e)
	return nil
}
func (m *memRaft) Rollback(e *sv1.RollbackEntry) error { m.st.ApplyRollback(m.next(), e); return nil }
func (m *memRaft) Finish(e *sv1.RolloutFinishEntry) error {
	m.st.ApplyFinish(m.next(), e)
	return nil
}
func (m *memRaft) Converged(e *sv1.RolloutConvergedEntry) error {
	m.st.ApplyConverged(m.next(), e)
	return nil
}
func (m *memRaft) LocalRollback(e *sv1.LocalRollbackEntry) error {
	m.st.ApplyLocalRollback(m.next(), e)
	return nil
}

// instantFleet: every node applies every generation at once.
type instantFleet struct{ live int }

func (f instantFleet) Convergence(string, uint64) (int, int) { return f.live, f.live }
func (f instantFleet) Stale(string) []string                 { return []string{"edge-9"} }

type fixedAnalyzer struct{ a analysis.Assessment }

func (f *fixedAnalyzer) Assess(*sv1.Rollout, time.Time) analysis.Assessment { return f.a }

func TestRollout_ControllerStepsThroughACanaryWithAFakeClock(t *testing.T) {
	st := state.New()
	raft := &memRaft{st: st, index: 1}
	sp := canary(setW(10), pause(time.Minute), setW(50))
	st.ApplyIntent(1, &sv1.IntentEntry{StampedAt: timestamppb.New(t0), Intent: &sv1.Intent{Id: "i",
		Action: &sv1.Intent_ApplyRollout{ApplyRollout: &sv1.ApplyRollout{Spec: sp}}}})
	clk := clock.NewFake(t0)
	an := &fixedAnalyzer{}
	var actions []string
	c := &Controller{State: st, Raft: raft, Fleet: instantFleet{live: 3}, Analyzer: an,
		OnDecision: func(_ *sv1.Rollout, d Decision, _ time.Time) { actions = append(actions, d.Action.String()) }}

	step := func() {
		if err := c.Step(clk.Now()); err != nil {
			t.Fatal(err)
		}
	}
	step() // setWeight 10 applied everywhere -> pause
	step() // pause running
	if got := st.Rollout("r"); got.GetStep() != 1 {
		t.Fatalf("step %d, want the pause", got.GetStep())
	}
	clk.Advance(time.Minute)
	step() // pause over -> setWeight 50
	step() // 50 applied -> wave done
	step() // wave done -> promoted
	step() // promoted, no warm period -> completed
	if got := st.Rollout("r"); got.GetPhase() != sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED {
		t.Fatalf("phase %v after %v", got.GetPhase(), actions)
	}
	want := "advance advance advance promote finish"
	if strings.Join(actions, " ") != want {
		t.Fatalf("actions %v, want %s", actions, want)
	}
}

// heldFleet: every node applies every generation at once, and a failed
// pre-traffic hook keeps held on the old backend at the generation given.
type heldFleet struct {
	instantFleet
	gen  uint64
	held []string
}

func (f heldFleet) Held(_ string, gen uint64) []string {
	if gen != f.gen {
		return nil
	}
	return f.held
}

// A node its pre-traffic hook keeps on blue took the generation, so the
// rollout goes on and completes; the completion names it (and counts those
// past MaxFinishHeld) instead of saying green serves everywhere.
func TestRollout_CompletionNamesTheNodesAPreTrafficHookKeptOnFrom(t *testing.T) {
	for _, c := range []struct {
		name string
		held int
		want string
	}{
		{"none held", 0, "completed: green serves every wave"},
		{"one held", 1, "completed: green serves every wave but on edge-000, kept on blue by a failed pre-traffic hook"},
		{"more than are named", MaxFinishHeld + 3, "edge-019 and 3 more, kept on blue by a failed pre-traffic hook"},
	} {
		t.Run(c.name, func(t *testing.T) {
			st := state.New()
			raft := &memRaft{st: st, index: 1}
			st.ApplyIntent(1, &sv1.IntentEntry{StampedAt: timestamppb.New(t0), Intent: &sv1.Intent{Id: "i",
				Action: &sv1.Intent_ApplyRollout{ApplyRollout: &sv1.ApplyRollout{Spec: canary(setW(50))}}}})
			fl := heldFleet{instantFleet: instantFleet{live: c.held + 2}}
			for i := range c.held {
				fl.held = append(fl.held, fmt.Sprintf("edge-%03d", i))
			}
			c1 := &Controller{State: st, Raft: raft, Fleet: &fl, Analyzer: &fixedAnalyzer{}}
			for range 4 {
				fl.gen = st.Rollout("r").GetGeneration()
				if err := c1.Step(t0); err != nil {
					t.Fatal(err)
				}
			}
			r := st.Rollout("r")
			if r.GetPhase() != sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED {
				t.Fatalf("phase %v: held nodes must not keep the rollout from going on", r.GetPhase())
			}
			last := r.GetHistory()[len(r.GetHistory())-1].GetMessage()
			if !strings.Contains(last, c.want) || (c.held == 0 && last != c.want) {
				t.Fatalf("completion %q, want %q", last, c.want)
			}
		})
	}
}

func TestRollout_ControllerRollsBackOnBreach(t *testing.T) {
	st := state.New()
	raft := &memRaft{st: st, index: 1}
	st.ApplyIntent(1, &sv1.IntentEntry{StampedAt: timestamppb.New(t0), Intent: &sv1.Intent{Id: "i",
		Action: &sv1.Intent_ApplyRollout{ApplyRollout: &sv1.ApplyRollout{Spec: canary(setW(10), pause(0))}}}})
	an := &fixedAnalyzer{}
	c := &Controller{State: st, Raft: raft, Fleet: instantFleet{live: 2}, Analyzer: an}
	_ = c.Step(t0)
	_ = c.Step(t0)
	an.a.Breach = &sv1.Evidence{Guardrail: "latency", Summary: "slow"}
	_ = c.Step(t0.Add(10 * time.Second))
	r := st.Rollout("r")
	if r.GetPhase() != sv1.RolloutPhase_ROLLOUT_PHASE_ROLLING_BACK || r.GetEvidence().GetGuardrail() != "latency" {
		t.Fatalf("after breach: %v", r)
	}
	_ = c.Step(t0.Add(11 * time.Second))
	r = st.Rollout("r")
	if r.GetPhase() != sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK {
		t.Fatalf("phase %v once every node applied the rollback", r.GetPhase())
	}
	if last := r.GetHistory()[len(r.GetHistory())-1].GetMessage(); !strings.Contains(last, "edge-9") {
		t.Fatalf("stale node not named: %q", last)
	}
}

// Nodes silent for 15 s are not waited for: a rollback with no live node
// is confirmed at once, and says which nodes did not confirm it.
func TestRollout_RollbackWithNoLiveNodeIsConfirmedNamingTheStaleNodes(t *testing.T) {
	r := at(canary(setW(10)), 0, 0)
	r.Phase = sv1.RolloutPhase_ROLLOUT_PHASE_ROLLING_BACK
	d := Decide(r, Observation{Now: t0, Stale: []string{"edge-1", "edge-2"}})
	if d.Action != ConfirmRollback {
		t.Fatalf("action %v, waiting %q", d.Action, d.Waiting)
	}
	if want := "no live node of web to wait for; not heard from, so not confirmed: edge-1, edge-2"; d.Message != want {
		t.Errorf("message %q, want %q", d.Message, want)
	}
}

type countingGate struct{ starts int }

func (g *countingGate) Hold(*sv1.Rollout, int, int, bool, time.Time) (string, error) { return "", nil }
func (g *countingGate) Start(*sv1.Rollout, time.Time) (string, error)                { g.starts++; return "", nil }

// Webhook gates never start a rollout whose first wave waits for an
// approval; the approval itself does.
func TestRollout_ControllerLeavesTheFirstWaveGateToAnApproval(t *testing.T) {
	st := state.New()
	sp := canary(setW(10))
	sp.Waves = []*sv1.WaveSpec{{Name: "first", BasisPoints: 10000, ManualGate: true}}
	a := st.ApplyIntent(1, &sv1.IntentEntry{StampedAt: timestamppb.New(t0), Rules: state.Rules, Intent: &sv1.Intent{Id: "i1",
		Action: &sv1.Intent_ApplyRollout{ApplyRollout: &sv1.ApplyRollout{Spec: sp}}}})
	if !a.Result.GetAccepted() {
		t.Fatal(a.Result)
	}
	raft := &memRaft{st: st, index: 1}
	g := &countingGate{}
	c := &Controller{State: st, Raft: raft, Fleet: instantFleet{live: 3}, Analyzer: &fixedAnalyzer{}, Gate: g}
	for i := range 4 {
		if err := c.Step(t0.Add(time.Duration(i) * time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	if g.starts != 0 || !st.Rollout(sp.GetName()).GetHoldStart() {
		t.Fatalf("gate asked to start %d times; held %v", g.starts, st.Rollout(sp.GetName()).GetHoldStart())
	}
}

// gateRaft commits the webhook gate's entries to the same state, as the
// FSM would.
type gateRaft struct{ m *memRaft }

func (g gateRaft) HookDue(e *sv1.HookDueEntry) error { g.m.st.ApplyHookDue(g.m.next(), e); return nil }
func (g gateRaft) Start(e *sv1.RolloutStartEntry) error {
	g.m.st.ApplyStart(g.m.next(), e)
	return nil
}

// heldAtStart applies a rollout held before any traffic by a gating
// pre-rollout webhook that fails with onFailure.
func heldAtStart(t *testing.T, onFailure sv1.HookFailure) (*state.State, *memRaft, *Controller) {
	t.Helper()
	sp := canary(setW(10), setW(50))
	sp.Hooks = &sv1.HooksSpec{Webhooks: []*sv1.Webhook{{Name: "freeze", Point: sv1.HookPoint_HOOK_POINT_PRE_ROLLOUT,
		Url: "http://127.0.0.1:1/", Gating: true, OnFailure: onFailure}}}
	spec.Default(sp)
	if err := spec.Validate(sp); err != nil {
		t.Fatal(err)
	}
	st := state.New()
	if a := st.ApplyIntent(1, &sv1.IntentEntry{StampedAt: timestamppb.New(t0), Rules: state.Rules, Intent: &sv1.Intent{Id: "i1",
		Action: &sv1.Intent_ApplyRollout{ApplyRollout: &sv1.ApplyRollout{Spec: sp}}}}); !a.Result.GetAccepted() {
		t.Fatal(a.Result)
	}
	if !st.Rollout("r").GetHoldStart() {
		t.Fatal("not held by its gating pre-rollout webhook")
	}
	raft := &memRaft{st: st, index: 1}
	c := &Controller{State: st, Raft: raft, Fleet: instantFleet{live: 3}, Analyzer: &fixedAnalyzer{}, Gate: &hooks.Gate{Raft: gateRaft{raft}}}
	return st, raft, c
}

func preRolloutCalls(r *sv1.Rollout) int {
	n := 0
	for _, hc := range r.GetHookCalls() {
		if hc.GetKey() == state.KeyPreRollout {
			n++
		}
	}
	return n
}

// A gating pre-rollout webhook with onFailure: pause pauses the rollout
// when it refuses; like any pause-gate it is asked again only once an
// operator resumed the rollout, not on every tick of the controller.
func TestRollout_PausedByItsPreRolloutGateIsNotAskedAgainUntilResumed(t *testing.T) {
	st, raft, c := heldAtStart(t, sv1.HookFailure_HOOK_FAILURE_PAUSE)
	st.ApplyHookResult(raft.next(), &sv1.HookResultEntry{Rollout: "r", Key: state.KeyPreRollout, Webhook: "freeze", Seq: 1,
		Attempts: 1, Detail: "409 Conflict: change freeze", StampedAt: timestamppb.New(t0.Add(time.Second))})
	if r := st.Rollout("r"); !r.GetPaused() {
		t.Fatal("a refusing pause-gate did not pause the rollout")
	}
	for i := range 3 {
		if err := c.Step(t0.Add(time.Duration(2+i) * time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	r := st.Rollout("r")
	if n := preRolloutCalls(r); n != 1 {
		t.Fatalf("the paused rollout's pre-rollout gate was made due %d times with no resume, want once; history: %v", n, r.GetHistory())
	}
}

// `rollout pause` stops advancing: a paused rollout held before its first
// traffic does not move it when its pre-rollout gate passes.
func TestRollout_PausedRolloutHeldAtStartDoesNotStartWhenItsGatePasses(t *testing.T) {
	st, raft, c := heldAtStart(t, sv1.HookFailure_HOOK_FAILURE_HOLD)
	st.ApplyIntent(raft.next(), &sv1.IntentEntry{StampedAt: timestamppb.New(t0), Intent: &sv1.Intent{Id: "p",
		Action: &sv1.Intent_PauseRollout{PauseRollout: &sv1.RolloutControl{Rollout: "r"}}}})
	st.ApplyHookResult(raft.next(), &sv1.HookResultEntry{Rollout: "r", Key: state.KeyPreRollout, Webhook: "freeze", Seq: 1,
		Ok: true, Attempts: 1, Detail: "200 OK", StampedAt: timestamppb.New(t0.Add(time.Second))})
	if err := c.Step(t0.Add(2 * time.Second)); err != nil {
		t.Fatal(err)
	}
	r := st.Rollout("r")
	if !r.GetHoldStart() || len(st.Desired("web").GetWaves()) != 0 {
		t.Fatalf("a paused rollout moved its first traffic: held %v, desired %v", r.GetHoldStart(), st.Desired("web"))
	}
	st.ApplyIntent(raft.next(), &sv1.IntentEntry{StampedAt: timestamppb.New(t0), Intent: &sv1.Intent{Id: "res",
		Action: &sv1.Intent_ResumeRollout{ResumeRollout: &sv1.RolloutControl{Rollout: "r"}}}})
	if err := c.Step(t0.Add(3 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if r := st.Rollout("r"); r.GetHoldStart() {
		t.Fatal("still held after the resume, with its gate passed")
	}
}

// guardedFleet: every node applies every generation at once, and moves
// are the local rollbacks the nodes' statuses reported, pending until done.
type guardedFleet struct {
	instantFleet
	moves []*sv1.NodeLocalRollback
	done  map[string]bool
}

func (f *guardedFleet) PendingLocalRollbacks() []*sv1.NodeLocalRollback {
	var out []*sv1.NodeLocalRollback
	for _, m := range f.moves {
		if !f.done[m.GetNode()+"/"+m.GetRollback().GetRolloutId()] {
			out = append(out, m)
		}
	}
	slices.SortFunc(out, func(a, b *sv1.NodeLocalRollback) int {
		return cmp.Or(strings.Compare(a.GetRollback().GetRolloutId(), b.GetRollback().GetRolloutId()), strings.Compare(a.GetNode(), b.GetNode()))
	})
	return out
}

func (f *guardedFleet) LocalRollbackDone(node string, lr *sv1.LocalRollback) {
	f.done[node+"/"+lr.GetRolloutId()] = true
}

// The leader writes the local rollbacks the nodes reported into their
// rollouts' histories, finished rollouts included (a node cut off reports
// when it is back), at most 20 nodes an entry, each once however many
// passes see it, with the node's reason cut to what a log entry should
// carry; a move of an unknown rollout or of a generation it never had is
// dropped, not proposed on every pass.
func TestRollout_ControllerRecordsLocalRollbacksOnce(t *testing.T) {
	st := state.New()
	raft := &memRaft{st: st, index: 1}
	st.ApplyIntent(1, &sv1.IntentEntry{StampedAt: timestamppb.New(t0), Intent: &sv1.Intent{Id: "i",
		Action: &sv1.Intent_ApplyRollout{ApplyRollout: &sv1.ApplyRollout{Spec: canary(setW(10), pause(time.Hour))}}}})
	gen := st.Rollout("r").GetGeneration()
	// A second rollout of another service, aborted: finished.
	done := canary(setW(10))
	done.Name, done.Service = "r2", "api"
	st.ApplyIntent(2, &sv1.IntentEntry{StampedAt: timestamppb.New(t0), Intent: &sv1.Intent{Id: "i2",
		Action: &sv1.Intent_ApplyRollout{ApplyRollout: &sv1.ApplyRollout{Spec: done}}}})
	gen2 := st.Rollout("r2").GetGeneration()
	st.ApplyIntent(3, &sv1.IntentEntry{StampedAt: timestamppb.New(t0), Intent: &sv1.Intent{Id: "i3",
		Action: &sv1.Intent_AbortRollout{AbortRollout: &sv1.AbortRollout{Rollout: "r2"}}}})
	st.ApplyConverged(4, &sv1.RolloutConvergedEntry{Rollout: "r2", Generation: 3, Nodes: 1, StampedAt: timestamppb.New(t0)})
	if p := st.Rollout("r2").GetPhase(); p != sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK {
		t.Fatalf("r2 %v", p)
	}
	raft.index = 4

	fleet := &guardedFleet{instantFleet: instantFleet{live: 30}, done: map[string]bool{}}
	move := func(node, rollout string, gen uint64, reason string) {
		fleet.moves = append(fleet.moves, &sv1.NodeLocalRollback{Node: node, Rollback: &sv1.LocalRollback{
			Generation: gen, RolloutId: rollout, From: "green", To: "blue", Reason: reason}})
	}
	for i := range 25 {
		reason := "green error rate 40%"
		if i == 0 {
			reason = "x" + strings.Repeat("é", 400) // 801 bytes, byte 300 inside a rune
		}
		move(fmt.Sprintf("edge-%02d", i), "r", gen, reason)
	}
	move("api-1", "r2", gen2, "api error rate 50%")
	move("edge-98", "unknown", 5, "a rollout no one started")
	move("edge-99", "r", gen+100, "a generation r never had")
	c := &Controller{State: st, Raft: raft, Fleet: fleet, Analyzer: &fixedAnalyzer{}}
	recorded := func(id string) int { return len(st.Rollout(id).GetLocalRollbacks()) }
	for pass, want := range [][2]int{{20, 1}, {25, 1}, {25, 1}} {
		if err := c.Step(t0.Add(time.Duration(pass) * time.Second)); err != nil {
			t.Fatal(err)
		}
		if got := [2]int{recorded("r"), recorded("r2")}; got != want {
			t.Fatalf("after pass %d: %v nodes recorded in r and r2, want %v", pass+1, got, want)
		}
	}
	if !fleet.done["edge-98/unknown"] || !fleet.done["edge-99/r"] || !fleet.done["edge-00/r"] || !fleet.done["api-1/r2"] {
		t.Fatalf("done %v: every move recorded or refused should be", fleet.done)
	}
	if pending := fleet.PendingLocalRollbacks(); len(pending) != 0 {
		t.Fatalf("still pending after three passes: %v", pending)
	}
	var first string
	lines := 0
	for _, h := range st.Rollout("r").GetHistory() {
		if strings.HasPrefix(h.GetMessage(), "local guard on ") {
			lines++
			if strings.HasPrefix(h.GetMessage(), "local guard on edge-00 ") {
				first = h.GetMessage()
			}
		}
	}
	if lines != 25 {
		t.Fatalf("%d history lines of local rollbacks, want 25", lines)
	}
	_, reason, _ := strings.Cut(first, ": ")
	if !utf8.ValidString(reason) || !strings.HasSuffix(reason, "…") || len(reason) > maxLocalRollbackReason+len("…") {
		t.Fatalf("edge-00's reason in the history: %d bytes, %q", len(reason), reason)
	}
	h := st.Rollout("r2").GetHistory()
	if last := h[len(h)-1]; last.GetMessage() != fmt.Sprintf("local guard on api-1 moved it back to blue at generation %d: api error rate 50%%", gen2) ||
		last.GetPhase() != sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK {
		t.Fatalf("r2's last history line %v", last)
	}
}
