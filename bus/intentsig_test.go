package bus

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

func sampleIntent() *sv1.Intent {
	return &sv1.Intent{Id: "i-1", Operator: "ci", Action: &sv1.Intent_AbortRollout{AbortRollout: &sv1.AbortRollout{Rollout: "web-1"}}}
}

func nkeySigner(tb testing.TB) (*IntentSigner, nkeys.KeyPair) {
	tb.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		tb.Fatal(err)
	}
	s, err := NewNkeyIntentSigner(kp)
	if err != nil {
		tb.Fatal(err)
	}
	return s, kp
}

func TestIntent_SignedByNkeyOrEd25519Verifies(t *testing.T) {
	ns, _ := nkeySigner(t)
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	es := NewEd25519IntentSigner(priv)
	for _, s := range []*IntentSigner{ns, es} {
		env, err := s.Sign(sampleIntent())
		if err != nil {
			t.Fatal(err)
		}
		pb, _ := proto.Marshal(env)
		js, _ := protojson.Marshal(env)
		for _, raw := range [][]byte{pb, js} {
			o, err := OpenIntent(raw)
			if err != nil {
				t.Fatalf("%s: %v", s.Key(), err)
			}
			if o.Signer != s.Key() || !proto.Equal(o.Intent, sampleIntent()) || len(o.Sha256) != 32 {
				t.Fatalf("opened %+v", o)
			}
		}
	}
}

func TestIntent_RefusalsNameTheirReason(t *testing.T) {
	s, _ := nkeySigner(t)
	other, _ := nkeySigner(t)
	env, _ := s.Sign(sampleIntent())
	flipped := proto.Clone(env).(*sv1.SignedIntent)
	flipped.Intent[len(flipped.Intent)-1] ^= 1
	swapped := proto.Clone(env).(*sv1.SignedIntent)
	swapped.Key = other.Key()
	badKey := proto.Clone(env).(*sv1.SignedIntent)
	badKey.Key = "OPERATORKEY"
	bare, _ := proto.Marshal(sampleIntent())
	bareJSON, _ := protojson.Marshal(sampleIntent())
	enc := func(m proto.Message) []byte { b, _ := proto.Marshal(m); return b }
	cases := []struct {
		name string
		raw  []byte
		want error
	}{
		{"bare", bare, ErrIntentUnsigned},
		{"bare json", bareJSON, ErrIntentUnsigned},
		{"byte flipped", enc(flipped), ErrIntentBadSignature},
		{"other key", enc(swapped), ErrIntentBadSignature},
		{"not a key", enc(badKey), ErrIntentBadSignature},
		{"garbage", []byte("\xff\x00garbage"), ErrIntentMalformed},
		{"json garbage", []byte(`{"nope": 1}`), ErrIntentMalformed},
		{"too large", bytes.Repeat([]byte{0}, MaxIntentSize+1), ErrIntentMalformed},
	}
	for _, c := range cases {
		o, err := OpenIntent(c.raw)
		if !errors.Is(err, c.want) {
			t.Fatalf("%s: %v, want %v", c.name, err, c.want)
		}
		if o.Signer != "" {
			t.Fatalf("%s: signer %q on a refusal", c.name, o.Signer)
		}
	}
}

func TestIntent_SignerFromCredsAndKeyFiles(t *testing.T) {
	dir := t.TempDir()
	kp, _ := nkeys.CreateUser()
	seed, _ := kp.Seed()
	pub, _ := kp.PublicKey()
	akp, _ := nkeys.CreateAccount()
	tok, err := jwt.NewUserClaims(pub).Encode(akp)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := jwt.FormatUserConfig(tok, seed)
	if err != nil {
		t.Fatal(err)
	}
	credsPath := filepath.Join(dir, "u.creds")
	if err := os.WriteFile(credsPath, creds, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := LoadIntentSigner(credsPath)
	if err != nil || s.Key() != pub {
		t.Fatalf("creds signer %v %v, want key %s", s, err, pub)
	}
	keyPath := filepath.Join(dir, "op.key")
	epub, err := GenerateSigningKey(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	s, err = LoadIntentSigner(keyPath)
	if err != nil || s.Key() != FormatPublicKey(epub) {
		t.Fatalf("key file signer %v %v", s, err)
	}
	if _, err := LoadIntentSigner(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("missing file accepted")
	}
	if err := os.WriteFile(filepath.Join(dir, "junk"), []byte("junk"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadIntentSigner(filepath.Join(dir, "junk")); err == nil {
		t.Fatal("junk file accepted")
	}
}

func FuzzIntent_Open(f *testing.F) {
	// A fixed key: every fuzz worker must know the one that signed the
	// corpus.
	kp, err := nkeys.FromRawSeed(nkeys.PrefixByteUser, bytes.Repeat([]byte{7}, 32))
	if err != nil {
		f.Fatal(err)
	}
	s, err := NewNkeyIntentSigner(kp)
	if err != nil {
		f.Fatal(err)
	}
	env, err := s.Sign(sampleIntent())
	if err != nil {
		f.Fatal(err)
	}
	good, _ := proto.Marshal(env)
	goodJSON, _ := protojson.Marshal(env)
	bare, _ := proto.Marshal(sampleIntent())
	f.Add(good)
	f.Add(goodJSON)
	f.Add(bare)
	f.Fuzz(func(t *testing.T, raw []byte) {
		o, err := OpenIntent(raw)
		if err != nil {
			if !errors.Is(err, ErrIntentMalformed) && !errors.Is(err, ErrIntentUnsigned) && !errors.Is(err, ErrIntentBadSignature) {
				t.Fatalf("error of no kind: %v", err)
			}
			if o.Signer != "" {
				t.Fatalf("signer %q with error %v", o.Signer, err)
			}
			return
		}
		// Only the one key signed anything in the corpus: an accepted
		// intent carries it, and re-opens the same.
		if o.Signer != s.Key() || o.Intent == nil {
			t.Fatalf("accepted %+v", o)
		}
		again, err := OpenIntent(raw)
		if err != nil || !proto.Equal(again.Intent, o.Intent) {
			t.Fatalf("second open: %v", err)
		}
	})
}

func BenchmarkIntent_Sign(b *testing.B) {
	s, _ := nkeySigner(b)
	in := sampleIntent()
	for b.Loop() {
		if _, err := s.Sign(in); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkIntent_Open(b *testing.B) {
	s, _ := nkeySigner(b)
	env, _ := s.Sign(sampleIntent())
	raw, _ := proto.Marshal(env)
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		if _, err := OpenIntent(raw); err != nil {
			b.Fatal(err)
		}
	}
}
