package coordinator

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// A coordinator whose only snapshot was damaged after the log behind it was
// compacted cannot rebuild its state: it refuses to start with the same
// clear error as for a damaged raft.db, naming the snapshot, instead of
// starting and panicking on the first entry it applies, or failing with
// the Raft library's bare "failed to load any existing snapshots".
func TestCoordinator_DamagedSnapshotFailsClearly(t *testing.T) {
	damage := map[string]func(t *testing.T, snap string){
		"state bit-flipped": func(t *testing.T, snap string) {
			path := filepath.Join(snap, "state.bin")
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			b[len(b)/2] ^= 0x5a
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
		},
		"meta truncated": func(t *testing.T, snap string) {
			if err := os.Truncate(filepath.Join(snap, "meta.json"), 10); err != nil {
				t.Fatal(err)
			}
		},
	}
	for name, hurt := range damage {
		t.Run(name, func(t *testing.T) {
			nc, url := startNATS(t)
			dir := t.TempDir()
			c := startCoordinatorWith(t, url, dir, func(c *Config) { c.SnapshotThreshold, c.TrailingLogs = 8, 2 })
			for i := range 30 {
				in := applyIntent(fmt.Sprintf("i-%d", i), fmt.Sprintf("r-%d", i))
				in.GetApplyRollout().GetSpec().Service = fmt.Sprintf("svc-%d", i)
				send(t, nc, in)
			}
			c.stop()
			snaps, err := filepath.Glob(filepath.Join(dir, "snapshots", "*"))
			if err != nil || len(snaps) == 0 {
				t.Fatalf("no snapshot in %s: %v", dir, err)
			}
			// Damage every snapshot kept: none is left to start from.
			for _, s := range snaps {
				hurt(t, s)
			}

			reg := prometheus.NewRegistry()
			srv, err := New(Config{
				NodeID: "c1", DataDir: dir, RaftAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
				NATSURL: url, BootstrapExpect: 1, Registerer: reg, Gatherer: reg, Signing: testSigning,
			})
			if err == nil {
				srv.shutdown()
				t.Fatalf("New with a %s snapshot started", name)
			}
			var de *DamagedStoreError
			if !errors.As(err, &de) {
				t.Fatalf("New with a %s snapshot = %v; want a DamagedStoreError", name, err)
			}
			msg := err.Error()
			for _, want := range []string{filepath.Join(dir, "snapshots"), "will not start", "mv " + dir + " " + dir + ".damaged"} {
				if !strings.Contains(msg, want) {
					t.Errorf("error lacks %q:\n%s", want, msg)
				}
			}
		})
	}
}
