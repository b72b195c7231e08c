package bus

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
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
	forged := flippedSignature(t, raw)
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

func TestDocument_KeyringSharedByManyReadersChecksAPushOnce(t *testing.T) {
	s, ring := testSigner(t, 1, time.Hour)
	now := time.Now()
	raw, err := s.SealDesired(&sv1.DesiredState{Service: "web", Generation: 5}, now)
	if err != nil {
		t.Fatal(err)
	}
	forged := flippedSignature(t, raw)
	// Readers that receive the same push together wait for one check; a
	// forgery is refused to every one of them.
	const readers = 64
	together := func(doc []byte, check func(*sv1.DesiredState, error) error) {
		t.Helper()
		errs := make(chan error, readers)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for range readers {
			wg.Go(func() {
				<-start
				ds, _, err := ring.OpenDesired(doc, "web", now)
				if err := check(ds, err); err != nil {
					errs <- err
				}
			})
		}
		close(start)
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	}
	together(raw, func(ds *sv1.DesiredState, err error) error {
		if err != nil || ds.GetGeneration() != 5 {
			return fmt.Errorf("genuine document: %v %v", ds, err)
		}
		return nil
	})
	if got := ring.memo.verifications.Load(); got != 1 {
		t.Errorf("%d readers opening the same push made %d signature checks, want 1", readers, got)
	}
	together(forged, func(_ *sv1.DesiredState, err error) error {
		if !errors.Is(err, ErrDocumentBadSignature) {
			return fmt.Errorf("forged document: %v, want %v", err, ErrDocumentBadSignature)
		}
		return nil
	})
	ring.memo.mu.Lock()
	defer ring.memo.mu.Unlock()
	if len(ring.memo.checking) != 0 || len(ring.memo.seen) != 1 {
		t.Errorf("after the readers: %d checks under way, %d remembered; want 0 and 1 (the genuine one)", len(ring.memo.checking), len(ring.memo.seen))
	}
}

// flippedSignature is raw, a sealed document, with one bit of its signature
// flipped.
func flippedSignature(t *testing.T, raw []byte) []byte {
	t.Helper()
	var env sv1.SignedDocument
	if err := proto.Unmarshal(raw, &env); err != nil {
		t.Fatal(err)
	}
	env.Signature[0] ^= 1
	forged, err := proto.Marshal(&env)
	if err != nil {
		t.Fatal(err)
	}
	return forged
}

// TestDocument_KeyringMemoryTellsBodyFromSignature: the memory of verified
// signatures must not take other bytes for a document it checked. Moving
// the boundary between body and signature (the body without its last
// field, that field in front of the signature) makes bytes whose signature
// does not verify; they must be refused, not found remembered.
func TestDocument_KeyringMemoryTellsBodyFromSignature(t *testing.T) {
	s, ring := testSigner(t, 1, time.Hour)
	now := time.Now()
	raw, err := s.SealDesired(&sv1.DesiredState{Service: "web", Generation: 3}, now)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := ring.OpenDesired(raw, "web", now); err != nil {
		t.Fatal(err)
	}
	var env sv1.SignedDocument
	if err := proto.Unmarshal(raw, &env); err != nil {
		t.Fatal(err)
	}
	var body sv1.DocumentBody
	if err := proto.Unmarshal(env.GetBody(), &body); err != nil {
		t.Fatal(err)
	}
	// The body as sealed ends with its payload field; cut it off.
	noPayload := proto.CloneOf(&body)
	noPayload.Payload = nil
	short, err := proto.MarshalOptions{Deterministic: true}.Marshal(noPayload)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(env.GetBody(), short) {
		t.Fatalf("the sealed body does not start with the body without payload")
	}
	moved := &sv1.SignedDocument{
		Body:      short,
		KeyId:     env.GetKeyId(),
		Signature: append(bytes.Clone(env.GetBody()[len(short):]), env.GetSignature()...),
	}
	forged, err := proto.Marshal(moved)
	if err != nil {
		t.Fatal(err)
	}
	if h, err := ring.Open(forged, sv1.DocumentKind_DOCUMENT_KIND_DESIRED_STATE, "web", now, new(sv1.DesiredState)); !errors.Is(err, ErrDocumentBadSignature) {
		t.Fatalf("body and signature with their boundary moved: header %+v, err %v; want %v", h, err, ErrDocumentBadSignature)
	}
}
