package coordinator

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/coordinator/acl"
	"github.com/switchyard/switchyard/coordinator/audit"
	"github.com/switchyard/switchyard/coordinator/fsm"
	"github.com/switchyard/switchyard/coordinator/state"
	"github.com/switchyard/switchyard/internal/spec"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

func init() { state.SetKeyCheck(bus.ValidPrincipalKey) }

// AclBootstrap names the first admin of a new cluster. The leader commits it
// once, when the replicated state has no admin; afterwards roles change only
// through signed, audited intents.
type AclBootstrap struct {
	// Key is the admin's public key: a user nkey (U…) or ed25519:….
	Key string
	// Name is what history and audit show for the admin.
	Name string
}

func (b AclBootstrap) check() error {
	if b.Key == "" {
		return nil
	}
	if err := bus.ValidPrincipalKey("coordinator: --acl-bootstrap-admin", b.Key); err != nil {
		return err
	}
	if b.Name == "" {
		return fmt.Errorf("coordinator: --acl-bootstrap-name: required with --acl-bootstrap-admin")
	}
	return nil
}

// bootstrapAcl commits the configured first admin when the state has none.
// It runs before the leader reads intents, so no intent of a new cluster is
// taken without roles once an admin is configured.
func (s *Server) bootstrapAcl(ctx context.Context) {
	b := s.cfg.AclBootstrap
	if b.Key == "" || s.fsm.State().Enforcing() {
		return
	}
	entry := &sv1.AclBootstrapEntry{Key: b.Key, Name: b.Name, StampedAt: timestamppb.New(s.cfg.Clock.Now())}
	if _, _, err := s.raftApply(fsm.AclBootstrapType, entry); err != nil {
		s.log.Warn("bootstrapping the first admin", "err", err)
		return
	}
	s.log.Info("first admin bootstrapped", "name", b.Name, "key", b.Key)
}

// exportAudit runs the audit export while this node leads.
func (s *Server) exportAudit(ctx context.Context) {
	x := &audit.Exporter{
		JS: s.js, Source: s.auditSource(), Raft: auditRaft{s}, Replicas: s.replicas,
		Log: s.log.With("routine", "audit"), Metrics: s.auditMetrics, Wake: s.auditWake,
	}
	x.Run(ctx)
}

// auditSource reads the chain from whatever state the FSM holds now (a
// restore replaces it).
func (s *Server) auditSource() audit.Source { return stateSource{s} }

type stateSource struct{ s *Server }

func (a stateSource) AuditHead() *sv1.AuditHead { return a.s.fsm.State().AuditHead() }
func (a stateSource) AuditEntries(after uint64, limit int) []*sv1.AuditEntry {
	return a.s.fsm.State().AuditEntries(after, limit)
}

type auditRaft struct{ s *Server }

var _ audit.Raft = auditRaft{}

func (a auditRaft) AuditExported(through uint64) error {
	_, _, err := a.s.raftApply(fsm.AuditExportedType, &sv1.AuditExportedEntry{Through: through})
	return err
}

// wakeAudit tells the exporter that records were added; it never blocks.
func (s *Server) wakeAudit() {
	select {
	case s.auditWake <- struct{}{}:
	default:
	}
}

// Audit answers with this coordinator's chain head and the records it holds.
func (s *Server) Audit(*sv1.AuditQuery) (*sv1.AuditAnswer, error) {
	st := s.fsm.State()
	return &sv1.AuditAnswer{Head: st.AuditHead(), Entries: st.AuditEntries(0, 0)}, nil
}

// Acl answers with the roles and policy.
func (s *Server) Acl(*sv1.AclQuery) (*sv1.AclState, error) {
	return s.fsm.State().Acl(), nil
}

// refuseBeforeCommit records an intent the leader will not commit, so that
// the refusal is in the audit, or counts it for the next summary when more
// come than the budget records one by one (refusals.go). It reports whether
// the refusal is recorded or counted; if not, the intent is left for the
// next leader.
func (s *Server) refuseBeforeCommit(in *sv1.Intent, opened bus.OpenedIntent, action, subject, code, reason string) bool {
	if !s.refusals.take(code, opened.Signer, time.Now()) {
		s.metrics.refusalsNotRecorded.WithLabelValues(code).Inc()
		s.log.Debug("intent refused before commit; counted for the audit's summary", "subject", subject, "intent", in.GetId(), "code", code, "err", reason)
		return true
	}
	s.log.Warn("intent refused before commit", "subject", subject, "intent", in.GetId(), "code", code, "err", reason)
	e := &sv1.AuditRefusalEntry{
		IntentId: in.GetId(), Key: opened.Signer, Action: action, Code: code, Reason: reason, Subject: subject,
		StampedAt: timestamppb.New(s.cfg.Clock.Now()), IntentSha256: opened.Sha256,
	}
	e.Rollout, e.Service, e.Drill = s.fsm.State().Named(in)
	if _, _, err := s.raftApply(fsm.AuditRefusalType, e); err != nil {
		s.log.Warn("recording a refused intent; leaving it to the next leader", "intent", in.GetId(), "err", err)
		return false
	}
	s.wakeAudit()
	return true
}

// Signed intents must be fresh: a signature older than SignedIntentMaxAge
// (or dated further ahead than signedIntentMaxSkew) is refused, so a
// captured intent cannot be replayed once its id is forgotten.
const (
	// SignedIntentMaxAge is how old a signed intent may be when a leader
	// takes it; an intent waiting on the stream for a leader is applied
	// only while younger.
	SignedIntentMaxAge  = time.Hour
	signedIntentMaxSkew = 5 * time.Minute
)

// auditBacklogLimit is how many audit records may wait for the export
// before the leader refuses new intents it could not get onto the stream;
// aborts and the drill kill switch are never refused for it, nor are the
// coordinators' own decisions (rollbacks) ever held back.
const auditBacklogLimit = 10000

// CodeAuditUnavailable refuses an intent while the audit export is too far
// behind.
const CodeAuditUnavailable = "audit_unavailable"

// checkSigned checks, before commit, what the roles need of a signed
// intent: a key some principal holds and a fresh signature. It returns the
// refusal code with the error.
func (s *Server) checkSigned(in *sv1.Intent, signer string) (string, error) {
	st := s.fsm.State()
	if signer == "" || !st.Enforcing() {
		return "", nil
	}
	if acl.Find(st.Acl(), signer) == nil {
		return state.CodeUnknownKey, fmt.Errorf("%s: %w: no principal holds key %s; an admin enrolls it with `switchyard acl grant --key %s --name NAME --role ROLE`",
			acl.Action(in), acl.ErrUnknownKey, signer, signer)
	}
	now := s.cfg.Clock.Now()
	if in.GetCreatedAt() == nil {
		return state.CodeInvalid, fmt.Errorf("%w: intent.created_at: required in a signed intent", spec.ErrInvalid)
	}
	at := in.GetCreatedAt().AsTime()
	if at.Before(now.Add(-SignedIntentMaxAge)) || at.After(now.Add(signedIntentMaxSkew)) {
		return state.CodeInvalid, fmt.Errorf("%w: intent.created_at: %s is not within %s before or %s after the leader's clock (%s); sign it again",
			spec.ErrInvalid, at.Format(time.RFC3339), SignedIntentMaxAge, signedIntentMaxSkew, now.Format(time.RFC3339))
	}
	if h := st.AuditHead(); h.GetSeq()-h.GetExported() > auditBacklogLimit && !safetyAction(in) {
		return CodeAuditUnavailable, fmt.Errorf("%s: refused: %d audit records wait for the %s stream (limit %d); only aborts and stop-all are taken until the export catches up",
			acl.Action(in), h.GetSeq()-h.GetExported(), bus.AuditStream, auditBacklogLimit)
	}
	return "", nil
}

// safetyAction is an intent that only makes the fleet safer.
func safetyAction(in *sv1.Intent) bool {
	return in.GetAbortRollout() != nil || in.GetAbortDrill() != nil || in.GetStopAllDrills() != nil
}
