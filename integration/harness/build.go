package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// ModuleRoot finds the directory holding go.mod by walking up from the
// working directory, so tests and `go run ./integration/demo` work from
// any folder of the module.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found above the working directory")
		}
		dir = parent
	}
}

// BuildBinaries builds the switchyard binary and the test backend into
// outDir and returns their paths. Extra go build flags (e.g. "-race") are
// passed through: race-built children report their own data races in their
// logs, which the race-enabled tests then look for.
func BuildBinaries(ctx context.Context, outDir string, buildFlags ...string) (switchyard, backend string, err error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", "", err
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return "", "", err
	}
	if switchyard, err = Build(ctx, root, "./cmd/switchyard", filepath.Join(outDir, "switchyard"), buildFlags...); err != nil {
		return "", "", err
	}
	if backend, err = Build(ctx, root, "./integration/backend", filepath.Join(outDir, "backend"), buildFlags...); err != nil {
		return "", "", err
	}
	return switchyard, backend, nil
}

// Build runs go build of pkg in the module at root into out.
func Build(ctx context.Context, root, pkg, out string, buildFlags ...string) (string, error) {
	args := append([]string{"build"}, buildFlags...)
	args = append(args, "-o", out, pkg)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = root
	var output bytes.Buffer
	cmd.Stdout, cmd.Stderr = &output, &output
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go %v: %w\n%s", args, err, output.Bytes())
	}
	return out, nil
}
