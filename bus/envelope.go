package bus

import (
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
)

// A document's envelope and body are read in place rather than through
// proto.Unmarshal: every agent opens every document of its services, and
// the reflective decoder copied each byte field out and allocated each
// message. The readers accept and refuse exactly what strictUnmarshal
// does with sv1.SignedDocument and sv1.DocumentBody
// (FuzzDocumentReaders_MatchProtoUnmarshal):
// a field the message does not define, or a defined one with another wire
// type, is an unknown field and refused; a string field must be UTF-8 each
// time it occurs; the last occurrence of a scalar wins and occurrences of a
// message field merge. The payload is read by strictUnmarshal (payload.go).

// Field numbers of proto/switchyard/v1/document.proto and of
// google.protobuf.Timestamp.
const (
	fEnvelopeBody      protowire.Number = 1
	fEnvelopeKeyID     protowire.Number = 2
	fEnvelopeSignature protowire.Number = 3

	fBodyKind       protowire.Number = 1
	fBodyKey        protowire.Number = 2
	fBodyEpoch      protowire.Number = 3
	fBodyGeneration protowire.Number = 4
	fBodyIssuedAt   protowire.Number = 5
	fBodyExpiresAt  protowire.Number = 6
	fBodyPayload    protowire.Number = 7

	fTimestampSeconds protowire.Number = 1
	fTimestampNanos   protowire.Number = 2
)

// errUnknownFields is what strictUnmarshal says of a field the message
// does not define.
var errUnknownFields = errors.New("unknown fields")

// envelope is a SignedDocument read in place: its fields alias the bytes it
// was read from, which must not change while it is used.
type envelope struct {
	body      []byte
	keyID     []byte
	signature []byte
}

// readEnvelope reads a SignedDocument.
func readEnvelope(b []byte) (envelope, error) {
	var e envelope
	for len(b) > 0 {
		num, typ, n, err := consumeTag(b)
		if err != nil {
			return e, err
		}
		b = b[n:]
		if typ != protowire.BytesType || num < fEnvelopeBody || num > fEnvelopeSignature {
			if n := protowire.ConsumeFieldValue(num, typ, b); n < 0 {
				return e, protowire.ParseError(n)
			}
			return e, errUnknownFields
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return e, protowire.ParseError(n)
		}
		b = b[n:]
		switch num {
		case fEnvelopeBody:
			e.body = v
		case fEnvelopeKeyID:
			if !utf8.Valid(v) {
				return e, errors.New("key_id is not valid UTF-8")
			}
			e.keyID = v
		case fEnvelopeSignature:
			e.signature = v
		}
	}
	return e, nil
}

// stamp is a google.protobuf.Timestamp field read in place; set is whether
// the field occurred.
type stamp struct {
	set     bool
	seconds int64
	nanos   int32
}

// The range of a valid google.protobuf.Timestamp: 0001-01-01T00:00:00Z to
// 9999-12-31T23:59:59.999999999Z, as timestamppb's CheckValid has it.
const (
	minStampSeconds = -62135596800
	maxStampSeconds = 253402300799
)

// time is the stamp's time; ok is false when the field was absent or is
// not a valid Timestamp (what timestamppb's CheckValid refuses; checked
// here because a Timestamp given to CheckValid escapes to the heap).
func (s *stamp) time() (t time.Time, ok bool) {
	if !s.set || s.seconds < minStampSeconds || s.seconds > maxStampSeconds || s.nanos < 0 || s.nanos >= 1e9 {
		return time.Time{}, false
	}
	return time.Unix(s.seconds, int64(s.nanos)).UTC(), true
}

// body is a DocumentBody read in place: key and payload alias the bytes it
// was read from.
type body struct {
	kind       int32
	key        []byte
	epoch      uint64
	generation uint64
	issuedAt   stamp
	expiresAt  stamp
	payload    []byte
}

// readBody reads a DocumentBody.
func readBody(b []byte) (body, error) {
	var d body
	for len(b) > 0 {
		num, typ, n, err := consumeTag(b)
		if err != nil {
			return d, err
		}
		b = b[n:]
		var v []byte
		var x uint64
		switch {
		case typ == protowire.VarintType && (num == fBodyKind || num == fBodyEpoch || num == fBodyGeneration):
			x, n = protowire.ConsumeVarint(b)
		case typ == protowire.BytesType && num >= fBodyKey && num <= fBodyPayload && num != fBodyEpoch && num != fBodyGeneration:
			v, n = protowire.ConsumeBytes(b)
		default:
			if n := protowire.ConsumeFieldValue(num, typ, b); n < 0 {
				return d, protowire.ParseError(n)
			}
			return d, errUnknownFields
		}
		if n < 0 {
			return d, protowire.ParseError(n)
		}
		b = b[n:]
		switch num {
		case fBodyKind:
			d.kind = int32(x)
		case fBodyKey:
			if !utf8.Valid(v) {
				return d, errors.New("key is not valid UTF-8")
			}
			d.key = v
		case fBodyEpoch:
			d.epoch = x
		case fBodyGeneration:
			d.generation = x
		case fBodyIssuedAt:
			err = d.issuedAt.merge(v)
		case fBodyExpiresAt:
			err = d.expiresAt.merge(v)
		case fBodyPayload:
			d.payload = v
		}
		if err != nil {
			return d, err
		}
	}
	return d, nil
}

// merge reads one occurrence of a Timestamp field into s, as protobuf
// merges a message field that occurs again: what this occurrence sets
// replaces, the rest stays. A field a Timestamp does not define is
// refused, as strictUnmarshal refuses unknown fields at every depth.
func (s *stamp) merge(b []byte) error {
	s.set = true
	for len(b) > 0 {
		num, typ, n, err := consumeTag(b)
		if err != nil {
			return err
		}
		b = b[n:]
		if typ == protowire.VarintType && (num == fTimestampSeconds || num == fTimestampNanos) {
			x, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			b = b[n:]
			if num == fTimestampSeconds {
				s.seconds = int64(x)
			} else {
				s.nanos = int32(x)
			}
			continue
		}
		if n := protowire.ConsumeFieldValue(num, typ, b); n < 0 {
			return protowire.ParseError(n)
		}
		return errUnknownFields
	}
	return nil
}

// consumeTag is protowire.ConsumeTag refusing, as proto.Unmarshal does,
// field numbers above protowire.MaxValidNumber (ConsumeTag takes them up to
// 2^31-1) and an end-group tag outside a group.
func consumeTag(b []byte) (protowire.Number, protowire.Type, int, error) {
	num, typ, n := protowire.ConsumeTag(b)
	switch {
	case n < 0:
		return 0, 0, n, protowire.ParseError(n)
	case num > protowire.MaxValidNumber:
		return 0, 0, -1, fmt.Errorf("field number %d is above %d", num, protowire.MaxValidNumber)
	case typ == protowire.EndGroupType:
		return 0, 0, -1, errors.New("end of a group that did not start")
	}
	return num, typ, n, nil
}

// readError is a reader's error as Open and PeekFence return it.
func readError(part string, err error) error {
	return fmt.Errorf("%w: %s: %v", ErrDocumentMalformed, part, err)
}
