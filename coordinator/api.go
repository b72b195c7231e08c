package coordinator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/coordinator/state"
	"github.com/switchyard/switchyard/internal/desired"
	"github.com/switchyard/switchyard/internal/names"
	"github.com/switchyard/switchyard/internal/spec"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// eventInterval is how often the live stream (/v1/events) sends the
// overview.
const eventInterval = time.Second

// apiJSON is how the read API and the CLI's -o json render answers:
// protojson, lowerCamelCase names, zero values left out, 64-bit integers
// as strings.
var apiJSON = protojson.MarshalOptions{Multiline: true, Indent: "  "}

// FleetStatus answers with the fleet by service, wave and node.
func (s *Server) FleetStatus(q *sv1.FleetStatusQuery) (*sv1.FleetStatus, error) {
	_, leader := s.raft.LeaderWithID()
	ans := &sv1.FleetStatus{AnsweredBy: s.cfg.NodeID, Leader: string(leader)}
	st := s.fsm.State()
	services := s.fleet.services()
	for _, svc := range st.Services() {
		if !slices.Contains(services, svc) {
			services = append(services, svc)
		}
	}
	slices.Sort(services)
	if q.GetService() != "" {
		if !slices.Contains(services, q.GetService()) {
			return nil, fmt.Errorf("service: no node runs %q and it has no desired state (known: %v)", q.GetService(), services)
		}
		services = []string{q.GetService()}
	}
	if q.GetReachedGeneration() != 0 {
		if q.GetService() == "" {
			return nil, errors.New("reached_generation: counts are of one service; name it in service")
		}
		ans.Services = []*sv1.ServiceFleet{s.reachedCounts(st, q.GetService(), q.GetReachedGeneration())}
		return ans, nil
	}
	latest := map[string]*sv1.Rollout{}
	for _, r := range st.Rollouts() { // newest first
		if _, ok := latest[r.GetSpec().GetService()]; !ok {
			latest[r.GetSpec().GetService()] = r
		}
	}
	for _, svc := range services {
		sf := &sv1.ServiceFleet{Service: svc}
		epoch, gen, ok := st.DesiredFence(svc)
		if ok {
			sf.Epoch, sf.Generation = epoch, gen
		}
		nodes := s.fleet.nodesFor(svc)
		r := latest[svc]
		labelWaves(r, nodes)
		if r != nil {
			sf.Rollout = r.GetId()
		}
		applied, live, held := s.fleet.convergedService(svc, nodes, bus.Fence{Epoch: epoch, Generation: gen})
		if ok {
			sf.Converged, sf.HeldNodes = uint32(applied), held
		}
		sf.Live = uint32(live)
		for _, n := range nodes {
			if n.GetStale() {
				sf.StaleNodes = append(sf.StaleNodes, n.GetNode())
			}
		}
		sf.Waves = groupWaves(r, nodes)
		ans.Services = append(ans.Services, sf)
	}
	return ans, nil
}

// reachedCounts is a service's fleet as counts of the nodes that reached
// generation, without the nodes (FleetStatusQuery.reached_generation).
func (s *Server) reachedCounts(st *state.State, service string, generation uint64) *sv1.ServiceFleet {
	sf := &sv1.ServiceFleet{Service: service, ReachedGeneration: generation}
	if epoch, gen, ok := st.DesiredFence(service); ok {
		sf.Epoch, sf.Generation = epoch, gen
	}
	reached, live, held := s.fleet.Reached(service, bus.Fence{Epoch: max(sf.GetEpoch(), 1), Generation: generation})
	sf.Reached, sf.Live, sf.ReachedHeld = uint32(reached), uint32(live), held
	return sf
}

// labelWaves sets each node's wave: the first wave of the rollout, in spec
// order, that takes it, as agents compute it; "-" for none.
func labelWaves(r *sv1.Rollout, nodes []*sv1.NodeView) {
	if r == nil {
		return
	}
	plan := spec.Compile(r.GetSpec())
	for _, n := range nodes {
		n.Wave = "-"
		for _, pw := range plan {
			ww := &sv1.WaveWeights{Selector: pw.Wave.GetSelector(), BasisPoints: pw.Wave.GetBasisPoints()}
			if desired.InWave(r.GetId(), n.GetNode(), n.GetLabels(), ww) {
				n.Wave = pw.Wave.GetName()
				break
			}
		}
	}
}

// emptyWave says, for a rollout waiting at an analysis step, that its
// current wave takes none of the live nodes: such a wave has no traffic of
// its own, so the step may wait until an operator skips it. "" otherwise.
func emptyWave(r *sv1.Rollout, nodes []*sv1.NodeView) string {
	if r.GetPhase() != sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING || r.GetHoldStart() {
		return ""
	}
	plan := spec.Compile(r.GetSpec())
	w, s := int(r.GetWave()), int(r.GetStep())
	if w >= len(plan) || s >= len(plan[w].Steps) || plan[w].Steps[s].GetAnalysis() == nil {
		return ""
	}
	live := 0
	for _, n := range nodes {
		if n.GetStale() {
			continue
		}
		live++
		for i, pw := range plan[:w+1] {
			if desired.InWave(r.GetId(), n.GetNode(), n.GetLabels(), &sv1.WaveWeights{Selector: pw.Wave.GetSelector(), BasisPoints: pw.Wave.GetBasisPoints()}) {
				if i == w {
					return ""
				}
				break
			}
		}
	}
	if live == 0 {
		return ""
	}
	return fmt.Sprintf("; wave %s takes none of the %d live nodes: no traffic of its own to judge (rollout promote skips this step)", plan[w].Wave.GetName(), live)
}

// guardMoved explains a rollout that waits for nodes whose local guard
// moved them back to the old backend at its current generation: they are
// not counted converged, and only a newer generation moves them, so the
// rollout would wait for them until someone acts.
func guardMoved(r *sv1.Rollout, nodes []*sv1.NodeView, want bus.Fence) string {
	if p := r.GetPhase(); p != sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING && p != sv1.RolloutPhase_ROLLOUT_PHASE_PROMOTED {
		return ""
	}
	var moved []string
	for _, n := range nodes {
		if !n.GetStale() && agreement(nodeFence(n), want) == Current && n.GetLocalRollback().GetGeneration() == want.Generation {
			moved = append(moved, n.GetNode())
		}
	}
	if len(moved) == 0 {
		return ""
	}
	return fmt.Sprintf("; %s: local guard moved back to %s at this generation, and only a newer one moves them (rollout abort %s, or rollout promote %s for the next step)",
		names.Few(moved, 5), r.GetSpec().GetFrom(), r.GetId(), r.GetId())
}

// groupWaves puts labelled nodes into the rollout's waves in spec order,
// then the nodes no wave takes; without a rollout, all in one group "-".
func groupWaves(r *sv1.Rollout, nodes []*sv1.NodeView) []*sv1.WaveNodes {
	var out []*sv1.WaveNodes
	if r != nil {
		for i, pw := range spec.Compile(r.GetSpec()) {
			out = append(out, &sv1.WaveNodes{Wave: pw.Wave.GetName(), Index: int32(i)})
		}
	}
	none := &sv1.WaveNodes{Wave: "-", Index: -1}
	for _, n := range nodes {
		placed := false
		for _, w := range out {
			if w.GetWave() == n.GetWave() {
				w.Nodes = append(w.Nodes, n)
				placed = true
				break
			}
		}
		if !placed {
			none.Nodes = append(none.Nodes, n)
		}
	}
	if len(none.GetNodes()) > 0 {
		out = append(out, none)
	}
	return out
}

// services lists the services any node reports, sorted.
func (f *fleet) services() []string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	var out []string
	for _, n := range f.nodes {
		for _, svc := range n.status.GetServices() {
			if !slices.Contains(out, svc.GetService()) {
				out = append(out, svc.GetService())
			}
		}
	}
	slices.Sort(out)
	return out
}

// killSwitch says what `switchyard chaos stop-all` would end now.
func killSwitch(drills []*sv1.Drill) *sv1.KillSwitch {
	ks := &sv1.KillSwitch{}
	for _, d := range drills {
		if state.DrillLive(d.GetPhase()) {
			ks.LiveDrills++
			if d.GetPhase() == sv1.DrillPhase_DRILL_PHASE_RUNNING {
				ks.Running = append(ks.Running, d.GetId())
			}
		}
	}
	return ks
}

// Series answers with a rollout's per-backend series over its life.
func (s *Server) Series(q *sv1.SeriesQuery) (*sv1.RolloutSeries, error) {
	if q.GetRollout() == "" {
		return nil, fmt.Errorf("rollout: required")
	}
	if s.fsm.State().Rollout(q.GetRollout()) == nil {
		if f := s.fsm.State().Forgotten(q.GetRollout()); f != nil {
			return nil, fmt.Errorf("rollout: %w", state.ForgottenError(f))
		}
		return nil, fmt.Errorf("rollout: no rollout named %q", q.GetRollout())
	}
	if sr := s.series.series(q.GetRollout()); sr != nil {
		return sr, nil
	}
	r := s.fsm.State().Rollout(q.GetRollout())
	return &sv1.RolloutSeries{Rollout: r.GetId(), Service: r.GetSpec().GetService(), StepSeconds: 1}, nil
}

// Overview answers with everything the dashboard shows; staleReason, when
// not empty, says why this replica could not be confirmed current. A
// coordinator off the bus, or still hearing from the fleet, says so too: its
// replica may be current, but its view of the fleet is not whole.
func (s *Server) Overview(staleReason string) (*sv1.Overview, error) {
	partial := ""
	switch {
	case s.nc == nil || !s.nc.IsConnected():
		partial = fmt.Sprintf("coordinator %s is not connected to NATS: it hears no agent status or telemetry, so its nodes age into stale whatever they do", s.cfg.NodeID)
	case !s.fleet.Settled():
		partial = fmt.Sprintf("coordinator %s is still hearing from the fleet (it started or came back on the bus moments ago): nodes not heard from yet are missing from its lists and counts", s.cfg.NodeID)
	}
	if partial != "" {
		if staleReason == "" {
			staleReason = partial
		} else {
			staleReason += "; " + partial
		}
	}
	_, leader := s.raft.LeaderWithID()
	ov := &sv1.Overview{AnsweredBy: s.cfg.NodeID, Leader: string(leader), At: timestamppb.New(s.cfg.Clock.Now()),
		Stale: staleReason != "", StaleReason: staleReason}
	var err error
	if ov.Fleet, err = s.FleetStatus(&sv1.FleetStatusQuery{}); err != nil {
		return nil, err
	}
	for _, sf := range ov.Fleet.GetServices() {
		current := bus.Fence{Epoch: max(sf.GetEpoch(), 1), Generation: sf.GetGeneration()}
		for _, w := range sf.GetWaves() {
			trimWave(w, current, overviewWaveNodes)
		}
		if n := len(sf.GetStaleNodes()); n > overviewStaleNodes {
			sf.StaleNodes, sf.OmittedStaleNodes = sf.StaleNodes[:overviewStaleNodes], uint32(n-overviewStaleNodes)
		}
	}
	// The dashboard counts each rollout's nodes; the fleet part lists
	// them once. Only the rollouts it shows are read: the state keeps
	// every rollout ever applied.
	st := s.fsm.State()
	rollouts, older := st.RecentRollouts(overviewFinished)
	ov.Rollouts = &sv1.RolloutsAnswer{AnsweredBy: s.cfg.NodeID, Leader: string(leader), Rollouts: s.rolloutViews(st, rollouts, true)}
	ov.OlderRollouts = uint32(older)
	if ov.Drills, err = s.Drills(&sv1.DrillsQuery{}); err != nil {
		return nil, err
	}
	ov.KillSwitch = ov.Drills.GetKillSwitch()
	ov.Drills.Drills, older = recent(ov.Drills.GetDrills(), overviewFinished, func(v *sv1.DrillView) (bool, time.Time) {
		d := v.GetDrill()
		over := d.GetPhase() == sv1.DrillPhase_DRILL_PHASE_ENDED || d.GetPhase() == sv1.DrillPhase_DRILL_PHASE_ABORTED
		return over, d.GetEndedAt().AsTime()
	})
	ov.OlderDrills = uint32(older)
	for _, v := range ov.Rollouts.GetRollouts() {
		if sr := s.series.series(v.GetRollout().GetId()); sr != nil {
			ov.Series = append(ov.Series, sr)
		}
	}
	return ov, nil
}

// overviewWaveNodes is how many nodes of each wave the overview lists.
// Every open dashboard is sent the overview on each change, up to once a
// second: with every node of a 10,000-node wave in it, each was ~2.6 MB of
// JSON and took 120 ms of a core to encode (BenchmarkAPI_OverviewEvent).
const overviewWaveNodes = 100

// overviewStaleNodes is how many stale nodes of a service the overview
// names (a region cut off can make thousands stale at once).
const overviewStaleNodes = 20

// trimWave keeps at most keep of a wave's nodes (which come in name order):
// first those that need a look, then the others, each in name order, and
// counts the rest in OmittedNodes.
func trimWave(w *sv1.WaveNodes, current bus.Fence, keep int) {
	if len(w.GetNodes()) <= keep {
		return
	}
	look := make([]*sv1.NodeView, 0, keep)
	fine := make([]*sv1.NodeView, 0, keep)
	for _, n := range w.GetNodes() {
		switch {
		case needsALook(n, current):
			if len(look) < keep {
				look = append(look, n)
			}
		case len(fine) < keep:
			fine = append(fine, n)
		}
	}
	listed := append(look, fine[:keep-len(look)]...)
	w.OmittedNodes = uint32(len(w.GetNodes()) - len(listed))
	w.Nodes = listed
}

// needsALook says whether a node is anything but live, healthy and seen
// doing the service's current document (fence current).
func needsALook(n *sv1.NodeView, current bus.Fence) bool {
	return n.GetStale() || n.GetStopped() || n.GetDiverged() || nodeFence(n) != current || !observedMatches(n) ||
		NodeHeld(n) || n.GetLocalRollback() != nil || n.GetDriver() != sv1.DriverHealth_DRIVER_HEALTH_OK ||
		n.GetDrift() != "" || n.GetDocumentExpired()
}

// overviewFinished is how many finished rollouts, and how many ended
// drills, the overview shows beside those under way: the newest. A fleet
// that releases many times a day would otherwise send its whole history to
// every open dashboard on every change.
const overviewFinished = 20

// recent keeps, in their order, every item not over and the keep items
// that ended last, as over says of each, and counts those left out.
func recent[T comparable](items []T, keep int, over func(T) (bool, time.Time)) ([]T, int) {
	type ended struct {
		item T
		at   time.Time
	}
	var done []ended
	for _, it := range items {
		if o, at := over(it); o {
			done = append(done, ended{it, at})
		}
	}
	if len(done) <= keep {
		return items, 0
	}
	slices.SortStableFunc(done, func(a, b ended) int { return b.at.Compare(a.at) })
	old := map[T]bool{}
	for _, e := range done[keep:] {
		old[e.item] = true
	}
	shown := make([]T, 0, len(items)-len(old))
	for _, it := range items {
		if !old[it] {
			shown = append(shown, it)
		}
	}
	return shown, len(old)
}

// runSeries samples the rollouts' series every second; every coordinator
// does, so any of them can chart a rollout.
func (s *Server) runSeries(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		now := s.cfg.Clock.Now()
		s.series.sample(s.fsm.State().RolloutsWhere(func(r *sv1.Rollout) bool { return sampled(r, now) }), s.analysis, now)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// readGate decides whether a read may be answered: current (leader
// verified), or this replica's own view when ?stale=true asks for it. It
// writes the refusal and returns false otherwise.
func (s *Server) readGate(w http.ResponseWriter, r *http.Request, current func() error) bool {
	if r.URL.Query().Get("stale") == "true" {
		s.metrics.queries.WithLabelValues(queryStale).Inc()
		w.Header().Set(bus.StaleHeader, s.cfg.NodeID)
		return true
	}
	if err := current(); err != nil {
		s.metrics.queries.WithLabelValues(queryDeclined).Inc()
		w.Header().Set(bus.NotCurrentHeader, s.cfg.NodeID)
		http.Error(w, err.Error()+"; ask the leader, or add ?stale=true", http.StatusServiceUnavailable)
		return false
	}
	s.metrics.queries.WithLabelValues(queryCurrent).Inc()
	return true
}

// checkParams refuses a query parameter the route does not take (besides
// stale), one given twice, and a stale that is neither true nor false.
func checkParams(q url.Values, params []string) error {
	for _, k := range slices.Sorted(maps.Keys(q)) {
		if k != "stale" && !slices.Contains(params, k) {
			takes := append(slices.Clone(params), "stale")
			return badParam(fmt.Sprintf("unknown parameter %q: this route takes %s", k, strings.Join(takes, ", ")))
		}
		if len(q[k]) > 1 {
			return badParam(fmt.Sprintf("parameter %q given %d times", k, len(q[k])))
		}
	}
	switch v := q.Get("stale"); v {
	case "", "true", "false":
		return nil
	default:
		return badParam(fmt.Sprintf("stale=%q: want true or false", v))
	}
}

// badParam is a read API request's parameter that makes no sense: the
// answer is 400, not 404.
type badParam string

func (e badParam) Error() string { return string(e) }

// writeAPI renders one read API answer.
func writeAPI(w http.ResponseWriter, m proto.Message, err error) {
	if err != nil {
		code := http.StatusNotFound
		var bad badParam
		if errors.As(err, &bad) {
			code = http.StatusBadRequest
		}
		http.Error(w, err.Error(), code)
		return
	}
	b, err := apiJSON.Marshal(m)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(append(b, '\n'))
}

// apiRoutes adds the read API: every answer is current (checked with the
// leader) unless ?stale=true asks for this replica's own view, which is
// then said in the Switchyard-Stale header.
func (s *Server) apiRoutes(mux *http.ServeMux) {
	// read serves a route that takes the query parameters params, and
	// stale: a misspelt one (?servce=web) would otherwise answer for
	// everything, as if asked.
	gated := func(current func() error, h func(*http.Request) (proto.Message, error), params ...string) http.Handler {
		return s.viewer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if err := checkParams(r.URL.Query(), params); err != nil {
				writeAPI(w, nil, err)
				return
			}
			if !s.readGate(w, r, current) {
				return
			}
			m, err := h(r)
			writeAPI(w, m, err)
		}))
	}
	read := func(h func(*http.Request) (proto.Message, error), params ...string) http.Handler {
		return gated(s.readCurrent, h, params...)
	}
	// Reads that count the fleet's nodes wait for a whole view of it.
	readFleet := func(h func(*http.Request) (proto.Message, error), params ...string) http.Handler {
		return gated(s.readCurrentFleet, h, params...)
	}
	mux.Handle("GET /v1/rollouts", readFleet(func(r *http.Request) (proto.Message, error) {
		q := &sv1.RolloutsQuery{Rollout: r.URL.Query().Get("name"), Service: r.URL.Query().Get("service")}
		switch v := r.URL.Query().Get("summary"); v {
		case "", "false":
		case "true":
			q.Summary = true
		default:
			return nil, badParam(fmt.Sprintf("summary=%q: want true or false", v))
		}
		if v := r.URL.Query().Get("limit"); v != "" {
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil {
				return nil, badParam(fmt.Sprintf("limit=%q: want how many of the newest rollouts to list, a whole number (0 lists every one)", v))
			}
			q.Limit = uint32(n)
		}
		if q.GetRollout() != "" && (q.GetService() != "" || q.GetLimit() != 0) {
			return nil, badParam("service and limit are for a list of rollouts; name=… takes neither")
		}
		return s.Rollouts(q)
	}, "name", "summary", "service", "limit"))
	mux.Handle("GET /v1/rollouts/{name}", readFleet(func(r *http.Request) (proto.Message, error) {
		return s.Rollouts(&sv1.RolloutsQuery{Rollout: r.PathValue("name")})
	}))
	mux.Handle("GET /v1/rollouts/{name}/series", read(func(r *http.Request) (proto.Message, error) {
		return s.Series(&sv1.SeriesQuery{Rollout: r.PathValue("name")})
	}))
	mux.Handle("GET /v1/fleet", readFleet(func(r *http.Request) (proto.Message, error) {
		q := &sv1.FleetStatusQuery{Service: r.URL.Query().Get("service")}
		if v := r.URL.Query().Get("reached"); v != "" {
			g, err := strconv.ParseUint(v, 10, 64)
			if err != nil || g == 0 {
				return nil, badParam(fmt.Sprintf("reached=%q: want a generation, a whole number above 0", v))
			}
			if q.GetService() == "" {
				return nil, badParam("reached: counts are of one service; name it with service=")
			}
			q.ReachedGeneration = g
		}
		return s.FleetStatus(q)
	}, "service", "reached"))
	mux.Handle("GET /v1/drills", read(func(r *http.Request) (proto.Message, error) {
		return s.Drills(&sv1.DrillsQuery{Drill: r.URL.Query().Get("name")})
	}, "name"))
	mux.Handle("GET /v1/overview", read(func(r *http.Request) (proto.Message, error) {
		// The overview says in its body whether it is current, as each
		// event of the stream does: a ?stale=true answer from a follower
		// or a cut-off leader must not read as confirmed.
		reason := ""
		if r.URL.Query().Get("stale") == "true" {
			if err := s.readCurrent(); err != nil {
				reason = err.Error()
			}
		}
		return s.Overview(reason)
	}))
	mux.Handle("GET /v1/events", s.viewer(http.HandlerFunc(s.events)))
}

// events streams the overview as server-sent events ("event: overview"),
// one every eventInterval while it changes and at least every 15 s. Every
// event says whether this coordinator could confirm its replica current;
// a follower's stream says it is stale rather than refuse, so a dashboard
// open on any coordinator keeps showing what it knows.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	fl, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	_, _ = fmt.Fprint(w, "retry: 2000\n\n")
	fl.Flush()
	s.metrics.eventStreams.Inc()
	defer s.metrics.eventStreams.Dec()
	tick := time.NewTicker(eventInterval)
	defer tick.Stop()
	var last []byte
	var lastSent time.Time
	for {
		if ev, err := s.liveEvent(); err == nil {
			if !bytes.Equal(ev.key, last) || time.Since(lastSent) >= 15*time.Second {
				if _, werr := fmt.Fprintf(w, "event: overview\ndata: %s\n\n", ev.data); werr != nil {
					return
				}
				fl.Flush()
				last, lastSent = ev.key, time.Now()
			}
		}
		select {
		case <-r.Context().Done():
			return
		case <-s.closing:
			return
		case <-tick.C:
		}
	}
}

// liveEvent is one rendered overview for the live streams, with the key
// that tells a change. Every open stream shares it: it is built at most
// once per half eventInterval, so more dashboards cost no more reads.
type liveEvent struct {
	data, key []byte
	at        time.Time
}

func (s *Server) liveEvent() (*liveEvent, error) {
	s.eventMu.Lock()
	defer s.eventMu.Unlock()
	if ev := s.lastEvent; ev != nil && time.Since(ev.at) < eventInterval/2 {
		return ev, nil
	}
	reason := ""
	if err := s.readCurrent(); err != nil {
		reason = err.Error()
		s.metrics.queries.WithLabelValues(queryStale).Inc()
	} else {
		s.metrics.queries.WithLabelValues(queryCurrent).Inc()
	}
	ov, err := s.Overview(reason)
	if err != nil {
		return nil, err
	}
	data, err := protojson.Marshal(ov)
	if err != nil {
		return nil, err
	}
	// Compare without the clock and node ages, which move on every tick.
	s.lastEvent = &liveEvent{data: data, key: eventKey(ov), at: time.Now()}
	return s.lastEvent, nil
}

// eventKey is the overview without what changes on every tick.
func eventKey(ov *sv1.Overview) []byte {
	c := proto.Clone(ov).(*sv1.Overview)
	c.At = nil
	clear := func(nodes []*sv1.NodeView) {
		for _, n := range nodes {
			n.SecondsSinceSeen = 0
		}
	}
	for _, svc := range c.GetFleet().GetServices() {
		for _, w := range svc.GetWaves() {
			clear(w.GetNodes())
		}
	}
	for _, v := range c.GetRollouts().GetRollouts() {
		clear(v.GetNodes())
	}
	b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(c)
	return b
}
