// Package spec reads rollout specs written by people (YAML) into the
// RolloutSpec message and validates them with errors that name the field,
// the value and what would be accepted. The CLI validates before sending and
// the coordinators validate again before committing.
package spec

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/switchyard/switchyard/internal/names"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Version is the only spec version this build reads.
const Version = "v1"

// ErrInvalid is wrapped by every validation and parse error.
var ErrInvalid = errors.New("invalid rollout spec")

// FieldError is one problem with one field of a spec.
type FieldError struct {
	// Path is the field's path, e.g. "spec.strategy.blueGreen".
	Path string
	// Problem says what is wrong and what would be accepted.
	Problem string
	// Line is the YAML line, when known.
	Line int
}

func (e *FieldError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s: %s (line %d)", e.Path, e.Problem, e.Line)
	}
	return fmt.Sprintf("%s: %s", e.Path, e.Problem)
}

// Errors is every problem found in a spec.
type Errors []*FieldError

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap lets errors.Is(err, ErrInvalid) hold for every spec error.
func (es Errors) Unwrap() error { return ErrInvalid }

// file is the YAML shape of a spec. Field names are what operators write.
type file struct {
	Version  string       `yaml:"version"`
	Name     string       `yaml:"name"`
	Service  string       `yaml:"service"`
	From     string       `yaml:"from"`
	To       string       `yaml:"to"`
	Strategy strategyFile `yaml:"strategy"`
}

type strategyFile struct {
	BlueGreen *blueGreenFile `yaml:"blueGreen"`
}

type blueGreenFile struct{}

// Parse reads a YAML spec, refusing unknown fields, and validates it.
func Parse(data []byte) (*sv1.RolloutSpec, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, Errors{{Path: "spec", Problem: "not valid YAML: " + strings.TrimPrefix(err.Error(), "yaml: ")}}
	}
	if len(root.Content) == 0 {
		return nil, Errors{{Path: "spec", Problem: "empty document"}}
	}
	if errs := checkKnown(root.Content[0], reflect.TypeOf(file{}), "spec"); len(errs) > 0 {
		return nil, errs
	}
	var f file
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return nil, Errors{{Path: "spec", Problem: strings.TrimPrefix(err.Error(), "yaml: ")}}
	}
	if f.Version != Version {
		return nil, Errors{{Path: "spec.version", Problem: fmt.Sprintf("%q is not supported, want %q", f.Version, Version)}}
	}
	s := &sv1.RolloutSpec{
		Name:     f.Name,
		Service:  f.Service,
		From:     f.From,
		To:       f.To,
		Strategy: &sv1.Strategy{},
	}
	if f.Strategy.BlueGreen != nil {
		s.Strategy.Kind = &sv1.Strategy_BlueGreen{BlueGreen: &sv1.BlueGreen{}}
	}
	if err := Validate(s); err != nil {
		return nil, err
	}
	return s, nil
}

// Validate checks a spec however it arrived (YAML, protobuf, protojson).
func Validate(s *sv1.RolloutSpec) error {
	var errs Errors
	name := func(path, v, what string) {
		if v == "" {
			errs = append(errs, &FieldError{Path: path, Problem: "required: " + what})
			return
		}
		if err := names.Validate(v); err != nil {
			errs = append(errs, &FieldError{Path: path, Problem: strings.TrimPrefix(err.Error(), names.ErrInvalid.Error()+": ")})
		}
	}
	name("spec.name", s.GetName(), "a name for this rollout, unique among rollouts")
	name("spec.service", s.GetService(), "the service whose traffic moves, as named in agent configs")
	name("spec.from", s.GetFrom(), `the backend that serves now, e.g. "blue"`)
	name("spec.to", s.GetTo(), `the backend traffic moves to, e.g. "green"`)
	if s.GetFrom() != "" && s.GetFrom() == s.GetTo() {
		errs = append(errs, &FieldError{Path: "spec.to", Problem: fmt.Sprintf("%q is also spec.from; a rollout moves traffic between two different backends", s.GetTo())})
	}
	if s.GetStrategy().GetKind() == nil {
		errs = append(errs, &FieldError{Path: "spec.strategy", Problem: "required: one of blueGreen"})
	}
	if len(errs) > 0 {
		return errs
	}
	return nil
}

// checkKnown walks a YAML mapping against the struct type it decodes into
// and reports every key the type does not have, with its full path, so an
// operator sees "spec.strategy.blueGren: unknown field" rather than a Go
// type name.
func checkKnown(n *yaml.Node, t reflect.Type, path string) Errors {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
			return nil
		}
		return Errors{{Path: path, Problem: "want a mapping of fields", Line: n.Line}}
	}
	fields := map[string]reflect.Type{}
	var known []string
	for i := range t.NumField() {
		f := t.Field(i)
		tag := strings.Split(f.Tag.Get("yaml"), ",")[0]
		if tag == "" || tag == "-" {
			continue
		}
		fields[tag] = f.Type
		known = append(known, tag)
	}
	var errs Errors
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		ft, ok := fields[k.Value]
		if !ok {
			want := "this mapping has no fields"
			if len(known) > 0 {
				want = "want one of " + strings.Join(known, ", ")
			}
			errs = append(errs, &FieldError{Path: path + "." + k.Value, Problem: "unknown field; " + want, Line: k.Line})
			continue
		}
		errs = append(errs, checkKnown(v, ft, path+"."+k.Value)...)
	}
	return errs
}
