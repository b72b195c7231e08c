package coordinator

import (
	"bytes"
	"crypto/ed25519"
	"testing"

	"github.com/switchyard/switchyard/bus"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// testSigning is the signing key of test coordinators.
var testSigning = Signing{Key: ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))}

// testTrust opens what test coordinators sign.
var testTrust, _ = bus.NewKeyring(testSigning.Key.Public().(ed25519.PublicKey))

func TestSigning_ConfigErrorsNameTheSetting(t *testing.T) {
	for _, c := range []struct {
		cfg  Signing
		want string
	}{
		{Signing{}, "signing.key is required"},
		{Signing{Key: ed25519.PrivateKey{1, 2, 3}}, "signing.key"},
		{Signing{Key: testSigning.Key, Validity: 1}, "signing.validity"},
		{Signing{Key: testSigning.Key, Trusted: []ed25519.PublicKey{{1}}}, "signing.trusted"},
	} {
		if _, err := newDocumentPublisher(c.cfg); err == nil || !bytes.Contains([]byte(err.Error()), []byte(c.want)) {
			t.Errorf("%+v: %v, want an error naming %s", c.cfg.Validity, err, c.want)
		}
	}
}

func TestConvergence_OnlyTheExactDocumentCounts(t *testing.T) {
	want := bus.Fence{Epoch: 2, Generation: 10}
	for _, c := range []struct {
		have bus.Fence
		want Agreement
	}{
		{bus.Fence{Epoch: 2, Generation: 10}, Current},
		{bus.Fence{Epoch: 2, Generation: 9}, Behind},
		{bus.Fence{Epoch: 1, Generation: 500}, Behind},
		{bus.Fence{Epoch: 2, Generation: 11}, Diverged},
		{bus.Fence{Epoch: 3, Generation: 1}, Diverged},
	} {
		if got := agreement(c.have, want); got != c.want {
			t.Errorf("%s against %s = %d, want %d", c.have, want, got, c.want)
		}
	}
	nodes := []*sv1.NodeView{
		{Node: "a", AppliedEpoch: 2, AppliedGeneration: 10, ObservedMatches: true},
		{Node: "b", AppliedEpoch: 1, AppliedGeneration: 900, ObservedMatches: true}, // an old cluster's lineage
		{Node: "c", AppliedEpoch: 2, AppliedGeneration: 12, ObservedMatches: true},  // ahead: diverged
		{Node: "d", AppliedEpoch: 2, AppliedGeneration: 10, Stale: true, ObservedMatches: true},
	}
	if applied, live, _ := converged(nodes, want); applied != 1 || live != 3 {
		t.Fatalf("converged = %d of %d, want 1 of 3", applied, live)
	}
}
