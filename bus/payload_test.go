package bus

import (
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// hasUnknown says whether m, or any message inside it, kept fields its
// message does not define.
func hasUnknown(m protoreflect.Message) bool {
	if len(m.GetUnknown()) > 0 {
		return true
	}
	found := false
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsMap():
			if fd.MapValue().Kind() == protoreflect.MessageKind {
				v.Map().Range(func(_ protoreflect.MapKey, e protoreflect.Value) bool {
					found = hasUnknown(e.Message())
					return !found
				})
			}
		case fd.IsList():
			if fd.Kind() == protoreflect.MessageKind {
				for i := range v.List().Len() {
					if found = hasUnknown(v.List().Get(i).Message()); found {
						break
					}
				}
			}
		case fd.Kind() == protoreflect.MessageKind:
			found = hasUnknown(v.Message())
		}
		return !found
	})
	return found
}

// checkPayloadReader reads wire as each kind of payload with
// strictUnmarshal and with proto.Unmarshal: strictUnmarshal accepts what
// proto.Unmarshal accepts with no unknown field at any depth, and reads it
// the same. The one difference allowed: strictUnmarshal also refuses an
// unknown field (or a known one with another wire type) inside a map
// entry, which proto.Unmarshal drops without a trace, and a key or value
// that occurs twice in one entry.
func checkPayloadReader(t *testing.T, wire []byte) {
	t.Helper()
	for _, m := range []proto.Message{&sv1.DesiredState{}, &sv1.DrillDocument{}, &sv1.HealthReport{}, &sv1.AgentStatus{}} {
		got, want := m.ProtoReflect().New().Interface(), m.ProtoReflect().New().Interface()
		err := strictUnmarshal(wire, got)
		perr := proto.Unmarshal(wire, want)
		if perr == nil && hasUnknown(want.ProtoReflect()) {
			perr = errUnknownFields
		}
		name := m.ProtoReflect().Descriptor().Name()
		switch {
		case err == nil && perr == nil:
			if !proto.Equal(got, want) {
				t.Fatalf("%s %x: strictUnmarshal read %v, proto.Unmarshal %v", name, wire, got, want)
			}
		case err != nil && perr == nil:
			if !errors.Is(err, errUnknownFields) || !strings.Contains(err.Error(), "Entry") {
				t.Fatalf("%s %x: strictUnmarshal refused it (%v), proto.Unmarshal read %v", name, wire, err, want)
			}
		case err == nil && perr != nil:
			t.Fatalf("%s %x: strictUnmarshal read %v, proto.Unmarshal refused it: %v", name, wire, got, perr)
		}
	}
}

// payloadCases are payloads at the edges of what strictUnmarshal accepts.
func payloadCases(t testing.TB) map[string][]byte {
	good, err := proto.MarshalOptions{Deterministic: true}.Marshal(sampleDesired())
	if err != nil {
		t.Fatal(err)
	}
	report, err := proto.Marshal(&sv1.HealthReport{Node: "edge-1", Service: "web", Backends: []*sv1.BackendHealth{{
		Backend: "green", Requests: 10, Latency: &sv1.LatencySketch{Counts: []float64{1, 2}, WholeCounts: []uint64{3, 4}},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	// Field numbers of DesiredState and WaveWeights (desired.proto).
	const (
		fService, fWaves, fDefaultWeights, fIssuedAt = 1, 4, 5, 6
		fWaveName, fWaveSelector, fWaveWeights       = 2, 3, 5
	)
	// HealthReport.backends, BackendHealth.latency (telemetry.proto).
	backend := func(parts ...[]byte) []byte { return bytesField(8, cat(parts...)) }
	sketch := func(parts ...[]byte) []byte { return bytesField(4, cat(parts...)) }
	wave := func(parts ...[]byte) []byte { return bytesField(fWaves, cat(parts...)) }
	entry := func(parts ...[]byte) []byte { return bytesField(fWaveWeights, cat(parts...)) }
	return map[string][]byte{
		"document":                         good,
		"health report":                    report,
		"empty":                            nil,
		"unknown field":                    cat(good, varintField(99, 1)),
		"unknown field in a wave":          cat(good, wave(varintField(99, 1))),
		"unknown field in a timestamp":     cat(good, bytesField(fIssuedAt, varintField(9, 1))),
		"unknown field in a map entry":     cat(good, wave(entry(bytesField(1, []byte("green")), varintField(2, 5), varintField(3, 1)))),
		"map value with another wire type": cat(good, wave(entry(bytesField(1, []byte("green")), bytesField(2, []byte("x"))))),
		"map key not UTF-8":                cat(good, wave(entry(bytesField(1, []byte{0xff}), varintField(2, 5)))),
		"map value twice in an entry":      cat(good, wave(entry(bytesField(1, []byte("green")), varintField(2, 48), varintField(2, 65)))),
		"map entry without a key":          cat(good, wave(entry(varintField(2, 5)))),
		"selector value not UTF-8":         cat(good, wave(bytesField(fWaveSelector, cat(bytesField(1, []byte("r")), bytesField(2, []byte{0xc3}))))),
		"wave name not UTF-8":              cat(good, wave(bytesField(fWaveName, []byte{0xc3}))),
		"service not UTF-8, then UTF-8":    cat(bytesField(fService, []byte{0xff}), bytesField(fService, []byte("web"))),
		"service as a varint":              varintField(fService, 1),
		"waves as a varint":                varintField(fWaves, 1),
		"default weights twice":            cat(good, bytesField(fDefaultWeights, cat(bytesField(1, []byte("blue")), varintField(2, 7)))),
		"issued at twice merges":           cat(good, bytesField(fIssuedAt, varintField(2, 5))),
		"a group":                          cat(good, tag(30, protowire.StartGroupType), tag(30, protowire.EndGroupType)),
		"end group":                        tag(30, protowire.EndGroupType),
		"field number 2^29":                cat(good, varintField(protowire.MaxValidNumber+1, 1)),
		"truncated":                        good[:len(good)-1],
		"wave truncated":                   cat(good, bytesField(fWaves, []byte{0x12, 0x05, 'a'})),
		"sketch counts packed then not":    cat(report, backend(sketch(bytesField(4, protowire.AppendFixed64(nil, 1)), tag(4, protowire.Fixed64Type), protowire.AppendFixed64(nil, 2)))),
		"sketch whole counts packed, cut":  cat(report, backend(sketch(bytesField(5, []byte{0x80})))),
		"sketch counts as a varint":        cat(report, backend(sketch(varintField(4, 1)))),
	}
}

// strictUnmarshal accepts and refuses what proto.Unmarshal does, with no
// unknown field at any depth, and reads the same.
func TestPayload_MatchesProtoUnmarshal(t *testing.T) {
	for name, wire := range payloadCases(t) {
		t.Run(name, func(t *testing.T) { checkPayloadReader(t, wire) })
	}
}

func FuzzPayload_MatchesProtoUnmarshal(f *testing.F) {
	for _, wire := range payloadCases(f) {
		f.Add(wire)
	}
	f.Fuzz(checkPayloadReader)
}

// A payload with a field its message does not define, at any depth, is
// refused by Open, and the error names the field.
func TestDocument_OpenRefusesAnUnknownFieldInsideTheDocument(t *testing.T) {
	s, ring := testSigner(t, 1, time.Hour)
	now := time.Now()
	ds := sampleDesired()
	good, err := proto.MarshalOptions{Deterministic: true}.Marshal(ds)
	if err != nil {
		t.Fatal(err)
	}
	inWave := bytesField(4, varintField(99, 1)) // a wave with field 99
	raw, err := s.sealPayload(sv1.DocumentKind_DOCUMENT_KIND_DESIRED_STATE, "web", Fence{ds.GetEpoch(), ds.GetGeneration()}, append(good, inWave...), now)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = ring.OpenDesired(raw, "web", now)
	if !errors.Is(err, ErrDocumentMalformed) || !strings.Contains(err.Error(), "field 99 of switchyard.v1.WaveWeights") {
		t.Fatalf("a document with an unknown field in a wave opened with %v", err)
	}
}
