package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.yaml.in/yaml/v3"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/coordinator"
	"github.com/switchyard/switchyard/coordinator/hooks"
	"github.com/switchyard/switchyard/coordinator/notify"
	"github.com/switchyard/switchyard/internal/certs"
	"github.com/switchyard/switchyard/internal/strictyaml"
)

// clusterTLSFlags name the cluster CA and this process's certificate.
type clusterTLSFlags struct{ files certs.Files }

func (f *clusterTLSFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.files.CA, "cluster-ca", envOr("SWITCHYARD_CLUSTER_CA", ""), "CA of the coordinators' certificates; turns mutual TLS on for Raft and the HTTP API (env SWITCHYARD_CLUSTER_CA)")
	fs.StringVar(&f.files.Cert, "cluster-cert", envOr("SWITCHYARD_CLUSTER_CERT", ""), "this process's certificate from --cluster-ca (env SWITCHYARD_CLUSTER_CERT)")
	fs.StringVar(&f.files.Key, "cluster-key", envOr("SWITCHYARD_CLUSTER_KEY", ""), "key of --cluster-cert (env SWITCHYARD_CLUSTER_KEY)")
}

// client is an HTTP client for the coordinators' API.
func (f *clusterTLSFlags) client() (*coordinator.ClusterClient, error) {
	files := f.files
	files.CALabel, files.CertLabel, files.KeyLabel = "--cluster-ca", "--cluster-cert", "--cluster-key"
	tc, err := coordinator.ClusterClientTLS(files)
	if err != nil {
		return nil, err
	}
	return &coordinator.ClusterClient{TLS: tc}, nil
}

func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

const coordinatorUsage = `Usage:
  switchyard coordinator [--config FILE] [flags]      run a coordinator
  switchyard coordinator members [--http ADDR] [--cluster-ca FILE] [-o json]
  switchyard coordinator remove-peer --http ADDR[,ADDR...] --cluster-ca FILE --cluster-cert FILE --cluster-key FILE ID
  switchyard coordinator raise-epoch --http ADDR[,ADDR...] --cluster-ca FILE --cluster-cert FILE --cluster-key FILE --reason TEXT
`

// stringList is a repeatable flag.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l = append(*l, p)
		}
	}
	return nil
}

type clusterTLSFile struct {
	CA   string `yaml:"ca"`
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

// coordinatorFile is the coordinator's config file; flags given on the
// command line override it.
type coordinatorFile struct {
	NodeID   string `yaml:"nodeId"`
	DataDir  string `yaml:"dataDir"`
	RaftAddr string `yaml:"raftAddr"`
	// RaftAdvertise is the address the other coordinators dial.
	RaftAdvertise string `yaml:"raftAdvertise"`
	HTTPAddr      string `yaml:"httpAddr"`
	NATS          string `yaml:"nats"`
	// NATSClient is the coordinator's NATS creds and TLS files.
	NATSClient bus.Security `yaml:"natsClient"`
	// Cluster is the cluster CA and this coordinator's certificate, for
	// mutual TLS between coordinators.
	Cluster         clusterTLSFile `yaml:"clusterTLS"`
	BootstrapExpect *int           `yaml:"bootstrapExpect"`
	RetryJoin       []string       `yaml:"retryJoin"`
	Replicas        int            `yaml:"replicas"`
	// ForgetNodesAfter is how long a silent node stays in the fleet view.
	ForgetNodesAfter time.Duration `yaml:"forgetNodesAfter"`
	// ForgetFinishedAfter is how long a finished rollout or ended drill
	// stays in the replicated state; 0 keeps everything.
	ForgetFinishedAfter *time.Duration `yaml:"forgetFinishedAfter"`
	// Signing is the key that signs published documents.
	Signing signingFlags `yaml:"signing"`
	// ViewerTokenFile holds the token the read API and dashboard require.
	ViewerTokenFile string `yaml:"viewerTokenFile"`
	// AclBootstrap is the first admin of a new cluster.
	AclBootstrap struct {
		Admin string `yaml:"admin"`
		Name  string `yaml:"name"`
	} `yaml:"aclBootstrap"`
	// Notifications are the receivers of phase changes, rollbacks and
	// drill reports.
	Notifications []notify.Target `yaml:"notifications"`
	// WebhookNetworks are the only networks rollout webhooks may reach.
	WebhookNetworks []string `yaml:"webhookNetworks"`
}

// loadCoordinatorFile fills cfg and signing from the file at path; it
// reports whether the file gives bootstrapExpect, whose 0 (only join) is a
// value, not an absence.
func loadCoordinatorFile(path string, cfg *coordinator.Config, signing *signingFlags) (bootstrapExpectSet bool, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return false, fmt.Errorf("--config: %w", err)
	}
	var f coordinatorFile
	// Keys are named by their path and what they want, as in the agent's
	// config; a file of comments only leaves everything to the flags.
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		return false, fmt.Errorf("--config %s: %v", path, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	if len(doc.Content) > 0 {
		if err := dec.Decode(new(yaml.Node)); !errors.Is(err, io.EOF) {
			return false, fmt.Errorf("--config %s: want one YAML document, found more", path)
		}
		if err := strictyaml.DecodeNode(doc.Content[0], &f, ""); err != nil {
			return false, fmt.Errorf("--config %s:\n%w", path, err)
		}
	}
	if f.NATSClient.JetStreamDomain != "" {
		// Only agents reach the streams through a leaf server outside
		// their domain; a coordinator connects to servers that hold them.
		return false, fmt.Errorf("--config %s: natsClient.jetstreamDomain: not used by a coordinator, which connects to the NATS servers holding JetStream; remove it", path)
	}
	set := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	set(&cfg.NodeID, f.NodeID)
	set(&cfg.DataDir, f.DataDir)
	set(&cfg.RaftAddr, f.RaftAddr)
	set(&cfg.RaftAdvertise, f.RaftAdvertise)
	set(&cfg.HTTPAddr, f.HTTPAddr)
	set(&cfg.NATSURL, f.NATS)
	set(&cfg.NATS.Creds, f.NATSClient.Creds)
	set(&cfg.NATS.CA, f.NATSClient.CA)
	set(&cfg.NATS.Cert, f.NATSClient.Cert)
	set(&cfg.NATS.Key, f.NATSClient.Key)
	set(&cfg.ClusterTLS.CA, f.Cluster.CA)
	set(&cfg.ClusterTLS.Cert, f.Cluster.Cert)
	set(&cfg.ClusterTLS.Key, f.Cluster.Key)
	set(&cfg.ViewerTokenFile, f.ViewerTokenFile)
	if f.BootstrapExpect != nil {
		cfg.BootstrapExpect = *f.BootstrapExpect
	}
	if len(f.RetryJoin) > 0 {
		cfg.RetryJoin = f.RetryJoin
	}
	*signing = f.Signing
	cfg.Replicas = f.Replicas
	cfg.ForgetAfter = f.ForgetNodesAfter
	if f.ForgetFinishedAfter != nil {
		if *f.ForgetFinishedAfter < 0 {
			return false, fmt.Errorf("--config %s: forgetFinishedAfter: %s is negative; want a duration such as 2160h (the default) or 0 to keep everything", path, *f.ForgetFinishedAfter)
		}
		cfg.ForgetFinishedAfter = finishedRetention(*f.ForgetFinishedAfter)
	}
	cfg.AclBootstrap = coordinator.AclBootstrap{Key: f.AclBootstrap.Admin, Name: f.AclBootstrap.Name}
	cfg.Notify = f.Notifications
	if cfg.WebhookNetworks, err = hooks.ParseNetworks("webhookNetworks", f.WebhookNetworks); err != nil {
		return false, fmt.Errorf("--config %s: %w", path, err)
	}
	return f.BootstrapExpect != nil, nil
}

func runCoordinator(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "members":
			return coordinatorMembers(ctx, args[1:], stdout, stderr)
		case "remove-peer":
			return coordinatorRemovePeer(ctx, args[1:], stdout, stderr)
		case "raise-epoch":
			return coordinatorRaiseEpoch(ctx, args[1:], stdout, stderr)
		case "help":
			fmt.Fprint(stdout, coordinatorUsage)
			return nil
		}
	}
	fs := newFlags("coordinator", stderr)
	var (
		cfg       coordinator.Config
		logf      logFlags
		retryJoin stringList
		natsSec   natsSecurityFlags
		cluster   clusterTLSFlags
		signing   signingFlags
		trusted   stringList
		aclAdmin  string
		aclName   string
		notifyF   notifyFlags
		webhookNs stringList
	)
	configFile := fs.String("config", "", "YAML config file with the same keys (nodeId, dataDir, raftAddr, raftAdvertise, httpAddr, nats, natsClient {creds, ca, cert, key}, clusterTLS {ca, cert, key}, bootstrapExpect, retryJoin, replicas, forgetNodesAfter, forgetFinishedAfter, signing {key, trusted, validity}, viewerTokenFile, aclBootstrap {admin, name}, notifications [{name, url, format, events, timeout, retries}], webhookNetworks); flags override it")
	fs.StringVar(&cfg.NodeID, "node-id", "", "this coordinator's id in the cluster (required)")
	fs.StringVar(&cfg.DataDir, "data-dir", "", "directory for the Raft log and snapshots (required)")
	fs.StringVar(&cfg.RaftAddr, "raft-addr", "127.0.0.1:7000", "address Raft listens on and, without --raft-advertise, other coordinators reach it at")
	fs.StringVar(&cfg.RaftAdvertise, "raft-advertise", "", "address other coordinators dial to reach this one's Raft, when not --raft-addr (a NAT or TCP proxy in front of it); with --cluster-cert the certificate must name its host")
	fs.StringVar(&cfg.HTTPAddr, "http-addr", "127.0.0.1:7070", "address for /metrics, /healthz, the read API and cluster joins")
	fs.StringVar(&cfg.PprofAddr, "pprof-addr", envOr("SWITCHYARD_PPROF_ADDR", ""), "loopback address (e.g. 127.0.0.1:6060) serving Go's profiling endpoints /debug/pprof/; off when empty, the default (env SWITCHYARD_PPROF_ADDR)")
	fs.StringVar(&cfg.NATSURL, "nats", envOr("SWITCHYARD_NATS", "nats://127.0.0.1:4222"), "NATS URL (env SWITCHYARD_NATS)")
	fs.IntVar(&cfg.BootstrapExpect, "bootstrap-expect", 1, "coordinators to wait for before bootstrapping a new cluster; 0 only joins")
	fs.Var(&retryJoin, "retry-join", "HTTP address of another coordinator (repeatable, or comma-separated)")
	natsSec.register(fs)
	cluster.register(fs)
	notifyF.register(fs)
	fs.StringVar(&signing.Key, "signing-key", envOr("SWITCHYARD_SIGNING_KEY", ""), "private key file that signs every published document (env SWITCHYARD_SIGNING_KEY; create with `switchyard keys generate`)")
	fs.Var(&trusted, "trusted-key", "another public key (ed25519:... or a .pub file) whose documents in the buckets count during a key rotation (repeatable)")
	fs.DurationVar(&signing.Validity, "signing-validity", 0, "how long a signed document stays current on the agents; re-signed when half is left (default 1h)")
	fs.StringVar(&cfg.ViewerTokenFile, "viewer-token-file", "", "file holding a token the read API and the dashboard then require (Authorization: Bearer, or /ui/?token= once in a browser); a client certificate from the cluster CA also passes. Empty: reads are open to whoever reaches --http-addr")
	fs.DurationVar(&cfg.ForgetAfter, "forget-nodes-after", coordinator.DefaultForgetAfter, "how long a silent node stays in the fleet view, counted stale, before it is forgotten (nodes that left for good: scaled down, replaced under a new name); at least the stale period")
	forgetFinished := fs.Duration("forget-finished-after", coordinator.DefaultForgetFinishedAfter, "how long a finished rollout or ended drill stays in the replicated state with its spec and history (the newest 20 of each service always do); then only its name stays taken and the audit trail keeps what it did. 0 keeps everything")
	fs.IntVar(&cfg.Replicas, "replicas", 0, "replicas of the intent stream and the buckets (1..5); 0 matches the NATS cluster: 3 on 3 or more servers, else 1. Never lowers what a stream has")
	fs.StringVar(&aclAdmin, "acl-bootstrap-admin", envOr("SWITCHYARD_ACL_BOOTSTRAP_ADMIN", ""), "the first admin's key (U… nkey, ed25519:…, or a creds/.pub/key file), committed once when the cluster has no admin; from then on roles change only by signed intents (env SWITCHYARD_ACL_BOOTSTRAP_ADMIN)")
	fs.StringVar(&aclName, "acl-bootstrap-name", "admin", "the first admin's name, shown in history and audit")
	fs.Var(&webhookNs, "webhook-networks", "the only networks (CIDR, e.g. 10.20.0.0/16, or an address; repeatable, or comma-separated) rollout webhooks may connect to, checked on the address a name resolves to; a rollout naming a webhook by an address outside is refused. Default: any address but link-local ones, where cloud instance metadata answers")
	logf.register(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageErr(stderr, "switchyard coordinator: unexpected argument %q\n\n%s", fs.Arg(0), coordinatorUsage)
	}
	if *forgetFinished < 0 {
		return fmt.Errorf("--forget-finished-after: %s is negative; want a duration such as 2160h (the default) or 0 to keep everything", *forgetFinished)
	}
	cfg.ForgetFinishedAfter = finishedRetention(*forgetFinished)
	if *configFile != "" {
		// The file fills in what the command line did not set.
		var (
			fromFile    coordinator.Config
			signingFile signingFlags
		)
		bootstrapExpectSet, err := loadCoordinatorFile(*configFile, &fromFile, &signingFile)
		if err != nil {
			return err
		}
		given := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
		pick := func(name string, dst *string, v string) {
			if !given[name] && v != "" {
				*dst = v
			}
		}
		pick("node-id", &cfg.NodeID, fromFile.NodeID)
		pick("data-dir", &cfg.DataDir, fromFile.DataDir)
		pick("raft-addr", &cfg.RaftAddr, fromFile.RaftAddr)
		pick("raft-advertise", &cfg.RaftAdvertise, fromFile.RaftAdvertise)
		pick("http-addr", &cfg.HTTPAddr, fromFile.HTTPAddr)
		pick("nats", &cfg.NATSURL, fromFile.NATSURL)
		pick("nats-creds", &natsSec.sec.Creds, fromFile.NATS.Creds)
		pick("nats-ca", &natsSec.sec.CA, fromFile.NATS.CA)
		pick("nats-cert", &natsSec.sec.Cert, fromFile.NATS.Cert)
		pick("nats-key", &natsSec.sec.Key, fromFile.NATS.Key)
		pick("cluster-ca", &cluster.files.CA, fromFile.ClusterTLS.CA)
		pick("cluster-cert", &cluster.files.Cert, fromFile.ClusterTLS.Cert)
		pick("cluster-key", &cluster.files.Key, fromFile.ClusterTLS.Key)
		pick("viewer-token-file", &cfg.ViewerTokenFile, fromFile.ViewerTokenFile)
		if !given["bootstrap-expect"] && bootstrapExpectSet {
			cfg.BootstrapExpect = fromFile.BootstrapExpect
		}
		if !given["retry-join"] {
			retryJoin = fromFile.RetryJoin
		}
		pick("signing-key", &signing.Key, signingFile.Key)
		if !given["trusted-key"] {
			trusted = signingFile.Trusted
		}
		if !given["signing-validity"] {
			signing.Validity = signingFile.Validity
		}
		if !given["replicas"] {
			cfg.Replicas = fromFile.Replicas
		}
		if !given["forget-nodes-after"] {
			cfg.ForgetAfter = fromFile.ForgetAfter
		}
		if !given["forget-finished-after"] && fromFile.ForgetFinishedAfter != 0 {
			cfg.ForgetFinishedAfter = fromFile.ForgetFinishedAfter
		}
		pick("acl-bootstrap-admin", &aclAdmin, fromFile.AclBootstrap.Key)
		pick("acl-bootstrap-name", &aclName, fromFile.AclBootstrap.Name)
		if !given["notify"] && !given["notify-slack"] {
			cfg.Notify = fromFile.Notify
		}
		if !given["webhook-networks"] {
			cfg.WebhookNetworks = fromFile.WebhookNetworks
		}
	}
	if len(webhookNs) > 0 {
		nets, err := hooks.ParseNetworks("--webhook-networks", webhookNs)
		if err != nil {
			return err
		}
		cfg.WebhookNetworks = nets
	}
	if aclAdmin != "" {
		k, err := resolveKey(aclAdmin)
		if err != nil {
			return fmt.Errorf("--acl-bootstrap-admin: %w", err)
		}
		cfg.AclBootstrap = coordinator.AclBootstrap{Key: k, Name: aclName}
	}
	cfg.Notify = append(cfg.Notify, notifyF.targets()...)
	signing.Trusted = trusted
	sc, err := signing.load()
	if err != nil {
		return err
	}
	cfg.Signing = sc
	cfg.RetryJoin = retryJoin
	cfg.NATS = natsSec.sec
	cfg.ClusterTLS = cluster.files
	log, err := logf.logger(stderr)
	if err != nil {
		return usageErr(stderr, "switchyard coordinator: %v", err)
	}
	reg := newRegistry()
	cfg.Logger, cfg.Registerer, cfg.Gatherer = log, reg, reg
	srv, err := coordinator.New(cfg)
	if err != nil {
		return err
	}
	return srv.Run(ctx)
}

func coordinatorMembers(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("coordinator members", stderr)
	addr := fs.String("http", envOr("SWITCHYARD_HTTP", "127.0.0.1:7070"), "HTTP address of any coordinator (env SWITCHYARD_HTTP)")
	output := fs.String("o", "table", "output: table or json")
	var cluster clusterTLSFlags
	cluster.register(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if *output != "table" && *output != "json" {
		return usageErr(stderr, "-o %q: want table or json", *output)
	}
	client, err := cluster.client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	m, err := client.Members(ctx, *addr)
	if err != nil {
		return err
	}
	if *output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(m)
	}
	return printMembers(stdout, m)
}

// printMembers is the table of `coordinator members`.
func printMembers(stdout io.Writer, m *coordinator.Members) error {
	fmt.Fprintf(stdout, "Leader: %s   Term: %d   Last index: %d   Commit index: %d   Applied index: %d   (answered by %s, %s)\n",
		orDash(m.Leader), m.Term, m.LastIndex, m.CommitIndex, m.AppliedIndex, m.AnsweredBy, strings.ToLower(m.State))
	fmt.Fprintf(stdout, "Bus replicas: %d for new streams and buckets; now: %s\n", m.Replicas, streamReplicas(m.Streams))
	if line := busHealth(m.Bus); line != "" {
		fmt.Fprintln(stdout, line)
	}
	if m.RaftListen != "" {
		fmt.Fprintf(stdout, "Raft of %s: listens on %s, advertised to peers as %s\n", m.AnsweredBy, m.RaftListen, orDash(m.RaftAdvertise))
	}
	fmt.Fprintln(stdout)
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tRAFT ADDRESS\tSUFFRAGE\tROLE")
	unknown := false
	for _, mem := range m.Members {
		role := mem.Role
		switch {
		case role == "" && mem.Leader:
			role = "leader" // a coordinator from before roles
		case role == "":
			role = "follower"
		case role == "unknown":
			unknown = true
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", mem.ID, mem.RaftAddr, strings.ToLower(mem.Suffrage), role)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if unknown {
		if m.Leader == "" {
			fmt.Fprintf(stdout, "\n%s knows no leader: fewer than a quorum of the members above answer it, or they cannot reach each other. "+
				"Whether the others run is unknown to it; ask each with --http.\n", m.AnsweredBy)
		} else {
			fmt.Fprintf(stdout, "\n%s does not lead: only the leader (%s) knows which members answer; ask it with --http.\n", m.AnsweredBy, m.Leader)
		}
	}
	return nil
}

func coordinatorRemovePeer(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("coordinator remove-peer", stderr)
	var addrs stringList
	fs.Var(&addrs, "http", "HTTP address of a coordinator (repeatable); the leader among them removes the peer")
	var cluster clusterTLSFlags
	cluster.register(fs)
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || len(addrs) == 0 {
		return usageErr(stderr, "switchyard coordinator remove-peer: want --http ADDR and exactly one peer ID")
	}
	client, err := cluster.client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := client.RemovePeer(ctx, addrs, pos[0]); err != nil {
		return fmt.Errorf("remove %s: %w", pos[0], err)
	}
	fmt.Fprintf(stdout, "removed %s from the cluster\n", pos[0])
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// busHealth says whether every stream and bucket has a leader and all its
// replicas current, and otherwise what is wrong with each that does not;
// "" when the coordinator did not say (an older release).
func busHealth(streams map[string]bus.StreamHealth) string {
	if len(streams) == 0 {
		return ""
	}
	var bad []string
	for _, n := range slices.Sorted(maps.Keys(streams)) {
		h := streams[n]
		if d := h.Degraded(); d != "" {
			if h.Leader != "" {
				d = "led by " + h.Leader + ", " + d
			}
			bad = append(bad, n+": "+d)
		}
	}
	if len(bad) == 0 {
		return "Bus: every stream and bucket has a leader and all its replicas current"
	}
	return "Bus degraded: " + strings.Join(bad, "; ")
}

// streamReplicas renders the replica count of each stream, sorted by name.
func streamReplicas(streams map[string]int) string {
	if len(streams) == 0 {
		return "unknown (JetStream not reachable)"
	}
	names := make([]string, 0, len(streams))
	for n := range streams {
		names = append(names, n)
	}
	slices.Sort(names)
	parts := make([]string, len(names))
	for i, n := range names {
		if streams[n] == 0 {
			parts[i] = n + " not created yet"
			continue
		}
		parts[i] = fmt.Sprintf("%s=%d", n, streams[n])
	}
	return strings.Join(parts, " ")
}

// finishedRetention is the coordinator's ForgetFinishedAfter for the
// --forget-finished-after value d, whose 0 keeps everything.
func finishedRetention(d time.Duration) time.Duration {
	if d == 0 {
		return coordinator.KeepFinished
	}
	return d
}
