// Package bus is Switchyard's contract with NATS: connections, the embedded
// server, and every subject, stream and bucket name, spelled here and nowhere
// else.
package bus

import (
	"strings"
	"time"
)

// Streams, buckets and subjects of the bus contract (see DESIGN.md, "Bus
// contract"). Nothing outside this package spells these strings.
const (
	// IntentStream holds operator and pipeline intents until the leader has
	// committed them.
	IntentStream = "SWITCHYARD_INTENTS"
	// intentPrefix is the subject prefix of intents; the last token names the
	// kind of intent so that NATS permissions can tell them apart.
	intentPrefix = "switchyard.intent"
	// IntentConsumer is the one durable consumer of the intent stream, shared
	// by whichever coordinator leads.
	IntentConsumer = "coordinator"
	// DesiredBucket is the KV bucket with one DesiredState per service.
	DesiredBucket = "switchyard_desired"
	// DrillsBucket is the KV bucket with one DrillDocument per drill.
	DrillsBucket = "switchyard_drills"
	// telemetryPrefix: switchyard.telemetry.<service>.<node>.
	telemetryPrefix = "switchyard.telemetry"
	// statusPrefix: switchyard.status.<node>.
	statusPrefix = "switchyard.status"
	// BeaconSubject is where the leading coordinator says, every
	// BeaconInterval, that it leads: an agent that stops hearing it while
	// its own NATS connection stays up (a PoP's leaf server cut off from
	// the hub) knows the coordinators cannot see or steer it.
	BeaconSubject = fleetPrefix + ".beacon"
	// StatusAskSubject is where a coordinator that has just started asks
	// every agent for its status, so that it knows the fleet within a
	// status window rather than a heartbeat. Outside switchyard.status.*,
	// which names nodes.
	StatusAskSubject = fleetPrefix + ".ask"
	// fleetPrefix: switchyard.fleet.<what>, what the coordinators say to
	// every agent (one subscription an agent).
	fleetPrefix = "switchyard.fleet"
	// desiredPushPrefix: switchyard.desired.<service>, where the leader
	// publishes each desired-state document it has written to the bucket,
	// the same signed bytes, for agents behind a leaf server: a KV put's own
	// subject ($KV.…) never crosses a leaf connection.
	desiredPushPrefix = "switchyard.desired"
	// drillsPushPrefix: switchyard.drills.<drill>, the same for drill
	// documents.
	drillsPushPrefix = "switchyard.drills"
	// queryPrefix: switchyard.query.<what>, served by every coordinator in a
	// queue group from its local replica.
	queryPrefix = "switchyard.query"
	// QueryQueue is the queue group coordinators answer queries in.
	QueryQueue = "coordinators"

	// ReplyHeader carries the subject an intent's result is sent to. A
	// JetStream publish uses the message's own reply subject for the stream
	// acknowledgement, so the sender names a second one here.
	ReplyHeader = "Switchyard-Reply"
	// MsgIDHeader is the NATS header JetStream deduplicates on.
	MsgIDHeader = "Nats-Msg-Id"

	// KVOperationHeader marks a KV delete or purge on a key's subject; a
	// plain put has none. nats.go does not export these names.
	KVOperationHeader = "KV-Operation"
	KVOperationDelete = "DEL"
	KVOperationPurge  = "PURGE"
)

// StalePeriod is how long the coordinators wait for a node's status before
// they count it stale (rollouts stop waiting for it). An agent's heartbeat
// must be well inside it.
const StalePeriod = 15 * time.Second

// BeaconInterval is how often the leading coordinator publishes on
// BeaconSubject.
const BeaconInterval = 2 * time.Second

// Intent kinds, the last token of an intent subject.
const (
	IntentKindRollout = "rollout"
	// IntentKindChaos carries drills, so NATS permissions can give chaos
	// its own role.
	IntentKindChaos = "chaos"
	// IntentKindAcl carries changes of roles and policy.
	IntentKindAcl = "acl"
)

// Query names, the last token of a query subject.
const (
	QueryRollouts = "rollouts"
	QueryIntent   = "intent"
	QueryFleet    = "fleet"
	QueryDrills   = "drills"
	// QueryFleetStatus answers the fleet by service, wave and node.
	QueryFleetStatus = "fleetstatus"
	// QuerySeries answers one rollout's per-backend telemetry series.
	QuerySeries = "series"
	// QueryAudit answers with a coordinator's audit chain head and the
	// records it holds.
	QueryAudit = "audit"
	// QueryAcl answers with the roles and policy.
	QueryAcl = "acl"
	// QueryCoordinators is asked of every coordinator at once (Gather):
	// each says what it is and which later kinds of Raft entry it
	// applies.
	QueryCoordinators = "coordinators"
)

// IntentSubjects is the filter of the intent stream.
func IntentSubjects() string { return intentPrefix + ".>" }

// IntentSubject is where intents of one kind are published.
func IntentSubject(kind string) string { return intentPrefix + "." + kind }

// DesiredKeySubject is the core subject a KV put of the service's desired
// state is published on; agents connected to the hub subscribe to it for
// push delivery (behind a leaf server, DesiredPushSubject).
func DesiredKeySubject(service string) string {
	return "$KV." + DesiredBucket + "." + service
}

// DrillKeySubject is the core subject a KV put of a drill is published on.
func DrillKeySubject(drill string) string { return "$KV." + DrillsBucket + "." + drill }

// DrillsAll matches every drill's key subject; agents follow all drills
// with one subscription and decide themselves whether they are targets.
func DrillsAll() string { return "$KV." + DrillsBucket + ".>" }

// DesiredPushSubject is the core subject the leader publishes a service's
// desired-state document on once the bucket holds it, the same signed bytes
// as the KV put. NATS servers never carry $KV.… subjects over a leaf
// connection, so agents behind a leaf server (those that name a JetStream
// domain) follow this subject instead of DesiredKeySubject.
func DesiredPushSubject(service string) string { return desiredPushPrefix + "." + service }

// DrillPushSubject is DesiredPushSubject for a drill's document.
func DrillPushSubject(drill string) string { return drillsPushPrefix + "." + drill }

// DesiredPushAll matches every DesiredPushSubject.
func DesiredPushAll() string { return desiredPushPrefix + ".>" }

// DrillsPushAll matches every DrillPushSubject; agents behind a leaf server
// follow all drills with it.
func DrillsPushAll() string { return drillsPushPrefix + ".>" }

// TelemetrySubject is where a node publishes HealthReports for a service.
func TelemetrySubject(service, node string) string {
	return telemetryPrefix + "." + service + "." + node
}

// TelemetryService is the service a TelemetrySubject names; ok is false
// for any other subject. It reads the subject without decoding the report,
// so load shed before decoding is still counted against its service.
func TelemetryService(subject string) (service string, ok bool) {
	rest, found := strings.CutPrefix(subject, telemetryPrefix+".")
	if !found {
		return "", false
	}
	service, node, found := strings.Cut(rest, ".")
	if !found || service == "" || node == "" {
		return "", false
	}
	return service, true
}

// IsTelemetrySubject reports whether subject is TelemetrySubject(service,
// node): the subject an agent's credentials let only that node publish on.
// It compares in place, without building the subject.
func IsTelemetrySubject(subject, service, node string) bool {
	p := len(telemetryPrefix)
	if service == "" || node == "" || len(subject) != p+1+len(service)+1+len(node) {
		return false
	}
	return subject[:p] == telemetryPrefix && subject[p] == '.' &&
		subject[p+1:p+1+len(service)] == service && subject[p+1+len(service)] == '.' &&
		subject[len(subject)-len(node):] == node
}

// TelemetryAll matches every HealthReport.
func TelemetryAll() string { return telemetryPrefix + ".>" }

// StatusSubject is where a node publishes its AgentStatus.
func StatusSubject(node string) string { return statusPrefix + "." + node }

// FleetAll matches what the coordinators say to every agent: the status
// ask and the leader's beacon.
func FleetAll() string { return fleetPrefix + ".*" }

// StatusAll matches every AgentStatus.
func StatusAll() string { return statusPrefix + ".*" }

// QuerySubject is the request subject of one read query.
func QuerySubject(name string) string { return queryPrefix + "." + name }

// Read consistency of queries: a request with StaleHeader set may be
// answered by any coordinator from its own replica, and the answer then
// carries StaleHeader too; otherwise only a coordinator that has verified it
// leads answers, and the others decline with NotCurrentHeader so the client
// asks again (the queue group hands the next request to another member).
const (
	StaleHeader      = "Switchyard-Stale"
	NotCurrentHeader = "Switchyard-Not-Current"
)
