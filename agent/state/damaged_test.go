package state

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/switchyard/switchyard/internal/boltcheck"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// A damaged state file stops the agent with the file's name and the way
// back, never a panic.
func TestState_DamagedFileFailsClearly(t *testing.T) {
	for _, name := range []string{"truncated", "bit-flipped"} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			b, err := Open(dir, 0)
			if err != nil {
				t.Fatal(err)
			}
			for i := range 200 {
				svc := fmt.Sprintf("svc-%03d", i)
				if err := b.Save(&sv1.AppliedState{Service: svc, Desired: &sv1.DesiredState{Service: svc, Generation: uint64(i + 1), RolloutId: strings.Repeat("r", 200)}}); err != nil {
					t.Fatal(err)
				}
			}
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, FileName)
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			st, _ := f.Stat()
			if name == "truncated" {
				err = f.Truncate(st.Size() / 2)
			} else {
				for off := int64(2 * 4096); off < st.Size() && err == nil; off += 4096 {
					_, err = f.WriteAt([]byte{0xee}, off)
				}
			}
			f.Close()
			if err != nil {
				t.Fatal(err)
			}

			_, err = Open(dir, 0)
			if !errors.Is(err, boltcheck.ErrDamaged) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "mv "+path+" "+path+".damaged") {
				t.Fatalf("Open of a %s state file = %v; want ErrDamaged naming %s and the mv to do", name, err, path)
			}
		})
	}
}

// A state file the agent cannot open (a symlink loop here; a file left
// owned by root after a manual run does the same to an agent running as its
// own user) is not damaged: the error names the file and the cause, and
// does not tell the operator to move a whole file aside and lose its fault
// journal.
func TestState_UnopenableFileIsNotCalledDamaged(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, FileName)
	if err := os.Symlink(path, path); err != nil {
		t.Fatal(err)
	}
	_, err := Open(dir, 0)
	if err == nil || errors.Is(err, boltcheck.ErrDamaged) || strings.Contains(err.Error(), ".damaged") || !strings.Contains(err.Error(), path) {
		t.Fatalf("Open of an unopenable state file = %v; want an error naming %s, not one calling it damaged", err, path)
	}
}
