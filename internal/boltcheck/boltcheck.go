// Package boltcheck tells whether a bbolt file is whole before anything
// opens it for real: bbolt trusts its file, and a truncated or bit-flipped
// one makes it fault or panic deep inside, far from the file's name.
package boltcheck

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// ErrDamaged is returned for a file bbolt cannot safely open.
var ErrDamaged = errors.New("damaged bbolt file")

// bbolt's on-disk meta page (go.etcd.io/bbolt internal/common): a 16-byte
// page header, then magic, version, page size, flags, the root bucket
// (root page, sequence), the freelist page, the high-water page id, the
// transaction id and a checksum of everything before it.
const (
	pageHeader  = 16
	metaMagic   = 0xED0CDAED
	metaVersion = 2
	metaSumLen  = 56 // bytes of the meta covered by its checksum
	metaLen     = metaSumLen + 8
	minPageSize = 512
	maxPageSize = 1 << 20
)

type meta struct {
	pageSize uint32
	pgid     uint64 // pages in use: the file must hold at least this many
	txid     uint64
}

// readMeta decodes the meta page at off; ok is false when it is not a valid
// meta (wrong magic or version, checksum mismatch).
func readMeta(f *os.File, off int64) (meta, bool) {
	buf := make([]byte, pageHeader+metaLen)
	if _, err := f.ReadAt(buf, off); err != nil {
		return meta{}, false
	}
	b := buf[pageHeader:]
	le := binary.LittleEndian
	if le.Uint32(b[0:]) != metaMagic || le.Uint32(b[4:]) != metaVersion {
		return meta{}, false
	}
	h := fnv.New64a()
	_, _ = h.Write(b[:metaSumLen])
	if h.Sum64() != le.Uint64(b[metaSumLen:]) {
		return meta{}, false
	}
	m := meta{pageSize: le.Uint32(b[8:]), pgid: le.Uint64(b[40:]), txid: le.Uint64(b[48:])}
	if m.pageSize < minPageSize || m.pageSize > maxPageSize || m.pageSize&(m.pageSize-1) != 0 {
		return meta{}, false
	}
	return m, true
}

// Check reports whether the bbolt file at path can be opened safely: nil
// when it is whole, or when it does not exist or is empty (bbolt starts a
// new one). A damaged file gives an error wrapping ErrDamaged that says
// what is wrong. It never panics and never faults: the meta pages and the
// file's length are checked by reading the file, before bbolt maps it; then
// bbolt opens it read-only and walks every page (its own consistency check,
// which turns its assertion panics into errors).
func Check(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("stat %s: %w", path, err)
	}
	size := st.Size()
	if size == 0 {
		f.Close()
		return nil
	}
	m0, ok0 := readMeta(f, 0)
	second := int64(4096)
	if ok0 {
		second = int64(m0.pageSize)
	}
	m1, ok1 := readMeta(f, second)
	f.Close()
	var m meta
	switch {
	case ok0 && ok1:
		m = m0
		if m1.txid > m0.txid {
			m = m1
		}
	case ok0:
		m = m0
	case ok1:
		m = m1
	default:
		return fmt.Errorf("%w: %s: neither meta page is valid (%d bytes; not a bbolt file, or its first pages are overwritten)", ErrDamaged, path, size)
	}
	if need := int64(m.pgid) * int64(m.pageSize); size < need {
		return fmt.Errorf("%w: %s is truncated: %d bytes, its meta page says %d pages of %d bytes (%d bytes)", ErrDamaged, path, size, m.pgid, m.pageSize, need)
	}
	return walk(path)
}

// walk opens the file read-only and runs bbolt's consistency check.
func walk(path string) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %s: bbolt failed reading it: %v", ErrDamaged, path, r)
		}
	}()
	db, err := bolt.Open(path, 0o400, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if errors.Is(err, bolterrors.ErrTimeout) {
		// Another process holds it open for writing: not ours to judge;
		// the real open reports that.
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrDamaged, path, err)
	}
	defer db.Close()
	tx, err := db.Begin(false)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrDamaged, path, err)
	}
	defer func() { _ = tx.Rollback() }()
	var first error
	n := 0
	for e := range tx.Check() {
		if first == nil {
			first = e
		}
		n++
	}
	if first != nil {
		return fmt.Errorf("%w: %s: %d problem(s), first: %v", ErrDamaged, path, n, first)
	}
	return nil
}
