package deploy

import (
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// knownMetrics is every metric name a rule or dashboard may read: the
// Switchyard metrics declared in the Go sources (histograms with their
// _bucket, _sum and _count series), the Go and process collectors the
// coordinator registers, the recording rules, Prometheus's own `up`, and the
// gnatsd_varz_* gauges prometheus-nats-exporter derives from the /varz of a
// real NATS server.
func knownMetrics(t *testing.T) map[string]bool {
	t.Helper()
	known := map[string]bool{"up": true}
	declared := regexp.MustCompile(`(?:Name:|prometheus\.NewDesc\()\s*"(switchyard_[a-z0-9_]+)"`)
	root := repoRoot(t)
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if n := d.Name(); path != root && (strings.HasPrefix(n, ".") || n == "bin" || n == "deploy" || n == "testdata") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range declared.FindAllStringSubmatch(string(b), -1) {
			for _, suffix := range []string{"", "_bucket", "_sum", "_count"} {
				known[m[1]+suffix] = true
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !known["switchyard_agent_applied_generation"] || !known["switchyard_coordinator_is_leader"] {
		t.Fatalf("found no Switchyard metric declarations under %s", root)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		known[f.GetName()] = true
	}

	for _, g := range readRules(t).Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				known[r.Record] = true
			}
		}
	}

	for name := range natsVarzMetrics(t) {
		known[name] = true
	}
	return known
}

// natsVarzMetrics starts a NATS server on a free loopback port and names
// the numeric top-level /varz fields as prometheus-nats-exporter does
// (gnatsd_varz_<field>).
func natsVarzMetrics(t *testing.T) map[string]bool {
	t.Helper()
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	defer func() {
		s.Shutdown()
		s.WaitForShutdown()
	}()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("NATS server not ready")
	}
	v, err := s.Varz(nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var fields map[string]any
	if err := json.Unmarshal(b, &fields); err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for k, v := range fields {
		if _, ok := v.(float64); ok {
			out["gnatsd_varz_"+k] = true
		}
	}
	if !out["gnatsd_varz_connections"] {
		t.Fatalf("NATS /varz has no connections field: %v", fields)
	}
	return out
}

// promqlKeywords are identifiers in PromQL that are not metric names.
var promqlKeywords = map[string]bool{
	"and": true, "or": true, "unless": true, "bool": true, "offset": true,
	"by": true, "without": true, "on": true, "ignoring": true,
	"group_left": true, "group_right": true, "inf": true, "nan": true,
	"atan2": true, "start": true, "end": true,
}

var labelLists = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)

// metricNames returns the metric names a PromQL expression selects. It does
// not judge whether the expression parses (promtool does that); it strips
// strings, label matchers, ranges and label lists, and keeps the
// identifiers that are neither functions nor keywords.
func metricNames(expr string) []string {
	var b strings.Builder
	depthBrace, depthBracket := 0, 0
	for i := 0; i < len(expr); i++ {
		c := expr[i]
		switch {
		case c == '"' || c == '\'' || c == '`':
			for i++; i < len(expr) && expr[i] != c; i++ {
				if expr[i] == '\\' && c != '`' {
					i++
				}
			}
			b.WriteByte(' ')
		case c == '#':
			for i < len(expr) && expr[i] != '\n' {
				i++
			}
		case c == '{':
			depthBrace++
		case c == '}':
			depthBrace--
		case c == '[':
			depthBracket++
		case c == ']':
			depthBracket--
		case depthBrace > 0 || depthBracket > 0:
		default:
			b.WriteByte(c)
		}
	}
	s := labelLists.ReplaceAllString(b.String(), " ")
	var names []string
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c >= '0' && c <= '9' || c == '.':
			// A number or a duration: 1e-9, 0.99, 5m.
			for i++; i < len(s) && (isIdent(s[i]) || s[i] == '.' || (s[i] == '-' || s[i] == '+') && (s[i-1] == 'e' || s[i-1] == 'E')); i++ {
			}
		case isIdentStart(c):
			j := i
			for j < len(s) && isIdent(s[j]) {
				j++
			}
			word := s[i:j]
			k := j
			for k < len(s) && (s[k] == ' ' || s[k] == '\n' || s[k] == '\t') {
				k++
			}
			isCall := k < len(s) && s[k] == '('
			if !isCall && !promqlKeywords[strings.ToLower(word)] {
				names = append(names, word)
			}
			i = j
		default:
			i++
		}
	}
	return names
}

func isIdentStart(c byte) bool {
	return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

func isIdent(c byte) bool { return isIdentStart(c) || c >= '0' && c <= '9' }

func TestMetricNames_FindsSelectorsNotFunctionsOrLabels(t *testing.T) {
	cases := map[string][]string{
		`sum by (service) (rate(switchyard_agent_applies_total{result=~"error|refused"}[5m]))`: {"switchyard_agent_applies_total"},
		"a:b:c - on (service) group_right x_total":                                             {"a:b:c", "x_total"},
		`clamp_min(sum(rate(m[5m])), 1e-9) > 0.5 or vector(0)`:                                 {"m"},
		`histogram_quantile(0.99, sum by (le) (rate(h_bucket[$__rate_interval]))) offset 1h`:   {"h_bucket"},
		`up{job="switchyard-agent"} == 0 unless absent(x)`:                                     {"up", "x"},
	}
	for expr, want := range cases {
		got := metricNames(expr)
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("metricNames(%q) = %v, want %v", expr, got, want)
		}
	}
}

// Every metric the docs and the README name exists: a name written wrong
// sends an operator to a query that never matches.
func TestDocs_NameOnlyMetricsThatExist(t *testing.T) {
	known := knownMetrics(t)
	root := repoRoot(t)
	files, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, filepath.Join(root, "README.md"))
	// Whole names in the agents' and coordinators' namespaces; a prefix
	// written before a brace or an ellipsis ends in "_" and is not one.
	named := regexp.MustCompile(`switchyard_(?:agent|coordinator)_[a-z0-9_]*[a-z0-9]\b`)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		reported := map[string]bool{}
		for _, m := range named.FindAllString(string(b), -1) {
			if !known[m] && !reported[m] {
				reported[m] = true
				t.Errorf("%s names %s, which no code declares", filepath.Base(f), m)
			}
		}
	}
}
