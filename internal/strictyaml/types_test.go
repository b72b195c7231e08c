package strictyaml

import (
	"errors"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

type guardFile struct {
	Window  time.Duration `yaml:"window"`
	Enabled bool          `yaml:"enabled"`
	Min     int           `yaml:"minRequests"`
	Names   []string      `yaml:"names"`
}

type configFile struct {
	Rate   float64     `yaml:"rate"`
	Guard  guardFile   `yaml:"localGuard"`
	Guards []guardFile `yaml:"guards"`
}

func TestDecode_WrongTypesNameTheField(t *testing.T) {
	doc := `rate: lots
localGuard:
  window: fast
  enabled: maybe
  minRequests: many
  names: [one]
guards:
  - {window: 1s}
  - {window: slow}
`
	var c configFile
	err := Decode([]byte(doc), &c, "config")
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("Decode: %v, want ErrInvalid", err)
	}
	for _, want := range []string{
		`config.rate: "lots" is not a number (line 1)`,
		`config.localGuard.window: "fast" is not a duration; want e.g. 5s, 250ms or 1m30s (line 3)`,
		`config.localGuard.enabled: "maybe" is not true or false (line 4)`,
		`config.localGuard.minRequests: "many" is not a whole number (line 5)`,
		`config.guards[1].window: "slow" is not a duration; want e.g. 5s, 250ms or 1m30s (line 9)`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

// yaml itself takes 12.5 for 12 in a whole-number field; a weight or a
// percent written with a fraction is refused instead. Whole numbers written
// as floats (3.0, 1e3) mean what they say.
func TestDecode_AFractionInAWholeNumberFieldNamesTheField(t *testing.T) {
	var c configFile
	err := Decode([]byte("localGuard:\n  minRequests: 12.5\nguards:\n  - {minRequests: .inf}\n"), &c, "config")
	for _, want := range []string{
		`config.localGuard.minRequests: "12.5" is not a whole number (line 2)`,
		`config.guards[0].minRequests: ".inf" is not a whole number (line 4)`,
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	for doc, want := range map[string]int{"localGuard: {minRequests: 3.0}": 3, "localGuard: {minRequests: 1e3}": 1000} {
		var c configFile
		if err := Decode([]byte(doc), &c, "config"); err != nil || c.Guard.Min != want {
			t.Errorf("%s: %d, %v; want %d", doc, c.Guard.Min, err, want)
		}
	}
}

func TestDecode_WrongShapeNamesTheField(t *testing.T) {
	var c configFile
	err := Decode([]byte("localGuard:\n  names: {a: b}\n"), &c, "config")
	if err == nil || !strings.Contains(err.Error(), "config.localGuard.names") {
		t.Fatalf("Decode: %v, want the field named", err)
	}
}

func TestExplainTypeError_LeavesOtherErrorsAlone(t *testing.T) {
	other := errors.New("boom")
	if got := ExplainTypeError([]byte("a: b"), other, "x"); got != other {
		t.Fatalf("got %v, want the error unchanged", got)
	}
}

func TestLines_NameEveryValueByItsPath(t *testing.T) {
	doc := `rate: 0.5
localGuard:
  window: 5s
guards:
  - {window: 1s}
  - window: 2s
    names: [a, b]
`
	lines := Lines([]byte(doc), "config")
	for path, want := range map[string]int{
		"config":                    1,
		"config.rate":               1,
		"config.localGuard.window":  3,
		"config.guards[0].window":   5,
		"config.guards[1].window":   6,
		"config.guards[1].names[1]": 7,
	} {
		if got := lines[path]; got != want {
			t.Errorf("line of %s = %d, want %d", path, got, want)
		}
	}
	if Lines([]byte("rate: ["), "config") != nil {
		t.Error("a document that is not YAML has lines")
	}
}

// yaml shortens a long value in its message ("ed25519..."); the field is
// found by its line all the same, and named with its whole value.
func TestDecode_LongWrongValueNamesTheField(t *testing.T) {
	doc := []byte("localGuard: {names: \"ed25519:6kpsY+KcUgq+9VB7Ey7F\"}\n")
	var c configFile
	err := ExplainTypeError(doc, yaml.Unmarshal(doc, &c), "config")
	want := `config.localGuard.names: "ed25519:6kpsY+KcUgq+9VB7Ey7F" is not a list (line 1)`
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("ExplainTypeError: %v, want %q", err, want)
	}
}

// A key given twice is named by its path, with both lines.
func TestDecode_DuplicateKeyNamesTheField(t *testing.T) {
	var c configFile
	err := Decode([]byte("rate: 1\nlocalGuard:\n  window: 1s\n  window: 2s\n"), &c, "config")
	want := "config.localGuard.window: given twice in one mapping; first at line 3 (line 4)"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Decode: %v, want %q", err, want)
	}
}

// DecodeNode (a section decoded on its own, as an agent's driver section
// is) names a wrong-typed field by its full path, once, with one line.
func TestDecodeNode_WrongTypeNamesTheFullPath(t *testing.T) {
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte("services:\n  web:\n    guard:\n      window: soon\n"), &doc); err != nil {
		t.Fatal(err)
	}
	section := doc.Content[0].Content[1].Content[1].Content[1]
	var g guardFile
	err := DecodeNode(section, &g, "services.web.guard")
	want := `services.web.guard.window: "soon" is not a duration; want e.g. 5s, 250ms or 1m30s (line 4)`
	if err == nil || err.Error() != want {
		t.Fatalf("DecodeNode: %v, want %q", err, want)
	}
}
