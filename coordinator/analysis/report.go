package analysis

import (
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/internal/sketch"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Report is a health report as the store merges it: only the fields the
// windows and the sequential tests read, already checked.
type Report struct {
	Node, Service, Rollout string
	Generation             uint64
	Wave                   int32
	// End is the unix second the report's window ends in.
	End      int64
	Backends []BackendReport
	// ScaledSketches counts the backends whose latency sketch held more
	// samples than their requests allow and was scaled down (see
	// latencySlack).
	ScaledSketches int
	// Drill is the drill whose fault was active on the node in the
	// window, if any.
	Drill string
}

// BackendReport is one backend's traffic in a Report.
type BackendReport struct {
	Backend          string
	Requests, Errors uint64
	Queued           uint32
	Latency          *sketch.Sketch
	// Down: the proxy held the backend out of rotation on its own (failing
	// health checks) at the end of the window, at Weight, the weight it
	// had then.
	Down   bool
	Weight uint32
}

// ReportOf checks a decoded HealthReport and turns it into a Report.
func ReportOf(r *sv1.HealthReport) (*Report, error) {
	if r.GetNode() == "" || r.GetService() == "" || r.GetWindowEnd() == nil {
		return nil, fmt.Errorf("%w: node, service and window_end are required", ErrBadReport)
	}
	out := &Report{Node: r.GetNode(), Service: r.GetService(), Rollout: r.GetRolloutId(), Generation: r.GetGeneration(),
		Wave: r.GetWave(), End: r.GetWindowEnd().AsTime().Unix(), Backends: make([]BackendReport, 0, len(r.GetBackends())),
		Drill: r.GetDrillId()}
	for _, b := range r.GetBackends() {
		sk, latErr := sketch.FromProto(b.GetLatency())
		br := BackendReport{Backend: b.GetBackend(), Requests: b.GetRequests(), Errors: b.GetErrors(), Queued: b.GetQueued(), Latency: sk, Down: b.GetDown(), Weight: b.GetWeight()}
		scaled, err := br.check(latErr)
		if err != nil {
			return nil, err
		}
		if scaled {
			out.ScaledSketches++
		}
		out.Backends = append(out.Backends, br)
	}
	return out, nil
}

// MaxRequests is the most requests one backend's part of a report may
// count: some 4 billion, far beyond any backend's traffic in one telemetry
// window. Bounded, a service's sums over every node and second of the
// 15 minutes kept cannot wrap around.
const MaxRequests = 1<<32 - 1

// latencySlack is how many more latency samples than requests a backend's
// part may hold as it is. An agent's requests and latencies come from two
// sources read a moment apart (HAProxy's counters beside its request log
// when log lines were dropped; Envoy's load reports beside its access
// logs, which arrive sooner), so a window's sketch may hold a few more
// samples than its requests. One far bigger would weigh one node's
// latencies over the whole fleet's; it is scaled down to this many.
func latencySlack(requests uint64) float64 { return float64(requests)/8 + 64 }

// check refuses a backend's part that cannot be true, in the order
// ReportOf and the Decoder both keep: errors over requests, then a latency
// sketch that did not load (latErr), then requests out of bounds. A sketch
// holding more samples than the requests allow is scaled down to them, and
// check reports it.
func (b *BackendReport) check(latErr error) (scaled bool, err error) {
	if b.Errors > b.Requests {
		return false, fmt.Errorf("%w: %s has %d errors in %d requests", ErrBadReport, b.Backend, b.Errors, b.Requests)
	}
	if latErr != nil {
		return false, fmt.Errorf("%w: %s: %v", ErrBadReport, b.Backend, latErr)
	}
	if b.Requests > MaxRequests {
		return false, fmt.Errorf("%w: %s has %d requests, more than %d", ErrBadReport, b.Backend, b.Requests, uint64(MaxRequests))
	}
	most := float64(b.Requests) + latencySlack(b.Requests)
	if n := b.Latency.Count(); n > most {
		b.Latency.Scale(most / n)
		return true, nil
	}
	return false, nil
}

// Decoder reads HealthReports off the wire straight into Reports, without
// building the protobuf message first: at a hundred thousand reports a
// second the generic decoder's allocations are most of the cost. It accepts
// and refuses exactly what proto.Unmarshal followed by ReportOf does
// (FuzzDecoder_MatchesProtoUnmarshal). A Decoder is not safe for
// concurrent use; each intake worker has its own.
type Decoder struct {
	backends []BackendReport
	sketches []sketch.Sketch
	latErrs  []error
	names    map[string]string
	// Hints are the names the last report held: the service, the rollout
	// and each backend by its place. Reports of one service name the same
	// backends in the same order, and a name equal to its hint is taken
	// without hashing or checking it again.
	service, rollout string
	backendNames     []string
	spareHint        string
	// The Reports, their parts, sketches and bins are carved from slabs:
	// one allocation holds many reports', and after Reuse the next reports
	// overwrite the earlier ones in place. A full slab is replaced, never
	// grown, so what was handed out stays where it is.
	arena      []float64
	reportSlab []Report
	partSlab   []BackendReport
	sketchSlab []sketch.Sketch
	// used counts the bins, reports and parts handed out since Reuse: the
	// slabs Reuse keeps are made big enough for that much.
	usedBins, usedReports, usedParts int
}

// Slab sizes: about a batch of 10-backend reports each.
const (
	arenaSlab  = 1 << 16
	reportSlab = 256
	partSlab   = 4096
)

// Reuse lets the Decoder overwrite every Report it returned so far. Call it
// once nothing reads them any more: Store.AddReports keeps copies of what
// it keeps, so an intake worker reuses its Decoder after each batch and
// decodes without allocating for the reports themselves.
func (d *Decoder) Reuse() {
	// A slab is replaced with room for a quarter more than the batch
	// used: batches of about the same size then fit in it, where one made
	// to measure would be replaced again by the next batch a little
	// bigger (and each report asks for room for its whole size in bins).
	if d.usedBins > cap(d.arena) {
		d.arena = make([]float64, 0, d.usedBins+d.usedBins/4)
	}
	if d.usedReports > cap(d.reportSlab) {
		d.reportSlab = make([]Report, 0, d.usedReports+d.usedReports/4)
	}
	if d.usedParts > cap(d.partSlab) {
		d.partSlab = make([]BackendReport, 0, d.usedParts+d.usedParts/4)
	}
	if d.usedParts > cap(d.sketchSlab) {
		d.sketchSlab = make([]sketch.Sketch, 0, d.usedParts+d.usedParts/4)
	}
	d.arena, d.reportSlab, d.partSlab, d.sketchSlab = d.arena[:0], d.reportSlab[:0], d.partSlab[:0], d.sketchSlab[:0]
	d.usedBins, d.usedReports, d.usedParts = 0, 0, 0
}

// newReport hands out a zeroed Report from the slab.
func (d *Decoder) newReport() *Report {
	if len(d.reportSlab) == cap(d.reportSlab) {
		d.reportSlab = make([]Report, 0, reportSlab)
	}
	d.reportSlab = append(d.reportSlab, Report{})
	d.usedReports++
	return &d.reportSlab[len(d.reportSlab)-1]
}

// parts copies the decoded backends and their sketches into the slabs.
func (d *Decoder) parts() []BackendReport {
	n := len(d.backends)
	if cap(d.partSlab)-len(d.partSlab) < n {
		d.partSlab = make([]BackendReport, 0, max(n, partSlab))
	}
	if cap(d.sketchSlab)-len(d.sketchSlab) < n {
		d.sketchSlab = make([]sketch.Sketch, 0, max(n, partSlab))
	}
	d.usedParts += n
	at := len(d.partSlab)
	d.partSlab = append(d.partSlab, d.backends...)
	d.sketchSlab = append(d.sketchSlab, d.sketches...)
	parts := d.partSlab[at:len(d.partSlab):len(d.partSlab)]
	sketches := d.sketchSlab[at:len(d.sketchSlab):len(d.sketchSlab)]
	for i := range parts {
		parts[i].Latency = &sketches[i]
	}
	return parts
}

// maxInterned bounds the names a Decoder keeps to share: services,
// rollouts and backends repeat, garbage does not.
const maxInterned = 4096

func (d *Decoder) intern(b []byte) string {
	if s, ok := d.names[string(b)]; ok {
		return s
	}
	s := string(b)
	if d.names == nil {
		d.names = map[string]string{}
	}
	if len(d.names) < maxInterned {
		d.names[s] = s
	}
	return s
}

// Field numbers of the HealthReport messages in proto/switchyard/v1.
const (
	fReportNode        = 1
	fReportService     = 2
	fReportWindowStart = 3
	fReportWindowEnd   = 4
	fReportGeneration  = 5
	fReportRollout     = 6
	fReportWave        = 7
	fReportBackends    = 8
	fReportProbes      = 9
	fReportDrill       = 20

	fBackendName     = 1
	fBackendRequests = 2
	fBackendErrors   = 3
	fBackendLatency  = 4
	fBackendQueued   = 6
	fBackendWeight   = 7
	fBackendDown     = 8

	fSketchAccuracy = 1
	fSketchZero     = 2
	fSketchOffset   = 3
	fSketchCounts   = 4
	fSketchWhole    = 5

	fTimestampSeconds = 1
	fTimestampNanos   = 2
)

func errWire(what string) error {
	return fmt.Errorf("%w: cannot decode %s", ErrBadReport, what)
}

// wireFields walks a message's fields one at a time: after next says
// there is one, num and typ are its number and wire type and v (varint and
// fixed types) or bs (bytes) its value. A loop over next does the work of
// a callback per field without an indirect call per field; at a hundred
// thousand reports of a few hundred fields a second, that is most of the
// walk's cost.
type wireFields struct {
	b    []byte
	what string
	num  protowire.Number
	typ  protowire.Type
	v    uint64
	bs   []byte
	err  error
}

// next moves to the next field; false at the end of the message or at a
// field that cannot be read (err says so).
func (w *wireFields) next() bool {
	b := w.b
	if len(b) == 0 {
		return false
	}
	// Tags of the fields read here and values below 128 take one byte.
	var n int
	if b[0] < 0x80 {
		w.num, w.typ, n = protowire.Number(b[0]>>3), protowire.Type(b[0]&7), 1
		if w.num == 0 {
			return w.fail()
		}
	} else {
		var num protowire.Number
		num, w.typ, n = protowire.ConsumeTag(b)
		// ConsumeTag takes field numbers up to 2^31-1; proto.Unmarshal
		// refuses those above the largest valid one.
		if n < 0 || num > protowire.MaxValidNumber {
			return w.fail()
		}
		w.num = num
	}
	b = b[n:]
	switch w.typ {
	case protowire.VarintType:
		if len(b) > 0 && b[0] < 0x80 {
			w.v, n = uint64(b[0]), 1
		} else {
			w.v, n = protowire.ConsumeVarint(b)
		}
	case protowire.Fixed64Type:
		w.v, n = protowire.ConsumeFixed64(b)
	case protowire.Fixed32Type:
		var v32 uint32
		v32, n = protowire.ConsumeFixed32(b)
		w.v = uint64(v32)
	case protowire.BytesType:
		if len(b) > 0 && b[0] < 0x80 && int(b[0]) < len(b) {
			// A length below 128, and room for it.
			w.bs, n = b[1:1+b[0]], 1+int(b[0])
		} else {
			w.bs, n = protowire.ConsumeBytes(b)
		}
	default:
		n = protowire.ConsumeFieldValue(w.num, w.typ, b)
	}
	if n < 0 {
		return w.fail()
	}
	w.b = b[n:]
	return true
}

func (w *wireFields) fail() bool {
	w.err, w.b = errWire(w.what), nil
	return false
}

// str returns bs as a string once it is checked as UTF-8. hint is the name
// the field held in the last report: equal to it, bs needs no check and no
// lookup; otherwise it becomes the hint for the next report.
func (d *Decoder) str(bs []byte, hint *string, field string) (string, error) {
	if string(bs) == *hint {
		return *hint, nil
	}
	if !utf8.Valid(bs) {
		return "", fmt.Errorf("%w: %s is not valid UTF-8", ErrBadReport, field)
	}
	*hint = d.intern(bs)
	return *hint, nil
}

// maxBackendHints bounds the places hinted: a report naming thousands of
// backends gets no hints past these.
const maxBackendHints = 64

// backendHint is the hint for the backend at place i of a report.
func (d *Decoder) backendHint(i int) *string {
	if i >= maxBackendHints {
		d.spareHint = ""
		return &d.spareHint
	}
	if i >= len(d.backendNames) {
		d.backendNames = append(d.backendNames, make([]string, i+1-len(d.backendNames))...)
	}
	return &d.backendNames[i]
}

// Decode reads one wire HealthReport.
func (d *Decoder) Decode(b []byte) (*Report, error) {
	r := d.newReport()
	var endSec, endNanos int64
	haveEnd, probes := false, false
	// Every count is at least a byte of the message (a whole count's
	// varint; a double takes 8): with that much room left the arena does
	// not grow while this report is decoded. A report bigger than a slab
	// grows it as its bins come instead.
	if need := min(len(b), arenaSlab); cap(d.arena)-len(d.arena) < need {
		d.arena = make([]float64, 0, arenaSlab)
	}
	from := len(d.arena)
	defer func() { d.usedBins += len(d.arena) - from }()
	d.backends, d.sketches, d.latErrs = d.backends[:0], d.sketches[:0], d.latErrs[:0]
	w := wireFields{b: b, what: "health report"}
	for w.next() {
		typ, bs, v := w.typ, w.bs, w.v
		if typ != protowire.BytesType && typ != protowire.VarintType {
			continue
		}
		var err error
		switch w.num {
		case fReportNode, fReportDrill:
			if typ == protowire.BytesType {
				if !utf8.Valid(bs) {
					return nil, fmt.Errorf("%w: field %d is not valid UTF-8", ErrBadReport, w.num)
				}
				if w.num == fReportNode {
					r.Node = string(bs)
				} else {
					r.Drill = string(bs)
				}
			}
		case fReportService:
			if typ == protowire.BytesType {
				r.Service, err = d.str(bs, &d.service, "service")
			}
		case fReportRollout:
			if typ == protowire.BytesType {
				r.Rollout, err = d.str(bs, &d.rollout, "rollout_id")
			}
		case fReportGeneration:
			if typ == protowire.VarintType {
				r.Generation = v
			}
		case fReportWave:
			if typ == protowire.VarintType {
				r.Wave = int32(v)
			}
		case fReportWindowStart, fReportWindowEnd:
			if typ != protowire.BytesType {
				continue
			}
			end := w.num == fReportWindowEnd
			haveEnd = haveEnd || end
			ts := wireFields{b: bs, what: "timestamp"}
			for ts.next() {
				switch {
				case end && ts.num == fTimestampSeconds && ts.typ == protowire.VarintType:
					endSec = int64(ts.v)
				case end && ts.num == fTimestampNanos && ts.typ == protowire.VarintType:
					endNanos = int64(int32(ts.v))
				}
			}
			err = ts.err
		case fReportBackends:
			if typ == protowire.BytesType {
				var br BackendReport
				var sk sketch.Sketch
				var latErr error
				br, sk, latErr, err = d.backend(bs)
				d.backends = append(d.backends, br)
				d.sketches = append(d.sketches, sk)
				d.latErrs = append(d.latErrs, latErr)
			}
		case fReportProbes:
			probes = probes || typ == protowire.BytesType
		}
		if err != nil {
			return nil, err
		}
	}
	if w.err != nil {
		return nil, w.err
	}
	if probes {
		// Probe results are rare and nested deeper; the generic decoder
		// checks them.
		var hr sv1.HealthReport
		if err := proto.Unmarshal(b, &hr); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrBadReport, err)
		}
		return ReportOf(&hr)
	}
	if r.Node == "" || r.Service == "" || !haveEnd {
		return nil, fmt.Errorf("%w: node, service and window_end are required", ErrBadReport)
	}
	r.End = time.Unix(endSec, endNanos).Unix()
	r.Backends = d.parts()
	latErrs := d.latErrs
	for i := range r.Backends {
		scaled, err := r.Backends[i].check(latErrs[i])
		if err != nil {
			return nil, err
		}
		if scaled {
			r.ScaledSketches++
		}
	}
	return r, nil
}

// backend reads one BackendHealth; a refused sketch is returned apart, to
// be named after the errors-over-requests check as ReportOf does.
func (d *Decoder) backend(b []byte) (br BackendReport, sk sketch.Sketch, latErr, err error) {
	name := d.backendHint(len(d.backends))
	var accuracy, zero float64
	var offset int32
	from := len(d.arena)
	haveLatency := false
	// Both forms of the bins go to the arena as they come; how many came in
	// each form, and the largest whole count, are checked once the backend
	// is read, as proto.Unmarshal's merged message is.
	doubles, wholes := 0, 0
	var mostWhole, sumWhole uint64
	f := wireFields{b: b, what: "backend"}
	for f.next() {
		num, typ := f.num, f.typ
		switch {
		case num == fBackendName && typ == protowire.BytesType:
			if br.Backend, err = d.str(f.bs, name, "backend"); err != nil {
				return br, sk, nil, err
			}
		case num == fBackendRequests && typ == protowire.VarintType:
			br.Requests = f.v
		case num == fBackendErrors && typ == protowire.VarintType:
			br.Errors = f.v
		case num == fBackendQueued && typ == protowire.VarintType:
			br.Queued = uint32(f.v)
		case num == fBackendWeight && typ == protowire.VarintType:
			br.Weight = uint32(f.v)
		case num == fBackendDown && typ == protowire.VarintType:
			br.Down = f.v != 0
		case num == fBackendLatency && typ == protowire.BytesType:
			haveLatency = true
			lat := wireFields{b: f.bs, what: "latency sketch"}
			for lat.next() {
				v := lat.v
				switch num, typ := lat.num, lat.typ; {
				case num == fSketchAccuracy && typ == protowire.Fixed64Type:
					accuracy = math.Float64frombits(v)
				case num == fSketchZero && typ == protowire.Fixed64Type:
					zero = math.Float64frombits(v)
				case num == fSketchOffset && typ == protowire.VarintType:
					offset = int32(protowire.DecodeZigZag(v & math.MaxUint32))
				case num == fSketchCounts && typ == protowire.Fixed64Type:
					d.arena = append(d.arena, math.Float64frombits(v))
					doubles++
				case num == fSketchCounts && typ == protowire.BytesType:
					bs := lat.bs
					if len(bs)%8 != 0 {
						return br, sk, nil, errWire("latency sketch counts")
					}
					at := len(d.arena)
					d.arena = slices.Grow(d.arena, len(bs)/8)[:at+len(bs)/8]
					dst := d.arena[at:]
					for i := range dst {
						dst[i] = math.Float64frombits(binary.LittleEndian.Uint64(bs[8*i:]))
					}
					doubles += len(dst)
				case num == fSketchWhole && typ == protowire.VarintType:
					d.arena = append(d.arena, float64(v))
					wholes++
					mostWhole = max(mostWhole, v)
					sumWhole = addCapped(sumWhole, v)
				case num == fSketchWhole && typ == protowire.BytesType:
					n, most, sum, err := d.appendVarints(lat.bs)
					if err != nil {
						return br, sk, nil, err
					}
					wholes += n
					mostWhole = max(mostWhole, most)
					sumWhole = addCapped(sumWhole, sum)
				}
			}
			if lat.err != nil {
				return br, sk, nil, lat.err
			}
		}
	}
	err = f.err
	if err != nil || !haveLatency {
		return br, sk, nil, err
	}
	// A latency field given twice merges, as proto.Unmarshal merges it:
	// its counts follow on in the arena.
	if accuracy, latErr = sketch.CheckForms(accuracy, doubles, wholes, mostWhole); latErr == nil {
		counts := d.arena[from:len(d.arena):len(d.arena)]
		if doubles == 0 {
			latErr = sk.LoadWhole(accuracy, zero, offset, counts, sumWhole)
		} else {
			latErr = sk.Load(accuracy, zero, offset, counts)
		}
	}
	return br, sk, latErr, nil
}

// addCapped is a + b, or the largest uint64 where that overflows: a sum
// past sketch.MaxWholeCount is only ever compared with it.
func addCapped(a, b uint64) uint64 {
	if s := a + b; s >= a {
		return s
	}
	return math.MaxUint64
}

// appendVarints appends the packed whole counts in bs to the arena as
// float64 and returns how many there were, the largest and their sum
// (capped as addCapped caps it).
func (d *Decoder) appendVarints(bs []byte) (n int, most, sum uint64, err error) {
	// A count takes a byte at least: the arena grows at most once, and
	// the counts are written in place.
	at := len(d.arena)
	d.arena = slices.Grow(d.arena, len(bs))
	dst := d.arena[at : at+len(bs)]
	for len(bs) > 0 {
		// Counts of one second's requests in one bin are mostly below 128:
		// one byte, read without the general varint loop.
		v, w := uint64(bs[0]), 1
		if v >= 0x80 {
			if v, w = protowire.ConsumeVarint(bs); w < 0 {
				return 0, 0, 0, errWire("latency sketch whole_counts")
			}
		}
		bs = bs[w:]
		dst[n] = float64(v)
		n++
		most = max(most, v)
		sum = addCapped(sum, v)
	}
	d.arena = d.arena[:at+n]
	return n, most, sum, nil
}
