package agent

import (
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/switchyard/switchyard/agent/state"
)

// FaultJournal keeps, across crashes, the chaos faults this node injected
// and how to revert them. The drill goroutine is its only user.
type FaultJournal interface {
	// LoadFaults returns every record, sorted by drill, and the records it
	// could not decode, which it skips.
	LoadFaults() ([]state.FaultRecord, []state.DamagedFault, error)
	// QuarantineFault moves an undecodable record out of the journal, so
	// that it is not read again.
	QuarantineFault(key string) error
	// SaveFault writes a record under its drill, durably.
	SaveFault(state.FaultRecord) error
	// DeleteFault forgets a drill's record.
	DeleteFault(drill string) error
}

var _ FaultJournal = (*state.Bolt)(nil)

// memJournal is the journal of an agent whose injected StateStore keeps no
// faults: it survives nothing, so a crash mid-fault leaves the fault to be
// reverted by hand (or by the TTL of an agent that kept running).
type memJournal struct {
	mu sync.Mutex
	m  map[string]state.FaultRecord
}

var _ FaultJournal = (*memJournal)(nil)

func newMemJournal() *memJournal { return &memJournal{m: map[string]state.FaultRecord{}} }

func (j *memJournal) LoadFaults() ([]state.FaultRecord, []state.DamagedFault, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	out := slices.Collect(maps.Values(j.m))
	slices.SortFunc(out, func(x, y state.FaultRecord) int { return strings.Compare(x.Drill, y.Drill) })
	return out, nil, nil
}

// QuarantineFault: a memJournal holds no undecodable records.
func (j *memJournal) QuarantineFault(string) error { return nil }

func (j *memJournal) SaveFault(r state.FaultRecord) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.m[r.Drill] = r
	return nil
}

func (j *memJournal) DeleteFault(drill string) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	delete(j.m, drill)
	return nil
}
