package state

import (
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// One undecodable record does not hide the others; once moved aside it is
// not reported again, and its bytes are kept for an operator.
func TestState_FaultJournalSkipsAndQuarantinesDamagedRecords(t *testing.T) {
	dir := t.TempDir()
	b, err := Open(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	for _, d := range []string{"a-good", "z-good"} {
		if err := b.SaveFault(FaultRecord{Drill: d, Generation: 1, Kind: "backend_state", Service: "web", Since: now, Until: now.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
	}
	b.Close()
	db, err := bolt.Open(filepath.Join(dir, FileName), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(faultsBucket).Put([]byte("m-damaged"), []byte("{not json"))
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()

	b, err = Open(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	recs, damaged, err := b.LoadFaults()
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || recs[0].Drill != "a-good" || recs[1].Drill != "z-good" {
		t.Fatalf("records %+v, want both good ones", recs)
	}
	if len(damaged) != 1 || damaged[0].Key != "m-damaged" || damaged[0].Err == nil {
		t.Fatalf("damaged %+v, want m-damaged with its error", damaged)
	}
	if err := b.QuarantineFault("m-damaged"); err != nil {
		t.Fatal(err)
	}
	if err := b.QuarantineFault("m-damaged"); err != nil {
		t.Fatalf("quarantine twice: %v", err)
	}
	recs, damaged, err = b.LoadFaults()
	if err != nil || len(recs) != 2 || len(damaged) != 0 {
		t.Fatalf("after quarantine: %d records, damaged %+v, %v; want 2, none", len(recs), damaged, err)
	}
	var kept []byte
	if err := b.db.View(func(tx *bolt.Tx) error {
		kept = tx.Bucket(damagedFaultsBucket).Get([]byte("m-damaged"))
		return nil
	}); err != nil || string(kept) != "{not json" {
		t.Fatalf("quarantined bytes %q, %v", kept, err)
	}
}
