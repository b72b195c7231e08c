package spec

import (
	"errors"
	"strings"
	"testing"
)

const good = `
version: v1
name: web-green-1
service: web
from: blue
to: green
strategy:
  blueGreen: {}
`

func TestSpec_ParseGood(t *testing.T) {
	s, err := Parse([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if s.GetName() != "web-green-1" || s.GetService() != "web" || s.GetFrom() != "blue" || s.GetTo() != "green" || s.GetStrategy().GetBlueGreen() == nil {
		t.Fatalf("parsed %v", s)
	}
}

func TestSpec_ParseRefuses(t *testing.T) {
	cases := []struct {
		name string
		yaml string
		want []string // substrings that must all appear
	}{
		{"unknown top-level field", good + "colour: red\n", []string{"spec.colour: unknown field", "line 9"}},
		{"unknown nested field", strings.Replace(good, "blueGreen: {}", "blueGren: {}", 1), []string{"spec.strategy.blueGren: unknown field", "want one of blueGreen"}},
		{"unknown field inside blueGreen", strings.Replace(good, "blueGreen: {}", "blueGreen: {ramp: 5}", 1), []string{"spec.strategy.blueGreen.ramp: unknown field"}},
		{"missing to", strings.Replace(good, "to: green\n", "", 1), []string{"spec.to: required"}},
		{"missing from", strings.Replace(good, "from: blue\n", "", 1), []string{"spec.from: required"}},
		{"same backend", strings.Replace(good, "to: green", "to: blue", 1), []string{`spec.to: "blue" is also spec.from`}},
		{"bad service name", strings.Replace(good, "service: web", "service: web.eu", 1), []string{`spec.service: "web.eu"`, "letters, digits"}},
		{"no strategy", strings.Replace(good, "strategy:\n  blueGreen: {}\n", "", 1), []string{"spec.strategy: required: one of blueGreen"}},
		{"wrong version", strings.Replace(good, "version: v1", "version: v9", 1), []string{`spec.version: "v9" is not supported`}},
		{"not yaml", "name: [", []string{"spec: not valid YAML"}},
		{"empty", "", []string{"spec: empty document"}},
		{"strategy not a mapping", strings.Replace(good, "strategy:\n  blueGreen: {}", "strategy: fast", 1), []string{"spec.strategy: want a mapping"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(c.yaml))
			if err == nil {
				t.Fatal("accepted")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v does not wrap ErrInvalid", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestSpec_ReportsEveryProblem(t *testing.T) {
	_, err := Parse([]byte("version: v1\nname: x\n"))
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("error %T is not Errors", err)
	}
	if len(errs) != 4 { // service, from, to, strategy
		t.Errorf("got %d problems, want 4: %v", len(errs), err)
	}
}

func FuzzSpec_Parse(f *testing.F) {
	f.Add([]byte(good))
	f.Add([]byte("strategy: {blueGreen: [1]}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse(data)
		if err == nil && Validate(s) != nil {
			t.Fatal("Parse accepted a spec Validate refuses")
		}
	})
}
