package rollout

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"sort"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Recording replays health reports read from a file: one protojson
// HealthReport per line, as `nats sub --raw switchyard.telemetry.>` piped
// through a protobuf-to-JSON step, or as a generator writes them. The
// reports' weights are what they were when recorded; the simulator does not
// reshape them.
type Recording struct {
	reports []*sv1.HealthReport
	nodes   []SimNode
}

var _ Source = (*Recording)(nil)

// MaxRecordingLine bounds one line of a recording.
const MaxRecordingLine = 1 << 20

// ReadRecording reads a recording; a line that is not a report is an error
// naming the line.
func ReadRecording(r io.Reader) (*Recording, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), MaxRecordingLine)
	rec := &Recording{}
	seen := map[string]bool{}
	line := 0
	for sc.Scan() {
		line++
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 || b[0] == '#' {
			continue
		}
		var rep sv1.HealthReport
		if err := protojson.Unmarshal(b, &rep); err != nil {
			return nil, fmt.Errorf("telemetry line %d: %v", line, err)
		}
		if rep.GetNode() == "" || rep.GetWindowEnd() == nil {
			return nil, fmt.Errorf("telemetry line %d: node and windowEnd are required", line)
		}
		if !seen[rep.GetNode()] {
			seen[rep.GetNode()] = true
			rec.nodes = append(rec.nodes, SimNode{ID: rep.GetNode()})
		}
		rec.reports = append(rec.reports, &rep)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("telemetry line %d: %w", line+1, err)
	}
	if len(rec.reports) == 0 {
		return nil, fmt.Errorf("telemetry: no reports")
	}
	sort.SliceStable(rec.reports, func(i, j int) bool {
		return rec.reports[i].GetWindowEnd().AsTime().Before(rec.reports[j].GetWindowEnd().AsTime())
	})
	return rec, nil
}

// Start is the end of the first report's window.
func (r *Recording) Start() time.Time {
	return r.reports[0].GetWindowStart().AsTime()
}

// Nodes returns the nodes that reported.
func (r *Recording) Nodes() []SimNode { return r.nodes }

// Reports returns the reports whose windows end in (from, to].
func (r *Recording) Reports(from, to time.Time, _ []SimNode) []*sv1.HealthReport {
	lo := sort.Search(len(r.reports), func(i int) bool { return r.reports[i].GetWindowEnd().AsTime().After(from) })
	hi := sort.Search(len(r.reports), func(i int) bool { return r.reports[i].GetWindowEnd().AsTime().After(to) })
	return r.reports[lo:hi]
}

// Done reports whether every report was replayed.
func (r *Recording) Done(t time.Time) bool {
	return !t.Before(r.reports[len(r.reports)-1].GetWindowEnd().AsTime())
}
