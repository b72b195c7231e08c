package analysis

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/internal/sketch"
	"github.com/switchyard/switchyard/internal/spec"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Reports shed at intake are missing data: a window holding them cannot
// pass, even when it was judged a pass before the shedding was known; a
// window the reports that did arrive fail stays failed.
func TestStore_ShedReportsMakeWindowsMissingNeverAPass(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	r := windowsRollout(t0)
	s := NewStore()
	// 30 s from 10 nodes in 5 s windows; green fails in the last window.
	// Node a's report of second 12 never arrives: intake shed it.
	for sec := 1; sec <= 30; sec++ {
		end := t0.Add(time.Duration(sec) * time.Second)
		gErr := uint64(0)
		if sec > 25 {
			gErr = 5
		}
		for n := range 10 {
			node := string(rune('a' + n))
			if sec == 12 && node == "a" {
				continue
			}
			if err := s.Add(report(node, end, 0, backend("green", 10, gErr, 20*time.Millisecond), backend("blue", 90, 0, 20*time.Millisecond))); err != nil {
				t.Fatal(err)
			}
		}
	}
	s.MarkShed("web", t0.Add(12*time.Second).Unix(), 1)

	verdicts := func(a Assessment) string {
		var v []string
		for _, w := range a.Windows {
			v = append(v, w.Verdict.String())
		}
		return strings.Join(v, " ")
	}
	early := s.Assess(r, t0.Add(25*time.Second+Grace))
	if got, want := verdicts(early), "pass pass inconclusive pass pass"; got != want {
		t.Fatalf("windows %s, want %s", got, want)
	}
	if w := early.Windows[2]; !strings.Contains(w.Reason, "1 reports were shed") || !strings.Contains(w.Reason, "never a pass") {
		t.Errorf("window with shed data: reason %q", w.Reason)
	}
	if got := early.PassedSince(t0); got != 4 {
		t.Errorf("passed windows %d, want 4: the shed window is not a pass", got)
	}
	if got := s.Shed("web", t0.Add(10*time.Second), t0.Add(15*time.Second)); got != 1 {
		t.Errorf("Shed over the window = %d, want 1", got)
	}

	// Shedding learnt after a window was judged a pass undoes the pass;
	// shedding in a failing window leaves the failure.
	s.MarkShed("web", t0.Add(23*time.Second).Unix(), 3)
	s.MarkShed("web", t0.Add(28*time.Second).Unix(), 2)
	late := s.Assess(r, t0.Add(30*time.Second+Grace))
	if got, want := verdicts(late), "pass pass inconclusive pass inconclusive fail"; got != want {
		t.Fatalf("windows %s, want %s", got, want)
	}
	if late.Windows[5].Guardrail != "error_rate" {
		t.Errorf("failing window with shed data: guardrail %q (%s)", late.Windows[5].Guardrail, late.Windows[5].Reason)
	}
	// Another service's shedding is not this one's missing data.
	s.MarkShed("api", t0.Add(3*time.Second).Unix(), 5)
	if got := s.Assess(r, t0.Add(30*time.Second+Grace)).Windows[0].Verdict; got != Pass {
		t.Errorf("window 0 after another service shed: %v", got)
	}
}

// A report of a window's last second arrives in the second after it; shed
// then, after the window was judged a pass, it undoes the pass as it would
// have kept a fresh judgement from passing.
func TestStore_ShedInTheSecondAfterAWindowUndoesItsPass(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	r := windowsRollout(t0)
	s := NewStore()
	for sec := 1; sec <= 10; sec++ {
		for n := range 10 {
			if err := s.Add(report(string(rune('a'+n)), t0.Add(time.Duration(sec)*time.Second), 0,
				backend("green", 10, 0, 20*time.Millisecond), backend("blue", 90, 0, 20*time.Millisecond))); err != nil {
				t.Fatal(err)
			}
		}
	}
	if v := s.Assess(r, t0.Add(5*time.Second+Grace)).Windows[0].Verdict; v != Pass {
		t.Fatalf("window (0 s, 5 s] %v before the shedding", v)
	}
	s.MarkShed("web", t0.Add(6*time.Second).Unix(), 1)
	if w := s.Assess(r, t0.Add(10*time.Second+Grace)).Windows[0]; w.Verdict != Inconclusive {
		t.Fatalf("window (0 s, 5 s] %v after a report was shed in second 6: %s", w.Verdict, w.Reason)
	}
}

// Memory stays bounded with many nodes: everything older than Retention is
// pruned, the size gauge says so, and reports the sequential tests have read
// are let go.
func TestStore_SizeIsBoundedWithManyNodes(t *testing.T) {
	const nodes = 100
	t0 := int64(1_700_000_000)
	retention := int64(Retention / time.Second)
	sk := sketch.New()
	for i := range 40 {
		sk.Add(0.020 + float64(i)*0.0005)
	}
	names := make([]string, nodes)
	for i := range names {
		names[i] = fmt.Sprintf("edge-%03d", i)
	}
	s := NewStore()
	batch := make([]*Report, 0, nodes)
	sizes := map[int64]Size{}
	for sec := t0 + 1; sec <= t0+retention+60; sec++ {
		batch = batch[:0]
		for _, n := range names {
			batch = append(batch, &Report{Node: n, Service: "web", Rollout: "r1", Generation: 5, End: sec,
				Backends: []BackendReport{{Backend: "blue", Requests: 40, Latency: sk}, {Backend: "green", Requests: 40, Errors: 1, Latency: sk}}})
		}
		s.AddReports(batch)
		if sec == t0+retention+30 || sec == t0+retention+60 {
			sizes[sec] = s.Size()
		}
	}
	a, b := sizes[t0+retention+30], sizes[t0+retention+60]
	if b.Nodes != nodes {
		t.Errorf("nodes %d, want %d", b.Nodes, nodes)
	}
	// Two series (node health and the rollout's windows) of at most
	// Retention+1 seconds each; reports for ReportRetention.
	if b.Seconds > 2*int(retention+1) {
		t.Errorf("%d seconds kept, want at most %d", b.Seconds, 2*(retention+1))
	}
	if keep := int64(nodes) * (int64(ReportRetention/time.Second) + 1); b.Reports > keep {
		t.Errorf("%d reports kept, want at most %d", b.Reports, keep)
	}
	// The cells' node lists grow by doubling, so equal to within 1%.
	if d := b.Bytes - a.Bytes; d > a.Bytes/100 || -d > a.Bytes/100 || b.Reports != a.Reports {
		t.Errorf("size grew after the retention: %+v 30 s earlier, %+v now", a, b)
	}
	perNode := b.Bytes / nodes
	if perNode <= 0 || perNode > 256<<10 {
		t.Errorf("%d bytes per node, want under 256 KB", perNode)
	}
	t.Logf("%d nodes, %d s retained: %+v, %d KB per node", nodes, retention, b, perNode>>10)

	// The sequential tests read the reports and the store lets them go.
	sp := &sv1.RolloutSpec{Name: "r1", Service: "web", From: "blue", To: "green", Analysis: &sv1.AnalysisSpec{Method: spec.MethodSequential}}
	spec.Default(sp)
	created := time.Unix(t0+retention, 0)
	s.Assess(&sv1.Rollout{Id: "r1", Spec: sp, CreatedAt: timestamppb.New(created)}, time.Unix(t0+retention+61, 0))
	after := s.Size()
	// Left: the second the rollout began in, which it does not read.
	if after.Reports != nodes || after.Bytes >= b.Bytes {
		t.Errorf("after the sequential tests read them: %+v, before %+v", after, b)
	}
}

// A rollout a day old is assessed over the telemetry kept, not over every
// window since it began: older windows have no data left to judge, and
// judging them again on every read held the lock intake merges with for
// tens of milliseconds.
func TestStore_AssessReadsOnlyTheWindowsOfTheTelemetryKept(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	r := windowsRollout(t0)
	s := NewStore()
	now := t0.Add(24 * time.Hour)
	for sec := -10; sec <= 0; sec++ {
		for n := range 10 {
			if err := s.Add(report(string(rune('a'+n)), now.Add(time.Duration(sec)*time.Second), 0,
				backend("green", 10, 0, 20*time.Millisecond), backend("blue", 90, 0, 20*time.Millisecond))); err != nil {
				t.Fatal(err)
			}
		}
	}
	a := s.Assess(r, now.Add(Grace))
	win := spec.Window(r.GetSpec())
	if max := int(Retention/win) + 1; len(a.Windows) > max {
		t.Fatalf("%d windows assessed, want at most %d (15 minutes)", len(a.Windows), max)
	}
	if first := a.Windows[0].Start; first.Before(now.Add(-Retention)) {
		t.Fatalf("first window assessed starts %v, before the telemetry kept (%v)", first, now.Add(-Retention))
	}
	// Seconds -10 to 0 hold data: three 5 s windows.
	if got := a.PassedSince(t0); got != 3 {
		t.Fatalf("%d windows passed, want the last 3, those with data", got)
	}
}

// windowsRollout is rollout r1 of web, blue to green, judged by the
// windows method with the default guardrails, created at t0.
func windowsRollout(t0 time.Time) *sv1.Rollout {
	sp := &sv1.RolloutSpec{Name: "r1", Service: "web", From: "blue", To: "green", Analysis: &sv1.AnalysisSpec{Method: spec.MethodWindows}}
	spec.Default(sp)
	return &sv1.Rollout{Id: "r1", Spec: sp, CreatedAt: timestamppb.New(t0)}
}

// A coordinator off the bus hears no report of any node: the windows of
// that time are missing data, whatever reports it did get, and a window
// after it is judged as usual.
func TestStore_WindowsWhileOffTheBusAreMissingNeverAPass(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	r := windowsRollout(t0)
	s := NewStore()
	// 30 s of good reports from 10 nodes; the coordinator was off the bus
	// from second 12 to 14 and got only node a's reports of it (sent
	// before the link died, read after).
	for sec := 1; sec <= 30; sec++ {
		for n := range 10 {
			node := string(rune('a' + n))
			if sec >= 12 && sec <= 14 && node != "a" {
				continue
			}
			if err := s.Add(report(node, t0.Add(time.Duration(sec)*time.Second), 0,
				backend("green", 10, 0, 20*time.Millisecond), backend("blue", 90, 0, 20*time.Millisecond))); err != nil {
				t.Fatal(err)
			}
		}
	}
	if v := s.Assess(r, t0.Add(10*time.Second+Grace)).Windows[1].Verdict; v != Pass {
		t.Fatalf("window (5 s, 10 s] %v before the coordinator lost the bus", v)
	}
	s.Deaf(t0.Add(12 * time.Second))
	// While it lasts, no window reaching into it passes.
	if w := s.Assess(r, t0.Add(15*time.Second+Grace)).Windows[2]; w.Verdict != Inconclusive || !strings.Contains(w.Reason, "off the bus") {
		t.Fatalf("window (10 s, 15 s] while off the bus: %v %q", w.Verdict, w.Reason)
	}
	s.Heard(t0.Add(14 * time.Second))
	a := s.Assess(r, t0.Add(30*time.Second+Grace))
	var got []string
	for _, w := range a.Windows {
		got = append(got, w.Verdict.String())
	}
	if want := "pass pass inconclusive pass pass pass"; strings.Join(got, " ") != want {
		t.Fatalf("windows %s, want %s", strings.Join(got, " "), want)
	}
}
