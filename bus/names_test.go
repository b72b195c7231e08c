package bus

import "testing"

func TestIsTelemetrySubject_OnlyTheNodesOwnSubject(t *testing.T) {
	for _, c := range []struct {
		subject, service, node string
		want                   bool
	}{
		{TelemetrySubject("web", "edge-1"), "web", "edge-1", true},
		{TelemetrySubject("web", "edge-1"), "web", "edge-2", false},
		{TelemetrySubject("web", "edge-1"), "web", "edge-10", false},
		{TelemetrySubject("web", "edge-10"), "web", "edge-1", false},
		{TelemetrySubject("web", "edge-1"), "api", "edge-1", false},
		{TelemetrySubject("web", "edge-1"), "we", "b.edge-1", false},
		{TelemetrySubject("web", "edge-1"), "", "edge-1", false},
		{TelemetrySubject("web", "edge-1"), "web", "", false},
		{"switchyard.telemetrx.web.edge-1", "web", "edge-1", false},
		{StatusSubject("edge-1"), "web", "edge-1", false},
	} {
		if got := IsTelemetrySubject(c.subject, c.service, c.node); got != c.want {
			t.Errorf("IsTelemetrySubject(%q, %q, %q) = %v, want %v", c.subject, c.service, c.node, got, c.want)
		}
	}
}
