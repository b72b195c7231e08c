package bus

import (
	"fmt"
	"slices"
	"strings"
)

// Role is what a NATS identity may do on the bus. Each role's subjects are
// spelled here, beside the names they grant; bus/auth turns them into the
// permission template of a scoped signing key.
type Role string

// Roles of the bus. A user's name (its NATS JWT name) is substituted for
// NameTemplate when it connects, so one signing key serves every node.
const (
	// RoleAgent is one edge node: read the desired-state and drill
	// documents, publish its own telemetry and status.
	RoleAgent Role = "agent"
	// RoleCoordinator runs the control plane: JetStream administration,
	// writes to the buckets, intents and queries, telemetry and status of
	// every node.
	RoleCoordinator Role = "coordinator"
	// RoleOperator is a person or pipeline: publish intents and queries,
	// and read (never write) the desired-state bucket and the audit stream.
	RoleOperator Role = "operator"
	// RoleViewer asks queries and reads the audit stream.
	RoleViewer Role = "viewer"
)

// Roles lists every role, in the order the CLI shows them.
var Roles = []Role{RoleAgent, RoleCoordinator, RoleOperator, RoleViewer}

// ParseRole checks a role name.
func ParseRole(s string) (Role, error) {
	for _, r := range Roles {
		if string(r) == s {
			return r, nil
		}
	}
	return "", fmt.Errorf("role %q: want agent, coordinator, operator or viewer", s)
}

// NameTemplate is replaced by the connecting user's name in a permission
// template (NATS's own template syntax).
const NameTemplate = "{{name()}}"

// inboxRoot prefixes every client's inboxes. Each identity receives replies
// only under its own name (see InboxPrefix), so no one can read another's
// answers.
const inboxRoot = "_INBOX"

// IsInbox says whether subject is under an inbox: the only subjects a
// coordinator sends answers to (query answers, intent results). A request
// names the subject its answer goes to, and a coordinator may publish
// where no one else may (the buckets, the audit stream, the intents, the
// beacon); answering a request that named one of those would let anyone
// who may ask write there.
func IsInbox(subject string) bool { return strings.HasPrefix(subject, inboxRoot+".") }

// InboxPrefix is the inbox prefix of the identity called name; bus.Connect
// sets it from the credentials, and the permission template grants
// subscriptions below it.
func InboxPrefix(name string) string { return inboxRoot + "." + name }

// Permissions are the subjects a role may publish to and subscribe to.
type Permissions struct {
	Publish   []string
	Subscribe []string
	// Responses allows replying to requests received (query answers).
	Responses bool
}

// jsAPI is the JetStream API prefix.
const jsAPI = "$JS.API."

// jsDomainAPI is the JetStream API prefix of any domain.
const jsDomainAPI = "$JS.*.API."

// kvStream is the stream behind a KV bucket.
func kvStream(bucket string) string { return "KV_" + bucket }

// kvGet are the JetStream API subjects a KV Get needs on one bucket, and
// nothing else: the bucket's stream info (opening it), direct and classic
// message get. No consumers: a node's credentials cannot add consumers to
// the stream every rollout and rollback writes to (each one is more work
// for the servers on every write).
func kvGet(bucket string) []string { return streamRead(kvStream(bucket)) }

// RolePermissions returns what role may do; NameTemplate stands for the
// user's own name.
func RolePermissions(role Role) (Permissions, error) {
	inbox := InboxPrefix(NameTemplate) + ".>"
	switch role {
	case RoleAgent:
		pub := []string{
			telemetryPrefix + ".*." + NameTemplate,
			StatusSubject(NameTemplate),
		}
		// Documents are pushed on their keys' subjects and read back by
		// key or in batches (ReadAll), never through a consumer: a
		// consumer's deliver subject is not checked against its creator's
		// permissions, so an agent allowed one could make the servers
		// publish on any subject of the account.
		pub = append(pub, kvGet(DesiredBucket)...)
		pub = append(pub, kvGet(DrillsBucket)...)
		// Behind a leaf server, where $KV.… subjects never arrive, an
		// agent follows the copies the leader publishes on the push
		// subjects instead.
		return Permissions{
			Publish: pub,
			Subscribe: []string{"$KV." + DesiredBucket + ".>", DrillsAll(),
				DesiredPushAll(), DrillsPushAll(), FleetAll(), inbox},
		}, nil
	case RoleCoordinator:
		// A coordinator writes the documents every node obeys; denying
		// it intents or queries would protect nothing, and tools that
		// watch the whole bus (tests, debugging) run with its rights.
		return Permissions{
			Publish: []string{
				IntentSubjects(),
				queryPrefix + ".>",
				jsAPI + ">",
				"$KV." + DesiredBucket + ".>",
				"$KV." + DrillsBucket + ".>",
				// Every document written goes out again on its push
				// subject, for agents behind a leaf server.
				DesiredPushAll(), DrillsPushAll(),
				// The leader exports audit records.
				AuditSubjects(),
				// A coordinator that starts asks the fleet for its status;
				// the leader says that it leads.
				FleetAll(),
				"$JS.ACK." + IntentStream + ".>",
				"$JS.FC.>",
				// Intent results go to the sender's inbox, named in a header.
				inboxRoot + ".>",
			},
			Subscribe: []string{
				TelemetryAll(), StatusAll(), queryPrefix + ".>", inbox,
				"$KV." + DesiredBucket + ".>", DrillsAll(),
			},
			Responses: true,
		}, nil
	case RoleOperator:
		// Reading the desired-state and drills buckets lets a command that
		// changed them (a rollout's step, the kill switch) say whether the
		// change reached the bus; reading the audit stream lets anyone who
		// acts check the record.
		pub := append([]string{IntentSubjects(), queryPrefix + ".>"}, kvGet(DesiredBucket)...)
		pub = append(pub, kvGet(DrillsBucket)...)
		return Permissions{
			Publish:   append(pub, streamRead(AuditStream)...),
			Subscribe: []string{inbox},
		}, nil
	case RoleViewer:
		return Permissions{
			Publish:   append([]string{queryPrefix + ".>"}, streamRead(AuditStream)...),
			Subscribe: []string{inbox},
		}, nil
	}
	return Permissions{}, fmt.Errorf("role %q: want agent, coordinator, operator or viewer", role)
}

// PoPRoles are the roles whose identities connect at a PoP, to its leaf
// server (docs/operations.md, "How a PoP attaches"): its agents, and
// operators and viewers reaching the coordinators through the leaf.
// Coordinators connect to the hub.
var PoPRoles = []Role{RoleAgent, RoleOperator, RoleViewer}

// nodeWildcard stands for any identity's name where a role's template
// names the user's own.
const nodeWildcard = "*"

// LeafPermissions are what a PoP's leaf server may carry between the hub
// and the identities connected to it: what the PoPRoles may publish (leaf
// to hub) and subscribe to (hub to leaf), with any name in place of the
// user's own, for a leaf carries every node of its PoP. Each identity is
// held to its own role by the leaf server it connects to; these hold the
// leaf connection itself, so that its credentials, copied off a PoP's
// host, cannot speak as the coordinators (the beacon, the status ask,
// audit records, replies), write, delete or purge streams and buckets,
// add consumers, or listen to the fleet's telemetry and queries. The
// servers route the leaf connection's own internal subjects (loop
// detection, service replies, JetStream acknowledgements) without these.
func LeafPermissions() Permissions {
	var out Permissions
	for _, role := range PoPRoles {
		p, err := RolePermissions(role)
		if err != nil {
			panic(err) // every PoPRoles entry is a role
		}
		out.Publish = appendNew(out.Publish, p.Publish)
		out.Subscribe = appendNew(out.Subscribe, p.Subscribe)
	}
	return out
}

// appendNew appends to list each subject of add not in it yet, with the
// user's own name replaced by any.
func appendNew(list, add []string) []string {
	for _, s := range add {
		s = strings.ReplaceAll(s, NameTemplate, nodeWildcard)
		if !slices.Contains(list, s) {
			list = append(list, s)
		}
	}
	return list
}
