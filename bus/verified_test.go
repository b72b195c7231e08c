package bus

import (
	"errors"
	"testing"
	"time"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
	"google.golang.org/protobuf/proto"
)

func TestDocument_KeyringVerifiesTheSameBytesOnce(t *testing.T) {
	s, ring := testSigner(t, 1, time.Hour)
	now := time.Now()
	raw, err := s.SealDesired(&sv1.DesiredState{Service: "web", Generation: 3}, now)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if ds, _, err := ring.OpenDesired(raw, "web", now); err != nil || ds.GetGeneration() != 3 {
			t.Fatalf("open: %v %v", ds, err)
		}
	}
	if got := ring.memo.verifications.Load(); got != 1 {
		t.Errorf("%d signature checks for the same bytes opened 3 times, want 1", got)
	}

	// A flipped signature bit is checked, refused and never remembered.
	var env sv1.SignedDocument
	if err := proto.Unmarshal(raw, &env); err != nil {
		t.Fatal(err)
	}
	env.Signature[0] ^= 1
	forged, err := proto.Marshal(&env)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, _, err := ring.OpenDesired(forged, "web", now); !errors.Is(err, ErrDocumentBadSignature) {
			t.Fatalf("forged signature: %v, want %v", err, ErrDocumentBadSignature)
		}
	}
	if got := ring.memo.verifications.Load(); got != 3 {
		t.Errorf("%d signature checks after two forgeries, want 3", got)
	}

	// The memory is bounded: the oldest documents are checked again.
	for gen := uint64(4); gen < 4+verifiedCap; gen++ {
		doc, err := s.SealDesired(&sv1.DesiredState{Service: "web", Generation: gen}, now)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := ring.OpenDesired(doc, "web", now); err != nil {
			t.Fatal(err)
		}
	}
	if len(ring.memo.seen) != verifiedCap || len(ring.memo.order) != verifiedCap {
		t.Fatalf("memo holds %d (%d in order), want %d", len(ring.memo.seen), len(ring.memo.order), verifiedCap)
	}
	before := ring.memo.verifications.Load()
	if _, _, err := ring.OpenDesired(raw, "web", now); err != nil {
		t.Fatal(err)
	}
	if got := ring.memo.verifications.Load(); got != before+1 {
		t.Errorf("the oldest document was not checked again after it was forgotten")
	}
}
