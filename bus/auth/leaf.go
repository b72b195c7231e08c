package auth

import (
	"fmt"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"

	"github.com/switchyard/switchyard/internal/names"
)

// RoleLeaf names, in the list of issued identities, a leaf server's
// connection to the hub. It is not a role of the bus: a leaf carries the
// traffic of every identity connected to it, each of which its own server
// already holds to that identity's permissions.
const RoleLeaf = "leaf"

// IssueLeaf creates the user a PoP's leaf server connects to the hub
// cluster with, in the Switchyard account and signed by the account key
// (scoped signing keys limit a user to one role; a leaf needs the account's
// whole subject space). It is listed and revoked by name like any other.
func (s *Setup) IssueLeaf(name string) ([]byte, error) {
	if err := names.Validate(name); err != nil {
		return nil, fmt.Errorf("--name: %w", err)
	}
	if err := s.nameFree(name, RoleLeaf); err != nil {
		return nil, err
	}
	user, err := nkeys.CreateUser()
	if err != nil {
		return nil, err
	}
	seed, err := user.Seed()
	if err != nil {
		return nil, err
	}
	uc := jwt.NewUserClaims(mustPublic(user))
	uc.Name = name
	uc.Tags.Add("role:" + RoleLeaf)
	token, err := uc.Encode(s.account)
	if err != nil {
		return nil, fmt.Errorf("sign leaf %s: %w", name, err)
	}
	claims, err := jwt.DecodeUserClaims(token)
	if err != nil {
		return nil, err
	}
	issued, err := s.issued()
	if err != nil {
		return nil, err
	}
	issued = append(issued, Issued{Name: name, Role: RoleLeaf, PublicKey: claims.Subject, IssuedAt: claims.IssuedAt})
	if err := s.saveIssued(issued); err != nil {
		return nil, err
	}
	return jwt.FormatUserConfig(token, seed)
}
