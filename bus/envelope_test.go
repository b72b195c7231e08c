package bus

import (
	"bytes"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// checkReaders reads wire as an envelope and as a body, with the readers
// Open uses and with strictUnmarshal: both must accept or both refuse, and
// what they accept must read the same.
func checkReaders(t *testing.T, wire []byte) {
	t.Helper()
	var env sv1.SignedDocument
	perr := strictUnmarshal(wire, &env)
	e, err := readEnvelope(wire)
	if (perr == nil) != (err == nil) {
		t.Fatalf("envelope %x: strictUnmarshal says %v, readEnvelope %v", wire, perr, err)
	}
	if err == nil && (!bytes.Equal(e.body, env.GetBody()) || string(e.keyID) != env.GetKeyId() || !bytes.Equal(e.signature, env.GetSignature())) {
		t.Fatalf("envelope %x: read %+v, strictUnmarshal %v", wire, e, &env)
	}

	var body sv1.DocumentBody
	perr = strictUnmarshal(wire, &body)
	d, err := readBody(wire)
	if (perr == nil) != (err == nil) {
		t.Fatalf("body %x: strictUnmarshal says %v, readBody %v", wire, perr, err)
	}
	if err != nil {
		return
	}
	sameStamp := func(s stamp, ts *timestamppb.Timestamp) bool {
		return s.set == (ts != nil) && s.seconds == ts.GetSeconds() && s.nanos == ts.GetNanos()
	}
	if sv1.DocumentKind(d.kind) != body.GetKind() || string(d.key) != body.GetKey() || d.epoch != body.GetEpoch() ||
		d.generation != body.GetGeneration() || !sameStamp(d.issuedAt, body.GetIssuedAt()) ||
		!sameStamp(d.expiresAt, body.GetExpiresAt()) || !bytes.Equal(d.payload, body.GetPayload()) {
		t.Fatalf("body %x: read %+v, strictUnmarshal %v", wire, d, &body)
	}
}

// Wire-form builders for the readers' edge cases: a tag, a bytes field, a
// varint field, and bytes joined.
func tag(num protowire.Number, typ protowire.Type) []byte { return protowire.AppendTag(nil, num, typ) }

func bytesField(num protowire.Number, v []byte) []byte {
	return protowire.AppendBytes(tag(num, protowire.BytesType), v)
}

func varintField(num protowire.Number, v uint64) []byte {
	return protowire.AppendVarint(tag(num, protowire.VarintType), v)
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// readerCases are wire forms at the edges of what proto.Unmarshal accepts.
func readerCases(t testing.TB) map[string][]byte {
	s, _ := testSigner(t, 1, time.Hour)
	good, err := s.SealDesired(sampleDesired(), time.Unix(1_700_000_000, 5))
	if err != nil {
		t.Fatal(err)
	}
	var env sv1.SignedDocument
	if err := proto.Unmarshal(good, &env); err != nil {
		t.Fatal(err)
	}
	ts := func(parts ...[]byte) []byte { return bytesField(fBodyIssuedAt, cat(parts...)) }
	return map[string][]byte{
		"document":                      good,
		"body":                          env.GetBody(),
		"empty":                         nil,
		"unknown varint":                cat(good, varintField(31, 1)),
		"known field, other wire type":  cat(varintField(fEnvelopeBody, 1)),
		"key id not UTF-8":              bytesField(fEnvelopeKeyID, []byte{0xff}),
		"key id not UTF-8, then UTF-8":  cat(bytesField(fEnvelopeKeyID, []byte{0xff}), bytesField(fEnvelopeKeyID, []byte("k"))),
		"key id twice":                  cat(bytesField(fEnvelopeKeyID, []byte("a")), bytesField(fEnvelopeKeyID, []byte("b"))),
		"field number 2^29":             cat(good, varintField(protowire.MaxValidNumber+1, 1)),
		"field number 0":                {0x00, 0x01},
		"end group":                     tag(5, protowire.EndGroupType),
		"group":                         cat(tag(9, protowire.StartGroupType), varintField(1, 1), tag(9, protowire.EndGroupType)),
		"truncated":                     good[:len(good)-1],
		"overlong varint":               cat(tag(fBodyEpoch, protowire.VarintType), []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02}),
		"ten-byte varint":               cat(tag(fBodyEpoch, protowire.VarintType), []byte{0x81, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01}),
		"kind above int32":              varintField(fBodyKind, 1<<40|2),
		"kind negative":                 varintField(fBodyKind, uint64(1<<64-1)),
		"key not UTF-8":                 bytesField(fBodyKey, []byte{0xc3}),
		"epoch as bytes":                bytesField(fBodyEpoch, []byte{1}),
		"payload as varint":             varintField(fBodyPayload, 1),
		"stamp":                         ts(varintField(fTimestampSeconds, 10), varintField(fTimestampNanos, 5)),
		"empty stamp":                   ts(),
		"stamp twice merges":            cat(ts(varintField(fTimestampSeconds, 10), varintField(fTimestampNanos, 5)), ts(varintField(fTimestampSeconds, 11))),
		"stamp with unknown field":      ts(varintField(fTimestampSeconds, 10), bytesField(7, []byte("x"))),
		"stamp seconds as fixed64":      ts(protowire.AppendFixed64(tag(fTimestampSeconds, protowire.Fixed64Type), 10)),
		"stamp with a group":            ts(tag(3, protowire.StartGroupType), tag(3, protowire.EndGroupType)),
		"stamp with field number 2^29":  ts(varintField(protowire.MaxValidNumber+1, 1)),
		"stamp with end group":          ts(tag(3, protowire.EndGroupType)),
		"stamp truncated":               bytesField(fBodyIssuedAt, []byte{0x08}),
		"stamp nanos above int32":       ts(varintField(fTimestampNanos, 1<<33|7)),
		"stamp negative seconds":        ts(varintField(fTimestampSeconds, uint64(1<<64-5))),
		"stamp as varint":               varintField(fBodyIssuedAt, 1),
		"body with a signature's field": cat(env.GetBody(), bytesField(fEnvelopeSignature, []byte("s"))),
	}
}

// The readers Open uses accept and refuse exactly what strictUnmarshal
// does, and read the same values.
func TestDocumentReaders_MatchProtoUnmarshal(t *testing.T) {
	for name, wire := range readerCases(t) {
		t.Run(name, func(t *testing.T) { checkReaders(t, wire) })
	}
}

func FuzzDocumentReaders_MatchProtoUnmarshal(f *testing.F) {
	for _, wire := range readerCases(f) {
		f.Add(wire)
	}
	f.Fuzz(checkReaders)
}

// Open reads the envelope in place: the payload it returns must not change
// when the bytes it was opened from are reused for the next document.
func TestDocument_OpenedPayloadOutlivesItsBytes(t *testing.T) {
	s, ring := testSigner(t, 1, time.Hour)
	now := time.Now()
	raw, err := s.SealDesired(sampleDesired(), now)
	if err != nil {
		t.Fatal(err)
	}
	ds, h, err := ring.OpenDesired(raw, "web", now)
	if err != nil {
		t.Fatal(err)
	}
	keyID := h.KeyID
	for i := range raw {
		raw[i] = 0
	}
	if !proto.Equal(ds, sampleDesired()) || h.Key != "web" || keyID != s.KeyID() {
		t.Fatalf("after its bytes were overwritten the document reads %v, header %+v", ds, h)
	}
}

// A document's timestamps are checked as timestamppb's CheckValid checks
// them and read as AsTime reads them.
func TestDocumentReaders_StampsValidAsTimestamppbSays(t *testing.T) {
	for _, sec := range []int64{minStampSeconds - 1, minStampSeconds, -1, 0, 1_700_000_000, maxStampSeconds, maxStampSeconds + 1, -1 << 63, 1<<63 - 1} {
		for _, nanos := range []int32{-1 << 31, -1, 0, 1, 999_999_999, 1e9, 1<<31 - 1} {
			s := stamp{set: true, seconds: sec, nanos: nanos}
			got, ok := s.time()
			ts := &timestamppb.Timestamp{Seconds: sec, Nanos: nanos}
			if want := ts.CheckValid() == nil; ok != want {
				t.Fatalf("%d s %d ns: valid %v, CheckValid says %v", sec, nanos, ok, want)
			}
			if ok && !got.Equal(ts.AsTime()) {
				t.Fatalf("%d s %d ns: %v, AsTime %v", sec, nanos, got, ts.AsTime())
			}
		}
	}
	if _, ok := (&stamp{}).time(); ok {
		t.Fatal("an absent stamp is valid")
	}
}
