package bus

import (
	"crypto/ed25519"
	"crypto/sha256"
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
	// verifications counts the signatures actually checked.
	verifications atomic.Uint64
}

func memoKey(keyID string, signed, sig []byte) [sha256.Size]byte {
	h := sha256.New()
	h.Write([]byte(keyID))
	h.Write([]byte{0})
	h.Write(signed)
	h.Write(sig)
	var k [sha256.Size]byte
	h.Sum(k[:0])
	return k
}

// verify is ed25519.Verify, remembered when it succeeds.
func (m *verifiedMemo) verify(keyID string, pub ed25519.PublicKey, signed, sig []byte) bool {
	k := memoKey(keyID, signed, sig)
	m.mu.Lock()
	_, ok := m.seen[k]
	m.mu.Unlock()
	if ok {
		return true
	}
	m.verifications.Add(1)
	if !ed25519.Verify(pub, signed, sig) {
		return false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.seen[k]; ok {
		return true
	}
	if m.seen == nil {
		m.seen = make(map[[sha256.Size]byte]struct{}, verifiedCap)
	}
	if len(m.order) >= verifiedCap {
		delete(m.seen, m.order[0])
		m.order = append(m.order[:0], m.order[1:]...)
	}
	m.seen[k] = struct{}{}
	m.order = append(m.order, k)
	return true
}
