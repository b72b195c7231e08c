package chaos

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

const goodDrill = `
version: v1
name: green-errors
service: web
maxNodes: 2
maxPercent: 50
duration: 30s
fault:
  http: {backend: green, errorPercent: 20}
`

func TestChaos_ParseDrill(t *testing.T) {
	s, err := ParseDrill([]byte(goodDrill))
	if err != nil {
		t.Fatal(err)
	}
	h := s.GetFault().GetHttp()
	if h.GetStatus() != 503 || h.GetErrorPercent() != 20 || s.GetBasisPoints() != 10000 || s.GetMaxBasisPoints() != 5000 {
		t.Fatalf("parsed %v", s)
	}
}

func TestChaos_ParseDrillRefuses(t *testing.T) {
	cases := []struct{ name, yaml, want string }{
		{"unknown field", goodDrill + "colour: red\n", "drill.colour: unknown field"},
		{"unknown fault", strings.Replace(goodDrill, "http: {backend: green, errorPercent: 20}", "flood: {}", 1), "drill.fault.flood: unknown field"},
		{"no cap", strings.Replace(goodDrill, "maxNodes: 2\n", "", 1), "drill.maxNodes: required"},
		{"no percent cap", strings.Replace(goodDrill, "maxPercent: 50\n", "", 1), "drill.maxPercent: required"},
		{"no duration", strings.Replace(goodDrill, "duration: 30s\n", "", 1), "drill.duration: required"},
		{"too long", strings.Replace(goodDrill, "duration: 30s", "duration: 48h", 1), "drill.duration"},
		{"two faults", goodDrill + "  cpuBurn: {cores: 1}\n", "drill.fault: more than one fault"},
		{"no fault", strings.Replace(goodDrill, "fault:\n  http: {backend: green, errorPercent: 20}\n", "", 1), "drill.fault: required"},
		{"error percent", strings.Replace(goodDrill, "errorPercent: 20", "errorPercent: 120", 1), "drill.fault.http.errorPercent: 120 is out of range"},
		{"status", strings.Replace(goodDrill, "errorPercent: 20", "errorPercent: 20, status: 200", 1), "drill.fault.http.status: 200 is not an error status"},
		{"http injects nothing", strings.Replace(goodDrill, "errorPercent: 20", "errorPercent: 0", 1), "injects nothing"},
		{"tcp kind", strings.Replace(goodDrill, "http: {backend: green, errorPercent: 20}", "tcp: {backend: green, kind: melt}", 1), `drill.fault.tcp.kind: "melt"`},
		{"tcp latency", strings.Replace(goodDrill, "http: {backend: green, errorPercent: 20}", "tcp: {backend: green, kind: latency}", 1), "drill.fault.tcp.latency: required"},
		{"tcp latency too long", strings.Replace(goodDrill, "http: {backend: green, errorPercent: 20}", "tcp: {backend: green, kind: latency, latency: 1h}", 1), "drill.fault.tcp.latency: 1h0m0s is out of range, want more than 0 and at most 1m0s"},
		{"state", strings.Replace(goodDrill, "http: {backend: green, errorPercent: 20}", "backendState: {backend: green, state: off}", 1), `drill.fault.backendState.state: "off"`},
		{"process action", strings.Replace(goodDrill, "http: {backend: green, errorPercent: 20}", "process: {process: green, action: nuke}", 1), `drill.fault.process.action: "nuke"`},
		{"cores", strings.Replace(goodDrill, "http: {backend: green, errorPercent: 20}", "cpuBurn: {cores: 0}", 1), "drill.fault.cpuBurn.cores: 0 is out of range"},
		{"version", strings.Replace(goodDrill, "version: v1", "version: v2", 1), `drill.version: "v2"`},
		// Below a basis point a percent would round to 0: named as written.
		{"tiny percent", goodDrill + "percent: 0.004\n", "drill.percent: 0.004 is out of range, want 0.01..100"},
		{"tiny percent cap", strings.Replace(goodDrill, "maxPercent: 50", "maxPercent: 0.004", 1), "drill.maxPercent: 0.004 is out of range, want 0.01..100"},
		{"percent not a number", goodDrill + "percent: .nan\n", "drill.percent: NaN is out of range"},
		{"two documents", goodDrill + "---\n" + goodDrill, "drill: the file holds more than one YAML document"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseDrill([]byte(c.yaml))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want it to mention %q", err, c.want)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("%v does not wrap ErrInvalid", err)
			}
		})
	}
}

func fleet(n int, labels map[string]string) []Node {
	var out []Node
	for i := range n {
		out = append(out, Node{ID: fmt.Sprintf("edge-%02d", i), Labels: labels})
	}
	return out
}

func TestChaos_SelectAndCap(t *testing.T) {
	s, _ := ParseDrill([]byte(goodDrill))
	sel := Select(s, fleet(3, nil))
	if len(sel) != 3 {
		t.Fatalf("selected %v", sel)
	}
	if err := CheckCap(s, len(sel), 3); !errors.Is(err, ErrBlastRadius) || !strings.Contains(err.Error(), "more than drill.maxNodes 2") {
		t.Fatalf("cap: %v", err)
	}
	if err := CheckCap(s, 2, 3); !errors.Is(err, ErrBlastRadius) || !strings.Contains(err.Error(), "drill.maxPercent 50") {
		t.Fatalf("percent cap: %v", err)
	}
	if err := CheckCap(s, 2, 4); err != nil {
		t.Fatalf("2 of 4 within caps: %v", err)
	}
	if err := CheckCap(s, 0, 4); err == nil {
		t.Fatal("empty selection accepted")
	}
	s.Selector = map[string]string{"region": "eu"}
	if got := Select(s, fleet(3, map[string]string{"region": "us"})); len(got) != 0 {
		t.Fatalf("selector ignored: %v", got)
	}
}

func TestChaos_TargetsChecksTheDocumentItself(t *testing.T) {
	s, _ := ParseDrill([]byte(goodDrill))
	doc := &sv1.DrillDocument{Spec: s, Targets: []string{"edge-1", "edge-2"}}
	if !Targets(doc, "edge-1", nil) || Targets(doc, "edge-3", nil) {
		t.Fatal("target membership")
	}
	wide := &sv1.DrillDocument{Spec: s, Targets: []string{"a", "b", "c"}}
	if Targets(wide, "a", nil) {
		t.Fatal("a document over its own cap was obeyed")
	}
	aborted := &sv1.DrillDocument{Spec: s, Targets: []string{"edge-1"}, Aborted: true}
	if Targets(aborted, "edge-1", nil) {
		t.Fatal("aborted drill still targets")
	}
}

func FuzzChaos_ParseDrill(f *testing.F) {
	f.Add([]byte(goodDrill))
	f.Add([]byte("fault: {tcp: {kind: latency}}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := ParseDrill(data)
		if err == nil && ValidateDrill(s) != nil {
			t.Fatal("ParseDrill accepted a drill ValidateDrill refuses")
		}
	})
}

// TestChaos_MaxPercentCapNeverRoundsUp: the percent cap is stored in basis
// points; a maxPercent finer than that must not become a larger cap than
// the operator wrote. 1 of 7 nodes is 14.2857%, over a cap of 14.2855%.
func TestChaos_MaxPercentCapNeverRoundsUp(t *testing.T) {
	s, err := ParseDrill([]byte(strings.Replace(goodDrill, "maxPercent: 50", "maxPercent: 14.2855", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckCap(s, 1, 7); !errors.Is(err, ErrBlastRadius) {
		t.Fatalf("1 of 7 live nodes (14.29%%) under maxPercent 14.2855 (stored as %d basis points): %v, want over the cap", s.GetMaxBasisPoints(), err)
	}
	// Exact hundredths stay what they say, whatever float arithmetic does
	// with them.
	for _, p := range []string{"14.29", "0.01", "33.33", "57.01", "100"} {
		s, err := ParseDrill([]byte(strings.Replace(goodDrill, "maxPercent: 50", "maxPercent: "+p, 1)))
		if err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprintf("%g", float64(s.GetMaxBasisPoints())/100); got != p {
			t.Errorf("maxPercent %s stored as %d basis points", p, s.GetMaxBasisPoints())
		}
	}
}

// TestChaos_ParseDrillRefusesNumbersPastTheirField: a number too large for
// the field it goes into is refused by name, never wrapped around into a
// small, valid-looking one.
func TestChaos_ParseDrillRefusesNumbersPastTheirField(t *testing.T) {
	http := "http: {backend: green, errorPercent: 20}"
	cases := []struct{ name, from, to, want string }{
		{"maxNodes", "maxNodes: 2", "maxNodes: 4294967297", "drill.maxNodes: 4294967297 is out of range"},
		{"errorPercent", "errorPercent: 20", "errorPercent: 4294967346", "drill.fault.http.errorPercent: 4294967346 is out of range"},
		{"status", "errorPercent: 20", "errorPercent: 20, status: 4294967799", "drill.fault.http.status: 4294967799 is out of range"},
		{"delayPercent", "errorPercent: 20", "errorPercent: 20, delay: 1s, delayPercent: 4294967306", "drill.fault.http.delayPercent: 4294967306 is out of range"},
		{"cores", http, "cpuBurn: {cores: 4294967297}", "drill.fault.cpuBurn.cores: 4294967297 is out of range"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseDrill([]byte(strings.Replace(goodDrill, c.from, c.to, 1)))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want it to mention %q", err, c.want)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("%v does not wrap ErrInvalid", err)
			}
		})
	}
}

// TestChaos_ParseDrillExplicitZeroDelayPercent: a delay with no
// delayPercent delays every request; one with delayPercent 0 written out
// must not become 100%: it is refused by name.
func TestChaos_ParseDrillExplicitZeroDelayPercent(t *testing.T) {
	s, err := ParseDrill([]byte(strings.Replace(goodDrill, "errorPercent: 20", "errorPercent: 20, delay: 2s", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if got := s.GetFault().GetHttp().GetDelayPercent(); got != 100 {
		t.Fatalf("delay without delayPercent: %d%% delayed, want 100", got)
	}
	s, err = ParseDrill([]byte(strings.Replace(goodDrill, "errorPercent: 20", "errorPercent: 20, delay: 2s, delayPercent: 0", 1)))
	if err == nil || !strings.Contains(err.Error(), "drill.fault.http.delayPercent: 0") {
		t.Fatalf("delayPercent 0 written out: %v (%d%% delayed), want an error naming drill.fault.http.delayPercent", err, s.GetFault().GetHttp().GetDelayPercent())
	}
}
