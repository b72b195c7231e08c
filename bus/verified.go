package bus

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"sync"
	"sync/atomic"
)

// verifiedCap bounds the signatures a keyring remembers: a handful of live
// documents (one per service and drill) and their renewals.
const verifiedCap = 256

// verifiedMemo remembers signatures that verified, by a hash of the key id,
// the signed bytes and the signature, so that the same bytes are not
// verified twice: an agent reads its document again on every resync, a
// coordinator the bucket's document before every write, and agents sharing
// a process (fleet benchmarks, simulations) each receive the same push. A
// keyring's keys never change, so a signature that verified once always
// does; anything else (a flipped bit, another key) hashes differently.
type verifiedMemo struct {
	mu    sync.Mutex
	seen  map[[sha256.Size]byte]struct{}
	order [][sha256.Size]byte
	// checking are the signatures being verified now: a caller with the
	// same bytes waits for that check instead of making its own (agents
	// sharing a keyring receive a push at the same moment).
	checking map[[sha256.Size]byte]*signatureCheck
	// verifications counts the signatures actually checked.
	verifications atomic.Uint64
}

// signatureCheck is one verification under way; ok is set before done is
// closed.
type signatureCheck struct {
	done chan struct{}
	ok   bool
}

// memoKey hashes what verify checks: the key id, the signed bytes (the
// signing context and body, hashed in turn rather than copied together) and
// the signature. The body's length goes first: without it, the bytes of a
// verified document with the boundary between body and signature moved
// (the body's last field in front of the signature) would hash the same
// and pass unchecked.
func memoKey(keyID string, body, sig []byte) [sha256.Size]byte {
	h := sha256.New()
	h.Write([]byte(keyID))
	var n [9]byte // the 0 that ends the key id, then the body's length
	binary.BigEndian.PutUint64(n[1:], uint64(len(body)))
	h.Write(n[:])
	h.Write([]byte(signingContext))
	h.Write(body)
	h.Write(sig)
	var k [sha256.Size]byte
	h.Sum(k[:0])
	return k
}

// verify is ed25519.Verify of body's signed bytes, remembered when it
// succeeds. The signed bytes are put together only when the signature is
// checked, not when it is found remembered.
func (m *verifiedMemo) verify(keyID string, pub ed25519.PublicKey, body, sig []byte) bool {
	k := memoKey(keyID, body, sig)
	m.mu.Lock()
	if _, ok := m.seen[k]; ok {
		m.mu.Unlock()
		return true
	}
	if c := m.checking[k]; c != nil {
		m.mu.Unlock()
		<-c.done
		return c.ok
	}
	c := &signatureCheck{done: make(chan struct{})}
	if m.checking == nil {
		m.checking = map[[sha256.Size]byte]*signatureCheck{}
	}
	m.checking[k] = c
	m.mu.Unlock()

	m.verifications.Add(1)
	c.ok = ed25519.Verify(pub, signedBytes(body), sig)

	m.mu.Lock()
	delete(m.checking, k)
	if c.ok {
		if m.seen == nil {
			m.seen = make(map[[sha256.Size]byte]struct{}, verifiedCap)
		}
		if len(m.order) >= verifiedCap {
			delete(m.seen, m.order[0])
			m.order = append(m.order[:0], m.order[1:]...)
		}
		m.seen[k] = struct{}{}
		m.order = append(m.order, k)
	}
	m.mu.Unlock()
	close(c.done)
	return c.ok
}
