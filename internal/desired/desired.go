// Package desired evaluates a DesiredState for one node: which wave the node
// is in and which weights it gets. Coordinator and agents share it so they
// compute the same answer with no node lists in the document.
package desired

import (
	"hash/fnv"
	"maps"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// NoWave is the wave index of a node that falls in no wave.
const NoWave = -1

// FullBasisPoints is 100% in basis points.
const FullBasisPoints = 10000

// Bucket places a node in [0, 10000) for a rollout. It is stable: the same
// rollout and node always land in the same bucket, on every machine, and a
// node's buckets for two rollouts are independent.
func Bucket(rolloutID, node string) uint32 {
	h := fnv.New64a()
	h.Write([]byte(rolloutID))
	h.Write([]byte{0})
	h.Write([]byte(node))
	return uint32(h.Sum64() % FullBasisPoints)
}

// Selects reports whether a wave's selector matches the labels: every key of
// the selector must be present with the same value. An empty selector matches
// everything.
func Selects(selector, labels map[string]string) bool {
	for k, v := range selector {
		if lv, ok := labels[k]; !ok || lv != v {
			return false
		}
	}
	return true
}

// InWave reports whether a node with these labels belongs to the wave of a
// rollout: its selector matches and the node's bucket is below the wave's
// share.
func InWave(rolloutID, node string, labels map[string]string, w *sv1.WaveWeights) bool {
	return Selects(w.GetSelector(), labels) && Bucket(rolloutID, node) < w.GetBasisPoints()
}

// Evaluate returns the weights a node should have under ds and the index of
// its wave. The first wave that takes the node wins. A node in no wave gets
// the document's default weights; ok is false when there are none, and the
// node keeps the weights it has.
func Evaluate(ds *sv1.DesiredState, node string, labels map[string]string) (weights map[string]uint32, wave int32, ok bool) {
	for _, w := range ds.GetWaves() {
		if InWave(ds.GetRolloutId(), node, labels, w) {
			return maps.Clone(w.GetWeights()), w.GetIndex(), true
		}
	}
	if len(ds.GetDefaultWeights()) == 0 {
		return nil, NoWave, false
	}
	return maps.Clone(ds.GetDefaultWeights()), NoWave, true
}
