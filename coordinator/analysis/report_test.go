package analysis

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/internal/sketch"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// testReport is a report as an agent sends it: backends each with a latency
// sketch of one second's requests.
func testReport(node string, end int64, backends int, r *rand.Rand) *sv1.HealthReport {
	rep := &sv1.HealthReport{Node: node, Service: "web", RolloutId: "web-1", Generation: 7,
		WindowStart: timestamppb.New(time.Unix(end-1, 0)), WindowEnd: timestamppb.New(time.Unix(end, 0))}
	for b := range backends {
		sk := sketch.New()
		n := 20 + r.IntN(20)
		for range n {
			sk.Add(0.020 + r.ExpFloat64()*0.002)
		}
		rep.Backends = append(rep.Backends, &sv1.BackendHealth{Backend: fmt.Sprintf("b%d", b), Requests: uint64(n), Errors: uint64(r.IntN(3)), Latency: sk.ToProto()})
	}
	return rep
}

// decodeBoth decodes wire bytes the generic way and the Decoder's way.
func decodeBoth(d *Decoder, wire []byte) (slow, fast *Report, slowErr, fastErr error) {
	var hr sv1.HealthReport
	if slowErr = proto.Unmarshal(wire, &hr); slowErr == nil {
		slow, slowErr = ReportOf(&hr)
	}
	fast, fastErr = d.Decode(wire)
	return slow, fast, slowErr, fastErr
}

func sameReport(a, b *Report) bool {
	if a.Node != b.Node || a.Service != b.Service || a.Rollout != b.Rollout || a.Generation != b.Generation || a.Wave != b.Wave ||
		a.End != b.End || len(a.Backends) != len(b.Backends) {
		return false
	}
	for i := range a.Backends {
		x, y := a.Backends[i], b.Backends[i]
		if x.Backend != y.Backend || x.Requests != y.Requests || x.Errors != y.Errors || x.Queued != y.Queued || x.Down != y.Down ||
			!reflect.DeepEqual(x.Latency.Bins(), y.Latency.Bins()) || x.Latency.Count() != y.Latency.Count() {
			return false
		}
	}
	return true
}

func checkDecoders(t *testing.T, d *Decoder, wire []byte) {
	t.Helper()
	slow, fast, slowErr, fastErr := decodeBoth(d, wire)
	if (slowErr == nil) != (fastErr == nil) {
		t.Fatalf("proto.Unmarshal+ReportOf: %v; Decoder: %v (input %x)", slowErr, fastErr, wire)
	}
	if fastErr != nil {
		if !errors.Is(fastErr, ErrBadReport) {
			t.Fatalf("Decoder error %v does not wrap ErrBadReport", fastErr)
		}
		return
	}
	if !sameReport(slow, fast) {
		t.Fatalf("reports differ:\n proto   %+v\n decoder %+v (input %x)", slow, fast, wire)
	}
}

// doubleForm is rep with its sketches' bins as doubles, as agents sent
// them before whole_counts.
func doubleForm(rep *sv1.HealthReport) *sv1.HealthReport {
	old := proto.Clone(rep).(*sv1.HealthReport)
	for _, b := range old.GetBackends() {
		if l := b.GetLatency(); l != nil {
			for _, c := range l.GetWholeCounts() {
				l.Counts = append(l.Counts, float64(c))
			}
			l.WholeCounts = nil
			l.RelativeAccuracy = sketch.RelativeAccuracy
		}
	}
	return old
}

// withLatency is a report of one backend whose latency fields are the
// given encoded LatencySketch bodies, each its own field (two merge).
func withLatency(latency ...[]byte) []byte {
	var be []byte
	be = protowire.AppendTag(be, fBackendName, protowire.BytesType)
	be = protowire.AppendString(be, "green")
	be = protowire.AppendTag(be, fBackendRequests, protowire.VarintType)
	be = protowire.AppendVarint(be, MaxRequests)
	for _, l := range latency {
		be = protowire.AppendTag(be, fBackendLatency, protowire.BytesType)
		be = protowire.AppendBytes(be, l)
	}
	var b []byte
	b = protowire.AppendTag(b, fReportNode, protowire.BytesType)
	b = protowire.AppendString(b, "n")
	b = protowire.AppendTag(b, fReportService, protowire.BytesType)
	b = protowire.AppendString(b, "web")
	b = protowire.AppendTag(b, fReportWindowEnd, protowire.BytesType)
	b = protowire.AppendBytes(b, nil)
	b = protowire.AppendTag(b, fReportBackends, protowire.BytesType)
	return protowire.AppendBytes(b, be)
}

// sketchHead is a LatencySketch body with the accuracy, the given offset
// and the raw fields after it.
func sketchHead(offset int32, raw ...[]byte) []byte {
	b := protowire.AppendTag(nil, fSketchAccuracy, protowire.Fixed64Type)
	b = protowire.AppendFixed64(b, math.Float64bits(sketch.RelativeAccuracy))
	b = protowire.AppendTag(b, fSketchOffset, protowire.VarintType)
	b = protowire.AppendVarint(b, protowire.EncodeZigZag(int64(offset)))
	for _, r := range raw {
		b = append(b, r...)
	}
	return b
}

// packedWhole is a packed whole_counts field of the given varint bytes.
func packedWhole(varints ...[]byte) []byte {
	var body []byte
	for _, v := range varints {
		body = append(body, v...)
	}
	return protowire.AppendBytes(protowire.AppendTag(nil, fSketchWhole, protowire.BytesType), body)
}

func varint(v uint64) []byte { return protowire.AppendVarint(nil, v) }

// sketchWireCases are hand-made wire forms of latency sketches at the edges
// of the two forms of their bins, for the decoders to agree on.
func sketchWireCases() map[string][]byte {
	doubles := protowire.AppendTag(nil, fSketchCounts, protowire.BytesType)
	doubles = protowire.AppendBytes(doubles, binary.LittleEndian.AppendUint64(nil, math.Float64bits(3)))
	manyWhole := make([][]byte, sketch.MaxBins+1)
	for i := range manyWhole {
		manyWhole[i] = []byte{1}
	}
	return map[string][]byte{
		"whole":                     withLatency(sketchHead(-5, packedWhole(varint(1), varint(0), varint(300)))),
		"doubles":                   withLatency(sketchHead(-5, doubles)),
		"both in one sketch":        withLatency(sketchHead(-5, doubles, packedWhole(varint(1)))),
		"both over two fields":      withLatency(sketchHead(-5, doubles), sketchHead(-5, packedWhole(varint(1)))),
		"whole twice merges":        withLatency(sketchHead(-5, packedWhole(varint(1))), sketchHead(-9, packedWhole(varint(2), varint(3)))),
		"empty whole beside counts": withLatency(sketchHead(-5, doubles, packedWhole())),
		"unpacked whole": withLatency(sketchHead(-5, protowire.AppendVarint(protowire.AppendTag(nil, fSketchWhole, protowire.VarintType), 4),
			protowire.AppendVarint(protowire.AppendTag(nil, fSketchWhole, protowire.VarintType), 200))),
		"whole as fixed64 is unknown": withLatency(sketchHead(-5, protowire.AppendFixed64(protowire.AppendTag(nil, fSketchWhole, protowire.Fixed64Type), 7))),
		"2^53-1":                      withLatency(sketchHead(-5, packedWhole(varint(sketch.MaxWholeCount)))),
		"2^53":                        withLatency(sketchHead(-5, packedWhole(varint(1), varint(1<<53)))),
		"max uint64":                  withLatency(sketchHead(-5, packedWhole(varint(math.MaxUint64)))),
		"unpacked 2^53":               withLatency(sketchHead(-5, protowire.AppendVarint(protowire.AppendTag(nil, fSketchWhole, protowire.VarintType), 1<<53))),
		"overlong 1 in 10 bytes":      withLatency(sketchHead(-5, packedWhole([]byte{0x81, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00}))),
		"varint of 11 bytes":          withLatency(sketchHead(-5, packedWhole([]byte{0x81, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00}))),
		"varint over 64 bits":         withLatency(sketchHead(-5, packedWhole([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02}))),
		"truncated varint":            withLatency(sketchHead(-5, packedWhole(varint(5), []byte{0x80}))),
		"MaxBins whole":               withLatency(sketchHead(-5, packedWhole(manyWhole[1:]...))),
		"over MaxBins whole":          withLatency(sketchHead(-5, packedWhole(manyWhole...))),
		"whole outside the mapping":   withLatency(sketchHead(math.MaxInt32, packedWhole(varint(1)))),
		// protowire.ConsumeTag takes field numbers up to 2^31-1,
		// proto.Unmarshal none above 2^29-1.
		"field number 2^29": withLatency(sketchHead(-5, packedWhole(varint(1)), varint(uint64(protowire.MaxValidNumber+1)<<3), varint(1))),
	}
}

// The whole form, the double form and every refusal of a sketch's bins
// read alike through both decoders; an old agent's double form and the
// whole form of the same report give the same report.
func TestDecoder_BothFormsOfSketchesMatchProtoUnmarshal(t *testing.T) {
	var d Decoder
	cases := sketchWireCases()
	refused := map[string]string{
		"both in one sketch":        "both counts (1 bins) and whole_counts (1 bins)",
		"both over two fields":      "both counts (1 bins) and whole_counts (1 bins)",
		"2^53":                      "whole_counts holds 9007199254740992",
		"max uint64":                "whole_counts holds 18446744073709551615",
		"unpacked 2^53":             "whole_counts holds 9007199254740992",
		"varint of 11 bytes":        "cannot decode",
		"varint over 64 bits":       "cannot decode",
		"truncated varint":          "cannot decode",
		"over MaxBins whole":        "4097 bins, at most 4096",
		"whole outside the mapping": "outside the mapping",
		"field number 2^29":         "cannot decode",
	}
	for name, wire := range cases {
		t.Run(name, func(t *testing.T) {
			checkDecoders(t, &d, wire)
			_, err := d.Decode(wire)
			want, bad := refused[name]
			if bad != (err != nil) || (bad && !strings.Contains(err.Error(), want)) {
				t.Fatalf("Decode: %v; want refused %v saying %q", err, bad, want)
			}
		})
	}
	r := rand.New(rand.NewPCG(15, 16))
	for i := range 20 {
		rep := testReport(fmt.Sprintf("edge-%d", i), 1_700_000_000, 10, r)
		compact, err := proto.Marshal(rep)
		if err != nil {
			t.Fatal(err)
		}
		old, err := proto.Marshal(doubleForm(rep))
		if err != nil {
			t.Fatal(err)
		}
		if len(compact) >= len(old) {
			t.Fatalf("compact report %d bytes, double form %d", len(compact), len(old))
		}
		checkDecoders(t, &d, compact)
		checkDecoders(t, &d, old)
		a, err := d.Decode(compact)
		if err != nil {
			t.Fatal(err)
		}
		b, err := d.Decode(old)
		if err != nil {
			t.Fatal(err)
		}
		if !sameReport(a, b) {
			t.Fatalf("the double form reads differently:\n whole  %+v\n double %+v", a, b)
		}
	}
}

func TestDecoder_MatchesProtoUnmarshal(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	var d Decoder
	cases := []*sv1.HealthReport{
		testReport("edge-1", 1_700_000_000, 10, r),
		testReport("edge-2", 1_700_000_001, 0, r),
		{Node: "n", Service: "web"}, // no window_end
		{Node: "n", Service: "web", WindowEnd: timestamppb.New(time.Unix(5, -1))},
		{Node: "n", Service: "web", WindowEnd: &timestamppb.Timestamp{}, Backends: []*sv1.BackendHealth{{Backend: "green", Requests: 1, Errors: 2}}},
		{Node: "n", Service: "web", WindowEnd: &timestamppb.Timestamp{}, Backends: []*sv1.BackendHealth{{Backend: "green", Latency: &sv1.LatencySketch{}}}},
		{Node: "n", Service: "web", WindowEnd: &timestamppb.Timestamp{}, Backends: []*sv1.BackendHealth{{Backend: "green",
			Latency: &sv1.LatencySketch{RelativeAccuracy: sketch.RelativeAccuracy, Counts: []float64{1, math.NaN()}}}}},
		{Node: "n", Service: "web", WindowEnd: &timestamppb.Timestamp{}, Backends: []*sv1.BackendHealth{{Backend: "blue", Weight: 80}, {Backend: "green", Weight: 20, Down: true}}},
		{Node: "n", Service: "web", WindowEnd: &timestamppb.Timestamp{Seconds: 9, Nanos: 5}, DrillId: "d1",
			Probes: []*sv1.ProbeResult{{Backend: "green", Ok: true, Latency: durationpb.New(time.Millisecond)}}},
	}
	for i, c := range cases {
		wire, err := proto.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		t.Run(fmt.Sprint(i), func(t *testing.T) { checkDecoders(t, &d, wire) })
		// Agents encode their reports with the generated encoder.
		vt, err := c.MarshalVT()
		if err != nil {
			t.Fatal(err)
		}
		t.Run(fmt.Sprint(i, "/generated encoder"), func(t *testing.T) { checkDecoders(t, &d, vt) })
	}
}

func FuzzDecoder_MatchesProtoUnmarshal(f *testing.F) {
	r := rand.New(rand.NewPCG(7, 8))
	for _, n := range []int{0, 1, 3} {
		wire, _ := proto.Marshal(testReport("edge-1", 1_700_000_000, n, r))
		f.Add(wire)
	}
	f.Add([]byte{0x22, 0x00, 0x0a, 0x01, 'n', 0x12, 0x01, 's'})
	old, _ := proto.Marshal(doubleForm(testReport("edge-2", 1_700_000_000, 3, r)))
	f.Add(old)
	for _, wire := range sketchWireCases() {
		f.Add(wire)
	}
	var d Decoder
	f.Fuzz(func(t *testing.T, wire []byte) {
		checkDecoders(t, &d, wire)
		// Every other input decodes into the memory of the ones before,
		// as an intake worker's batches do.
		if len(wire)%2 == 0 {
			d.Reuse()
		}
	})
}

// The report decoder skips fields it does not know, in the report and in
// its sketches, as proto.Unmarshal does, and refuses nothing for them: what
// docs/operations.md says about upgrading rests on it (a coordinator from
// before a field reads a report carrying it as if the field were absent).
func TestDecoder_SkipsUnknownFields(t *testing.T) {
	unknown := func(num protowire.Number) []byte {
		b := protowire.AppendTag(nil, num, protowire.BytesType)
		return protowire.AppendString(b, "from a newer agent")
	}
	plain := withLatency(sketchHead(-5, packedWhole(varint(3), varint(1))))
	withUnknown := append(withLatency(sketchHead(-5, packedWhole(varint(3), varint(1)), unknown(99))), unknown(98)...)
	var d Decoder
	checkDecoders(t, &d, withUnknown)
	a, err := d.Decode(plain)
	if err != nil {
		t.Fatal(err)
	}
	b, err := d.Decode(withUnknown)
	if err != nil {
		t.Fatalf("a report with unknown fields refused: %v", err)
	}
	if !sameReport(a, b) || b.Backends[0].Latency.Count() != 4 {
		t.Fatalf("unknown fields changed the report:\n without %+v\n with    %+v", a, b)
	}
}

// A coordinator from before whole_counts skips them as an unknown field.
// What it keeps of an agent's compact report carries latency sketches with
// no accuracy and no bins, which both decoders refuse: the report is
// counted as malformed rather than read as traffic without latency.
func TestDecoder_RefusesAReportSeenWithoutItsWholeCounts(t *testing.T) {
	rep := testReport("edge-1", 1_700_000_000, 3, rand.New(rand.NewPCG(21, 22)))
	var d Decoder
	wire, err := proto.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Decode(wire); err != nil {
		t.Fatalf("the compact report: %v", err)
	}
	older := proto.Clone(rep).(*sv1.HealthReport)
	for _, b := range older.GetBackends() {
		if len(b.GetLatency().GetWholeCounts()) == 0 {
			t.Fatalf("%s: no whole counts in the test report", b.GetBackend())
		}
		b.GetLatency().WholeCounts = nil
	}
	wire, err = proto.Marshal(older)
	if err != nil {
		t.Fatal(err)
	}
	checkDecoders(t, &d, wire)
	if _, err := d.Decode(wire); !errors.Is(err, ErrBadReport) || !strings.Contains(err.Error(), "relative accuracy 0") {
		t.Fatalf("the report without its whole counts: %v; want refused for the sketches' accuracy", err)
	}
}

// The decoder takes a name equal to the one the last report held at the
// same place without checking it again: reports that rename, reorder, add
// or drop backends, change service or rollout, or bring invalid UTF-8 where
// the last report had a valid name must still read as proto.Unmarshal reads
// them, and a refused name must not become the next report's hint.
func TestDecoder_NamesChangingBetweenReportsReadAsProtoUnmarshal(t *testing.T) {
	report := func(service, rollout string, backends ...string) []byte {
		t.Helper()
		rep := &sv1.HealthReport{Node: "edge-1", Service: service, RolloutId: rollout, Generation: 7,
			WindowEnd: timestamppb.New(time.Unix(1_700_000_000, 0))}
		for i, b := range backends {
			rep.Backends = append(rep.Backends, &sv1.BackendHealth{Backend: b, Requests: uint64(10 + i), Errors: uint64(i)})
		}
		wire, err := proto.Marshal(rep)
		if err != nil {
			t.Fatal(err)
		}
		return wire
	}
	// broken is wire with every "~" replaced by a byte no UTF-8 text has:
	// proto.Marshal refuses to write one.
	broken := func(wire []byte) []byte {
		return []byte(strings.ReplaceAll(string(wire), "~", "\xff"))
	}
	var d Decoder
	for i, wire := range [][]byte{
		report("web", "web-1", "blue", "green"),
		report("web", "web-1", "blue", "green"),
		report("web", "web-1", "green", "blue"),
		report("web", "web-1", "green", "blue", "grey"),
		report("web", "", "green"),
		report("api", "api-7", "blue", "green"),
		broken(report("web", "web-1", "blue", "gree~")),
		broken(report("web", "web-1", "blue", "gree~")),
		report("web", "web-1", "blue", "gree~"),
		broken(report("we~", "web-1", "blue", "green")),
		broken(report("we~", "web-1", "blue", "green")),
		broken(report("web", "web-~", "blue", "green")),
		broken(report("web", "web-~", "blue", "green")),
		report("web", "web-1", "blue", "green"),
		report("web", "web-1", "", "green"),
		report("web", "web-1", "blue", "green"),
	} {
		t.Run(fmt.Sprint(i), func(t *testing.T) { checkDecoders(t, &d, wire) })
	}
	// Past the places that keep hints, names still read right.
	many := make([]string, maxBackendHints+3)
	for i := range many {
		many[i] = fmt.Sprintf("b%d", i)
	}
	checkDecoders(t, &d, report("web", "web-1", many...))
	slices.Reverse(many)
	checkDecoders(t, &d, report("web", "web-1", many...))
}

// Counts that cannot be true are refused by both decoders, naming the
// backend: requests that could wrap the service's sums, a sketch whose
// counts sum to infinity. A latency sketch bigger than the requests it
// stands for allow (a few more, as two sources read a moment apart give)
// is scaled down to that many, by both: one node's report cannot outweigh
// the fleet's latencies in the windows and the sequential tests' baseline.
func TestReportOf_RefusesCountsThatCannotBeTrue(t *testing.T) {
	at := time.Unix(1_700_000_000, 0)
	samples := func(n float64) *sv1.LatencySketch {
		s := sketch.New()
		s.AddWithCount(0.02, n)
		return s.ToProto()
	}
	cases := []struct {
		name    string
		b       *sv1.BackendHealth
		refused string  // empty: merged
		samples float64 // in the merged sketch
	}{
		{name: "a sketch of 1e12 samples for 10 requests", b: &sv1.BackendHealth{Backend: "green", Requests: 10, Latency: samples(1e12)},
			samples: 10 + 10.0/8 + 64},
		{name: "a sketch within the slack", b: &sv1.BackendHealth{Backend: "green", Requests: 800, Latency: samples(800 + 100 + 64)},
			samples: 964},
		{name: "a sketch just past the slack", b: &sv1.BackendHealth{Backend: "green", Requests: 800, Latency: samples(800 + 100 + 65)},
			samples: 964},
		{name: "latency samples and no requests", b: &sv1.BackendHealth{Backend: "green", Latency: samples(65)}, samples: 64},
		{name: "requests that could wrap the sums", b: &sv1.BackendHealth{Backend: "green", Requests: MaxRequests + 1},
			refused: "green has 4294967296 requests, more than 4294967295"},
		{name: "the most requests", b: &sv1.BackendHealth{Backend: "green", Requests: MaxRequests, Errors: MaxRequests}},
		{name: "counts summing to infinity", b: &sv1.BackendHealth{Backend: "green", Requests: 1, Latency: &sv1.LatencySketch{
			RelativeAccuracy: sketch.RelativeAccuracy, IndexOffset: 100, Counts: []float64{math.MaxFloat64, math.MaxFloat64}}},
			refused: "counts sum to +Inf"},
	}
	var d Decoder
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rep := report("edge-1", at, 0, c.b)
			got, err := ReportOf(rep)
			if (err != nil) != (c.refused != "") || (err != nil && !strings.Contains(err.Error(), c.refused)) {
				t.Fatalf("ReportOf: %v; want refused %q", err, c.refused)
			}
			if err != nil && !errors.Is(err, ErrBadReport) {
				t.Fatalf("%v does not wrap ErrBadReport", err)
			}
			wire, err := proto.Marshal(rep)
			if err != nil {
				t.Fatal(err)
			}
			checkDecoders(t, &d, wire)
			if c.refused != "" {
				return
			}
			if n := got.Backends[0].Latency.Count(); math.Abs(n-c.samples) > 1e-6*c.samples {
				t.Fatalf("merged sketch holds %v samples, want %v", n, c.samples)
			}
			if p50 := got.Backends[0].Latency.Quantile(0.5); c.samples > 0 && math.Abs(p50-0.02) > 0.001 {
				t.Fatalf("scaled sketch's p50 %v, want 0.02", p50)
			}
			if scaled := got.Backends[0].Latency.Count() < c.b.GetLatency().GetZeroCount()+sumWhole(c.b.GetLatency()); scaled != (got.ScaledSketches == 1) {
				t.Fatalf("ScaledSketches %d", got.ScaledSketches)
			}
		})
	}
}

func sumWhole(p *sv1.LatencySketch) float64 {
	var n float64
	for _, c := range p.GetWholeCounts() {
		n += float64(c)
	}
	return n
}

// Two nodes' reports of the most requests merge into a cell without
// wrapping: the service's sums stay true.
func TestStore_MostRequestsMergeWithoutWrapping(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	s := NewStore()
	end := t0.Add(time.Second)
	for _, n := range []string{"a", "b"} {
		if err := s.Add(report(n, end, 0, &sv1.BackendHealth{Backend: "green", Requests: MaxRequests, Errors: MaxRequests / 2})); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Add(report("c", end, 0, &sv1.BackendHealth{Backend: "green", Requests: 1 << 63, Errors: 1 << 62})); err == nil {
		t.Fatal("a report of 2^63 requests was merged")
	}
	w := s.Window("web", "r1", "green", AnyWave, t0, end)
	if w.Requests != 2*MaxRequests || w.Errors != 2*(MaxRequests/2) {
		t.Fatalf("window holds %d requests, %d errors; want %d, %d", w.Requests, w.Errors, uint64(2*MaxRequests), uint64(2*(MaxRequests/2)))
	}
}
