package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/switchyard/switchyard/agent"
	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/coordinator"
	"github.com/switchyard/switchyard/internal/spec"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// docExample is a ```yaml or ```json block of a doc, with the kind its
// "<!-- parse: KIND -->" marker gives it.
type docExample struct {
	where string // doc:line
	lang  string
	kind  string
	text  string
}

var parseMarker = regexp.MustCompile(`^<!-- parse: ([a-z-]+) -->$`)

// docExamples reads every ```yaml and ```json block of README.md and
// docs/*.md with the marker on the line before it ("" when there is none).
func docExamples(t *testing.T) []docExample {
	t.Helper()
	docs, err := filepath.Glob(filepath.Join("..", "..", "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	docs = append([]string{filepath.Join("..", "..", "README.md")}, docs...)
	var out []docExample
	for _, doc := range docs {
		b, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(string(b), "\n")
		name := strings.TrimPrefix(doc, filepath.Join("..", "..")+string(filepath.Separator))
		for i := 0; i < len(lines); i++ {
			lang := strings.TrimPrefix(strings.TrimSpace(lines[i]), "```")
			if !strings.HasPrefix(strings.TrimSpace(lines[i]), "```") || (lang != "yaml" && lang != "json") {
				if strings.HasPrefix(strings.TrimSpace(lines[i]), "```") {
					// Skip the body of any other block.
					for i++; i < len(lines) && strings.TrimSpace(lines[i]) != "```"; i++ {
					}
				}
				continue
			}
			ex := docExample{where: name + ":" + strconv.Itoa(i+1), lang: lang}
			if i > 0 {
				if m := parseMarker.FindStringSubmatch(strings.TrimSpace(lines[i-1])); m != nil {
					ex.kind = m[1]
				}
			}
			var body []string
			for i++; i < len(lines) && strings.TrimSpace(lines[i]) != "```"; i++ {
				body = append(body, lines[i])
			}
			ex.text = strings.Join(body, "\n") + "\n"
			out = append(out, ex)
		}
	}
	return out
}

// mergeTop puts the top-level keys of fragment into base (a YAML mapping),
// replacing those base has.
func mergeTop(t *testing.T, where string, base, fragment []byte) []byte {
	t.Helper()
	var b, f map[string]any
	if err := yaml.Unmarshal(base, &b); err != nil {
		t.Fatalf("%s: base: %v", where, err)
	}
	if err := yaml.Unmarshal(fragment, &f); err != nil {
		t.Fatalf("%s: not YAML: %v", where, err)
	}
	for k, v := range f {
		b[k] = v
	}
	out, err := yaml.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestDocs_ConfigAndSpecExamplesParse reads every YAML and JSON example of
// the docs with the program that reads such a file: an agent config (a
// whole one, or keys of one over examples/agent.yaml) with the agent's own
// loader, a coordinator config with the coordinator's, rollout spec keys
// over examples/hooks.yaml with the CLI's spec parser, a webhook body with
// protojson into the message the leader sends. Paths the examples name on
// a production host (keys, hook commands) are pointed at files of the
// test's own; everything else is read as written. Every block carries its
// "<!-- parse: KIND -->" marker, so a new example cannot go unchecked.
func TestDocs_ConfigAndSpecExamplesParse(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "coordinator.key")
	if _, err := bus.GenerateSigningKey(key); err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "hook")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	// An agent's creds and the NATS servers' CA, made as the docs say.
	authDir := filepath.Join(dir, "auth")
	creds := filepath.Join(dir, "edge-1.creds")
	for _, args := range [][]string{
		{"auth", "init", "--dir", authDir},
		{"auth", "issue", "--dir", authDir, "--role", "agent", "--name", "edge-1", "--out", creds},
		{"auth", "tls", "--dir", filepath.Join(dir, "tls"), "--name", "nats", "--host", "127.0.0.1"},
	} {
		if code, _, stderr := runCLI(t, args...); code != exitOK {
			t.Fatalf("%v: exit %d: %s", args, code, stderr)
		}
	}
	// Files a production host has that the test host does not.
	hostFiles := strings.NewReplacer(
		"/etc/switchyard/edge-1.creds", creds,
		"/etc/switchyard/ca.pem", filepath.Join(dir, "tls", "ca.pem"),
		"/etc/switchyard/coordinator.key.pub", key+".pub",
		"/tmp/switchyard/dev/keys/coordinator.key.pub", key+".pub",
		"/usr/local/bin/warm-cache", exe,
		"/usr/local/bin/flush-cache", exe,
		"/usr/local/bin/smoke-green", exe,
	)
	readExample := func(name string) []byte {
		b, err := os.ReadFile(example(t, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	parseAgent := func(where string, doc []byte) *agent.Config {
		t.Helper()
		cfg, err := agent.ParseConfig([]byte(hostFiles.Replace(string(doc))))
		if err != nil {
			t.Errorf("%s: the agent refuses it: %v", where, err)
		}
		return cfg
	}
	seen := map[string]int{}
	for _, ex := range docExamples(t) {
		seen[ex.kind]++
		switch ex.kind {
		case "agent-config":
			parseAgent(ex.where, []byte(ex.text))
		case "agent-keys":
			parseAgent(ex.where, mergeTop(t, ex.where, readExample("agent.yaml"), []byte(ex.text)))
		case "coordinator-keys":
			path := filepath.Join(dir, "coordinator.yaml")
			if err := os.WriteFile(path, []byte(ex.text), 0o600); err != nil {
				t.Fatal(err)
			}
			var cfg coordinator.Config
			var signing signingFlags
			if _, err := loadCoordinatorFile(path, &cfg, &signing); err != nil {
				t.Errorf("%s: the coordinator refuses it: %v", ex.where, err)
				continue
			}
			for i := range cfg.Notify {
				if err := cfg.Notify[i].Validate("notifications[" + strconv.Itoa(i) + "]"); err != nil {
					t.Errorf("%s: the coordinator refuses it: %v", ex.where, err)
				}
			}
		case "spec-keys":
			if _, err := spec.Parse(mergeTop(t, ex.where, readExample("hooks.yaml"), []byte(ex.text))); err != nil {
				t.Errorf("%s: the spec parser refuses it: %v", ex.where, err)
			}
		case "webhook-body":
			// "..." stands for what the doc leaves out.
			text := strings.ReplaceAll(ex.text, `{"...": "..."}`, `{}`)
			if err := protojson.Unmarshal([]byte(text), new(sv1.WebhookBody)); err != nil {
				t.Errorf("%s: not a webhook body: %v", ex.where, err)
			}
		case "json":
			if !json.Valid([]byte(ex.text)) {
				t.Errorf("%s: not JSON", ex.where)
			}
		case "trimmed":
			// An answer shown with parts left out ("..."): checked by the
			// test that runs the command printing it.
		default:
			t.Errorf("%s: a ```%s block with no <!-- parse: KIND --> marker this test knows (%q)", ex.where, ex.lang, ex.kind)
		}
	}
	t.Logf("examples checked: %v", seen)
}

// docSwitchyardCommands are the switchyard commands of README.md and
// docs/*.md: each line of a ```sh block from "switchyard " on, and each
// `switchyard ...` in backticks in the prose and tables, where.
func docSwitchyardCommands(t *testing.T) (cmds, where []string) {
	t.Helper()
	docs, err := filepath.Glob(filepath.Join("..", "..", "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	docs = append([]string{filepath.Join("..", "..", "README.md")}, docs...)
	blockRE := regexp.MustCompile("(?s)```sh\n(.*?)```")
	spanRE := regexp.MustCompile("`(switchyard [^`]+)`")
	for _, doc := range docs {
		b, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		text := string(b)
		name := strings.TrimPrefix(doc, filepath.Join("..", "..")+string(filepath.Separator))
		line := func(off int) string { return name + ":" + strconv.Itoa(strings.Count(text[:off], "\n")+1) }
		for _, m := range blockRE.FindAllStringSubmatchIndex(text, -1) {
			block := strings.ReplaceAll(text[m[2]:m[3]], "\\\n", " ")
			for _, l := range strings.Split(block, "\n") {
				if i := strings.Index(l, "switchyard "); i >= 0 && !strings.HasPrefix(strings.TrimSpace(l), "#") {
					cmds, where = append(cmds, l[i:]), append(where, line(m[0]))
				}
			}
		}
		for _, m := range spanRE.FindAllStringSubmatchIndex(text, -1) {
			cmds, where = append(cmds, strings.ReplaceAll(text[m[2]:m[3]], "\n", " ")), append(where, line(m[0]))
		}
	}
	return cmds, where
}

// TestDocs_CommandsNameVerbsAndFlagsThatExist checks every switchyard
// command of the docs, also those no test can run as written (another
// host's addresses, systemd): its verb exists and every flag it gives is
// one that verb takes. A renamed flag or verb fails here, not in an
// operator's outage.
func TestDocs_CommandsNameVerbsAndFlagsThatExist(t *testing.T) {
	groups := map[string]bool{"rollout": true, "chaos": true, "auth": true, "keys": true, "intent": true, "acl": true, "audit": true, "fleet": true}
	clusterVerbs := map[string]bool{"members": true, "raise-epoch": true, "remove-peer": true}
	wordRE := regexp.MustCompile(`^[a-z][a-z-]*$`)
	flagRE := regexp.MustCompile(`(?:^|[\s\[])--?([a-z][a-z0-9-]*)`)
	helpFlagRE := regexp.MustCompile(`(?m)^\s+-([a-z][a-z0-9-]*)`)
	help := map[string]string{}
	cmds, where := docSwitchyardCommands(t)
	checked := 0
	for i, c := range cmds {
		// The command ends at a comment, a pipe or the prose around it.
		for _, end := range []string{" #", " |", ")", ";"} {
			c, _, _ = strings.Cut(c, end)
		}
		w := strings.Fields(c)
		if len(w) < 2 || strings.HasPrefix(w[1], "-") {
			continue // `switchyard --version`, checked by TestCLI_Version
		}
		verb := []string{w[1]}
		if len(w) > 2 && wordRE.MatchString(w[2]) && (groups[w[1]] || (w[1] == "coordinator" && clusterVerbs[w[2]])) {
			verb = append(verb, w[2])
		}
		key := strings.Join(verb, " ")
		out, ok := help[key]
		if !ok {
			var stdout, stderr strings.Builder
			run(t.Context(), append(verb, "-h"), &stdout, &stderr)
			out = stdout.String() + stderr.String()
			help[key] = out
		}
		switch {
		case strings.Contains(out, "Usage of switchyard "+key+":"):
		case len(verb) == 1 && groups[key] && strings.Contains(out, "switchyard "+key+" "):
			continue // a group named as a whole: `switchyard rollout …`
		default:
			t.Errorf("%s: `%s`: switchyard has no verb %q:\n%s", where[i], c, key, out)
			continue
		}
		have := map[string]bool{"h": true, "help": true}
		for _, m := range helpFlagRE.FindAllStringSubmatch(out, -1) {
			have[m[1]] = true
		}
		for _, m := range flagRE.FindAllStringSubmatch(c, -1) {
			if !have[m[1]] {
				t.Errorf("%s: `%s`: switchyard %s has no flag -%s", where[i], c, key, m[1])
			}
		}
		checked++
	}
	if checked < 100 {
		t.Fatalf("checked %d commands; the docs have more: is the extraction broken?", checked)
	}
	t.Logf("%d commands checked", checked)
}
