package state

import (
	"fmt"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// The cluster epoch is the lineage of every document this cluster signs:
// agents compare (epoch, generation), epoch first. A new cluster starts at
// epoch 1; only an explicit operator step (an EpochEntry) raises it, which a
// cluster rebuilt from empty data needs before its documents, whose
// generations start again from small Raft indexes, can move the fleet.

// epochLocked is the current epoch; the caller holds s.mu.
func (s *State) epochLocked() uint64 { return max(s.epoch, 1) }

// Epoch is the current cluster epoch.
func (s *State) Epoch() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.epochLocked()
}

// ApplyEpoch raises the epoch to e.Epoch. It reports whether it did; an
// entry that would not raise it is a no-op, so the epoch never goes down.
// Every published document changes with the epoch, so the caller republishes
// all of them.
func (s *State) ApplyEpoch(index uint64, e *sv1.EpochEntry) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e.GetEpoch() <= s.epochLocked() {
		return false
	}
	s.epoch = e.GetEpoch()
	rec := &sv1.AuditRecord{At: e.GetStampedAt(), Kind: "epoch", Actor: "operator", Accepted: true,
		Message: fmt.Sprintf("cluster epoch raised to %d (highest seen %d): %s", e.GetEpoch(), e.GetHighestSeen(), e.GetReason())}
	if e.GetActor() != "" {
		// An entry that names who asked makes a record with its index
		// too; older entries replay into the record they made, so the
		// chain of an upgraded cluster does not change.
		rec.Actor, rec.Index = e.GetActor(), index
	}
	s.appendAudit(rec)
	return true
}

// DesiredFence is the fence of a service's current desired state: the
// cluster epoch and the document's generation. ok is false when the service
// has none.
func (s *State) DesiredFence(service string) (epoch, generation uint64, ok bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	d := s.services[service].GetDesired()
	if d == nil {
		return 0, 0, false
	}
	return s.epochLocked(), d.GetGeneration(), true
}
