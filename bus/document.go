package bus

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// MaxDocumentBytes bounds a signed document. A desired state with a few
// waves is under a kilobyte; anything near this limit is not from a
// coordinator and is refused before it is decoded.
const MaxDocumentBytes = 256 << 10

// signingContext is prepended to the body before signing, so a signature
// over a document can never be mistaken for a signature over anything else
// the same key might sign.
const signingContext = "switchyard-document-v1\n"

// Reasons Open refuses a document. Each has its own counter on the agent
// (the "reason" label); a caller checks them with errors.Is.
var (
	// ErrDocumentTooLarge: more than MaxDocumentBytes.
	ErrDocumentTooLarge = errors.New("document too large")
	// ErrDocumentMalformed: not a signed document (garbage, an unsigned
	// DesiredState, unknown fields, missing or inconsistent parts).
	ErrDocumentMalformed = errors.New("malformed document")
	// ErrDocumentUnsigned: a well-formed envelope without a signature.
	ErrDocumentUnsigned = errors.New("document is not signed")
	// ErrDocumentUnknownKey: signed by a key this reader does not trust.
	ErrDocumentUnknownKey = errors.New("document signed by an untrusted key")
	// ErrDocumentBadSignature: the signature does not match the bytes (the
	// document was changed after signing, or forged under a trusted key id).
	ErrDocumentBadSignature = errors.New("document signature does not verify")
	// ErrDocumentWrongKind: a drill where a desired state belongs, or the
	// other way round.
	ErrDocumentWrongKind = errors.New("document of the wrong kind")
	// ErrDocumentWrongKey: a genuine document copied under another key
	// (another service's or another drill's).
	ErrDocumentWrongKey = errors.New("document belongs under another key")
	// ErrDocumentExpired: the document's validity ended.
	ErrDocumentExpired = errors.New("document expired")
)

// Fence orders documents of one key: a reader applies a document only if
// its fence is higher than the one it holds. Epoch is compared first, so a
// coordinator cluster rebuilt from empty data moves the fleet again once an
// operator raised its epoch, whatever generations the old cluster reached.
type Fence struct {
	Epoch      uint64
	Generation uint64
}

// Compare returns -1, 0 or +1 as f is lower than, equal to or higher than o.
func (f Fence) Compare(o Fence) int {
	switch {
	case f.Epoch != o.Epoch:
		if f.Epoch < o.Epoch {
			return -1
		}
		return 1
	case f.Generation < o.Generation:
		return -1
	case f.Generation > o.Generation:
		return 1
	}
	return 0
}

func (f Fence) String() string { return fmt.Sprintf("%d/%d", f.Epoch, f.Generation) }

// Header is what a verified document says about itself.
type Header struct {
	Kind      sv1.DocumentKind
	Key       string
	Fence     Fence
	IssuedAt  time.Time
	ExpiresAt time.Time
	KeyID     string
}

// Signer seals documents with one coordinator key.
type Signer struct {
	id       string
	key      ed25519.PrivateKey
	validity time.Duration
}

// DefaultValidity is how long a sealed document stays current unless the
// coordinator's signing config says otherwise.
const DefaultValidity = time.Hour

// NewSigner returns a signer for key whose documents are valid for
// validity (DefaultValidity when 0).
func NewSigner(key ed25519.PrivateKey, validity time.Duration) (*Signer, error) {
	if len(key) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("signing key: %d bytes, want an Ed25519 private key of %d", len(key), ed25519.PrivateKeySize)
	}
	if validity < 0 {
		return nil, fmt.Errorf("signing validity %s: want a positive duration", validity)
	}
	if validity == 0 {
		validity = DefaultValidity
	}
	return &Signer{id: KeyID(key.Public().(ed25519.PublicKey)), key: key, validity: validity}, nil
}

// KeyID names the signer's key.
func (s *Signer) KeyID() string { return s.id }

// Public is the signer's public key.
func (s *Signer) Public() ed25519.PublicKey { return s.key.Public().(ed25519.PublicKey) }

// Validity is how long documents the signer seals stay current.
func (s *Signer) Validity() time.Duration { return s.validity }

// Seal encodes payload deterministically and signs it as a document of kind
// under key with fence f, issued at now.
func (s *Signer) Seal(kind sv1.DocumentKind, key string, f Fence, payload proto.Message, now time.Time) ([]byte, error) {
	p, err := proto.MarshalOptions{Deterministic: true}.Marshal(payload)
	if err != nil {
		return nil, fmt.Errorf("encode %s document %s: %w", kind, key, err)
	}
	return s.sealPayload(kind, key, f, p, now)
}

// sealPayload signs an encoded payload as Seal does.
func (s *Signer) sealPayload(kind sv1.DocumentKind, key string, f Fence, p []byte, now time.Time) ([]byte, error) {
	body, err := proto.MarshalOptions{Deterministic: true}.Marshal(&sv1.DocumentBody{
		Kind:       kind,
		Key:        key,
		Epoch:      f.Epoch,
		Generation: f.Generation,
		IssuedAt:   timestamppb.New(now),
		ExpiresAt:  timestamppb.New(now.Add(s.validity)),
		Payload:    p,
	})
	if err != nil {
		return nil, fmt.Errorf("encode %s document %s: %w", kind, key, err)
	}
	env := &sv1.SignedDocument{Body: body, KeyId: s.id, Signature: ed25519.Sign(s.key, signedBytes(body))}
	return proto.MarshalOptions{Deterministic: true}.Marshal(env)
}

func signedBytes(body []byte) []byte {
	return append([]byte(signingContext), body...)
}

// SealDesired seals a desired state under its service's key, fenced by its
// epoch and generation.
func (s *Signer) SealDesired(ds *sv1.DesiredState, now time.Time) ([]byte, error) {
	return s.Seal(sv1.DocumentKind_DOCUMENT_KIND_DESIRED_STATE, ds.GetService(), Fence{ds.GetEpoch(), ds.GetGeneration()}, ds, now)
}

// SealDrill seals a drill document under its drill's key.
func (s *Signer) SealDrill(d *sv1.DrillDocument, now time.Time) ([]byte, error) {
	return s.Seal(sv1.DocumentKind_DOCUMENT_KIND_DRILL, d.GetDrill(), Fence{d.GetEpoch(), d.GetGeneration()}, d, now)
}

// Keyring is the set of public keys a reader trusts, by key id.
type Keyring struct {
	keys map[string]trustedKey
	memo verifiedMemo
}

// trustedKey is a trusted public key and its id (the map's key, kept as a
// string so that a header names it without copying the document's bytes).
type trustedKey struct {
	id  string
	pub ed25519.PublicKey
}

// NewKeyring trusts keys.
func NewKeyring(keys ...ed25519.PublicKey) (*Keyring, error) {
	r := &Keyring{keys: make(map[string]trustedKey, len(keys))}
	for i, k := range keys {
		if len(k) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("trusted key %d: %d bytes, want an Ed25519 public key of %d", i, len(k), ed25519.PublicKeySize)
		}
		id := KeyID(k)
		r.keys[id] = trustedKey{id: id, pub: k}
	}
	return r, nil
}

// IDs lists the trusted key ids.
func (r *Keyring) IDs() []string {
	out := make([]string, 0, len(r.keys))
	for id := range r.keys {
		out = append(out, id)
	}
	return out
}

// Open verifies and decodes a document read from a bucket, in this order:
// size, envelope, signature present, key trusted, signature valid, body,
// kind, key, fence, expiry (skipped when now is zero), payload. Only after
// the signature verified is anything inside the body looked at. payload is
// filled; the caller checks that it agrees with the header (see OpenDesired
// and OpenDrill). The header is returned with ErrDocumentExpired so that a
// caller can tell an old document from a forged one.
func (r *Keyring) Open(raw []byte, kind sv1.DocumentKind, key string, now time.Time, payload proto.Message) (Header, error) {
	var h Header
	if len(raw) > MaxDocumentBytes {
		return h, fmt.Errorf("%w: %d bytes, the limit is %d", ErrDocumentTooLarge, len(raw), MaxDocumentBytes)
	}
	env, err := readEnvelope(raw)
	if err != nil {
		return h, readError("envelope", err)
	}
	if len(env.body) == 0 {
		return h, fmt.Errorf("%w: envelope has no body", ErrDocumentMalformed)
	}
	if len(env.signature) == 0 && len(env.keyID) == 0 {
		return h, ErrDocumentUnsigned
	}
	trusted, ok := r.keys[string(env.keyID)]
	if !ok {
		return h, fmt.Errorf("%w: key id %q", ErrDocumentUnknownKey, env.keyID)
	}
	if !r.memo.verify(trusted.id, trusted.pub, env.body, env.signature) {
		return h, fmt.Errorf("%w: key id %q", ErrDocumentBadSignature, trusted.id)
	}
	body, err := readBody(env.body)
	if err != nil {
		return h, readError("body", err)
	}
	// The header names the key with the caller's string when the body's
	// matches it, and copies the body's only when it does not.
	h = Header{Kind: sv1.DocumentKind(body.kind), Key: key, Fence: Fence{body.epoch, body.generation}, KeyID: trusted.id}
	if key == "" || string(body.key) != key {
		h.Key = string(body.key)
	}
	if h.Kind != kind {
		return h, fmt.Errorf("%w: %s, want %s", ErrDocumentWrongKind, h.Kind, kind)
	}
	if h.Key != key && key != "" {
		return h, fmt.Errorf("%w: signed for %q, read under %q", ErrDocumentWrongKey, h.Key, key)
	}
	if body.generation == 0 {
		return h, fmt.Errorf("%w: generation is 0", ErrDocumentMalformed)
	}
	issued, issuedOK := body.issuedAt.time()
	expires, expiresOK := body.expiresAt.time()
	if !issuedOK || !expiresOK {
		return h, fmt.Errorf("%w: issued_at and expires_at are required", ErrDocumentMalformed)
	}
	h.IssuedAt, h.ExpiresAt = issued, expires
	if !h.ExpiresAt.After(h.IssuedAt) {
		return h, fmt.Errorf("%w: expires_at %s is not after issued_at %s", ErrDocumentMalformed, h.ExpiresAt.Format(time.RFC3339), h.IssuedAt.Format(time.RFC3339))
	}
	if err := strictUnmarshal(body.payload, payload); err != nil {
		return h, fmt.Errorf("%w: payload: %v", ErrDocumentMalformed, err)
	}
	if !now.IsZero() && !now.Before(h.ExpiresAt) {
		return h, fmt.Errorf("%w: fence %s expired at %s", ErrDocumentExpired, h.Fence, h.ExpiresAt.UTC().Format(time.RFC3339))
	}
	return h, nil
}

// PeekFence reads the fence a sealed document claims, without checking its
// signature: for reports such as "has the bus got the new generation yet"
// by a client that holds no trusted keys. Never decide anything on it.
func PeekFence(raw []byte) (Fence, error) {
	env, err := readEnvelope(raw)
	if err != nil {
		return Fence{}, readError("envelope", err)
	}
	body, err := readBody(env.body)
	if err != nil {
		return Fence{}, readError("body", err)
	}
	return Fence{body.epoch, body.generation}, nil
}

// OpenDesired opens a desired-state document read under service's key
// ("" accepts any key) and checks that the payload agrees with the signed
// header.
func (r *Keyring) OpenDesired(raw []byte, service string, now time.Time) (*sv1.DesiredState, Header, error) {
	ds := new(sv1.DesiredState)
	h, err := r.Open(raw, sv1.DocumentKind_DOCUMENT_KIND_DESIRED_STATE, service, now, ds)
	if err != nil {
		return ds, h, err
	}
	if ds.GetService() != h.Key || (Fence{ds.GetEpoch(), ds.GetGeneration()}) != h.Fence {
		return ds, h, fmt.Errorf("%w: payload says service %q fence %d/%d, header %q %s", ErrDocumentMalformed,
			ds.GetService(), ds.GetEpoch(), ds.GetGeneration(), h.Key, h.Fence)
	}
	return ds, h, nil
}

// OpenDrill opens a drill document read under drill's key ("" accepts any
// key) and checks that the payload agrees with the signed header.
func (r *Keyring) OpenDrill(raw []byte, drill string, now time.Time) (*sv1.DrillDocument, Header, error) {
	d := new(sv1.DrillDocument)
	h, err := r.Open(raw, sv1.DocumentKind_DOCUMENT_KIND_DRILL, drill, now, d)
	if err != nil {
		return d, h, err
	}
	if d.GetDrill() != h.Key || (Fence{d.GetEpoch(), d.GetGeneration()}) != h.Fence {
		return d, h, fmt.Errorf("%w: payload says drill %q fence %d/%d, header %q %s", ErrDocumentMalformed,
			d.GetDrill(), d.GetEpoch(), d.GetGeneration(), h.Key, h.Fence)
	}
	return d, h, nil
}

// RejectReason is the metric label of an Open error: one per sentinel, so
// each kind of refused document has its own counter.
func RejectReason(err error) string {
	switch {
	case errors.Is(err, ErrDocumentTooLarge):
		return "too_large"
	case errors.Is(err, ErrDocumentUnsigned):
		return "unsigned"
	case errors.Is(err, ErrDocumentUnknownKey):
		return "unknown_key"
	case errors.Is(err, ErrDocumentBadSignature):
		return "bad_signature"
	case errors.Is(err, ErrDocumentWrongKind):
		return "wrong_kind"
	case errors.Is(err, ErrDocumentWrongKey):
		return "wrong_key"
	case errors.Is(err, ErrDocumentExpired):
		return "expired"
	}
	return "malformed"
}

// RejectReasons lists every value RejectReason returns, so that counters can
// be created at zero.
func RejectReasons() []string {
	return []string{"malformed", "too_large", "unsigned", "unknown_key", "bad_signature", "wrong_kind", "wrong_key", "expired"}
}
