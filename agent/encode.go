package agent

import (
	"fmt"
	"slices"
)

// encodable is a message with a generated sizer and encoder that do not
// reflect (proto/switchyard/v1/*_vtproto.pb.go): the status, the applied
// state and the health report, which the agent encodes on every change and
// every second.
type encodable interface {
	SizeVT() int
	MarshalToSizedBufferVT(dAtA []byte) (int, error)
}

// appendEncoded appends m's wire encoding to b, growing b only when it is
// too small, so a loop that encodes again and again can keep one buffer.
func appendEncoded(b []byte, m encodable) ([]byte, error) {
	n := m.SizeVT()
	b = slices.Grow(b, n)
	out := b[len(b) : len(b)+n]
	written, err := m.MarshalToSizedBufferVT(out)
	if err != nil {
		return b, err
	}
	if written != n {
		return b, fmt.Errorf("encoded %d bytes of a message sized %d", written, n)
	}
	return b[:len(b)+n], nil
}
