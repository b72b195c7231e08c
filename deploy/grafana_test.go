package deploy

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// dashboardQuery is one PromQL expression of a dashboard and where it is.
type dashboardQuery struct {
	where, expr string
}

var labelValuesQuery = regexp.MustCompile(`^\s*label_values\((.+),\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*$`)

// dashboardQueries collects every panel target, annotation and template
// variable query of a Grafana dashboard.
func dashboardQueries(t *testing.T, path string) (uid string, out []dashboardQuery) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		UID        string            `json:"uid"`
		Title      string            `json:"title"`
		Panels     []json.RawMessage `json:"panels"`
		Templating struct {
			List []struct {
				Name  string          `json:"name"`
				Type  string          `json:"type"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
		Annotations struct {
			List []struct {
				Name string `json:"name"`
				Expr string `json:"expr"`
			} `json:"list"`
		} `json:"annotations"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if d.UID == "" || d.Title == "" {
		t.Errorf("%s: a dashboard needs a uid and a title", path)
	}
	type panel struct {
		Title   string `json:"title"`
		Type    string `json:"type"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
		Panels []json.RawMessage `json:"panels"`
	}
	var walk func([]json.RawMessage)
	walk = func(raw []json.RawMessage) {
		for _, r := range raw {
			var p panel
			if err := json.Unmarshal(r, &p); err != nil {
				t.Fatalf("%s: panel: %v", path, err)
			}
			if p.Type != "row" && len(p.Targets) == 0 {
				t.Errorf("%s: panel %q has no query", path, p.Title)
			}
			for i, tg := range p.Targets {
				if strings.TrimSpace(tg.Expr) == "" {
					t.Errorf("%s: panel %q target %d has no expr", path, p.Title, i)
				}
				out = append(out, dashboardQuery{fmt.Sprintf("panel %q target %d", p.Title, i), tg.Expr})
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	for _, a := range d.Annotations.List {
		if a.Expr != "" {
			out = append(out, dashboardQuery{fmt.Sprintf("annotation %q", a.Name), a.Expr})
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		if err := json.Unmarshal(v.Query, &q); err != nil {
			t.Fatalf("%s: variable %s: %v", path, v.Name, err)
		}
		m := labelValuesQuery.FindStringSubmatch(q.Query)
		if m == nil {
			t.Errorf("%s: variable %s: query %q is not label_values(selector, label)", path, v.Name, q.Query)
			continue
		}
		out = append(out, dashboardQuery{fmt.Sprintf("variable %s", v.Name), m[1]})
	}
	return d.UID, out
}

// grafanaVars stands in for what Grafana substitutes before sending a
// query: range variables become durations, the rest sit inside label
// matcher strings.
var grafanaVars = strings.NewReplacer(
	"$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h",
	"$service", ".*", "$instance", ".*", "$server", ".*",
)

// Every dashboard query parses (promtool checks them as recording rules)
// and reads only metrics that exist.
func TestGrafanaDashboards_QueriesParseAndReadKnownMetrics(t *testing.T) {
	promtool := tool(t, "promtool", "prometheus")
	paths, err := filepath.Glob("grafana/*.json")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"switchyard-fleet": false, "switchyard-rollout": false, "switchyard-agent": false,
		"switchyard-coordinator": false, "switchyard-nats": false}
	known := knownMetrics(t)
	type rule struct {
		Record string `yaml:"record"`
		Expr   string `yaml:"expr"`
	}
	var rules []rule
	var where []string
	for _, p := range paths {
		uid, queries := dashboardQueries(t, p)
		if _, ok := want[uid]; !ok {
			t.Errorf("%s: unexpected uid %q", p, uid)
		}
		want[uid] = true
		for _, q := range queries {
			expr := grafanaVars.Replace(q.expr)
			if strings.Contains(expr, "$") {
				t.Errorf("%s %s: unknown variable in %q", p, q.where, q.expr)
			}
			for _, m := range metricNames(expr) {
				if !known[m] {
					t.Errorf("%s %s reads %s, which no Switchyard process, recording rule or exporter exposes", p, q.where, m)
				}
			}
			rules = append(rules, rule{Record: fmt.Sprintf("dashboard:query_%d", len(rules)), Expr: expr})
			where = append(where, p+" "+q.where)
		}
	}
	for uid, seen := range want {
		if !seen {
			t.Errorf("no dashboard %s under grafana/", uid)
		}
	}
	if len(rules) < 40 {
		t.Fatalf("%d dashboard queries found; want the five dashboards' queries", len(rules))
	}
	doc := map[string]any{"groups": []any{map[string]any{"name": "dashboards", "rules": rules}}}
	b, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "dashboards.rules.yml")
	if err := os.WriteFile(file, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := tryTool(t, time.Minute, ".", promtool, "check", "rules", file); err != nil {
		// Name the dashboard queries promtool names by their index.
		for i, w := range where {
			if strings.Contains(out, fmt.Sprintf("dashboard:query_%d\"", i)) || strings.Contains(out, fmt.Sprintf("rule %d:", i+1)) {
				t.Errorf("%s does not parse: %s", w, rules[i].Expr)
			}
		}
		t.Fatalf("promtool check rules on the dashboard queries: %v\n%s", err, out)
	}
}
