// Package reports builds the health reports the telemetry ingest
// benchmarks publish for simulated nodes, encoded as agents encode them
// (sketch.ToProto), so that the load generator process and the benchmarks'
// in-process load send the same bytes.
package reports

import (
	"fmt"
	"math/rand/v2"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/internal/sketch"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Field numbers of HealthReport a publisher appends to a body.
const (
	FieldNode        protowire.Number = 1
	FieldWindowStart protowire.Number = 3
	FieldWindowEnd   protowire.Number = 4
)

// Bodies encodes n HealthReport bodies without node and window, the same
// ones on every call: backends each (the first two named from and to, the
// others pool-2, pool-3, …) with a latency sketch of one second's 20–59
// requests around 15–20 ms, and 0 or 1 errors.
func Bodies(service, from, to, rollout string, generation uint64, backends, n int) ([][]byte, error) {
	r := rand.New(rand.NewPCG(11, 12))
	bodies := make([][]byte, 0, n)
	for range n {
		rep := &sv1.HealthReport{Service: service, RolloutId: rollout, Generation: generation}
		for i := range backends {
			name := fmt.Sprintf("pool-%d", i)
			switch i {
			case 0:
				name = from
			case 1:
				name = to
			}
			sk := sketch.New()
			requests := 20 + r.IntN(40)
			for range requests {
				sk.Add(0.015 + r.ExpFloat64()*0.004)
			}
			rep.Backends = append(rep.Backends, &sv1.BackendHealth{Backend: name, Requests: uint64(requests), Errors: uint64(r.IntN(2)), Latency: sk.ToProto()})
		}
		body, err := proto.Marshal(rep)
		if err != nil {
			return nil, err
		}
		bodies = append(bodies, body)
	}
	return bodies, nil
}

// AppendNode appends a HealthReport's node field.
func AppendNode(b []byte, node string) []byte {
	return protowire.AppendString(protowire.AppendTag(b, FieldNode, protowire.BytesType), node)
}

// AppendWindow appends a HealthReport's window of whole seconds ending at
// sec: window_start sec-1 and window_end sec.
func AppendWindow(b []byte, sec int64) []byte {
	return appendTimestamp(appendTimestamp(b, FieldWindowStart, sec-1), FieldWindowEnd, sec)
}

// appendTimestamp appends a google.protobuf.Timestamp field of whole
// seconds.
func appendTimestamp(b []byte, field protowire.Number, sec int64) []byte {
	var ts []byte
	ts = protowire.AppendTag(ts, 1, protowire.VarintType)
	ts = protowire.AppendVarint(ts, uint64(sec))
	b = protowire.AppendTag(b, field, protowire.BytesType)
	return protowire.AppendBytes(b, ts)
}
