// Package analysis turns agents' health reports into verdicts on rollouts:
// it merges reports into windows per rollout and backend, and judges the new
// backend against the old one with guardrails and statistical tests. Every
// coordinator keeps the windows warm, so a new leader can decide at once.
package analysis

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/internal/sketch"
	"github.com/switchyard/switchyard/internal/spec"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Retention is how much telemetry a Store keeps per service.
const Retention = 15 * time.Minute

// ReportRetention is how long node reports wait for the sequential tests
// to read them. Every coordinator reads them each second (so a new leader
// has its tests warm), so a report older than this belongs to no rollout
// the coordinator follows: it came before the rollout reached this
// replica's state, or after it ended.
const ReportRetention = time.Minute

// Grace is how long after a window ends its reports are still awaited: one
// telemetry interval plus delivery.
const Grace = 1500 * time.Millisecond

// ErrBadReport is wrapped by Add's errors.
var ErrBadReport = errors.New("bad health report")

// Verdict is the outcome of judging one window.
type Verdict int

const (
	// Inconclusive: too little data to tell; never counts as a pass.
	Inconclusive Verdict = iota
	// Pass: every guardrail held.
	Pass
	// Fail: some guardrail did not hold.
	Fail
)

func (v Verdict) String() string {
	return [...]string{"inconclusive", "pass", "fail"}[v]
}

// Store keeps recent health reports merged into one-second cells per
// service, rollout, wave and backend. It is safe for concurrent use.
type Store struct {
	mu       sync.Mutex
	services map[string]map[int64]map[cellKey]*cell // service -> unix second of window end -> cell
	nodes    map[string]map[int64]*healthSecond
	newest   map[string]int64
	// newestNode is the newest second in nodes, per service; old seconds
	// are dropped when it moves.
	newestNode map[string]int64
	cache      map[cacheKey]WindowResult
	// reports keeps each node's report per rollout and second until the
	// sequential tests of the rollout read it; runs are those tests.
	reports map[string]map[int64][]*nodeReport
	// newestReport is the newest second in reports, per rollout.
	newestReport map[string]int64
	// judged are the two backends (from, to) the sequential tests of a
	// rollout read, once a read named them: reports keep only those.
	judged map[string][2]string
	runs   map[string]*seqRun
	// shed counts, per service and second, the reports intake had to
	// drop: those node-seconds are missing data.
	shed map[string]map[int64]uint64
	// deaf are the spans in which this coordinator was off the bus and
	// heard no report of any node: missing data too.
	deaf []deafSpan
	size storeSize
	// ids number the nodes for the 15-minute series, which then hold no
	// pointers (nothing for the garbage collector to scan) and 4 bytes a
	// name; names are the numbers' names ("" for a number let go). A node
	// keeps its number while it reports; one silent for longer than the
	// telemetry and the reports are kept is let go (forgetNodes), its
	// number given to the next new node: with nodes that come and go
	// under new names the table holds those of the last 16 minutes, not
	// every name ever seen.
	ids   map[string]nodeID
	names []string
	// seen is, per number, the newest second of any report (newestSec)
	// when its node last reported; free are the numbers let go.
	seen      []int64
	free      []nodeID
	newestSec int64
	// sweptAt is newestSec when forgetNodes last ran.
	sweptAt int64
	// kept holds the memory of the reports waiting for the sequential
	// tests.
	kept keptChunks
	// hints are the cells reports of two recent service-seconds went to.
	hints [2]cellHint
	// unsettled, when set, is the receive time of the oldest report
	// intake holds and has neither merged nor marked as shed (see
	// AwaitIntake).
	unsettled func() (time.Time, bool)
}

// AwaitIntake has the window judge wait for intake: a window is read only
// once every report received before its grace ended is merged or marked as
// shed. unsettled returns the receive time of the oldest report still on
// its way into the store, and whether there is one; it is called with the
// store's lock held and must not take it.
//
// Without it a burst (a fleet reconnecting at once) that leaves reports
// queued past a window's grace has the window judged on the part of the
// fleet already merged, and the verdict kept.
func (s *Store) AwaitIntake(unsettled func() (time.Time, bool)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.unsettled = unsettled
}

// cellHint remembers the cells of one service-second by key. Reports
// arrive a second or two at a time and name the same few backends in the
// same order: a report's backend usually sits at its own place in the
// hint, found with one comparison of strings the decoder shares, where the
// map would hash two strings per backend.
type cellHint struct {
	service string
	sec     int64
	cells   []hintedCell
}

type hintedCell struct {
	key  cellKey
	cell *cell
}

// maxHintedCells bounds a hint: a second of many rollouts, waves or
// backends is left to the map past these.
const maxHintedCells = 32

// hint is the hint for service's second sec, emptied if it held another.
func (s *Store) hint(service string, sec int64) *cellHint {
	h := &s.hints[sec&1]
	if h.sec != sec || h.service != service {
		h.service, h.sec, h.cells = service, sec, h.cells[:0]
	}
	return h
}

// find looks k up, first at place i.
func (h *cellHint) find(k cellKey, i int) *cell {
	if i < len(h.cells) && h.cells[i].key == k {
		return h.cells[i].cell
	}
	for _, hc := range h.cells {
		if hc.key == k {
			return hc.cell
		}
	}
	return nil
}

func (h *cellHint) add(k cellKey, c *cell) {
	if len(h.cells) < maxHintedCells {
		h.cells = append(h.cells, hintedCell{k, c})
	}
}

// forget empties the hint if it is service's second sec, which is gone.
func (h *cellHint) forget(service string, sec int64) {
	if h.sec == sec && h.service == service {
		h.service, h.sec, h.cells = "", 0, h.cells[:0]
	}
}

// nodeID numbers a node within one Store.
type nodeID uint32

// id numbers node, on first sight, and notes it reported in sec.
func (s *Store) id(node string, sec int64) nodeID {
	s.newestSec = max(s.newestSec, sec)
	id, ok := s.ids[node]
	if !ok {
		if n := len(s.free); n > 0 {
			id = s.free[n-1]
			s.free = s.free[:n-1]
			s.names[id] = node
		} else {
			id = nodeID(len(s.names))
			s.names = append(s.names, node)
			s.seen = append(s.seen, 0)
		}
		s.ids[node] = id
		s.size.bytes += int64(len(node)) + nodeIDBytes
	}
	s.seen[id] = s.newestSec
	return id
}

// nodeSweep is how often, in seconds of reports, forgetNodes runs.
const nodeSweep = 60

// forgetNodes lets go of the numbers of the nodes that have not reported
// since before: whatever still names them (series of a service gone
// quiet) is older than any window or drill reads. A sequential run that
// numbered such a node forgets its slot, so the next node given the number
// starts its own counts.
func (s *Store) forgetNodes(before int64) {
	for i, t := range s.seen {
		id := nodeID(i)
		name := s.names[id]
		if name == "" || t >= before {
			continue
		}
		delete(s.ids, name)
		s.names[id] = ""
		s.free = append(s.free, id)
		s.size.bytes -= int64(len(name)) + nodeIDBytes
		for _, run := range s.runs {
			if int(id) < len(run.slots) {
				run.slots[id] = 0
			}
		}
	}
}

// healthSecond is a service's traffic in one second, whatever the
// rollout: drills and fleet-wide checks look at nodes, not backends. It
// keeps every node's own counts for NodeDetail only; after that the sums
// and which nodes reported.
type healthSecond struct {
	requests, errors uint64
	nodes            idSet
	// each is every report's counts, a node's twice if its report for the
	// second came in two parts; nil once the second is older than
	// NodeDetail (brief).
	each  []nodeHealth
	brief bool
}

type nodeHealth struct {
	id               nodeID
	requests, errors uint64
}

func (h *healthSecond) bytes() int64 {
	return healthSecondBytes + int64(h.nodes.bytes()) + nodeHealthBytes*int64(cap(h.each))
}

// NodeDetail is how long the store keeps each node's own traffic of a
// second, which NodeHealth needs to leave some nodes out (a drill's
// targets, over the drill controller's last 10 seconds); the service's
// sums and which nodes reported stay for Retention.
const NodeDetail = 30 * time.Second

type cellKey struct {
	rollout string
	wave    int32
	backend string
}

type cell struct {
	requests, errors uint64
	latency          *sketch.Sketch
	maxQueue         uint32
	// nodes that reported into the cell.
	nodes idSet
	// down are the nodes among them whose proxy held the backend out of
	// rotation on its own (failing health checks) while it was weighted;
	// idle those that did so at weight 0.
	down, idle idSet
}

// idBytes is what the cell's lists of nodes take.
func (c *cell) idBytes() int { return c.nodes.bytes() + c.down.bytes() + c.idle.bytes() }

type cacheKey struct {
	rollout string
	start   int64
	wave    int32
	// method: the windows method judges windows differently.
	method string
}

// NewStore returns an empty store.
func NewStore() *Store {
	return &Store{services: map[string]map[int64]map[cellKey]*cell{}, nodes: map[string]map[int64]*healthSecond{}, ids: map[string]nodeID{},
		newest: map[string]int64{}, newestNode: map[string]int64{}, cache: map[cacheKey]WindowResult{},
		reports: map[string]map[int64][]*nodeReport{}, newestReport: map[string]int64{}, runs: map[string]*seqRun{}, judged: map[string][2]string{},
		shed: map[string]map[int64]uint64{}}
}

// Add merges one report. Every report counts toward its node's health;
// reports for no rollout, or whose generation changed inside their window
// (generation 0), are not judged for a rollout.
func (s *Store) Add(r *sv1.HealthReport) error {
	rep, err := ReportOf(r)
	if err != nil {
		return err
	}
	s.AddReports([]*Report{rep})
	return nil
}

// AddReports merges checked reports (ReportOf, Decoder) under one lock:
// intake hands them over in batches.
func (s *Store) AddReports(reps []*Report) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range reps {
		id := s.id(r.Node, r.End)
		s.addNode(r, id)
		if r.Rollout != "" && r.Generation != 0 {
			s.addRollout(r, id)
		}
	}
	if s.newestSec >= s.sweptAt+nodeSweep {
		s.sweptAt = s.newestSec
		s.forgetNodes(s.newestSec - int64((Retention+ReportRetention)/time.Second))
		s.forgetQuiet()
	}
}

// forgetQuiet lets go of the rollouts and services no report came for
// in longer than anything reads: a rollout's kept reports, pruned when a
// newer second of the same rollout comes, and a service's seconds, pruned
// when a newer second of the same service comes, would otherwise stay for
// good once their reports stop (a finished rollout, a service renamed) or
// never go on (a node's credentials may tag reports with any rollout and
// send them for any service, each name once).
func (s *Store) forgetQuiet() {
	reportCut := s.newestSec - int64(ReportRetention/time.Second)
	for rollout, newest := range s.newestReport {
		if newest >= reportCut {
			continue
		}
		for _, reps := range s.reports[rollout] {
			s.forgetReports(reps)
		}
		delete(s.reports, rollout)
		delete(s.newestReport, rollout)
	}
	// As forgetNodes: past anything a window reads, with a margin.
	cut := s.newestSec - int64((Retention+ReportRetention)/time.Second)
	for svc, newest := range s.newest {
		if newest >= cut {
			continue
		}
		for _, cells := range s.services[svc] {
			for _, c := range cells {
				s.size.bytes -= int64(cellBytes + c.latency.SizeBytes() + c.idBytes())
			}
		}
		delete(s.services, svc)
		delete(s.newest, svc)
		for i := range s.hints {
			if s.hints[i].service == svc {
				s.hints[i].forget(svc, s.hints[i].sec)
			}
		}
	}
	for svc, newest := range s.newestNode {
		if newest >= cut {
			continue
		}
		for _, h := range s.nodes[svc] {
			s.size.bytes -= h.bytes()
		}
		delete(s.nodes, svc)
		delete(s.newestNode, svc)
	}
	for svc, series := range s.shed {
		for sec := range series {
			if sec < cut {
				delete(series, sec)
			}
		}
		if len(series) == 0 {
			delete(s.shed, svc)
		}
	}
}

func (s *Store) addRollout(r *Report, id nodeID) {
	sec := r.End
	series := s.services[r.Service]
	if series == nil {
		series = map[int64]map[cellKey]*cell{}
		s.services[r.Service] = series
	}
	cells := series[sec]
	if cells == nil {
		cells = map[cellKey]*cell{}
		series[sec] = cells
	}
	s.keepReport(r.Rollout, sec, s.judgedParts(r, id))
	hint := s.hint(r.Service, sec)
	for i := range r.Backends {
		b := &r.Backends[i]
		k := cellKey{rollout: r.Rollout, wave: r.Wave, backend: b.Backend}
		c := hint.find(k, i)
		if c == nil {
			if c = cells[k]; c == nil {
				c = &cell{latency: sketch.New()}
				cells[k] = c
				// As the cell is let go: with its sketch.
				s.size.bytes += cellBytes + int64(c.latency.SizeBytes())
			}
			hint.add(k, c)
		}
		c.requests += b.Requests
		c.errors += b.Errors
		before := c.latency.SizeBytes() + c.idBytes()
		c.latency.Merge(b.Latency)
		c.maxQueue = max(c.maxQueue, b.Queued)
		c.nodes.add(id)
		switch {
		case b.Down && b.Weight > 0:
			c.down.add(id)
		case b.Down:
			c.idle.add(id)
		}
		s.size.bytes += int64(c.latency.SizeBytes() + c.idBytes() - before)
	}
	if sec > s.newest[r.Service] {
		s.newest[r.Service] = sec
		for t, cells := range series {
			if t < sec-int64(Retention/time.Second) {
				for _, c := range cells {
					s.size.bytes -= int64(cellBytes + c.latency.SizeBytes() + c.idBytes())
				}
				delete(series, t)
				for i := range s.hints {
					s.hints[i].forget(r.Service, t)
				}
			}
		}
	}
}

func (s *Store) addNode(r *Report, id nodeID) {
	sec := r.End
	series := s.nodes[r.Service]
	if series == nil {
		series = map[int64]*healthSecond{}
		s.nodes[r.Service] = series
	}
	h := series[sec]
	if h == nil {
		h = &healthSecond{brief: sec < s.newestNode[r.Service]-int64(NodeDetail/time.Second)}
		if prev := series[sec-1]; prev != nil {
			// Sized for as many nodes as the second before: a fleet's
			// would otherwise grow its way there every second.
			h.nodes = prev.nodes.sizedLike()
			if !h.brief {
				h.each = make([]nodeHealth, 0, len(prev.each))
			}
		}
		series[sec] = h
		s.size.bytes += h.bytes()
	}
	before := h.bytes()
	var requests, errors uint64
	for _, b := range r.Backends {
		requests += b.Requests
		errors += b.Errors
	}
	h.requests += requests
	h.errors += errors
	h.nodes.add(id)
	if !h.brief {
		h.each = append(h.each, nodeHealth{id: id, requests: requests, errors: errors})
	}
	s.size.bytes += h.bytes() - before
	if sec > s.newestNode[r.Service] {
		s.newestNode[r.Service] = sec
		detail := sec - int64(NodeDetail/time.Second)
		for t, h := range series {
			switch {
			case t < sec-int64(Retention/time.Second):
				s.size.bytes -= h.bytes()
				delete(series, t)
			case t < detail && !h.brief:
				s.size.bytes -= nodeHealthBytes * int64(cap(h.each))
				h.each, h.brief = nil, true
			}
		}
	}
}

// NodeHealth sums the traffic of a service's nodes over (start, end],
// leaving out the excluded nodes: what the rest of the fleet sees while a
// drill hurts its targets. Leaving nodes out needs their own counts, kept
// for NodeDetail: with exclude given, a second older than that is left
// out whole.
func (s *Store) NodeHealth(service string, exclude map[string]bool, start, end time.Time) (requests, errors uint64, nodes int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out bitset
	for name, ok := range exclude {
		if id, known := s.ids[name]; ok && known {
			out.set(id)
		}
	}
	var seen bitset
	series := s.nodes[service]
	for sec := start.Unix() + 1; sec <= end.Unix(); sec++ {
		h := series[sec]
		switch {
		case h == nil:
		case len(out) == 0:
			requests += h.requests
			errors += h.errors
			h.nodes.addTo(&seen)
		case !h.brief:
			for _, e := range h.each {
				if !out.has(e.id) {
					seen.set(e.id)
					requests += e.requests
					errors += e.errors
				}
			}
		}
	}
	return requests, errors, seen.count()
}

// Aggregate is one backend's merged telemetry over a window.
type Aggregate struct {
	Requests, Errors uint64
	Latency          *sketch.Sketch
	MaxQueue         uint32
	Nodes            int
	// Down names the nodes, sorted, that reported the backend weighted
	// but held out of rotation by their proxy (failing its health checks)
	// in the window: it answered none of the requests its weight asked
	// for there, so it failed none either. OutOfRotation names those that
	// reported it so at any weight.
	Down, OutOfRotation []string
}

func (a *Aggregate) add(c *cell, nodes, down, out *bitset) {
	a.Requests += c.requests
	a.Errors += c.errors
	a.Latency.Merge(c.latency)
	a.MaxQueue = max(a.MaxQueue, c.maxQueue)
	c.nodes.addTo(nodes)
	c.down.addTo(down)
	c.down.addTo(out)
	c.idle.addTo(out)
}

// Window merges the cells of [start, end) for a rollout's backend, from the
// given wave's nodes (or every node when wave is AnyWave).
func (s *Store) Window(service, rollout, backend string, wave int32, start, end time.Time) *Aggregate {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.window(service, rollout, backend, wave, start, end)
}

func (s *Store) window(service, rollout, backend string, wave int32, start, end time.Time) *Aggregate {
	agg := &Aggregate{Latency: sketch.New()}
	var nodes, down, out bitset
	series := s.services[service]
	for sec := start.Unix() + 1; sec <= end.Unix(); sec++ {
		for k, c := range series[sec] {
			if k.rollout == rollout && k.backend == backend && (wave == AnyWave || k.wave == wave) {
				agg.add(c, &nodes, &down, &out)
			}
		}
	}
	agg.Nodes = nodes.count()
	agg.Down, agg.OutOfRotation = s.nameAll(down), s.nameAll(out)
	return agg
}

// nameAll is the names of ids, sorted; nil for none.
func (s *Store) nameAll(ids bitset) []string {
	var out []string
	ids.each(func(id nodeID) { out = append(out, s.names[id]) })
	slices.Sort(out)
	return out
}

// AnyWave selects every node in window queries.
const AnyWave int32 = -2

// WindowResult is the verdict on one window with the numbers behind it.
type WindowResult struct {
	Start, End time.Time
	Verdict    Verdict
	// Guardrail is the failing check ("health_check", "error_rate",
	// "latency", "saturation"), or empty.
	Guardrail string
	Reason    string
	PValue    float64
	Candidate *sv1.BackendWindow
	Baseline  *sv1.BackendWindow
}

// Proto renders the result as evidence.
func (w WindowResult) Proto() *sv1.WindowEvidence {
	return &sv1.WindowEvidence{
		Start: timestamppb.New(w.Start), End: timestamppb.New(w.End), Verdict: w.Verdict.String(),
		Reason: w.Reason, Candidate: w.Candidate, Baseline: w.Baseline, PValue: w.PValue,
	}
}

// Assessment is the state of a rollout's analysis at one moment.
type Assessment struct {
	// Windows are the closed windows since the rollout began, oldest
	// first, as far back as the telemetry is kept (Retention).
	Windows []WindowResult
	// Breach is set when the last BreachWindows conclusive windows failed,
	// or when a sequential test raised its alarm.
	Breach *sv1.Evidence
	// Method is the spec's analysis method.
	Method string
	// Sequential says in words where the sequential tests stand; NotWorse
	// is the evidence that the new backend is not worse since the current
	// step began.
	Sequential string
	NotWorse   NotWorse
}

// PassedSince counts the passing windows that started at or after t, ending
// the count at a failure: an analysis step needs consecutive passes.
func (a Assessment) PassedSince(t time.Time) int {
	n := 0
	for _, w := range a.Windows {
		if w.Start.Before(t) {
			continue
		}
		switch w.Verdict {
		case Pass:
			n++
		case Fail:
			n = 0
		}
	}
	return n
}

// Latest is the newest closed window, if any.
func (a Assessment) Latest() (WindowResult, bool) {
	if len(a.Windows) == 0 {
		return WindowResult{}, false
	}
	return a.Windows[len(a.Windows)-1], true
}

// Assess judges every closed window of a rollout since it began, up to now.
// The new backend is compared with the old one on the nodes of the current
// wave, where both serve in the same windows; when those have too little
// old-backend traffic, with the old backend anywhere in the service.
func (s *Store) Assess(r *sv1.Rollout, now time.Time) Assessment {
	sp := r.GetSpec()
	win := spec.Window(sp)
	first := r.GetCreatedAt().AsTime().Truncate(win)
	if !first.Equal(r.GetCreatedAt().AsTime()) {
		first = first.Add(win) // the first whole window after the start
	}
	// Older windows' telemetry is gone: judged again they would only be
	// inconclusive. Left out, an assessment costs the windows of Retention
	// however old the rollout, under the lock intake merges reports with.
	if oldest := now.Add(-Retention); first.Before(oldest) {
		first = first.Add((oldest.Sub(first) + win - 1) / win * win)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := Assessment{Method: spec.Method(sp.GetAnalysis())}
	// A window is closed once its grace has ended and every report
	// received before then is in the store (or marked shed).
	settled := now
	if s.unsettled != nil {
		if at, ok := s.unsettled(); ok && at.Before(settled) {
			settled = at
		}
	}
	for start := first; !start.Add(win).Add(Grace).After(settled); start = start.Add(win) {
		key := cacheKey{rollout: r.GetId(), start: start.UnixNano(), wave: r.GetWave(), method: out.Method}
		res, ok := s.cache[key]
		if !ok {
			res = s.judgeWindow(r, start, start.Add(win))
			s.cache[key] = res
			s.pruneCache(r.GetId(), now.Add(-Retention))
		}
		out.Windows = append(out.Windows, res)
	}
	need := int(sp.GetAnalysis().GetBreachWindows())
	if need == 0 {
		need = spec.DefaultBreachWindows
	}
	var failing []WindowResult
	for i := len(out.Windows) - 1; i >= 0 && len(failing) < need; i-- {
		w := out.Windows[i]
		if w.Verdict == Inconclusive {
			continue
		}
		if w.Verdict != Fail {
			break
		}
		failing = append(failing, w)
	}
	if len(failing) == need {
		sort.Slice(failing, func(i, j int) bool { return failing[i].Start.Before(failing[j].Start) })
		last := failing[len(failing)-1]
		ev := &sv1.Evidence{Guardrail: last.Guardrail,
			Summary: fmt.Sprintf("%s in %d consecutive windows of %s; last: %s", last.Guardrail, need, win, last.Reason)}
		for _, w := range failing {
			ev.Windows = append(ev.Windows, w.Proto())
		}
		out.Breach = ev
	}
	if out.Method != spec.MethodSequential {
		// Only the sequential tests read node reports.
		s.forgetReports(slices.Concat(slices.Collect(maps.Values(s.reports[r.GetId()]))...))
		delete(s.reports, r.GetId())
		delete(s.judged, r.GetId())
	}
	if out.Method == spec.MethodSequential {
		run := s.sequential(r, now)
		out.Sequential = run.status()
		out.NotWorse = run.notWorse(sp.GetAnalysis(), r.GetStepStartedAt().AsTime())
		if run.alarm != nil {
			out.Breach = run.alarm
		}
	}
	return out
}

func (s *Store) pruneCache(rollout string, before time.Time) {
	for k := range s.cache {
		if k.rollout == rollout && k.start < before.UnixNano() {
			delete(s.cache, k)
		}
	}
}

func (s *Store) judgeWindow(r *sv1.Rollout, start, end time.Time) WindowResult {
	sp := r.GetSpec()
	svc, id := sp.GetService(), r.GetId()
	cand := s.window(svc, id, sp.GetTo(), AnyWave, start, end)
	base := s.window(svc, id, sp.GetFrom(), r.GetWave(), start, end)
	var paired *Aggregate // the new backend where the old one serves
	if base.Requests < sp.GetAnalysis().GetMinRequests() {
		base = s.window(svc, id, sp.GetFrom(), AnyWave, start, end)
	} else {
		paired = s.window(svc, id, sp.GetTo(), r.GetWave(), start, end)
		if len(cand.Down) > 0 {
			// Where the old backend was down too, at any weight, the host
			// is sick, whatever wave its node is in: Judge leaves those
			// nodes out.
			base.OutOfRotation = s.window(svc, id, sp.GetFrom(), AnyWave, start, end).OutOfRotation
		}
	}
	res := missing(JudgePaired(sp.GetAnalysis(), sp.GetTo(), sp.GetFrom(), cand, paired, base), s.shedIn(svc, start, end))
	if res.Verdict == Pass && s.deafIn(start, end) {
		res.Verdict = Inconclusive
		res.Reason = "this coordinator was off the bus for part of this window and heard nobody's reports then: missing data is never a pass"
	}
	res.Start, res.End = start, end
	return res
}

// judgedParts copies what the sequential tests will read of r: the parts
// of the two backends the rollout moves between once a read named them,
// else every part. The copy owns its memory (a Decoder may reuse a
// report's once AddReports returns), carved from the store's chunks, and
// is a fifth of a 10-backend report's.
func (s *Store) judgedParts(r *Report, id nodeID) *nodeReport {
	pair, named := s.judged[r.Rollout]
	keep := func(b *BackendReport) bool { return !named || b.Backend == pair[0] || b.Backend == pair[1] }
	n, bins := 0, 0
	for i := range r.Backends {
		if b := &r.Backends[i]; keep(b) {
			n++
			if b.Latency != nil {
				bins += b.Latency.NumBins()
			}
		}
	}
	k := &s.kept
	if len(k.reports) == cap(k.reports) {
		k.reports = make([]nodeReport, 0, keptChunk)
	}
	if cap(k.parts)-len(k.parts) < n {
		k.parts = make([]BackendReport, 0, max(n, 8*keptChunk))
		k.sketches = make([]sketch.Sketch, 0, cap(k.parts))
	}
	if cap(k.bins)-len(k.bins) < bins {
		k.bins = make([]float64, 0, max(bins, 512*keptChunk))
	}
	k.reports = append(k.reports, nodeReport{node: r.Node, id: id})
	nr := &k.reports[len(k.reports)-1]
	at := len(k.parts)
	k.sketches = k.sketches[:at+n]
	sketches := k.sketches[at : at+n : at+n]
	buf := k.bins
	for i := range r.Backends {
		b := &r.Backends[i]
		if !keep(b) {
			continue
		}
		part := *b
		if b.Latency != nil {
			j := len(k.parts) - at
			sketches[j], buf = b.Latency.CopyTo(buf)
			part.Latency = &sketches[j]
		}
		k.parts = append(k.parts, part)
	}
	nr.backends = k.parts[at:len(k.parts):len(k.parts)]
	k.bins = buf
	return nr
}

// keptChunk is how many kept reports one allocation holds: the copies
// judgedParts makes are carved from chunks (a chunk is freed once the
// sequential tests have read every report in it, a second or two later).
const keptChunk = 1024

// keptChunks are the chunks judgedParts carves from.
type keptChunks struct {
	reports  []nodeReport
	parts    []BackendReport
	sketches []sketch.Sketch
	bins     []float64
}

func (s *Store) keepReport(rollout string, sec int64, nr *nodeReport) {
	series := s.reports[rollout]
	if series == nil {
		series = map[int64][]*nodeReport{}
		s.reports[rollout] = series
	}
	series[sec] = append(series[sec], nr)
	s.size.reports++
	s.size.bytes += nr.sizeBytes()
	// Older seconds go when a newer one begins, not on every report: at a
	// hundred thousand reports a second the walk would dominate.
	if sec <= s.newestReport[rollout] {
		return
	}
	s.newestReport[rollout] = sec
	for t, reps := range series {
		if t < sec-int64(ReportRetention/time.Second) {
			s.forgetReports(reps)
			delete(series, t)
		}
	}
	cut := sec - int64(Retention/time.Second)
	for k, run := range s.runs {
		if run.next < cut && run.last < cut {
			delete(s.runs, k)
		}
	}
}

// sequential brings a rollout's sequential tests up to now. Reports are
// read as soon as they are in, one group per second, oldest first: a
// stratum is one node's report, complete by itself, so nothing waits for
// the rest of the fleet. A report that comes after its second was read
// joins the first group read next.
func (s *Store) sequential(r *sv1.Rollout, now time.Time) *seqRun {
	sp := r.GetSpec()
	s.judged[r.GetId()] = [2]string{sp.GetFrom(), sp.GetTo()}
	key := fmt.Sprintf("%s@%d", r.GetId(), r.GetCreatedAt().AsTime().UnixNano())
	run := s.runs[key]
	if run == nil {
		run = newSeqRun(r.GetId(), sp, r.GetCreatedAt().AsTime().Unix()+1)
		s.runs[key] = run
	}
	series := s.reports[r.GetId()]
	var secs []int64
	for sec := range series {
		if sec <= now.Unix() && sec > r.GetCreatedAt().AsTime().Unix() {
			secs = append(secs, sec)
		}
	}
	sort.Slice(secs, func(i, j int) bool { return secs[i] < secs[j] })
	var late []*nodeReport
	for _, sec := range secs {
		reps := series[sec]
		delete(series, sec)
		s.forgetReports(reps)
		if sec < run.next {
			late = append(late, reps...)
			continue
		}
		run.read(sp, sec, append(late, reps...))
		late = nil
		run.next = sec + 1
	}
	if len(late) > 0 {
		run.read(sp, run.next-1, late)
	}
	return run
}
