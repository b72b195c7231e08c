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

// A data directory restored without its raft.db, or with one cut to zero
// bytes, next to its snapshots is not a new coordinator: Raft writes the
// log and its term and vote there before any snapshot exists. It used to
// start from the newest snapshot as if nothing were missing, dropping the
// entries after it and the vote it had cast, and bbolt wrote a fresh
// raft.db over the evidence. It now refuses like for a damaged raft.db,
// naming the file, and leaves the directory as it found it.
func TestCoordinator_DataDirWithSnapshotsButNoRaftStoreFailsClearly(t *testing.T) {
	damage := map[string]func(t *testing.T, path string){
		"missing": func(t *testing.T, path string) {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		},
		"empty": func(t *testing.T, path string) {
			if err := os.Truncate(path, 0); err != nil {
				t.Fatal(err)
			}
		},
	}
	for name, hurt := range damage {
		t.Run(name, func(t *testing.T) {
			nc, url := startNATS(t)
			dir := t.TempDir()
			c := startCoordinatorWith(t, url, dir, func(c *Config) { c.SnapshotThreshold, c.TrailingLogs = 8, 2 })
			for i := range 20 {
				in := applyIntent(fmt.Sprintf("i-%d", i), fmt.Sprintf("r-%d", i))
				in.GetApplyRollout().GetSpec().Service = fmt.Sprintf("svc-%d", i)
				send(t, nc, in)
			}
			c.stop()
			path := filepath.Join(dir, raftDBFile)
			hurt(t, path)
			before, _ := os.Stat(path)

			reg := prometheus.NewRegistry()
			srv, err := New(Config{
				NodeID: "c1", DataDir: dir, RaftAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
				NATSURL: url, BootstrapExpect: 1, Registerer: reg, Gatherer: reg, Signing: testSigning,
			})
			if err == nil {
				srv.shutdown()
				t.Fatalf("New with a %s raft.db and snapshots started", name)
			}
			var de *DamagedStoreError
			if !errors.As(err, &de) {
				t.Fatalf("New with a %s raft.db = %v; want a DamagedStoreError", name, err)
			}
			msg := err.Error()
			for _, want := range []string{path + " is " + name, "will not start", "mv " + dir + " " + dir + ".damaged"} {
				if !strings.Contains(msg, want) {
					t.Errorf("error lacks %q:\n%s", want, msg)
				}
			}
			after, _ := os.Stat(path)
			if (before == nil) != (after == nil) || (after != nil && after.Size() != 0) {
				t.Errorf("the refused start changed %s: before %v, after %v", path, before, after)
			}
		})
	}
}
