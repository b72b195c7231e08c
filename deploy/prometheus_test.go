package deploy

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

const rulesFile = "prometheus/switchyard.rules.yml"

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Record      string            `yaml:"record"`
			Alert       string            `yaml:"alert"`
			Expr        string            `yaml:"expr"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

func readRules(t *testing.T) ruleFile {
	t.Helper()
	b, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	var f ruleFile
	// promtool checks the schema; this reads the parts the tests look at.
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatalf("%s: %v", rulesFile, err)
	}
	return f
}

func TestPrometheusRules_PromtoolChecksAndUnitTests(t *testing.T) {
	promtool := tool(t, "promtool", "prometheus")
	out := runTool(t, time.Minute, ".", promtool, "check", "rules", rulesFile)
	if !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool check rules: %s", out)
	}
	tests, err := filepath.Glob("prometheus/tests/*.yaml")
	if err != nil || len(tests) == 0 {
		t.Fatalf("no rule unit tests under prometheus/tests (%v)", err)
	}
	out = runTool(t, time.Minute, ".", promtool, append([]string{"test", "rules"}, tests...)...)
	if strings.Contains(out, "FAILED") || !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool test rules: %s", out)
	}
}

// A broken rule must make the check fail, or the test above proves nothing.
func TestPrometheusRules_PromtoolRefusesABrokenRule(t *testing.T) {
	promtool := tool(t, "promtool", "prometheus")
	bad := filepath.Join(t.TempDir(), "bad.yml")
	if err := os.WriteFile(bad, []byte("groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: sum(rate(switchyard_agent_applies_total[5m])\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := tryTool(t, time.Minute, ".", promtool, "check", "rules", bad); err == nil {
		t.Fatalf("promtool accepted an unbalanced expression: %s", out)
	}
}

// Every alert says what happened and where its runbook is, the runbook
// section exists in docs/operations.md, and every metric it reads exists.
func TestPrometheusRules_AlertsHaveRunbooksAndKnownMetrics(t *testing.T) {
	f := readRules(t)
	ops, err := os.ReadFile(filepath.Join(repoRoot(t), "docs", "operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	anchors := markdownAnchors(string(ops))
	known := knownMetrics(t)
	alerts := 0
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			for _, m := range metricNames(r.Expr) {
				if !known[m] {
					t.Errorf("rule %s%s reads %s, which no Switchyard process, recording rule or exporter exposes", r.Record, r.Alert, m)
				}
			}
			if r.Alert == "" {
				continue
			}
			alerts++
			for _, k := range []string{"summary", "description", "runbook_url"} {
				if strings.TrimSpace(r.Annotations[k]) == "" {
					t.Errorf("alert %s: no %s annotation", r.Alert, k)
				}
			}
			if r.Labels["severity"] == "" {
				t.Errorf("alert %s: no severity label", r.Alert)
			}
			want := "docs/operations.md#" + strings.ToLower(r.Alert)
			if r.Annotations["runbook_url"] != want {
				t.Errorf("alert %s: runbook_url %q, want %q", r.Alert, r.Annotations["runbook_url"], want)
			}
			if !anchors[strings.ToLower(r.Alert)] {
				t.Errorf("alert %s: docs/operations.md has no section %q", r.Alert, "### "+r.Alert)
			}
		}
	}
	if alerts < 10 {
		t.Fatalf("%d alerts in %s; want the documented set", alerts, rulesFile)
	}
}

var heading = regexp.MustCompile(`(?m)^#{1,6}\s+(.+)$`)

// markdownAnchors returns the GitHub-style anchors of a document's headings.
func markdownAnchors(doc string) map[string]bool {
	out := map[string]bool{}
	for _, m := range heading.FindAllStringSubmatch(doc, -1) {
		var b strings.Builder
		for _, r := range strings.ToLower(strings.TrimSpace(m[1])) {
			switch {
			case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '_':
				b.WriteRune(r)
			case r == ' ':
				b.WriteRune('-')
			}
		}
		out[b.String()] = true
	}
	return out
}
