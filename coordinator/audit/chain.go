// Package audit keeps the hash chain of committed decisions: sealing a
// record onto the chain, verifying a chain read back, and exporting the
// replicated records to the audit stream.
package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// ErrBroken is a chain that does not verify; the error names the first
// broken link.
var ErrBroken = errors.New("audit chain broken")

// Seal links rec to the record whose hash is prev and returns the entry as
// exported: the record's exact bytes and their SHA-256. The caller sets
// every other field, Seq included.
func Seal(prev []byte, rec *sv1.AuditRecord) (*sv1.AuditEntry, error) {
	rec.PrevHash = bytes.Clone(prev)
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(rec)
	if err != nil {
		return nil, fmt.Errorf("encode audit record %d: %w", rec.GetSeq(), err)
	}
	sum := sha256.Sum256(b)
	return &sv1.AuditEntry{Record: b, Hash: sum[:]}, nil
}

// Open checks an entry's hash against its bytes and decodes its record.
func Open(e *sv1.AuditEntry) (*sv1.AuditRecord, error) {
	sum := sha256.Sum256(e.GetRecord())
	if !bytes.Equal(sum[:], e.GetHash()) {
		return nil, fmt.Errorf("hash %s does not match the record's bytes (sha256 %s)", Short(e.GetHash()), Short(sum[:]))
	}
	var rec sv1.AuditRecord
	if err := proto.Unmarshal(e.GetRecord(), &rec); err != nil {
		return nil, fmt.Errorf("record does not decode: %v", err)
	}
	return &rec, nil
}

// Short is the first 8 bytes of a hash, in hex, as messages show it.
func Short(h []byte) string {
	if len(h) > 8 {
		h = h[:8]
	}
	return hex.EncodeToString(h)
}

// Link is one entry as read back, with where it was found.
type Link struct {
	Entry *sv1.AuditEntry
	// Where names the entry's place for messages ("stream sequence 12").
	Where string
}

// Verified is what Verify proved.
type Verified struct {
	// First and Last are the record sequences checked.
	First, Last uint64
	// Head is the hash of the last record.
	Head []byte
	// Records are the decoded records, in order, and Hashes their hashes.
	Records []*sv1.AuditRecord
	Hashes  [][]byte
	// Foreign are the stream sequences of messages that claim no record,
	// and Copies those of second copies of a record (VerifyStored).
	Foreign, Copies []uint64
}

// Verify recomputes the chain over links in order. With fromGenesis the
// first record must be sequence 1 with no previous hash; otherwise the
// chain may start anywhere (a coordinator keeps only a tail). It returns
// ErrBroken naming the first entry that does not verify: a hash that does
// not match its bytes, a sequence out of order (gap or duplicate), or a
// previous hash that is not the hash of the record before.
func Verify(links []Link, fromGenesis bool) (Verified, error) {
	var v Verified
	var prev *sv1.AuditRecord
	var prevHash []byte
	for i, l := range links {
		rec, err := Open(l.Entry)
		if err != nil {
			return v, fmt.Errorf("%w at %s: %v", ErrBroken, l.Where, err)
		}
		switch {
		case prev == nil && fromGenesis && rec.GetSeq() != 1:
			return v, fmt.Errorf("%w at %s: record %d comes first; the chain starts at record 1", ErrBroken, l.Where, rec.GetSeq())
		case prev == nil && fromGenesis && len(rec.GetPrevHash()) != 0:
			return v, fmt.Errorf("%w at %s: record 1 names a previous hash %s", ErrBroken, l.Where, Short(rec.GetPrevHash()))
		case prev != nil && rec.GetSeq() != prev.GetSeq()+1:
			what := "gap"
			if rec.GetSeq() <= prev.GetSeq() {
				what = "duplicate or out of order"
			}
			return v, fmt.Errorf("%w at %s: record %d follows record %d (%s)", ErrBroken, l.Where, rec.GetSeq(), prev.GetSeq(), what)
		case prev != nil && !bytes.Equal(rec.GetPrevHash(), prevHash):
			return v, fmt.Errorf("%w at %s: record %d names previous hash %s, but record %d hashes to %s",
				ErrBroken, l.Where, rec.GetSeq(), Short(rec.GetPrevHash()), prev.GetSeq(), Short(prevHash))
		}
		if i == 0 {
			v.First = rec.GetSeq()
		}
		v.Last = rec.GetSeq()
		prev, prevHash = rec, l.Entry.GetHash()
		v.Head = prevHash
		v.Records = append(v.Records, rec)
		v.Hashes = append(v.Hashes, l.Entry.GetHash())
	}
	return v, nil
}
