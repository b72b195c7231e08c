package bus

import (
	"fmt"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// A document's payload is checked on the wire against its message's
// descriptor, then decoded by the message's generated decoder when it has
// one (UnmarshalVT: no reflection, a map entry costs no allocation of its
// own) and by proto.Unmarshal when it does not. The generated decoder
// checks neither UTF-8 nor unknown fields; the check does both, at every
// depth (proto.Unmarshal leaves unknown fields inside a message field for
// the caller to find, and drops those inside a map entry), so whichever
// decoder runs, the payload it is given is one proto.Unmarshal accepts
// with no unknown field anywhere (FuzzPayload_MatchesProtoUnmarshal).

// maxPayloadDepth bounds the nesting the check follows: only a message
// that contains itself can nest deeper than its descriptor is tall, and no
// document payload does.
const maxPayloadDepth = 32

// vtUnmarshaler is a message with a generated decoder.
type vtUnmarshaler interface {
	UnmarshalVT([]byte) error
}

// strictUnmarshal decodes b into m and refuses fields m does not define:
// a coordinator never writes them, so they mean someone else did.
func strictUnmarshal(b []byte, m proto.Message) error {
	if err := checkPayload(b, m.ProtoReflect().Descriptor(), 0); err != nil {
		return err
	}
	if u, ok := m.(vtUnmarshaler); ok {
		return u.UnmarshalVT(b)
	}
	return proto.Unmarshal(b, m)
}

// checkPayload walks b as an encoding of md: every field must be one md
// defines, with the wire type of its kind (or packed, for a repeated
// number), every string valid UTF-8, and every message field, map entries
// included, the same in turn.
func checkPayload(b []byte, md protoreflect.MessageDescriptor, depth int) error {
	if depth > maxPayloadDepth {
		return fmt.Errorf("%s is nested more than %d deep", md.FullName(), maxPayloadDepth)
	}
	fields := md.Fields()
	// A map entry's key or value occurring twice is refused: no encoder
	// writes it, and the generated decoders merge the bits of a number
	// that occurs twice in an entry where proto.Unmarshal keeps the last.
	var entrySeen [3]bool
	for len(b) > 0 {
		num, typ, n, err := consumeTag(b)
		if err != nil {
			return err
		}
		b = b[n:]
		fd := fields.ByNumber(num)
		if fd == nil || !wireTypeFits(fd, typ) {
			if n := protowire.ConsumeFieldValue(num, typ, b); n < 0 {
				return protowire.ParseError(n)
			}
			return fmt.Errorf("%w: field %d of %s", errUnknownFields, num, md.FullName())
		}
		if md.IsMapEntry() {
			if entrySeen[num] {
				return fmt.Errorf("%w: field %d of %s occurs twice", errUnknownFields, num, md.FullName())
			}
			entrySeen[num] = true
		}
		if typ != protowire.BytesType {
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		switch fd.Kind() {
		case protoreflect.StringKind:
			if !utf8.Valid(v) {
				return fmt.Errorf("field %s is not valid UTF-8", fd.FullName())
			}
		case protoreflect.MessageKind:
			if err := checkPayload(v, fd.Message(), depth+1); err != nil {
				return err
			}
		}
	}
	return nil
}

// wireTypeFits says whether a field of fd's kind may come with wire type
// typ: its own, or length-delimited for a repeated number (packed). A
// group, which no proto3 message has, fits nothing.
func wireTypeFits(fd protoreflect.FieldDescriptor, typ protowire.Type) bool {
	var want protowire.Type
	switch fd.Kind() {
	case protoreflect.StringKind, protoreflect.BytesKind, protoreflect.MessageKind:
		return typ == protowire.BytesType
	case protoreflect.Sfixed32Kind, protoreflect.Fixed32Kind, protoreflect.FloatKind:
		want = protowire.Fixed32Type
	case protoreflect.Sfixed64Kind, protoreflect.Fixed64Kind, protoreflect.DoubleKind:
		want = protowire.Fixed64Type
	case protoreflect.GroupKind:
		return false
	default: // bool, enum and the varint integers
		want = protowire.VarintType
	}
	return typ == want || (typ == protowire.BytesType && fd.IsList())
}
