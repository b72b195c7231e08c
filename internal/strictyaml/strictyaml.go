// Package strictyaml decodes YAML written by people into Go structs,
// refusing unknown fields and reporting every problem with the field's full
// path and line, so an operator sees "spec.strategy.blueGren: unknown
// field" rather than a Go type name.
package strictyaml

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"reflect"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// durationType is decoded from "5s"; yaml's own error names it.
var durationType = reflect.TypeFor[time.Duration]()

// ErrInvalid is wrapped by every error Decode and the validators built on it
// return.
var ErrInvalid = errors.New("invalid")

// Decode decodes data into out (a pointer to a struct with yaml tags). root
// names the document in paths ("spec", "drill").
func Decode(data []byte, out any, root string) error {
	var doc yaml.Node
	docs := yaml.NewDecoder(bytes.NewReader(data))
	if err := docs.Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		return Errors{{Path: root, Problem: "not valid YAML: " + strings.TrimPrefix(err.Error(), "yaml: ")}}
	}
	if len(doc.Content) == 0 {
		return Errors{{Path: root, Problem: "empty document"}}
	}
	// Decoding reads the first document only: a second one after "---"
	// (a spec pasted twice, a stream meant for another tool) would be
	// dropped without a word.
	var next yaml.Node
	if err := docs.Decode(&next); !errors.Is(err, io.EOF) {
		// next.Line is the second document's "---", when yaml could read it.
		return Errors{{Path: root, Problem: fmt.Sprintf("the file holds more than one YAML document; want one %s per file", root), Line: next.Line}}
	}
	if errs := checkKnown(doc.Content[0], reflect.TypeOf(out), root); len(errs) > 0 {
		return errs
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(out); err != nil {
		if explained, ok := ExplainTypeError(data, err, root).(Errors); ok {
			return explained
		}
		return Errors{{Path: root, Problem: strings.TrimPrefix(err.Error(), "yaml: ")}}
	}
	return nil
}

// FieldError is one problem with one field of a document.
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

// Errors is every problem found in a document.
type Errors []*FieldError

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap lets errors.Is(err, ErrInvalid) hold for every error.
func (es Errors) Unwrap() error { return ErrInvalid }

// checkKnown walks a YAML mapping against the struct type it decodes into
// and reports every key the type does not have, with its full path, so an
// operator sees "spec.strategy.blueGren: unknown field" rather than a Go
// type name.
func checkKnown(n *yaml.Node, t reflect.Type, path string) Errors {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil
	}
	switch t.Kind() {
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			return Errors{{Path: path, Problem: "want a list", Line: n.Line}}
		}
		var errs Errors
		for i, item := range n.Content {
			errs = append(errs, checkKnown(item, t.Elem(), fmt.Sprintf("%s[%d]", path, i))...)
		}
		return errs
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			return Errors{{Path: path, Problem: "want a mapping", Line: n.Line}}
		}
		var errs Errors
		for i := 0; i+1 < len(n.Content); i += 2 {
			errs = append(errs, checkKnown(n.Content[i+1], t.Elem(), join(path, n.Content[i].Value))...)
		}
		return errs
	case reflect.Struct:
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		// yaml decodes 12.5 into a whole-number field as 12, without a
		// word: a weight or a percent written with a fraction would be
		// taken for less than the operator meant. Durations have their
		// own message.
		if t != durationType && n.Kind == yaml.ScalarNode && n.ShortTag() == "!!float" {
			if f, err := strconv.ParseFloat(n.Value, 64); err != nil || f != math.Trunc(f) {
				return Errors{{Path: path, Problem: fmt.Sprintf("%q is not a whole number", n.Value), Line: n.Line}}
			}
		}
		return nil
	default:
		return nil
	}
	if n.Kind != yaml.MappingNode {
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
			errs = append(errs, &FieldError{Path: join(path, k.Value), Problem: "unknown field; " + want, Line: k.Line})
			continue
		}
		errs = append(errs, checkKnown(v, ft, join(path, k.Value))...)
	}
	return errs
}

// join is the path of key under path; an empty root leaves paths relative
// to the top, as in ExplainTypeError.
func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// DecodeNode decodes one already parsed node into out, refusing unknown
// fields as Decode does; path names the node in errors.
func DecodeNode(n *yaml.Node, out any, path string) error {
	if errs := checkKnown(n, reflect.TypeOf(out), path); len(errs) > 0 {
		return errs
	}
	if err := n.Decode(out); err != nil {
		var te *yaml.TypeError
		if errors.As(err, &te) {
			// Its lines are the document's: the node keeps them.
			return explainNode(n, te, path)
		}
		return Errors{{Path: path, Problem: strings.TrimPrefix(err.Error(), "yaml: "), Line: n.Line}}
	}
	return nil
}
