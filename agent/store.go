package agent

import (
	"github.com/switchyard/switchyard/agent/state"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// StateStore keeps, per service, what the agent last applied, across
// restarts. The agent is its only user and calls it from one goroutine per
// service.
type StateStore interface {
	// Load returns the service's applied state, or nil and no error when
	// there is none.
	Load(service string) (*sv1.AppliedState, error)
	// Save replaces the applied state of st's service, durably.
	Save(st *sv1.AppliedState) error
	// Close releases the store.
	Close() error
}

var _ StateStore = (*state.Bolt)(nil)

// ApplyJournal is what a StateStore may keep besides the applied state: the
// state the agent is about to set on a proxy, written before it does, so
// that an agent killed after the proxy took it and before Save does not
// take the older saved state for what the node should do. Save forgets it.
type ApplyJournal interface {
	// SaveApplying records st, durably, before the proxy is set to it.
	SaveApplying(st *sv1.AppliedState) error
	// LoadApplying returns what SaveApplying recorded for service and no
	// Save followed, or nil and no error.
	LoadApplying(service string) (*sv1.AppliedState, error)
	// DropApplying forgets it.
	DropApplying(service string) error
}

var _ ApplyJournal = (*state.Bolt)(nil)
