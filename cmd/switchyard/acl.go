package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/nats-io/jwt/v2"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/coordinator/acl"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

const aclUsage = `Usage:
  switchyard acl list [-o json]
  switchyard acl grant --key KEY --name NAME --role ROLE [--services PATTERN]
  switchyard acl revoke --key KEY [--role ROLE --services PATTERN]   (no --role: remove the key)
  switchyard acl policy [--approvals N] [--approval-services PATTERN] [--require-gates[=false]]
                        [--drill-max-nodes N] [--drill-max-percent P]
  switchyard acl bootstrap --name NAME      make the signer the first admin (only while there is none)
Roles: viewer, deployer, approver, chaos, admin (admin holds every role). PATTERN is a glob
over service names, "*" by default. KEY is a user nkey (U…), an ed25519:… key, or a file:
a NATS creds file, a .pub file or an Ed25519 private key (its public half is used).
Changes are intents: signed with --sign-key or the --nats-creds nkey, by an admin.
Common flags as for 'switchyard rollout' (--nats, --nats-creds, --nats-ca, --timeout, -o).
`

func runAcl(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, aclUsage)
		return errUsage
	}
	verb := args[0]
	switch verb {
	case "list", "grant", "revoke", "policy", "bootstrap":
	case "-h", "--help", "help":
		fmt.Fprint(stdout, aclUsage)
		return nil
	default:
		return usageErr(stderr, "switchyard acl: unknown verb %q\n\n%s", verb, aclUsage)
	}
	fs := newFlags("acl "+verb, stderr)
	var c clientFlags
	c.register(fs)
	key := fs.String("key", "", "the principal's public key, or a file holding it (creds, .pub, private key)")
	name := fs.String("name", "", "the principal's name, shown in history and audit")
	role := fs.String("role", "", "viewer, deployer, approver, chaos or admin")
	services := fs.String("services", "*", "service name pattern the role holds on")
	approvals := fs.Uint("approvals", 0, "approvals from approvers other than the author that a manual gate or promote needs (0: none)")
	approvalServices := fs.String("approval-services", "*", "services the approval rule covers")
	requireGates := fs.Bool("require-gates", false, "with --approvals: refuse a rollout with a wave that takes all its traffic without waiting for approval")
	maxNodes := fs.Uint("drill-max-nodes", 0, "largest maxNodes a drill may ask for (0: no admin cap)")
	maxPercent := fs.Uint("drill-max-percent", 0, "largest maxPercent a drill may ask for (0: no admin cap)")
	pos, err := c.parse(fs, args[1:], stderr)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageErr(stderr, "switchyard acl %s: unexpected argument %q", verb, pos[0])
	}
	// The policy holds 32 bits: a larger number would wrap (4294967297
	// approvals to 1) before the coordinators could refuse it.
	for _, f := range []struct {
		name     string
		v, limit uint
	}{
		{"approvals", *approvals, acl.MaxApprovals},
		{"drill-max-nodes", *maxNodes, math.MaxUint32},
		{"drill-max-percent", *maxPercent, acl.MaxDrillPercent},
	} {
		if f.v > f.limit {
			return usageErr(stderr, "switchyard acl %s: --%s %d: want 0..%d", verb, f.name, f.v, f.limit)
		}
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })

	if verb == "list" {
		return aclList(ctx, c, stdout)
	}
	var change *sv1.AclChange
	switch verb {
	case "grant", "revoke":
		if *key == "" {
			return usageErr(stderr, "switchyard acl %s: --key is required", verb)
		}
		k, err := resolveKey(*key)
		if err != nil {
			return fmt.Errorf("--key: %w", err)
		}
		if verb == "grant" {
			if *name == "" || *role == "" {
				return usageErr(stderr, "switchyard acl grant: --name and --role are required")
			}
			change = &sv1.AclChange{Change: &sv1.AclChange_Grant{Grant: &sv1.AclGrant{Key: k, Name: *name, Role: *role, Services: *services}}}
		} else {
			rv := &sv1.AclRevoke{Key: k, Role: *role}
			if *role != "" {
				rv.Services = *services
			}
			change = &sv1.AclChange{Change: &sv1.AclChange_Revoke{Revoke: rv}}
		}
	case "policy":
		cur, err := queryAcl(ctx, c)
		if err != nil {
			return err
		}
		pol := cur.GetPolicy()
		if pol == nil {
			pol = &sv1.AclPolicy{}
		}
		if set["approvals"] {
			pol.Approvals = uint32(*approvals)
		}
		if set["approval-services"] {
			pol.ApprovalServices = *approvalServices
		}
		if set["require-gates"] {
			pol.RequireGates = *requireGates
		}
		if set["drill-max-nodes"] {
			pol.DrillMaxNodes = uint32(*maxNodes)
		}
		if set["drill-max-percent"] {
			pol.DrillMaxPercent = uint32(*maxPercent)
		}
		// The revision read: a change another admin made since is not
		// silently undone; the leader refuses this one (conflict).
		change = &sv1.AclChange{Change: &sv1.AclChange_Policy{Policy: pol}, PolicyRevision: proto.Uint64(cur.GetPolicyRevision())}
	case "bootstrap":
		if *name == "" {
			return usageErr(stderr, "switchyard acl bootstrap: --name is required")
		}
		change = &sv1.AclChange{Change: &sv1.AclChange_Bootstrap{Bootstrap: &sv1.AclBootstrap{Name: *name}}}
	}
	c.publishWait = 0
	return sendIntent(ctx, c, bus.IntentKindAcl, &sv1.Intent{Action: &sv1.Intent_Acl{Acl: change}}, "acl "+verb, stdout)
}

// resolveKey reads a principal key given inline or as a file.
func resolveKey(s string) (string, error) {
	s = strings.TrimSpace(s)
	if err := bus.ValidPrincipalKey("key", s); err == nil {
		return s, nil
	}
	b, err := os.ReadFile(s)
	if err != nil {
		return "", fmt.Errorf("%q is neither a user nkey (U…), an ed25519:… key nor a readable file: %v", s, err)
	}
	if line := strings.TrimSpace(string(b)); bus.ValidPrincipalKey("key", line) == nil {
		return line, nil
	}
	if strings.Contains(string(b), "PRIVATE KEY") {
		signer, err := bus.LoadIntentSigner(s)
		if err != nil {
			return "", err
		}
		return signer.Key(), nil
	}
	kp, err := jwt.ParseDecoratedNKey(b)
	if err != nil {
		return "", fmt.Errorf("%s: not a key, creds file or key file: %v", s, err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		return "", fmt.Errorf("%s: %w", s, err)
	}
	return pub, nil
}

func queryAcl(ctx context.Context, c clientFlags) (*sv1.AclState, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	nc, err := c.connect(ctx)
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	var st sv1.AclState
	if err := bus.Query(ctx, nc, bus.QueryAcl, &sv1.AclQuery{}, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

func aclList(ctx context.Context, c clientFlags, stdout io.Writer) error {
	st, err := queryAcl(ctx, c)
	if err != nil {
		return err
	}
	if c.output == "json" {
		printJSON(stdout, st)
		return nil
	}
	if len(st.GetPrincipals()) == 0 {
		fmt.Fprintln(stdout, "no principals: the cluster has no admin, so roles are not enforced yet (switchyard acl bootstrap)")
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tKEY\tROLES")
	for _, p := range st.GetPrincipals() {
		var roles []string
		for _, g := range p.GetGrants() {
			roles = append(roles, g.GetRole()+" on "+g.GetServices())
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", p.GetName(), p.GetKey(), strings.Join(roles, ", "))
	}
	_ = tw.Flush()
	pol := st.GetPolicy()
	gates := ""
	if pol.GetRequireGates() {
		gates = ", a gate on every wave"
	}
	fmt.Fprintf(stdout, "\nPolicy: approvals %d from approvers other than the author on %q%s; drill caps: %s nodes, %s%% (revision %d)\n",
		pol.GetApprovals(), orStar(pol.GetApprovalServices()), gates, capText(pol.GetDrillMaxNodes()), capText(pol.GetDrillMaxPercent()), st.GetPolicyRevision())
	return nil
}

func orStar(s string) string {
	if s == "" {
		return "*"
	}
	return s
}

func capText(n uint32) string {
	if n == 0 {
		return "no admin cap on"
	}
	return fmt.Sprint(n)
}
