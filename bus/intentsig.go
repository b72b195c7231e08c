package bus

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// intentContext is prefixed to an intent's bytes before signing, so an
// intent signature can never be taken for a document signature or any
// other use of the same key.
const intentContext = "switchyard-intent-v1\n"

// MaxIntentSize bounds an intent as published; a larger one is refused
// before anything decodes it.
const MaxIntentSize = 1 << 20

// Sentinel errors of OpenIntent; each maps to a refusal code.
var (
	// ErrIntentMalformed is an intent that decodes as neither a signed
	// envelope nor an intent.
	ErrIntentMalformed = errors.New("malformed intent")
	// ErrIntentUnsigned is a bare intent with no signature.
	ErrIntentUnsigned = errors.New("intent is not signed")
	// ErrIntentBadSignature is a signature that does not verify with the
	// key the envelope names, or a key that is not a user nkey or an
	// Ed25519 key.
	ErrIntentBadSignature = errors.New("intent signature does not verify")
)

// IntentSigner signs intents with one operator's key.
type IntentSigner struct {
	key  string
	sign func([]byte) ([]byte, error)
}

// Key is the signer's public key in the form principals are granted roles
// under: a user nkey ("U…") or "ed25519:…".
func (s *IntentSigner) Key() string { return s.key }

// NewNkeyIntentSigner signs with a user nkey.
func NewNkeyIntentSigner(kp nkeys.KeyPair) (*IntentSigner, error) {
	pub, err := kp.PublicKey()
	if err != nil {
		return nil, fmt.Errorf("intent signing key: %w", err)
	}
	if !nkeys.IsValidPublicUserKey(pub) {
		return nil, fmt.Errorf("intent signing key %s: want a user nkey (U…)", abbreviate(pub))
	}
	return &IntentSigner{key: pub, sign: kp.Sign}, nil
}

// NewEd25519IntentSigner signs with an enrolled Ed25519 key.
func NewEd25519IntentSigner(priv ed25519.PrivateKey) *IntentSigner {
	pub := priv.Public().(ed25519.PublicKey)
	return &IntentSigner{key: FormatPublicKey(pub), sign: func(b []byte) ([]byte, error) { return ed25519.Sign(priv, b), nil }}
}

// LoadIntentSigner reads the key to sign intents with from a NATS creds
// file (the user's nkey seed in it) or from an Ed25519 key written by
// `switchyard keys generate`.
func LoadIntentSigner(path string) (*IntentSigner, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("intent signing key: %w", err)
	}
	if bytes.Contains(b, []byte("PRIVATE KEY")) {
		priv, err := LoadSigningKey(path)
		if err != nil {
			return nil, err
		}
		return NewEd25519IntentSigner(priv), nil
	}
	kp, err := jwt.ParseDecoratedNKey(b)
	if err != nil {
		return nil, fmt.Errorf("intent signing key %s: neither NATS creds with a user seed nor an Ed25519 PEM key: %v", path, err)
	}
	return NewNkeyIntentSigner(kp)
}

// Sign encodes and signs an intent.
func (s *IntentSigner) Sign(in *sv1.Intent) (*sv1.SignedIntent, error) {
	body, err := proto.MarshalOptions{Deterministic: true}.Marshal(in)
	if err != nil {
		return nil, fmt.Errorf("encode intent: %w", err)
	}
	sig, err := s.sign(append([]byte(intentContext), body...))
	if err != nil {
		return nil, fmt.Errorf("sign intent: %w", err)
	}
	return &sv1.SignedIntent{Intent: body, Key: s.key, Signature: sig}, nil
}

// OpenedIntent is an intent read from the stream.
type OpenedIntent struct {
	Intent *sv1.Intent
	// Signer is the verified key; empty for a bare intent.
	Signer string
	// Sha256 is the hash of the bytes as published.
	Sha256 []byte
}

// OpenIntent decodes what a publisher put on the intent stream: a signed
// envelope (protobuf or protojson) or a bare intent. A valid signature
// gives the intent and its verified signer; a bare intent gives the intent
// and ErrIntentUnsigned, so the caller can answer it by id. Bad bytes give
// an error, never a panic.
func OpenIntent(data []byte) (OpenedIntent, error) {
	sum := sha256.Sum256(data)
	out := OpenedIntent{Sha256: sum[:]}
	if len(data) > MaxIntentSize {
		return out, fmt.Errorf("%w: %d bytes, at most %d", ErrIntentMalformed, len(data), MaxIntentSize)
	}
	env, bare, err := decodeIntentBytes(data)
	if err != nil {
		return out, err
	}
	if bare != nil {
		out.Intent = bare
		return out, fmt.Errorf("%w: publish a SignedIntent (switchyard intent sign, or a CLI verb with --nats-creds or --sign-key)", ErrIntentUnsigned)
	}
	var in sv1.Intent
	if err := proto.Unmarshal(env.GetIntent(), &in); err != nil {
		return out, fmt.Errorf("%w: signed_intent.intent does not decode: %v", ErrIntentMalformed, err)
	}
	out.Intent = &in
	if err := VerifyIntentSignature(env.GetKey(), env.GetIntent(), env.GetSignature()); err != nil {
		return out, err
	}
	out.Signer = env.GetKey()
	return out, nil
}

// decodeIntentBytes tells a signed envelope from a bare intent. Their field
// numbers do not overlap, so each decodes the other as unknown fields only.
func decodeIntentBytes(data []byte) (*sv1.SignedIntent, *sv1.Intent, error) {
	if IsJSON(data) {
		t, err := AcceptSpecJSON(bytes.TrimSpace(data))
		if err != nil {
			return nil, nil, err
		}
		var env sv1.SignedIntent
		envErr := protojson.Unmarshal(t, &env)
		if envErr == nil && len(env.GetIntent()) > 0 {
			return &env, nil, nil
		}
		var in sv1.Intent
		if err := protojson.Unmarshal(t, &in); err != nil {
			return nil, nil, fmt.Errorf("%w: neither a signed intent (%v) nor an intent (%v) in protojson", ErrIntentMalformed, envErr, err)
		}
		return nil, &in, nil
	}
	var env sv1.SignedIntent
	if err := proto.Unmarshal(data, &env); err == nil && len(env.GetIntent()) > 0 {
		return &env, nil, nil
	}
	var in sv1.Intent
	if err := proto.Unmarshal(data, &in); err != nil {
		return nil, nil, fmt.Errorf("%w: does not decode as protobuf: %v", ErrIntentMalformed, err)
	}
	return nil, &in, nil
}

// VerifyIntentSignature checks a signature over intent bytes with a key in
// principal form.
func VerifyIntentSignature(key string, body, sig []byte) error {
	msg := append([]byte(intentContext), body...)
	switch {
	case strings.HasPrefix(key, publicKeyPrefix):
		pub, err := ParsePublicKey(key)
		if err != nil {
			return fmt.Errorf("%w: signed_intent.key: %v", ErrIntentBadSignature, err)
		}
		if len(sig) != ed25519.SignatureSize || !ed25519.Verify(pub, msg, sig) {
			return fmt.Errorf("%w: signed_intent.signature does not match key %s", ErrIntentBadSignature, abbreviate(key))
		}
		return nil
	case nkeys.IsValidPublicUserKey(key):
		kp, err := nkeys.FromPublicKey(key)
		if err != nil {
			return fmt.Errorf("%w: signed_intent.key: %v", ErrIntentBadSignature, err)
		}
		if err := kp.Verify(msg, sig); err != nil {
			return fmt.Errorf("%w: signed_intent.signature does not match key %s", ErrIntentBadSignature, abbreviate(key))
		}
		return nil
	}
	return fmt.Errorf("%w: signed_intent.key %q: want a user nkey (U…) or ed25519:<base64>", ErrIntentBadSignature, abbreviate(key))
}

// ValidPrincipalKey checks that key is a public key intents can be signed
// with, naming field in the error.
func ValidPrincipalKey(field, key string) error {
	if strings.HasPrefix(key, publicKeyPrefix) {
		if _, err := ParsePublicKey(key); err != nil {
			return fmt.Errorf("%s: %v", field, err)
		}
		return nil
	}
	if !nkeys.IsValidPublicUserKey(key) {
		return fmt.Errorf("%s: %q is not a user nkey (U…) or ed25519:<base64> key", field, abbreviate(key))
	}
	return nil
}
