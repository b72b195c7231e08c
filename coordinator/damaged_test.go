package coordinator

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchyard/switchyard/internal/boltcheck"
)

// A coordinator whose raft.db was truncated or bit-flipped refuses to
// start, naming the file and the commands to rejoin; it never panics and
// never serves.
func TestCoordinator_DamagedRaftStoreFailsClearly(t *testing.T) {
	damage := map[string]func(t *testing.T, path string){
		"truncated": func(t *testing.T, path string) {
			st, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(path, st.Size()/3); err != nil {
				t.Fatal(err)
			}
		},
		"bit-flipped": func(t *testing.T, path string) {
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			st, _ := f.Stat()
			for off := int64(2 * 4096); off < st.Size(); off += 4096 {
				b := []byte{0}
				_, _ = f.ReadAt(b, off)
				b[0] ^= 0x5a
				if _, err := f.WriteAt(b, off); err != nil {
					t.Fatal(err)
				}
			}
		},
	}
	for name, hurt := range damage {
		t.Run(name, func(t *testing.T) {
			nc, url := startNATS(t)
			dir := t.TempDir()
			c := startCoordinator(t, url, dir)
			for i := range 20 {
				send(t, nc, applyIntent("i"+string(rune('a'+i)), "r"+string(rune('a'+i))))
			}
			c.stop()
			path := filepath.Join(dir, raftDBFile)
			hurt(t, path)

			reg := prometheus.NewRegistry()
			_, err := New(Config{
				NodeID: "c1", DataDir: dir, RaftAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
				NATSURL: url, BootstrapExpect: 1, Registerer: reg, Gatherer: reg, Signing: testSigning,
			})
			var de *DamagedStoreError
			if !errors.As(err, &de) || !errors.Is(err, boltcheck.ErrDamaged) {
				t.Fatalf("New with a %s raft.db = %v; want a DamagedStoreError", name, err)
			}
			msg := err.Error()
			for _, want := range []string{path, "will not start", "mv " + dir + " " + dir + ".damaged", "--bootstrap-expect 0 --retry-join"} {
				if !strings.Contains(msg, want) {
					t.Errorf("error lacks %q:\n%s", want, msg)
				}
			}
		})
	}
}

// A raft.db the coordinator cannot open (a symlink loop here; one left
// owned by root after a manual run does the same to the packaged unit's
// user) is not damaged: the error names the file and the cause, and does
// not tell the operator to move the data directory away, which for a
// single-node cluster reads as "the state is lost".
func TestCoordinator_UnopenableRaftStoreIsNotCalledDamaged(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, raftDBFile)
	if err := os.Symlink(path, path); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	_, err := New(Config{
		NodeID: "c1", DataDir: dir, RaftAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		NATSURL: "nats://127.0.0.1:1", BootstrapExpect: 1, Registerer: reg, Gatherer: reg, Signing: testSigning,
	})
	var de *DamagedStoreError
	if err == nil || errors.As(err, &de) || strings.Contains(err.Error(), "damaged") || !strings.Contains(err.Error(), path) {
		t.Fatalf("New with an unopenable raft.db = %v; want an error naming %s, not one calling it damaged", err, path)
	}
}
