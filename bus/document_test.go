package bus

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// testSigner is a signer from a fixed seed, and a keyring trusting it.
func testSigner(tb testing.TB, seed byte, validity time.Duration) (*Signer, *Keyring) {
	tb.Helper()
	key := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize))
	s, err := NewSigner(key, validity)
	if err != nil {
		tb.Fatal(err)
	}
	ring, err := NewKeyring(s.Public())
	if err != nil {
		tb.Fatal(err)
	}
	return s, ring
}

func sampleDesired() *sv1.DesiredState {
	return &sv1.DesiredState{
		Service: "web", Epoch: 3, Generation: 42, RolloutId: "web-1",
		Waves: []*sv1.WaveWeights{
			{Index: 0, Name: "canary", Selector: map[string]string{"region": "eu"}, BasisPoints: 1000, Weights: map[string]uint32{"blue": 80, "green": 20}},
			{Index: 1, Name: "rest", BasisPoints: 10000, Weights: map[string]uint32{"blue": 100, "green": 0}},
		},
		DefaultWeights: map[string]uint32{"blue": 100},
		IssuedAt:       timestamppb.New(time.Unix(1_700_000_000, 0)),
		Phase:          sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING,
		FromBackend:    "blue", ToBackend: "green",
	}
}

func TestDocument_SealThenOpenGivesTheDocumentBack(t *testing.T) {
	s, ring := testSigner(t, 1, time.Hour)
	now := time.Now()
	ds := sampleDesired()
	raw, err := s.SealDesired(ds, now)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := s.SealDesired(ds, now)
	if !bytes.Equal(raw, again) {
		t.Fatal("sealing the same document at the same time gave different bytes")
	}
	got, h, err := ring.OpenDesired(raw, "web", now)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, ds) {
		t.Fatalf("opened %v, want %v", got, ds)
	}
	want := Header{Kind: sv1.DocumentKind_DOCUMENT_KIND_DESIRED_STATE, Key: "web", Fence: Fence{3, 42},
		IssuedAt: now.UTC().Truncate(time.Nanosecond), ExpiresAt: now.Add(time.Hour), KeyID: s.KeyID()}
	if h.Kind != want.Kind || h.Key != want.Key || h.Fence != want.Fence || !h.IssuedAt.Equal(now) || !h.ExpiresAt.Equal(want.ExpiresAt) || h.KeyID != want.KeyID {
		t.Fatalf("header %+v, want %+v", h, want)
	}
	// A drill document opens as a drill, and not as a desired state.
	d := &sv1.DrillDocument{Drill: "d1", Epoch: 1, Generation: 7}
	rawDrill, err := s.SealDrill(d, now)
	if err != nil {
		t.Fatal(err)
	}
	if gotDrill, _, err := ring.OpenDrill(rawDrill, "d1", now); err != nil || !proto.Equal(gotDrill, d) {
		t.Fatalf("drill: %v %v", gotDrill, err)
	}
	if _, _, err := ring.OpenDesired(rawDrill, "d1", now); !errors.Is(err, ErrDocumentWrongKind) {
		t.Fatalf("drill opened as desired state: %v, want ErrDocumentWrongKind", err)
	}
}

// TestDocument_OpenRefusesEachKindOfBadDocument writes each attack of the
// security model and checks that it gets its own error and label.
func TestDocument_OpenRefusesEachKindOfBadDocument(t *testing.T) {
	s, ring := testSigner(t, 1, time.Hour)
	stranger, _ := testSigner(t, 2, time.Hour)
	now := time.Now()
	good, err := s.SealDesired(sampleDesired(), now)
	if err != nil {
		t.Fatal(err)
	}
	var env sv1.SignedDocument
	if err := proto.Unmarshal(good, &env); err != nil {
		t.Fatal(err)
	}
	reencode := func(f func(*sv1.SignedDocument)) []byte {
		e := proto.CloneOf(&env)
		f(e)
		b, err := proto.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	unsignedDesired, _ := proto.Marshal(sampleDesired())
	forged, _ := stranger.SealDesired(sampleDesired(), now)
	other := sampleDesired()
	other.Service = "api"
	crossService, _ := s.SealDesired(other, now)
	expired, _ := s.SealDesired(sampleDesired(), now.Add(-2*time.Hour))
	// Forged under the trusted key's id: the stranger's signature with the
	// trusted id.
	var forgedEnv sv1.SignedDocument
	_ = proto.Unmarshal(forged, &forgedEnv)
	forgedID := reencode(func(e *sv1.SignedDocument) { e.Body, e.Signature = forgedEnv.Body, forgedEnv.Signature })
	withUnknown := append(bytes.Clone(good), 0xf8, 0x01, 0x01) // field 31, varint 1

	cases := []struct {
		name   string
		raw    []byte
		want   error
		reason string
	}{
		{"garbage", []byte("not a document"), ErrDocumentMalformed, "malformed"},
		{"empty", nil, ErrDocumentMalformed, "malformed"},
		{"an unsigned DesiredState as before signing", unsignedDesired, ErrDocumentMalformed, "malformed"},
		{"envelope without signature", reencode(func(e *sv1.SignedDocument) { e.Signature, e.KeyId = nil, "" }), ErrDocumentUnsigned, "unsigned"},
		{"unknown key", forged, ErrDocumentUnknownKey, "unknown_key"},
		{"forged under a trusted key id", forgedID, ErrDocumentBadSignature, "bad_signature"},
		{"tampered body", reencode(func(e *sv1.SignedDocument) { e.Body = bytes.Clone(e.Body); e.Body[len(e.Body)-3] ^= 1 }), ErrDocumentBadSignature, "bad_signature"},
		{"tampered signature", reencode(func(e *sv1.SignedDocument) { e.Signature = bytes.Clone(e.Signature); e.Signature[0] ^= 1 }), ErrDocumentBadSignature, "bad_signature"},
		{"cross-service", crossService, ErrDocumentWrongKey, "wrong_key"},
		{"expired", expired, ErrDocumentExpired, "expired"},
		{"unknown field", withUnknown, ErrDocumentMalformed, "malformed"},
		{"huge", make([]byte, MaxDocumentBytes+1), ErrDocumentTooLarge, "too_large"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := ring.OpenDesired(c.raw, "web", now)
			if !errors.Is(err, c.want) {
				t.Fatalf("Open = %v, want %v", err, c.want)
			}
			if got := RejectReason(err); got != c.reason {
				t.Fatalf("reason %q, want %q", got, c.reason)
			}
		})
	}
	// Every byte of a genuine document matters: flipping any one of them
	// is refused (never accepted with other content).
	for i := range good {
		b := bytes.Clone(good)
		b[i] ^= 0x01
		if ds, _, err := ring.OpenDesired(b, "web", now); err == nil && !proto.Equal(ds, sampleDesired()) {
			t.Fatalf("byte %d flipped: accepted different content %v", i, ds)
		}
	}
}

func TestDocument_OpenChecksThatPayloadAndHeaderAgree(t *testing.T) {
	s, ring := testSigner(t, 1, time.Hour)
	now := time.Now()
	p, _ := proto.Marshal(sampleDesired())
	body, _ := proto.Marshal(&sv1.DocumentBody{
		Kind: sv1.DocumentKind_DOCUMENT_KIND_DESIRED_STATE, Key: "web", Epoch: 3, Generation: 1 << 62,
		IssuedAt: timestamppb.New(now), ExpiresAt: timestamppb.New(now.Add(time.Hour)), Payload: p,
	})
	raw, _ := proto.Marshal(&sv1.SignedDocument{Body: body, KeyId: s.KeyID(), Signature: ed25519.Sign(s.key, signedBytes(body))})
	if _, _, err := ring.OpenDesired(raw, "web", now); !errors.Is(err, ErrDocumentMalformed) || !strings.Contains(err.Error(), "payload says") {
		t.Fatalf("header fence above the payload's: %v, want ErrDocumentMalformed", err)
	}
}

func TestDocument_FenceComparesEpochFirst(t *testing.T) {
	for _, c := range []struct {
		a, b Fence
		want int
	}{
		{Fence{1, 5}, Fence{1, 5}, 0},
		{Fence{1, 5}, Fence{1, 6}, -1},
		{Fence{2, 1}, Fence{1, 1 << 62}, 1},
		{Fence{0, 9}, Fence{1, 1}, -1},
	} {
		if got := c.a.Compare(c.b); got != c.want {
			t.Errorf("%s vs %s = %d, want %d", c.a, c.b, got, c.want)
		}
	}
}

func TestDocument_KeysRoundTripThroughFiles(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "signing.key")
	pub, err := GenerateSigningKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := GenerateSigningKey(path); err == nil {
		t.Fatal("overwrote an existing key")
	}
	priv, err := LoadSigningKey(path)
	if err != nil || !pub.Equal(priv.Public()) {
		t.Fatalf("loaded %v, %v", priv, err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	for _, src := range []string{path + ".pub", FormatPublicKey(pub)} {
		if got, err := LoadPublicKey(src); err != nil || !got.Equal(pub) {
			t.Fatalf("LoadPublicKey(%q) = %v, %v", src, got, err)
		}
	}
	for _, bad := range []string{"ed25519:abc", "ssh-ed25519 AAAA", filepath.Join(dir, "missing.pub")} {
		if _, err := LoadPublicKey(bad); err == nil {
			t.Fatalf("LoadPublicKey(%q) accepted", bad)
		}
	}
	if _, err := LoadSigningKey(path + ".pub"); err == nil {
		t.Fatal("a public key file loaded as a signing key")
	}
}

// FuzzDocument_Open feeds the opener arbitrary bytes: it must never panic,
// and whatever it accepts must be exactly a document the trusted key
// signed. The seed corpus (testdata/fuzz/FuzzDocument_Open) holds a genuine
// document, its tampered, forged, expired, cross-service and unsigned
// variants and garbage.
func FuzzDocument_Open(f *testing.F) {
	s, ring := testSigner(f, 1, 100*365*24*time.Hour)
	now := time.Unix(1_800_000_000, 0)
	good, err := s.SealDesired(sampleDesired(), time.Unix(1_700_000_000, 0))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Fuzz(func(t *testing.T, raw []byte) {
		ds, h, err := ring.OpenDesired(raw, "web", now)
		if err != nil {
			if RejectReason(err) == "" {
				t.Fatalf("error without a reason: %v", err)
			}
			return
		}
		if h.KeyID != s.KeyID() || ds.GetService() != "web" || ds.GetGeneration() == 0 {
			t.Fatalf("accepted %v with header %+v", ds, h)
		}
		// Accepted bytes re-open to the same thing: the signature covers
		// the body as it travels.
		again, _, err := ring.OpenDesired(raw, "web", now)
		if err != nil || !proto.Equal(again, ds) {
			t.Fatalf("second open: %v %v", again, err)
		}
	})
}

func BenchmarkDocument_Seal(b *testing.B) {
	s, _ := testSigner(b, 1, time.Hour)
	ds := sampleDesired()
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.SealDesired(ds, now); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDocument_Open is an agent opening a document it has not seen:
// the signature is checked.
func BenchmarkDocument_Open(b *testing.B) {
	s, _ := testSigner(b, 1, time.Hour)
	now := time.Now()
	raw, err := s.SealDesired(sampleDesired(), now)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	for b.Loop() {
		ring, err := NewKeyring(s.Public())
		if err != nil {
			b.Fatal(err)
		}
		if _, _, err := ring.OpenDesired(raw, "web", now); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDocument_OpenAgain opens bytes the keyring verified before (a
// resync read, or agents sharing a keyring): decoding only.
func BenchmarkDocument_OpenAgain(b *testing.B) {
	s, ring := testSigner(b, 1, time.Hour)
	now := time.Now()
	raw, err := s.SealDesired(sampleDesired(), now)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := ring.OpenDesired(raw, "web", now); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDocument_DecodeUnsigned is the decode an agent did before
// documents were signed, for comparison with Open.
func BenchmarkDocument_DecodeUnsigned(b *testing.B) {
	raw, _ := proto.MarshalOptions{Deterministic: true}.Marshal(sampleDesired())
	b.ReportAllocs()
	for b.Loop() {
		var ds sv1.DesiredState
		if err := proto.Unmarshal(raw, &ds); err != nil {
			b.Fatal(err)
		}
	}
}
