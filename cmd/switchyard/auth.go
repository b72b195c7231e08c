package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/bus/auth"
	"github.com/switchyard/switchyard/internal/certs"
)

const authUsage = `Usage:
  switchyard auth init   --dir DIR [--operator NAME]      operator, accounts and signing keys for a cluster;
                                                         writes DIR/nats-server.conf for the NATS servers
  switchyard auth issue  --dir DIR --role ROLE --name NAME [--out FILE]
                                                         a .creds file; ROLE is agent, coordinator, operator or viewer,
                                                         or leaf for a PoP's leaf server connecting to the hub
  switchyard auth account --dir DIR                      the Switchyard account's public key (a leaf remote binds it)
  switchyard auth revoke --dir DIR --name NAME [--nats URL --nats-ca FILE] [--no-push]
                                                         revoke NAME and push the account to the running servers
  switchyard auth push   --dir DIR [--nats URL --nats-ca FILE]
                                                         push the current account to the running servers
  switchyard auth list   --dir DIR [-o json]            identities issued
  switchyard auth tls    --dir DIR --name NAME --host HOST[,HOST...]
                                                         a development CA (made on first use) and a certificate
--dir defaults to SWITCHYARD_AUTH_DIR.
`

func runAuth(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprint(stdout, authUsage)
		if len(args) == 0 {
			return errUsage
		}
		return nil
	}
	verb, args := args[0], args[1:]
	fs := newFlags("auth "+verb, stderr)
	dir := fs.String("dir", os.Getenv("SWITCHYARD_AUTH_DIR"), "the cluster's auth directory (env SWITCHYARD_AUTH_DIR)")
	switch verb {
	case "init":
		operator := fs.String("operator", "switchyard", "operator name")
		if err := parse(fs, args); err != nil {
			return err
		}
		if *dir == "" {
			return usageErr(stderr, "switchyard auth init: --dir is required")
		}
		s, err := auth.Init(*dir, *operator)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "operator, system account and account %s created in %s\n", auth.AccountName, s.Dir())
		fmt.Fprintf(stdout, "NATS server config: %s (include it in each server's config)\n", filepath.Join(s.Dir(), auth.ServerConfigFile))
		fmt.Fprintf(stdout, "system user (pushes revocations): %s\n", filepath.Join(s.Dir(), auth.SystemCredsFile))
		return nil
	case "issue":
		role := fs.String("role", "", "agent, coordinator, operator or viewer; leaf for a PoP's leaf server connecting to the hub")
		name := fs.String("name", "", "the node, coordinator or person; an agent's name must be its node id")
		out := fs.String("out", "", "where to write the .creds file (default DIR/creds/NAME.creds)")
		if err := parse(fs, args); err != nil {
			return err
		}
		if *dir == "" || *role == "" || *name == "" {
			return usageErr(stderr, "switchyard auth issue: --dir, --role and --name are required")
		}
		var r bus.Role
		if *role != auth.RoleLeaf {
			var err error
			if r, err = bus.ParseRole(*role); err != nil {
				return fmt.Errorf("--role: %w (or %s)", err, auth.RoleLeaf)
			}
		}
		s, err := auth.Load(*dir)
		if err != nil {
			return err
		}
		var creds []byte
		if *role == auth.RoleLeaf {
			r = auth.RoleLeaf
			creds, err = s.IssueLeaf(*name)
		} else {
			creds, err = s.Issue(r, *name)
		}
		if err != nil {
			return err
		}
		path := *out
		if path == "" {
			path = filepath.Join(s.Dir(), auth.CredsDir, *name+".creds")
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return fmt.Errorf("--out: %w", err)
		}
		if err := os.WriteFile(path, creds, 0o600); err != nil {
			return fmt.Errorf("--out: %w", err)
		}
		fmt.Fprintf(stdout, "%s %s: %s\n", r, *name, path)
		return nil
	case "revoke", "push":
		name := fs.String("name", "", "whose credentials to revoke")
		noPush := fs.Bool("no-push", false, "only update the account in DIR; push it later with 'switchyard auth push'")
		url := fs.String("nats", envOr("SWITCHYARD_NATS", "nats://127.0.0.1:4222"), "NATS URL (env SWITCHYARD_NATS)")
		var natsSec natsSecurityFlags
		natsSec.register(fs)
		if err := parse(fs, args); err != nil {
			return err
		}
		if *dir == "" || (verb == "revoke" && *name == "") {
			return usageErr(stderr, "switchyard auth %s: --dir is required%s", verb, map[bool]string{true: " and so is --name", false: ""}[verb == "revoke"])
		}
		s, err := auth.Load(*dir)
		if err != nil {
			return err
		}
		token := s.AccountJWT
		if verb == "push" {
			// An auth directory made by an earlier release carries its
			// role templates: bring them to this release's first.
			var changed bool
			if token, changed, err = s.Refresh(); err != nil {
				return err
			}
			if changed {
				fmt.Fprintf(stdout, "account in %s re-signed with this release's role permissions\n", s.Dir())
			}
			// Leaf users of an earlier release carry no template: the
			// push cannot limit them.
			leaves, err := s.UnlimitedLeaves()
			if err != nil {
				return err
			}
			for _, l := range leaves {
				fmt.Fprintf(stderr, "warning: leaf %s (user %s) was issued by an earlier release without permissions and carries anything to the hub; issue the PoP a new leaf identity, restart its leaf server with it, then revoke %s (docs/operations.md)\n", l.Name, l.PublicKey, l.Name)
			}
		}
		if verb == "revoke" {
			if token, err = s.Revoke(*name, time.Now()); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "revoked %s in %s\n", *name, s.Dir())
			if *noPush {
				return nil
			}
		}
		// The system user pushes; TLS comes from the flags.
		sec := natsSec.sec
		sec.Creds = filepath.Join(s.Dir(), auth.SystemCredsFile)
		opts, err := sec.Options("--nats-")
		if err != nil {
			return err
		}
		nc, err := nats.Connect(*url, append(opts, nats.Name("switchyard-auth"), nats.Timeout(5*time.Second))...)
		if err != nil {
			return fmt.Errorf("connect to nats at %s as the system user: %w", *url, err)
		}
		defer nc.Close()
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := auth.Push(pctx, nc, token); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "account pushed to the servers at %s\n", *url)
		return nil
	case "account":
		if err := parse(fs, args); err != nil {
			return err
		}
		if *dir == "" {
			return usageErr(stderr, "switchyard auth account: --dir is required")
		}
		s, err := auth.Load(*dir)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, s.Account())
		return nil
	case "list":
		output := fs.String("o", "table", "output: table or json")
		if err := parse(fs, args); err != nil {
			return err
		}
		if *dir == "" {
			return usageErr(stderr, "switchyard auth list: --dir is required")
		}
		s, err := auth.Load(*dir)
		if err != nil {
			return err
		}
		list, err := s.List()
		if err != nil {
			return err
		}
		if *output == "json" {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(list)
		}
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tROLE\tISSUED\tREVOKED\tUSER KEY")
		for _, i := range list {
			revoked := "-"
			if i.RevokedAt != 0 {
				revoked = time.Unix(i.RevokedAt, 0).UTC().Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", i.Name, i.Role, time.Unix(i.IssuedAt, 0).UTC().Format(time.RFC3339), revoked, i.PublicKey)
		}
		return tw.Flush()
	case "tls":
		name := fs.String("name", "", "certificate name (files NAME.pem and NAME-key.pem)")
		var hosts stringList
		fs.Var(&hosts, "host", "IP address or DNS name the certificate is valid for (repeatable, or comma-separated)")
		if err := parse(fs, args); err != nil {
			return err
		}
		if *dir == "" || *name == "" || len(hosts) == 0 {
			return usageErr(stderr, "switchyard auth tls: --dir, --name and --host are required")
		}
		ca, err := certs.LoadOrNewCA(*dir, "Switchyard development CA")
		if err != nil {
			return err
		}
		f, err := ca.Issue(*name, hosts)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "ca: %s\ncert: %s\nkey: %s\n", f.CA, f.Cert, f.Key)
		return nil
	}
	return usageErr(stderr, "switchyard auth: unknown verb %q\n\n%s", verb, authUsage)
}
