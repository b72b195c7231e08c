package boltcheck

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// makeDB writes a real bbolt file with enough data to span many pages.
func makeDB(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "state.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte("logs"))
		if err != nil {
			return err
		}
		for i := range 2000 {
			if err := b.Put(fmt.Appendf(nil, "key-%06d", i), []byte(strings.Repeat("v", 100))); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestCheck_WholeMissingAndEmptyFilesPass(t *testing.T) {
	if err := Check(makeDB(t)); err != nil {
		t.Fatalf("whole file: %v", err)
	}
	if err := Check(filepath.Join(t.TempDir(), "none.db")); err != nil {
		t.Fatalf("missing file: %v", err)
	}
	empty := filepath.Join(t.TempDir(), "empty.db")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Check(empty); err != nil {
		t.Fatalf("empty file: %v", err)
	}
}

func TestCheck_DamageIsFoundWithoutPanicking(t *testing.T) {
	cases := []struct {
		name   string
		damage func(t *testing.T, path string)
		want   string
	}{
		{"truncated to half", func(t *testing.T, path string) {
			st, _ := os.Stat(path)
			if err := os.Truncate(path, st.Size()/2); err != nil {
				t.Fatal(err)
			}
		}, "is truncated"},
		{"truncated inside the first page", func(t *testing.T, path string) {
			if err := os.Truncate(path, 100); err != nil {
				t.Fatal(err)
			}
		}, "is truncated"},
		{"both meta pages overwritten", func(t *testing.T, path string) {
			flip(t, path, 16+8)
			flip(t, path, 4096+16+8)
		}, "neither meta page is valid"},
		{"bits flipped in every data page header", func(t *testing.T, path string) {
			st, _ := os.Stat(path)
			for off := int64(2 * 4096); off < st.Size(); off += 4096 {
				flip(t, path, off) // the page's own id
			}
		}, "problem(s)"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := makeDB(t)
			c.damage(t, path)
			err := Check(path)
			if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), path) {
				t.Fatalf("Check = %v; want ErrDamaged naming %s and %q", err, path, c.want)
			}
		})
	}
}

// flip inverts the byte at off.
func flip(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}
