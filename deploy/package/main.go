// Command package builds the switchyard .deb from nfpm.yaml with nfpm, the
// packager GoReleaser uses. `make package` runs it:
//
//	go run . -version VERSION -binary ../../bin/switchyard -out ../../bin
//
// It is a module of its own so the packager's dependencies stay out of the
// switchyard binary's go.mod.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/goreleaser/nfpm/v2"
	_ "github.com/goreleaser/nfpm/v2/deb" // registers the deb packager
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "package: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("package", flag.ContinueOnError)
	config := fs.String("config", "nfpm.yaml", "nfpm config file")
	version := fs.String("version", "dev", "version of the package (git describe; a leading v is dropped)")
	binary := fs.String("binary", "", "the switchyard binary to package (required)")
	out := fs.String("out", ".", "directory the .deb is written to")
	arch := fs.String("arch", runtime.GOARCH, "Debian architecture (Go's names: amd64, arm64)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *binary == "" {
		return errors.New("-binary: required")
	}
	bin, err := filepath.Abs(*binary)
	if err != nil {
		return fmt.Errorf("-binary: %w", err)
	}
	if st, err := os.Stat(bin); err != nil {
		return fmt.Errorf("-binary: %w", err)
	} else if st.Mode()&0o111 == 0 {
		return fmt.Errorf("-binary: %s is not executable", bin)
	}
	debVersion, err := DebianVersion(*version)
	if err != nil {
		return fmt.Errorf("-version: %w", err)
	}
	env := map[string]string{"VERSION": debVersion, "ARCH": *arch, "BINARY": bin}
	cfg, err := nfpm.ParseFileWithEnvMapping(*config, func(k string) string { return env[k] })
	if err != nil {
		return fmt.Errorf("%s: %w", *config, err)
	}
	info, err := cfg.Get("deb")
	if err != nil {
		return fmt.Errorf("%s: %w", *config, err)
	}
	info = nfpm.WithDefaults(info)
	if err := nfpm.Validate(info); err != nil {
		return fmt.Errorf("%s: %w", *config, err)
	}
	pkg, err := nfpm.Get("deb")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return fmt.Errorf("-out: %w", err)
	}
	path := filepath.Join(*out, pkg.ConventionalFileName(info))
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("-out: %w", err)
	}
	if err := pkg.Package(info, f); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("build %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	fmt.Println(path)
	return nil
}

// DebianVersion turns a build version (git describe output such as
// v1.2.0-3-gabc123-dirty, a bare commit, or "dev") into a Debian version:
// it starts with a digit and has no hyphen, so dpkg reads no revision.
func DebianVersion(v string) (string, error) {
	v = strings.TrimPrefix(strings.TrimSpace(v), "v")
	if v == "" {
		return "", errors.New("empty")
	}
	for _, r := range v {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || strings.ContainsRune(".+-~", r)) {
			return "", fmt.Errorf("%q: only letters, digits and . + - ~ may appear", v)
		}
	}
	if v[0] < '0' || v[0] > '9' {
		v = "0.0.0~" + v
	}
	return strings.ReplaceAll(v, "-", "+"), nil
}
