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
