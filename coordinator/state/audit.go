package state

import (
	"fmt"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/coordinator/acl"
	"github.com/switchyard/switchyard/coordinator/audit"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// AuditKeep is how many records the state keeps at least: every record not
// yet exported, and exported ones while fewer than AuditKeep are held, so
// `audit verify` can compare a coordinator's tail with the stream.
const AuditKeep = 1024

// appendAudit seals rec onto the chain. The caller holds the lock.
func (s *State) appendAudit(rec *sv1.AuditRecord) {
	rec.Seq = s.auditHead.GetSeq() + 1
	e, err := audit.Seal(s.auditHead.GetHash(), rec)
	if err != nil {
		// A record built from committed fields always encodes; a replica
		// that cannot must not diverge silently.
		panic(fmt.Sprintf("audit record %d: %v", rec.GetSeq(), err))
	}
	s.audit = append(s.audit, e)
	s.auditHead = &sv1.AuditHead{Seq: rec.GetSeq(), Hash: e.GetHash(), Exported: s.auditHead.GetExported()}
	s.pruneAudit()
}

// pruneAudit drops exported records beyond the AuditKeep newest.
func (s *State) pruneAudit() {
	exported := s.auditHead.GetExported()
	drop := 0
	for drop < len(s.audit) && len(s.audit)-drop > AuditKeep {
		if s.audit[drop] == nil || seqOf(s.audit[drop]) > exported {
			break
		}
		drop++
	}
	if drop > 0 {
		s.audit = append([]*sv1.AuditEntry(nil), s.audit[drop:]...)
	}
}

// seqOf is the sequence of a record sealed by this state.
func seqOf(e *sv1.AuditEntry) uint64 {
	var rec sv1.AuditRecord
	if err := proto.Unmarshal(e.GetRecord(), &rec); err != nil {
		return 0
	}
	return rec.GetSeq()
}

// auditIntent records an applied or refused intent.
func (s *State) auditIntent(index uint64, e *sv1.IntentEntry, who actor, res *sv1.IntentResult) {
	in := e.GetIntent()
	rec := &sv1.AuditRecord{
		Index: index, At: e.GetStampedAt(), Kind: "intent", Actor: who.name, ActorKey: who.key,
		IntentId: in.GetId(), Action: acl.Action(in), Rollout: res.GetRolloutId(), Accepted: res.GetAccepted(),
		Code: res.GetCode(), Message: res.GetError(), IntentSha256: e.GetIntentSha256(),
	}
	if rec.Rollout == "" {
		rec.Rollout = rolloutOf(in)
	}
	if e.GetRules() >= 4 && (in.GetRunDrill() != nil || in.GetAbortDrill() != nil) {
		// The answer names the drill; the record the rollout it runs in.
		rec.Rollout = s.drillRollout(in)
	}
	rec.Service = s.serviceOf(in)
	if rec.Service == "*" {
		rec.Service = ""
	}
	if d := in.GetRunDrill().GetSpec().GetName(); d != "" {
		rec.Drill = d
	} else if d := in.GetAbortDrill().GetDrill(); d != "" {
		rec.Drill = d
	}
	if !rec.Accepted {
		rec.Kind = "refused"
	} else if rec.Message == "" {
		rec.Message = s.intentSummary(in, e.GetRules())
	}
	s.appendAudit(rec)
}

// Named says which rollout, service and drill an intent names, as the audit
// records them.
func (s *State) Named(in *sv1.Intent) (rollout, service, drill string) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	service = s.serviceOf(in)
	if service == "*" {
		service = ""
	}
	drill = in.GetRunDrill().GetSpec().GetName()
	if drill == "" {
		drill = in.GetAbortDrill().GetDrill()
	}
	rollout = rolloutOf(in)
	if rollout == "" {
		rollout = s.drillRollout(in)
	}
	return rollout, service, drill
}

// drillRollout is the rollout a drill intent's drill runs inside, if any.
// The caller holds the lock.
func (s *State) drillRollout(in *sv1.Intent) string {
	if r := in.GetRunDrill().GetSpec().GetRollout(); r != "" {
		return r
	}
	if ab := in.GetAbortDrill(); ab != nil {
		return s.drills[ab.GetDrill()].GetSpec().GetRollout()
	}
	return ""
}

func rolloutOf(in *sv1.Intent) string {
	for _, c := range []*sv1.RolloutControl{in.GetPauseRollout(), in.GetResumeRollout(), in.GetApproveRollout(), in.GetUndoRollout(), in.GetRetryRollout()} {
		if c.GetRollout() != "" {
			return c.GetRollout()
		}
	}
	if r := in.GetAbortRollout().GetRollout(); r != "" {
		return r
	}
	if r := in.GetPromoteRollout().GetRollout(); r != "" {
		return r
	}
	return in.GetApplyRollout().GetSpec().GetName()
}

// intentSummary is the history lines the intent wrote and the drills it
// ended (rules 2 on; before, its rollout's last history line), or a
// description of an ACL change.
func (s *State) intentSummary(in *sv1.Intent, rules uint32) string {
	if c := in.GetAcl(); c != nil {
		switch ch := c.GetChange().(type) {
		case *sv1.AclChange_Grant:
			return fmt.Sprintf("granted %s on %q to %s (%s)", ch.Grant.GetRole(), ch.Grant.GetServices(), ch.Grant.GetName(), ch.Grant.GetKey())
		case *sv1.AclChange_Revoke:
			if ch.Revoke.GetRole() == "" {
				return "removed principal " + ch.Revoke.GetKey()
			}
			return fmt.Sprintf("revoked %s on %q from %s", ch.Revoke.GetRole(), ch.Revoke.GetServices(), ch.Revoke.GetKey())
		case *sv1.AclChange_Policy:
			p := ch.Policy
			gates := ""
			if p.GetRequireGates() { // never set in entries older than the field
				gates = ", a gate on every wave"
			}
			return fmt.Sprintf("policy: approvals %d on %q%s, drill caps %d nodes / %d%%", p.GetApprovals(), patternOr(p.GetApprovalServices()), gates, p.GetDrillMaxNodes(), p.GetDrillMaxPercent())
		case *sv1.AclChange_Bootstrap:
			return "first admin " + ch.Bootstrap.GetName()
		}
	}
	if rules < 2 {
		if r := s.rollouts[rolloutOf(in)]; r != nil && len(r.GetHistory()) > 0 {
			return r.GetHistory()[len(r.GetHistory())-1].GetMessage()
		}
		return ""
	}
	// Every line the intent wrote: the one that carries the operator's
	// reason is not always the last (a rollback webhook made due follows
	// an abort's).
	return strings.Join(s.intentLines, "; then ")
}

// auditDecision records a decision the coordinators took on their own (a
// history line written outside an intent); a line an intent writes goes
// into the intent's record.
func (s *State) auditDecision(r *sv1.Rollout, index uint64, at *timestamppb.Timestamp, message string) {
	if s.inIntent {
		s.intentLines = append(s.intentLines, message)
		return
	}
	rec := &sv1.AuditRecord{Index: index, At: at, Kind: "decision", Actor: "switchyard", Rollout: r.GetId(),
		Service: r.GetSpec().GetService(), Accepted: true, Message: message}
	if r.GetPhase() == sv1.RolloutPhase_ROLLOUT_PHASE_ROLLING_BACK && r.GetEvidence() != nil && (s.rollbackRules < 5 || s.rollbackLine) {
		rec.Kind = "rollback"
		rec.Evidence = proto.Clone(r.GetEvidence()).(*sv1.Evidence)
	}
	s.appendAudit(rec)
}

// recordRollback writes the history line that starts a rollback the
// coordinators decided (a guardrail, a failed gating webhook): the one
// audited as the "rollback" record with its evidence.
func (s *State) recordRollback(r *sv1.Rollout, index uint64, at *timestamppb.Timestamp) {
	s.rollbackLine = true
	defer func() { s.rollbackLine = false }()
	s.record(r, index, at, "", "rolling back: "+r.GetReason())
}

// auditDrill records a drill starting or ending outside an intent; one an
// intent ends goes into the intent's record.
func (s *State) auditDrill(d *sv1.Drill, index uint64, at *timestamppb.Timestamp, kind, message string) {
	if s.inIntent {
		s.intentLines = append(s.intentLines, "drill "+d.GetId()+" "+message)
		return
	}
	s.appendAudit(&sv1.AuditRecord{Index: index, At: at, Kind: kind, Actor: "switchyard", Drill: d.GetId(),
		Service: d.GetSpec().GetService(), Rollout: d.GetSpec().GetRollout(), Accepted: true, Message: message})
}

// ApplyAuditRefusal records an intent the leader refused before commit, or
// (code CodeRefusalsNotRecorded, actor switchyard) how many it refused
// without recording them one by one.
func (s *State) ApplyAuditRefusal(index uint64, e *sv1.AuditRefusalEntry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	name := "unsigned"
	switch {
	case e.GetCode() == CodeRefusalsNotRecorded:
		name = "switchyard"
	case e.GetKey() != "":
		name = "unknown key " + e.GetKey()
		if p := acl.Find(s.acl, e.GetKey()); p != nil {
			name = p.GetName()
		}
	}
	s.appendAudit(&sv1.AuditRecord{Index: index, At: e.GetStampedAt(), Kind: "refused", Actor: name, ActorKey: e.GetKey(),
		IntentId: e.GetIntentId(), Action: e.GetAction(), Code: e.GetCode(), Message: e.GetReason(), IntentSha256: e.GetIntentSha256(),
		Rollout: e.GetRollout(), Service: e.GetService(), Drill: e.GetDrill()})
}

// ApplyAuditExported records that the stream holds every record through
// e.Through.
func (s *State) ApplyAuditExported(e *sv1.AuditExportedEntry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := min(e.GetThrough(), s.auditHead.GetSeq())
	if t <= s.auditHead.GetExported() {
		return
	}
	s.auditHead.Exported = t
	s.pruneAudit()
}

// AuditHead returns a copy of the chain head.
func (s *State) AuditHead() *sv1.AuditHead {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return proto.Clone(s.auditHead).(*sv1.AuditHead)
}

// AuditEntries returns copies of the records the state holds with
// sequence above after, at most limit of them (0: all).
func (s *State) AuditEntries(after uint64, limit int) []*sv1.AuditEntry {
	s.mu.RLock()
	defer s.mu.RUnlock()
	first := s.auditHead.GetSeq() - uint64(len(s.audit)) + 1
	var out []*sv1.AuditEntry
	for i, e := range s.audit {
		if first+uint64(i) <= after {
			continue
		}
		out = append(out, proto.Clone(e).(*sv1.AuditEntry))
		if limit > 0 && len(out) == limit {
			break
		}
	}
	return out
}

func (s *State) restoreAclAudit(snap *sv1.StateSnapshot) error {
	if a := snap.GetAcl(); a != nil {
		s.acl = a
	}
	if h := snap.GetAuditHead(); h != nil {
		s.auditHead = h
	}
	s.audit = snap.GetAudit()
	if n := uint64(len(s.audit)); n > s.auditHead.GetSeq() {
		return fmt.Errorf("snapshot: %d audit records but the head is at %d", n, s.auditHead.GetSeq())
	}
	if n := len(s.audit); n > 0 {
		v, err := audit.Verify(links(s.audit), false)
		if err != nil {
			return fmt.Errorf("snapshot: %w", err)
		}
		if v.Last != s.auditHead.GetSeq() || string(v.Head) != string(s.auditHead.GetHash()) {
			return fmt.Errorf("snapshot: audit records end at %d, head says %d", v.Last, s.auditHead.GetSeq())
		}
	}
	return nil
}

func links(es []*sv1.AuditEntry) []audit.Link {
	out := make([]audit.Link, len(es))
	for i, e := range es {
		out[i] = audit.Link{Entry: e, Where: fmt.Sprintf("snapshot record %d", i)}
	}
	return out
}
