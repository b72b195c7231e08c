package auth_test

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"

	"github.com/switchyard/switchyard/bus/auth"
)

func TestAuth_LeafIdentityIsListedRevocableAndValidated(t *testing.T) {
	setup, err := auth.Init(filepath.Join(t.TempDir(), "auth"), "test")
	if err != nil {
		t.Fatal(err)
	}
	creds, err := setup.IssueLeaf("pop-a")
	if err != nil {
		t.Fatal(err)
	}
	token, err := jwt.ParseDecoratedJWT(creds)
	if err != nil {
		t.Fatal(err)
	}
	uc, err := jwt.DecodeUserClaims(token)
	if err != nil {
		t.Fatal(err)
	}
	if uc.Issuer != setup.Account() || uc.Name != "pop-a" {
		t.Fatalf("leaf user issued by %s named %q; want the Switchyard account %s, pop-a", uc.Issuer, uc.Name, setup.Account())
	}
	list, err := setup.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Name != "pop-a" || string(list[0].Role) != auth.RoleLeaf || list[0].PublicKey != uc.Subject {
		t.Fatalf("issued list %+v", list)
	}
	account, err := setup.Revoke("pop-a", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ac, err := jwt.DecodeAccountClaims(account)
	if err != nil {
		t.Fatal(err)
	}
	if !ac.IsClaimRevoked(uc) {
		t.Error("revoking pop-a left its leaf user valid")
	}
	if _, err := setup.IssueLeaf("pop.a"); err == nil || !strings.Contains(err.Error(), "--name") {
		t.Errorf("leaf name with a dot: %v, want an error naming --name", err)
	}
}
