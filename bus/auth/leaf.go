package auth

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/nats-io/jwt/v2"

	"github.com/switchyard/switchyard/internal/names"
)

// RoleLeaf names, in the list of issued identities and among the
// account's scoped signing keys, a leaf server's connection to the hub. It
// is not a role of the bus: a leaf carries the traffic of every identity
// connected to it, each of which its own server already holds to that
// identity's permissions, and is itself held to what those identities may
// do (bus.LeafPermissions).
const RoleLeaf = "leaf"

// ErrNoLeafScope is returned by IssueLeaf when the account has no leaf
// signing key yet (an auth directory made by an earlier release).
var ErrNoLeafScope = errors.New("the account has no leaf signing key (an auth directory made by an earlier release); run 'switchyard auth push --dir DIR' first, which adds it and sends the account to the servers")

// IssueLeaf creates the user a PoP's leaf server connects to the hub
// cluster with, in the Switchyard account, signed by the account's leaf
// signing key: it may carry what the agents, operators and viewers at a
// PoP send and receive, and nothing else. It is listed and revoked by name
// like any other.
func (s *Setup) IssueLeaf(name string) ([]byte, error) {
	if err := names.Validate(name); err != nil {
		return nil, fmt.Errorf("--name: %w", err)
	}
	// A user signed by a key the account does not list is refused by the
	// servers when the leaf connects, far from this command.
	kp, err := readKey(filepath.Join(s.dir, signingDir, RoleLeaf+".nk"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNoLeafScope
	}
	if err != nil {
		return nil, err
	}
	ac, err := jwt.DecodeAccountClaims(s.AccountJWT)
	if err != nil {
		return nil, fmt.Errorf("read account: %w", err)
	}
	if _, ok := ac.SigningKeys.GetScope(mustPublic(kp)); !ok {
		return nil, ErrNoLeafScope
	}
	return s.issueScoped(RoleLeaf, name)
}

// UnlimitedLeaves lists the leaf identities, not revoked, that an earlier
// release issued: signed by the account key itself with no permissions,
// they carry anything between a leaf and the hub, whatever the account's
// templates say. Each must be issued again and the old one revoked (see
// docs/operations.md, "Leaf credentials from an earlier release").
func (s *Setup) UnlimitedLeaves() ([]Issued, error) {
	issued, err := s.issued()
	if err != nil {
		return nil, err
	}
	var out []Issued
	for _, i := range issued {
		if i.Role == RoleLeaf && i.Signer == "" && i.RevokedAt == 0 {
			out = append(out, i)
		}
	}
	return out, nil
}
