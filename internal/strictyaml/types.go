package strictyaml

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// typeErrorRE matches one of the problems in a yaml.TypeError, e.g.
// "line 3: cannot unmarshal !!str `fast` into time.Duration".
var typeErrorRE = regexp.MustCompile("^line (\\d+): cannot unmarshal !!(\\w+)(?: `(.*)`)? into (.+)$")

// duplicateKeyRE matches yaml's report of a key given twice in a mapping.
var duplicateKeyRE = regexp.MustCompile(`^line (\d+): mapping key "(.*)" already defined at line (\d+)$`)

// ExplainTypeError rewrites yaml's wrong-type errors ("line 3: cannot
// unmarshal !!str `fast` into time.Duration") and duplicate keys in a
// person's terms, naming the field by its full path under root and the kind
// of value it wants: `config.localGuard.window: "fast" is not a duration;
// want e.g. 5s or 250ms (line 3)`. Errors it does not recognise come back
// unchanged. data is the document err came from; an empty root leaves paths
// relative to the top.
func ExplainTypeError(data []byte, err error, root string) error {
	te, ok := err.(*yaml.TypeError)
	if !ok {
		return err
	}
	var doc yaml.Node
	if yaml.Unmarshal(data, &doc) != nil || len(doc.Content) == 0 {
		return err
	}
	return explainNode(doc.Content[0], te, root)
}

// explainNode explains every problem of te, which decoding n reported; path
// names n.
func explainNode(n *yaml.Node, te *yaml.TypeError, path string) Errors {
	var values []located
	locate(n, path, &values)
	var errs Errors
	for _, problem := range te.Errors {
		errs = append(errs, explainOne(problem, values, path))
	}
	return errs
}

// located is one node of a document with its field path: a value, or the
// key of a mapping entry (with the path of its value).
type located struct {
	path string
	node *yaml.Node
	key  bool
}

// locate lists every value node under n, and every mapping key, with its
// path.
func locate(n *yaml.Node, path string, out *[]located) {
	*out = append(*out, located{path: path, node: n})
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			key := n.Content[i].Value
			if path != "" {
				key = path + "." + key
			}
			*out = append(*out, located{path: key, node: n.Content[i], key: true})
			locate(n.Content[i+1], key, out)
		}
	case yaml.SequenceNode:
		for i, item := range n.Content {
			locate(item, fmt.Sprintf("%s[%d]", path, i), out)
		}
	case yaml.AliasNode:
		// An alias's target was located where it was defined.
	}
}

// shownAs reports whether yaml's message shows value as shown: itself,
// or, when longer than 10 bytes, its first 7 and "...".
func shownAs(value, shown string) bool {
	if value == shown {
		return true
	}
	prefix, cut := strings.CutSuffix(shown, "...")
	return cut && len(value) > 10 && len(prefix) == 7 && strings.HasPrefix(value, prefix)
}

func explainOne(problem string, values []located, root string) *FieldError {
	if m := duplicateKeyRE.FindStringSubmatch(problem); m != nil {
		line, _ := strconv.Atoi(m[1])
		path := root
		for _, v := range values {
			if v.key && v.node.Line == line && v.node.Value == m[2] {
				path = v.path
			}
		}
		return &FieldError{Path: path, Problem: "given twice in one mapping; first at line " + m[3], Line: line}
	}
	m := typeErrorRE.FindStringSubmatch(problem)
	if m == nil {
		return &FieldError{Path: root, Problem: problem}
	}
	line, _ := strconv.Atoi(m[1])
	tag, value, goType := m[2], m[3], m[4]
	// The field is the deepest value node on that line of the kind yaml
	// names: a mapping and its first key share a line in flow style. yaml
	// shortens long values in its message, so the value only breaks a tie
	// between scalars on one line.
	var found, byValue *located
	for i, v := range values {
		if v.key || v.node.Line != line || (v.node.Kind == yaml.ScalarNode) != (value != "") {
			continue
		}
		found = &values[i]
		if value != "" && shownAs(v.node.Value, value) {
			byValue = &values[i]
		}
	}
	if byValue != nil {
		found = byValue
	}
	path := root
	if found != nil {
		path = found.path
		if value != "" {
			value = found.node.Value // not yaml's shortened copy
		}
	}
	got := strconv.Quote(value)
	if value == "" {
		got = map[string]string{"seq": "a list", "map": "a mapping"}[tag]
		if got == "" {
			got = "a " + tag
		}
	}
	return &FieldError{Path: path, Problem: fmt.Sprintf("%s is not %s", got, want(goType)), Line: line}
}

// want says, for an operator, what a Go type accepts.
func want(goType string) string {
	switch {
	case goType == "time.Duration":
		return "a duration; want e.g. 5s, 250ms or 1m30s"
	case goType == "bool":
		return "true or false"
	case strings.HasPrefix(goType, "int") || strings.HasPrefix(goType, "uint"):
		return "a whole number"
	case strings.HasPrefix(goType, "float"):
		return "a number"
	case goType == "string":
		return "a string"
	case strings.HasPrefix(goType, "[]"):
		return "a list"
	case strings.HasPrefix(goType, "map["):
		return "a mapping"
	default:
		return "a mapping of fields"
	}
}

// Lines maps the path of every value in a YAML document, named as Decode
// names fields under root ("spec.waves[0].percent"), to its line, so a
// check made after decoding can say where the value was written. A
// document that is not valid YAML maps nothing.
func Lines(data []byte, root string) map[string]int {
	var doc yaml.Node
	if yaml.Unmarshal(data, &doc) != nil || len(doc.Content) == 0 {
		return nil
	}
	var values []located
	locate(doc.Content[0], root, &values)
	lines := make(map[string]int, len(values))
	for _, v := range values {
		lines[v.path] = v.node.Line
	}
	return lines
}
