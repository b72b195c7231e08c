package analysis

import (
	"fmt"
	"slices"
	"time"
)

// Estimates, in bytes, of what the store holds beside the sketches' bins:
// map entries, structs and slice headers. They make the size gauge
// proportional to memory use, not equal to it.
const (
	cellBytes = 160
	// healthSecondBytes is a service's second of node health beside its
	// bitset and its nodes' own counts, nodeHealthBytes one node's.
	healthSecondBytes = 120
	nodeHealthBytes   = 24
	// nodeIDBytes is a node's entry in the numbering, beside its name.
	nodeIDBytes     = 40
	reportBytes     = 80
	backendBytes    = 72
	shedSecondBytes = 48
)

type storeSize struct {
	bytes   int64
	reports int64
}

func (r *nodeReport) sizeBytes() int64 {
	n := int64(reportBytes)
	for _, b := range r.backends {
		n += backendBytes
		if b.Latency != nil {
			n += int64(b.Latency.SizeBytes())
		}
	}
	return n
}

func (s *Store) forgetReports(reps []*nodeReport) {
	for _, r := range reps {
		s.size.reports--
		s.size.bytes -= r.sizeBytes()
	}
}

// Size is how much telemetry a Store holds.
type Size struct {
	// Nodes is how many nodes reported in the newest whole second, over
	// every service.
	Nodes int
	// Seconds is how many (service, second) series the store keeps.
	Seconds int
	// Reports is how many node reports wait for the sequential tests.
	Reports int64
	// Bytes estimates the memory all of it takes.
	Bytes int64
}

// Size reports the store's size. It costs a walk over services, not over
// nodes or reports.
func (s *Store) Size() Size {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := Size{Reports: s.size.reports, Bytes: s.size.bytes}
	for svc, series := range s.nodes {
		out.Seconds += len(series)
		newest := s.newestNode[svc]
		// The newest second may still be filling.
		n := 0
		for _, h := range []*healthSecond{series[newest], series[newest-1]} {
			if h != nil {
				n = max(n, h.nodes.count())
			}
		}
		out.Nodes += n
	}
	for _, series := range s.services {
		out.Seconds += len(series)
	}
	for _, series := range s.shed {
		out.Bytes += int64(len(series)) * shedSecondBytes
	}
	return out
}

// MarkShed records reports of a service that intake dropped in the second
// ending at sec (unix): the windows holding that second are missing data and
// can no longer pass. A window already judged a pass is judged again.
func (s *Store) MarkShed(service string, sec int64, reports uint64) {
	if reports == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	series := s.shed[service]
	if series == nil {
		series = map[int64]uint64{}
		s.shed[service] = series
	}
	if _, ok := series[sec]; !ok {
		cut := sec - int64(Retention/time.Second)
		for t := range series {
			if t < cut {
				delete(series, t)
			}
		}
	}
	series[sec] += reports
	// As shedIn reads them: a report shed in the second after a window
	// may be of the window's last second.
	for k, res := range s.cache {
		if res.Verdict == Pass && sec > res.Start.Unix() && sec <= res.End.Unix()+1 {
			delete(s.cache, k)
		}
	}
}

// Shed is how many of a service's reports intake dropped over (start, end]
// and the second after: intake marks a report by the second it arrived in,
// and a report of the window's last second arrives after it.
func (s *Store) Shed(service string, start, end time.Time) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.shedIn(service, start, end)
}

func (s *Store) shedIn(service string, start, end time.Time) uint64 {
	var n uint64
	series := s.shed[service]
	if len(series) == 0 {
		return 0
	}
	for sec := start.Unix() + 1; sec <= end.Unix()+1; sec++ {
		n += series[sec]
	}
	return n
}

// deafSpan is a span of Unix seconds, from and to inclusive, in which the
// coordinator heard no report; to is 0 while it lasts.
type deafSpan struct{ from, to int64 }

// Deaf records that this coordinator is off the bus since from: every
// service's reports of that time are lost to it, and no window that
// reaches into it passes. Heard ends the span.
func (s *Store) Deaf(from time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := len(s.deaf); n > 0 && s.deaf[n-1].to == 0 {
		return // still deaf
	}
	cut := from.Add(-Retention).Unix()
	s.deaf = slices.DeleteFunc(s.deaf, func(d deafSpan) bool { return d.to < cut })
	s.deaf = append(s.deaf, deafSpan{from: from.Unix()})
	// A window already judged a pass whose reports were still coming in
	// when the coordinator stopped hearing them is judged again.
	for k, res := range s.cache {
		if res.Verdict == Pass && res.End.Unix()+1 >= from.Unix() {
			delete(s.cache, k)
		}
	}
}

// Heard ends the span Deaf began, at to: the reports of that second may
// be lost too.
func (s *Store) Heard(to time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := len(s.deaf); n > 0 && s.deaf[n-1].to == 0 {
		s.deaf[n-1].to = max(to.Unix(), s.deaf[n-1].from)
	}
}

// DeafIn reports whether the coordinator was off the bus in (start, end]
// or the second after (when a window's last reports arrive).
func (s *Store) DeafIn(start, end time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.deafIn(start, end)
}

func (s *Store) deafIn(start, end time.Time) bool {
	lo, hi := start.Unix()+1, end.Unix()+1
	for _, d := range s.deaf {
		if d.from <= hi && (d.to == 0 || d.to >= lo) {
			return true
		}
	}
	return false
}

// missing turns a passing window with shed reports into an inconclusive
// one: the reports that were dropped could have failed it. A failing
// window stays failed: the reports that did arrive show the failure.
func missing(res WindowResult, shed uint64) WindowResult {
	if shed == 0 || res.Verdict != Pass {
		return res
	}
	res.Verdict = Inconclusive
	res.Reason = fmt.Sprintf("%d reports were shed at intake in this window: missing data is never a pass", shed)
	return res
}

// Services lists the services the store has reports of.
func (s *Store) Services() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.nodes))
	for svc := range s.nodes {
		out = append(out, svc)
	}
	return out
}
