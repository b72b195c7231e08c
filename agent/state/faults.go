package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// faultsBucket holds one FaultRecord per drill, keyed by drill name. It is
// created on the first write, so a database from an older agent opens as it
// is.
var faultsBucket = []byte("faults")

// damagedFaultsBucket keeps, under their own keys, the journal records
// that could not be decoded: out of the journal, so one bad record does
// not come back on every start, but not deleted, so an operator can see
// what it was.
var damagedFaultsBucket = []byte("faults.damaged")

// DamagedFault is a journal record LoadFaults could not decode.
type DamagedFault struct {
	// Key is the record's key in the journal (its drill's name, unless
	// that is what was damaged).
	Key string
	Err error
}

// FaultRecord is the journal entry of one drill's fault on this node: what
// is needed to revert it without the bus, the drill or the process that
// injected it. It is written before the fault is applied and marked
// Reverted once it is gone; a reverted record is kept until Until, so a
// restarted agent does not inject the drill again.
type FaultRecord struct {
	Drill      string `json:"drill"`
	Generation uint64 `json:"generation"`
	// Kind is the fault's name as AgentStatus reports it ("http", "tcp",
	// "backend_state", "process", "cpu_burn", "bus_drop").
	Kind    string `json:"kind"`
	Service string `json:"service"`
	// Backend is the rollout backend name ("green") of http, tcp and
	// backend_state faults.
	Backend string `json:"backend,omitempty"`
	// OrigAddr is the backend server's address before a fault proxy was
	// put in front of it ("ip:port"); revert points the server back at it.
	OrigAddr string `json:"origAddr,omitempty"`
	// ProxyAddr is the fault proxy's address, once it listens.
	ProxyAddr string `json:"proxyAddr,omitempty"`
	// PrevState is the state a backend_state fault found the server in
	// ("ready", "drain", "maint"; empty when the driver cannot read it,
	// taken as "ready"): revert puts it back.
	PrevState string `json:"prevState,omitempty"`
	// PIDFile and Action are a process fault's target and what was done
	// ("pause" is reverted with SIGCONT).
	PIDFile string `json:"pidFile,omitempty"`
	Action  string `json:"action,omitempty"`
	// Since is when the agent began applying the fault; Until is the
	// drill's end.
	Since time.Time `json:"since"`
	Until time.Time `json:"until"`
	// Reverted is set once the fault is gone from the node.
	Reverted bool `json:"reverted"`
}

// LoadFaults returns every journaled fault, sorted by drill, and the
// records it could not decode, which it skips: one bad record must not
// keep the others from being reverted. See QuarantineFault.
func (b *Bolt) LoadFaults() ([]FaultRecord, []DamagedFault, error) {
	var out []FaultRecord
	var damaged []DamagedFault
	err := b.db.View(func(tx *bolt.Tx) error {
		bk := tx.Bucket(faultsBucket)
		if bk == nil {
			return nil
		}
		return bk.ForEach(func(k, v []byte) error {
			var r FaultRecord
			if err := json.Unmarshal(v, &r); err != nil {
				damaged = append(damaged, DamagedFault{Key: string(k), Err: err})
				return nil
			}
			if r.Drill == "" {
				damaged = append(damaged, DamagedFault{Key: string(k), Err: errors.New("the record names no drill")})
				return nil
			}
			out = append(out, r)
			return nil
		})
	})
	if err != nil {
		return nil, nil, fmt.Errorf("load fault journal from %s: %w", b.path, err)
	}
	slices.SortFunc(out, func(x, y FaultRecord) int { return strings.Compare(x.Drill, y.Drill) })
	return out, damaged, nil
}

// QuarantineFault moves the record under key out of the journal into the
// faults.damaged bucket, durably; a key that is not there is not an
// error.
func (b *Bolt) QuarantineFault(key string) error {
	err := b.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(faultsBucket)
		if bk == nil {
			return nil
		}
		v := bk.Get([]byte(key))
		if v == nil {
			return nil
		}
		dk, err := tx.CreateBucketIfNotExists(damagedFaultsBucket)
		if err != nil {
			return err
		}
		if err := dk.Put([]byte(key), slices.Clone(v)); err != nil {
			return err
		}
		return bk.Delete([]byte(key))
	})
	if err != nil {
		return fmt.Errorf("move damaged fault record %q aside in %s: %w", key, b.path, err)
	}
	return nil
}

// SaveFault writes r under its drill, durably.
func (b *Bolt) SaveFault(r FaultRecord) error {
	if r.Drill == "" {
		return fmt.Errorf("save fault record: drill is required")
	}
	v, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode fault record of %s: %w", r.Drill, err)
	}
	err = b.db.Update(func(tx *bolt.Tx) error {
		bk, err := tx.CreateBucketIfNotExists(faultsBucket)
		if err != nil {
			return err
		}
		return bk.Put([]byte(r.Drill), v)
	})
	if err != nil {
		return fmt.Errorf("save fault record of %s to %s: %w", r.Drill, b.path, err)
	}
	return nil
}

// DeleteFault forgets a drill's record; forgetting one that is not there is
// not an error.
func (b *Bolt) DeleteFault(drill string) error {
	err := b.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(faultsBucket)
		if bk == nil {
			return nil
		}
		return bk.Delete([]byte(drill))
	})
	if err != nil {
		return fmt.Errorf("delete fault record of %s from %s: %w", drill, b.path, err)
	}
	return nil
}
