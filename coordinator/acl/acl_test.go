package acl

import (
	"errors"
	"strings"
	"testing"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

func TestAcl_HoldsAndAuthorize(t *testing.T) {
	st := &sv1.AclState{Principals: []*sv1.Principal{
		{Key: "UADMIN", Name: "root", Grants: []*sv1.Grant{{Role: RoleAdmin, Services: "*"}}},
		{Key: "UDEP", Name: "dee", Grants: []*sv1.Grant{{Role: RoleDeployer, Services: "web-*"}}},
		{Key: "USRE", Name: "sre", Grants: []*sv1.Grant{{Role: RoleChaos, Services: "web"}}},
	}}
	cases := []struct {
		key, action, service string
		want                 error
		text                 string
	}{
		{"UADMIN", "apply_rollout", "anything", nil, ""},
		{"UADMIN", "acl_grant", "*", nil, ""},
		{"UDEP", "apply_rollout", "web-eu", nil, ""},
		{"UDEP", "apply_rollout", "checkout", ErrForbidden, `dee (UDEP) lacks role "deployer" on service "checkout"`},
		{"UDEP", "approve_rollout", "web-eu", ErrForbidden, `lacks role "approver"`},
		{"UDEP", "run_drill", "web-eu", ErrForbidden, "run_drill needs role chaos"},
		{"UDEP", "stop_all_drills", "", nil, ""},
		{"UDEP", "acl_grant", "*", ErrForbidden, `lacks role "admin"`},
		{"USRE", "run_drill", "web", nil, ""},
		{"USRE", "run_drill", "web-eu", ErrForbidden, `on service "web-eu"`},
		{"UNOBODY", "apply_rollout", "web", ErrUnknownKey, "acl grant --key UNOBODY"},
	}
	for _, c := range cases {
		_, err := Authorize(st, c.key, c.action, c.service)
		if !errors.Is(err, c.want) || (c.want != nil && !strings.Contains(err.Error(), c.text)) {
			t.Errorf("%s %s on %q: %v; want %v saying %q", c.key, c.action, c.service, err, c.want, c.text)
		}
	}
	if !HasAdmin(st) || HasAdmin(&sv1.AclState{Principals: st.Principals[1:]}) {
		t.Error("HasAdmin")
	}
}

func TestAcl_CheckChangeNamesTheField(t *testing.T) {
	cases := []struct {
		c    *sv1.AclChange
		text string
	}{
		{&sv1.AclChange{}, "names no change"},
		{&sv1.AclChange{Change: &sv1.AclChange_Grant{Grant: &sv1.AclGrant{Key: "U", Role: "deployer", Services: "*"}}}, "acl.grant.name"},
		{&sv1.AclChange{Change: &sv1.AclChange_Grant{Grant: &sv1.AclGrant{Key: "U", Name: "n", Role: "root", Services: "*"}}}, "acl.grant.role"},
		{&sv1.AclChange{Change: &sv1.AclChange_Grant{Grant: &sv1.AclGrant{Key: "U", Name: "n", Role: "viewer", Services: "[x"}}}, "acl.grant.services"},
		{&sv1.AclChange{Change: &sv1.AclChange_Revoke{Revoke: &sv1.AclRevoke{}}}, "acl.revoke.key"},
		{&sv1.AclChange{Change: &sv1.AclChange_Policy{Policy: &sv1.AclPolicy{DrillMaxPercent: 101}}}, "drill_max_percent"},
		{&sv1.AclChange{Change: &sv1.AclChange_Bootstrap{Bootstrap: &sv1.AclBootstrap{}}}, "acl.bootstrap.name"},
	}
	for _, c := range cases {
		if err := CheckChange(c.c); err == nil || !strings.Contains(err.Error(), c.text) {
			t.Errorf("%v: %v; want an error naming %s", c.c, err, c.text)
		}
	}
}

func TestAcl_DrillCaps(t *testing.T) {
	pol := &sv1.AclPolicy{DrillMaxNodes: 2, DrillMaxPercent: 25}
	if err := CheckDrillCaps(pol, &sv1.DrillSpec{MaxNodes: 2, MaxBasisPoints: 2500}); err != nil {
		t.Fatal(err)
	}
	if err := CheckDrillCaps(pol, &sv1.DrillSpec{MaxNodes: 3, MaxBasisPoints: 2500}); !errors.Is(err, ErrOverCap) {
		t.Fatal(err)
	}
	if err := CheckDrillCaps(pol, &sv1.DrillSpec{MaxNodes: 1, MaxBasisPoints: 2600}); !errors.Is(err, ErrOverCap) {
		t.Fatal(err)
	}
	if err := CheckDrillCaps(nil, &sv1.DrillSpec{MaxNodes: 100, MaxBasisPoints: 10000}); err != nil {
		t.Fatal(err)
	}
}
