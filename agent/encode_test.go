package agent

import (
	"fmt"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// fill sets every field of m, recursively to depth, each with a value that
// is not the default: two entries in every map, two items in every list,
// the variant-th member of every oneof.
func fill(m protoreflect.Message, depth, variant int) {
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if od := fd.ContainingOneof(); od != nil && !od.IsSynthetic() && od.Fields().Get(variant%od.Fields().Len()) != fd {
			continue
		}
		if fd.Message() != nil && !fd.IsMap() && depth == 0 {
			continue
		}
		switch {
		case fd.IsMap():
			mp := m.Mutable(fd).Map()
			for n := range 2 {
				v := mp.NewValue()
				if fd.MapValue().Message() != nil {
					fill(v.Message(), depth-1, variant)
				} else {
					v = scalar(fd.MapValue(), n)
				}
				mp.Set(scalar(fd.MapKey(), n).MapKey(), v)
			}
		case fd.IsList():
			l := m.Mutable(fd).List()
			for n := range 2 {
				if fd.Message() != nil {
					v := l.NewElement()
					fill(v.Message(), depth-1, variant)
					l.Append(v)
				} else {
					l.Append(scalar(fd, n))
				}
			}
		case fd.Message() != nil:
			fill(m.Mutable(fd).Message(), depth-1, variant)
		default:
			m.Set(fd, scalar(fd, 0))
		}
	}
}

// scalar is a value of fd's kind that is not its default, different for
// each n.
func scalar(fd protoreflect.FieldDescriptor, n int) protoreflect.Value {
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(n == 0)
	case protoreflect.EnumKind:
		vals := fd.Enum().Values()
		return protoreflect.ValueOfEnum(vals.Get((1 + n) % vals.Len()).Number())
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return protoreflect.ValueOfInt32(int32(-7 - n))
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return protoreflect.ValueOfUint32(uint32(300 + n))
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return protoreflect.ValueOfInt64(int64(-70000000000 - n))
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return protoreflect.ValueOfUint64(uint64(1<<40 + n))
	case protoreflect.FloatKind:
		return protoreflect.ValueOfFloat32(float32(n) + 1.5)
	case protoreflect.DoubleKind:
		return protoreflect.ValueOfFloat64(float64(n) + 2.25)
	case protoreflect.StringKind:
		return protoreflect.ValueOfString(fmt.Sprintf("%s-%d-é", fd.Name(), n))
	case protoreflect.BytesKind:
		return protoreflect.ValueOfBytes([]byte{byte(n), 0, 0xff})
	}
	panic(fmt.Sprintf("no test value for %s (%s)", fd.FullName(), fd.Kind()))
}

// The agent encodes its status, applied state and health reports with
// generated encoders; protobuf-go decodes them on the coordinator and from
// the state file. Every field, set, must come back as it was: a field added
// to the proto without `make generate` would be dropped here.
func TestEncode_GeneratedEncodersKeepEveryField(t *testing.T) {
	unknown := protowire.AppendTag(nil, 9999, protowire.BytesType)
	unknown = protowire.AppendBytes(unknown, []byte("from a newer writer"))
	for _, msg := range []interface {
		proto.Message
		encodable
	}{&sv1.AgentStatus{}, &sv1.AppliedState{}, &sv1.HealthReport{}} {
		for variant := range 3 {
			m := msg.ProtoReflect().New()
			fill(m, 4, variant)
			m.SetUnknown(unknown)
			in := m.Interface()
			name := fmt.Sprintf("%s/%d", m.Descriptor().Name(), variant)
			b, err := appendEncoded([]byte("prefix"), in.(encodable))
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if string(b[:6]) != "prefix" {
				t.Fatalf("%s: the bytes before the message changed: %q", name, b[:6])
			}
			out := m.New().Interface()
			if err := proto.Unmarshal(b[6:], out); err != nil {
				t.Fatalf("%s: protobuf-go cannot decode the generated encoding: %v", name, err)
			}
			if !proto.Equal(in, out) {
				t.Fatalf("%s: decoded\n%v\nwant\n%v", name, out, in)
			}
			if want := proto.Size(in); len(b)-6 != want {
				t.Errorf("%s: %d bytes, protobuf-go encodes %d", name, len(b)-6, want)
			}
		}
	}
}

// The status loop encodes every status into the buffer of the last one: a
// shorter status must not carry the tail of a longer one.
func TestEncode_ReusedBufferHoldsOnlyTheNewMessage(t *testing.T) {
	long := &sv1.AgentStatus{Node: "edge-1", Services: []*sv1.ServiceStatus{{
		Service: "web", AppliedGeneration: 41, RolloutId: "r1", Message: "a long message that the next status does not have",
		Weights: map[string]uint32{"blue": 10, "green": 90}, ObservedWeights: map[string]uint32{"blue": 10, "green": 90},
	}}}
	short := &sv1.AgentStatus{Node: "edge-1", Services: []*sv1.ServiceStatus{{Service: "web", AppliedGeneration: 42}}}
	body, err := appendEncoded(nil, long)
	if err != nil {
		t.Fatal(err)
	}
	first := &body[0]
	body, err = appendEncoded(body[:0], short)
	if err != nil {
		t.Fatal(err)
	}
	if &body[0] != first {
		t.Error("the buffer was not reused for a smaller status")
	}
	if len(body) != proto.Size(short) {
		t.Fatalf("%d bytes for a status of %d", len(body), proto.Size(short))
	}
	got := &sv1.AgentStatus{}
	if err := proto.Unmarshal(body, got); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, short) {
		t.Fatalf("decoded %v, want %v", got, short)
	}
}
