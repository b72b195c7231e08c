// Package arrows holds the test that keeps Switchyard's dependencies
// pointing one way: proto <- internal <- bus <- coordinator, agent <- cmd.
package arrows

import (
	"go/build"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const module = "github.com/switchyard/switchyard/"

// allowed lists, per package prefix, the prefixes of this module's packages
// it may import. The longest matching prefix wins.
var allowed = map[string][]string{
	"proto/":           {},
	"internal/":        {"proto/", "internal/"},
	"bus":              {"proto/", "internal/"},
	"bus/":             {"proto/", "internal/", "bus"},
	"chaos":            {"proto/", "internal/"},
	"agent/driver/":    {"proto/", "internal/", "agent/driver"},
	"agent":            {"proto/", "internal/", "bus", "chaos", "agent"},
	"coordinator":      {"proto/", "internal/", "bus", "chaos", "coordinator"},
	"cmd/":             {""},
	"integration":      {""},
	"deploy":           {""},
	"internal/arrows/": {},
}

// coreOnly lists packages whose non-test code may not import a driver
// package: the agent core speaks to proxies through agent/driver only, and
// the drivers it runs are registered by the command.
var coreOnly = map[string]string{
	"agent": "agent/driver/",
}

func rule(pkg string) (string, []string) {
	best := ""
	for prefix := range allowed {
		if strings.HasPrefix(pkg, prefix) && len(prefix) > len(best) {
			best = prefix
		}
	}
	return best, allowed[best]
}

func TestArrows(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	err = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		name := d.Name()
		if path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "bin") {
			return filepath.SkipDir
		}
		pkg, err := build.ImportDir(path, 0)
		if err != nil {
			return nil // no Go files here
		}
		rel, _ := filepath.Rel(root, path)
		rel = filepath.ToSlash(rel)
		prefix, may := rule(rel)
		if prefix == "" {
			t.Errorf("%s: no import rule covers this package; add one to arrows_test.go", rel)
			return nil
		}
		checked++
		if banned, ok := coreOnly[rel]; ok {
			for _, imp := range pkg.Imports {
				if strings.HasPrefix(imp, module+banned) {
					t.Errorf("%s imports %s: the agent core reaches proxies through agent/driver only", rel, strings.TrimPrefix(imp, module))
				}
			}
		}
		imports := append(append([]string{}, pkg.Imports...), pkg.TestImports...)
		for _, imp := range imports {
			if !strings.HasPrefix(imp, module) {
				continue
			}
			dep := strings.TrimPrefix(imp, module)
			if dep == "integration" || strings.HasPrefix(dep, "integration/") {
				if !strings.HasPrefix(rel, "integration") {
					t.Errorf("%s imports %s: nothing imports integration", rel, dep)
				}
				continue
			}
			ok := false
			for _, a := range may {
				if strings.HasPrefix(dep, a) {
					ok = true
					break
				}
			}
			if !ok {
				t.Errorf("%s imports %s: against the arrows (it may import %v)", rel, dep, may)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 5 {
		t.Fatalf("checked only %d packages; is the walk rooted right?", checked)
	}
}
