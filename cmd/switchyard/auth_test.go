package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/coordinator"
)

func TestCLI_AuthVerbs(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "auth")
	if code, out, stderr := runCLI(t, "auth", "init", "--dir", dir); code != exitOK || !strings.Contains(out, "nats-server.conf") {
		t.Fatalf("init: exit %d %q %q", code, out, stderr)
	}
	if code, _, stderr := runCLI(t, "auth", "init", "--dir", dir); code != exitFailure || !strings.Contains(stderr, "already holds an operator") {
		t.Fatalf("second init: exit %d %q", code, stderr)
	}
	out := filepath.Join(t.TempDir(), "edge-1.creds")
	if code, _, stderr := runCLI(t, "auth", "issue", "--dir", dir, "--role", "agent", "--name", "edge-1", "--out", out); code != exitOK {
		t.Fatalf("issue: exit %d %q", code, stderr)
	}
	b, err := os.ReadFile(out)
	if err != nil || !strings.Contains(string(b), "BEGIN NATS USER JWT") || !strings.Contains(string(b), "BEGIN USER NKEY SEED") {
		t.Fatalf("creds file: %v %q", err, b)
	}
	if fi, err := os.Stat(out); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("creds file mode: %v %v", fi.Mode(), err)
	}
	other := filepath.Join(t.TempDir(), "edge-2.creds")
	if code, _, stderr := runCLI(t, "auth", "issue", "--dir", dir, "--role", "agent", "--name", "edge-2", "--out", other); code != exitOK {
		t.Fatalf("issue: exit %d %q", code, stderr)
	}
	if code, stdout, _ := runCLI(t, "auth", "list", "--dir", dir); code != exitOK || !strings.Contains(stdout, "edge-1") || !strings.Contains(stdout, "agent") {
		t.Fatalf("list: exit %d %q", code, stdout)
	}
	// Revoking without pushing only changes the directory.
	if code, stdout, stderr := runCLI(t, "auth", "revoke", "--dir", dir, "--name", "edge-1", "--no-push"); code != exitOK || !strings.Contains(stdout, "revoked edge-1") {
		t.Fatalf("revoke: exit %d %q %q", code, stdout, stderr)
	}
	certDir := filepath.Join(t.TempDir(), "tls")
	if code, stdout, stderr := runCLI(t, "auth", "tls", "--dir", certDir, "--name", "nats", "--host", "127.0.0.1,localhost"); code != exitOK || !strings.Contains(stdout, "nats.pem") {
		t.Fatalf("tls: exit %d %q %q", code, stdout, stderr)
	}
	// The coordinator and agent cases fail on their NATS files, not on the
	// signing key or the trusted keys, which are good here.
	key := filepath.Join(t.TempDir(), "coordinator.key")
	if code, _, stderr := runCLI(t, "keys", "generate", "--out", key); code != exitOK {
		t.Fatalf("keys generate: exit %d %q", code, stderr)
	}
	example, err := os.ReadFile(example(t, "agent.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	agentConf := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(agentConf, []byte(strings.ReplaceAll(string(example), "/tmp/switchyard/dev/keys/coordinator.key.pub", key+".pub")), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{"issue without role", []string{"auth", "issue", "--dir", dir, "--name", "x"}, exitUsage, "--role and --name are required"},
		{"unknown role", []string{"auth", "issue", "--dir", dir, "--role", "admin", "--name", "x"}, exitFailure, `--role: role "admin"`},
		{"bad name", []string{"auth", "issue", "--dir", dir, "--role", "agent", "--name", "edge.1"}, exitFailure, "--name: invalid name"},
		{"no setup", []string{"auth", "issue", "--dir", t.TempDir(), "--role", "agent", "--name", "x"}, exitFailure, "holds no operator"},
		{"revoke unknown", []string{"auth", "revoke", "--dir", dir, "--name", "nobody", "--no-push"}, exitFailure, `--name "nobody": no credentials were issued`},
		{"unknown verb", []string{"auth", "grant"}, exitUsage, `unknown verb "grant"`},
		{"missing creds file", []string{"rollout", "status", "--nats-creds", filepath.Join(t.TempDir(), "none.creds")}, exitFailure, "--nats-creds: open"},
		{"CA that is no CA", []string{"rollout", "status", "--nats-ca", out}, exitFailure, "--nats-ca " + out + ": no PEM certificate"},
		{"cluster cert without key", []string{"coordinator", "--node-id", "c1", "--data-dir", t.TempDir(), "--signing-key", key, "--cluster-ca", filepath.Join(certDir, "ca.pem"), "--cluster-cert", filepath.Join(certDir, "nats.pem")}, exitFailure, "--cluster-cert: set together with --cluster-key"},
		{"agent creds of another node", []string{"agent", "--config", agentConf, "--nats-creds", other}, exitFailure, `natsClient.creds: ` + other + ` was issued to "edge-2", but this node is "edge-1"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, _, stderr := runCLI(t, c.args...)
			if code != c.code || !strings.Contains(stderr, c.stderr) {
				t.Fatalf("exit %d, stderr %q; want exit %d and %q", code, stderr, c.code, c.stderr)
			}
		})
	}
}

func TestCLI_CoordinatorConfigFileSecurityKeys(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c1.yaml")
	if err := os.WriteFile(path, []byte(`nodeId: c1
dataDir: /var/lib/switchyard/c1
nats: tls://10.0.0.9:4222
natsClient: {creds: /etc/switchyard/c1.creds, ca: /etc/switchyard/nats-ca.pem}
clusterTLS: {ca: /etc/switchyard/cluster-ca.pem, cert: /etc/switchyard/c1.pem, key: /etc/switchyard/c1-key.pem}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	var (
		cfg     coordinator.Config
		signing signingFlags
	)
	if _, err := loadCoordinatorFile(path, &cfg, &signing); err != nil {
		t.Fatal(err)
	}
	if cfg.NATS.Creds != "/etc/switchyard/c1.creds" || cfg.NATS.CA != "/etc/switchyard/nats-ca.pem" ||
		cfg.ClusterTLS.CA != "/etc/switchyard/cluster-ca.pem" || cfg.ClusterTLS.Cert != "/etc/switchyard/c1.pem" || cfg.ClusterTLS.Key != "/etc/switchyard/c1-key.pem" {
		t.Fatalf("config = %+v %+v", cfg.NATS, cfg.ClusterTLS)
	}
	// The files are checked when the coordinator starts, naming the flag.
	key := filepath.Join(t.TempDir(), "coordinator.key")
	if code, _, stderr := runCLI(t, "keys", "generate", "--out", key); code != exitOK {
		t.Fatalf("keys generate: exit %d %q", code, stderr)
	}
	code, _, stderr := runCLI(t, "coordinator", "--config", path, "--signing-key", key)
	if code != exitFailure || !strings.Contains(stderr, "--cluster-ca /etc/switchyard/cluster-ca.pem: open") {
		t.Fatalf("exit %d %q", code, stderr)
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("nodeId: c1\nclusterTLS: {certificate: x}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := runCLI(t, "coordinator", "--config", bad); code != exitFailure || !strings.Contains(stderr, "certificate") {
		t.Fatalf("unknown key: exit %d %q", code, stderr)
	}
}

// bootstrapExpect: 0 in the file means "only join", as --bootstrap-expect 0
// does; before, the file's 0 was taken for "not set" and the flag's default
// 1 bootstrapped a cluster of its own beside the one it was to join.
func TestCLI_CoordinatorConfigFileBootstrapExpectZero(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "coordinator.key")
	if code, _, stderr := runCLI(t, "keys", "generate", "--out", key); code != exitOK {
		t.Fatalf("keys generate: exit %d %q", code, stderr)
	}
	path := filepath.Join(dir, "c2.yaml")
	if err := os.WriteFile(path, []byte("nodeId: c2\ndataDir: "+filepath.Join(dir, "data")+"\nbootstrapExpect: 0\nsigning: {key: "+key+"}\n"+
		"clusterTLS: {ca: /nonexistent/cluster-ca.pem, cert: /nonexistent/c2.pem, key: /nonexistent/c2-key.pem}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Without retryJoin a coordinator that only joins has nothing to join.
	code, _, stderr := runCLI(t, "coordinator", "--config", path)
	if code != exitFailure || !strings.Contains(stderr, "--bootstrap-expect 0 joins an existing cluster and needs --retry-join") {
		t.Fatalf("bootstrapExpect: 0 without retryJoin: exit %d %q; want the join-only refusal", code, stderr)
	}
	// The command line still overrides the file.
	code, _, stderr = runCLI(t, "coordinator", "--config", path, "--bootstrap-expect", "1")
	if code != exitFailure || strings.Contains(stderr, "bootstrap-expect") || !strings.Contains(stderr, "--cluster-ca /nonexistent/cluster-ca.pem") {
		t.Fatalf("--bootstrap-expect 1 over the file's 0: exit %d %q; want the cluster CA refusal only", code, stderr)
	}
}

// Mistakes in a coordinator config file name the key by its path and say
// what it wants, like the agent's; a key the coordinator would not use, or
// a second document, is refused rather than silently dropped.
// loadCoordinatorYAML writes doc as a coordinator's config file and loads
// it as --config would.
func loadCoordinatorYAML(t *testing.T, doc string) (path string, cfg coordinator.Config, err error) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	var signing signingFlags
	_, err = loadCoordinatorFile(path, &cfg, &signing)
	return path, cfg, err
}

func TestCLI_CoordinatorConfigFileMistakesNameTheKey(t *testing.T) {
	for _, c := range []struct{ doc, want string }{
		{"nodeId: c1\nreplicas: three\n", `replicas: "three" is not a whole number`},
		{"nodeId: c1\nsigning: {validity: 1 hour}\n", `signing.validity: "1 hour" is not a duration`},
		{"nodeId: c1\nnatsClient: {cred: /etc/switchyard/c1.creds}\n", "natsClient.cred: unknown field; want one of creds, ca, cert, key"},
		{"nodeId: c1\nretryJoin: 10.0.0.2:7070\n", "retryJoin: want a list"},
		{"nodeId: c1\nforgetFinishedAfter: -24h\n", "forgetFinishedAfter: -24h0m0s is negative"},
		{"nodeId: c1\nforgetFinishedAfter: a year\n", `forgetFinishedAfter: "a year" is not a duration`},
		{"nodeId: c1\nnotifications: [{url: 'http://x', timeout: soon}]\n", `notifications[0].timeout: "soon" is not a duration`},
		{"nodeId: c1\nwebhookNetworks: [10.0.0.0/8, internal]\n", `webhookNetworks[1]: "internal" is not a network`},
		{"nodeId: c1\nwebhookNetworks: 10.0.0.0/8\n", "webhookNetworks: want a list"},
		// The coordinator reads the streams of the servers it connects to;
		// the key was accepted and then ignored.
		{"nodeId: c1\nnatsClient: {jetstreamDomain: hub}\n", "natsClient.jetstreamDomain: not used by a coordinator"},
		// Everything after the first document was ignored.
		{"nodeId: c1\n---\nnodeId: c2\n", "want one YAML document, found more"},
	} {
		path, _, err := loadCoordinatorYAML(t, c.doc)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), path) {
			t.Errorf("%q: error %v; want one naming %s and %q", c.doc, err, path, c.want)
		}
	}
	// A file of comments only leaves everything to the flags, as before.
	if _, _, err := loadCoordinatorYAML(t, "# all given as flags\n"); err != nil {
		t.Errorf("comments only: %v", err)
	}
}

// A leaf identity an earlier release issued (signed by the account key,
// no permissions) is not limited by the account's templates: auth push
// says so, naming it and the way out, before it pushes.
func TestCLI_AuthPushWarnsOfLeavesWithoutPermissions(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "auth")
	if code, _, stderr := runCLI(t, "auth", "init", "--dir", dir); code != exitOK {
		t.Fatalf("init: exit %d %q", code, stderr)
	}
	if code, _, stderr := runCLI(t, "auth", "issue", "--dir", dir, "--role", "leaf", "--name", "pop-b"); code != exitOK {
		t.Fatalf("issue leaf: exit %d %q", code, stderr)
	}
	b, err := os.ReadFile(filepath.Join(dir, "issued.json"))
	if err != nil {
		t.Fatal(err)
	}
	// The earlier release's entry has no signer.
	old := `{"name":"pop-a","role":"leaf","publicKey":"UOLDLEAF","issuedAt":1},`
	if err := os.WriteFile(filepath.Join(dir, "issued.json"), []byte(strings.Replace(string(b), "[", "["+old, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := runCLI(t, "auth", "push", "--dir", dir, "--nats", "nats://127.0.0.1:1")
	if code != exitFailure || !strings.Contains(stderr, "warning: leaf pop-a (user UOLDLEAF) was issued by an earlier release without permissions") || !strings.Contains(stderr, "revoke pop-a") {
		t.Fatalf("push: exit %d, stderr %q; want the warning for pop-a, then the failed push", code, stderr)
	}
	if strings.Contains(stderr, "pop-b") {
		t.Fatalf("push warned of the leaf this release issued: %q", stderr)
	}
}

// forgetFinishedAfter in the file: absent leaves the flag's default, 0
// keeps every rollout, a duration is the retention.
func TestCLI_CoordinatorConfigFileRolloutRetention(t *testing.T) {
	for _, c := range []struct {
		doc  string
		want time.Duration
	}{
		{"nodeId: c1\n", 0},
		{"nodeId: c1\nforgetFinishedAfter: 0s\n", coordinator.KeepFinished},
		{"nodeId: c1\nforgetFinishedAfter: 720h\n", 720 * time.Hour},
	} {
		_, cfg, err := loadCoordinatorYAML(t, c.doc)
		if err != nil {
			t.Fatalf("%q: %v", c.doc, err)
		}
		if cfg.ForgetFinishedAfter != c.want {
			t.Errorf("%q: ForgetFinishedAfter %s, want %s", c.doc, cfg.ForgetFinishedAfter, c.want)
		}
	}
}

// The networks rollout webhooks may reach, from the file or the flag (the
// flag wins); a value that is not a network is named.
func TestCLI_CoordinatorWebhookNetworks(t *testing.T) {
	path, cfg, err := loadCoordinatorYAML(t, "nodeId: c1\nwebhookNetworks: [10.20.0.0/16, 192.0.2.7]\n")
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(cfg.WebhookNetworks); got != "[10.20.0.0/16 192.0.2.7/32]" {
		t.Fatalf("webhookNetworks %s", got)
	}
	code, _, stderr := runCLI(t, "coordinator", "--config", path, "--data-dir", t.TempDir(), "--webhook-networks", "10.0.0.0/8,nowhere")
	if code == exitOK || !strings.Contains(stderr, `--webhook-networks[1]: "nowhere" is not a network (want CIDR such as 10.0.0.0/8, or an address)`) {
		t.Fatalf("exit %d, stderr %q; want the flag's bad value named", code, stderr)
	}
}
