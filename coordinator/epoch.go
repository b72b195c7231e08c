package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/coordinator/fsm"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// EpochChange is the answer to raising the cluster epoch.
type EpochChange struct {
	// From and To are the epoch before and after.
	From uint64 `json:"from"`
	To   uint64 `json:"to"`
	// HighestSeen is the highest epoch among the verified documents in the
	// buckets; To is above it.
	HighestSeen uint64 `json:"highest_seen"`
	AnsweredBy  string `json:"answered_by"`
}

// RaiseEpoch is the operator's disaster-recovery step, run on the leader:
// it reads every document in the buckets, takes the highest epoch among
// those that verify with a trusted key, and commits an epoch above both it
// and the current one. From then on every document this cluster publishes
// fences above anything the fleet holds, so a cluster rebuilt from empty
// Raft data moves the fleet again. Documents no trusted key signed are not
// counted, so a forgery cannot push the epoch anywhere.
func (s *Server) RaiseEpoch(ctx context.Context, reason, actor string) (EpochChange, error) {
	if strings.TrimSpace(reason) == "" {
		return EpochChange{}, badParam("reason: required, it is kept in the log entry")
	}
	if s.raft.State() != raft.Leader {
		return EpochChange{}, errNotLeaderHTTP
	}
	seen, err := s.highestVerifiedEpoch(ctx)
	if err != nil {
		return EpochChange{}, fmt.Errorf("read the buckets: %w", err)
	}
	from := s.fsm.State().Epoch()
	to, err := nextEpoch(from, seen)
	if err != nil {
		return EpochChange{}, err
	}
	if _, _, err := s.raftApply(fsm.EpochType, &sv1.EpochEntry{
		Epoch: to, Reason: reason, HighestSeen: seen, StampedAt: timestamppb.New(s.cfg.Clock.Now()), Actor: actor,
	}); err != nil {
		if errors.Is(err, ErrNotLeader) {
			return EpochChange{}, errNotLeaderHTTP
		}
		return EpochChange{}, err
	}
	s.log.Warn("cluster epoch raised by an operator; every document is published again in the new epoch",
		"from", from, "to", to, "highest_verified_in_buckets", seen, "reason", reason, "by", actor)
	return EpochChange{From: from, To: s.fsm.State().Epoch(), HighestSeen: seen, AnsweredBy: s.cfg.NodeID}, nil
}

// nextEpoch is the epoch above the cluster's (from) and the highest a
// trusted document in the buckets holds (seen).
func nextEpoch(from, seen uint64) (uint64, error) {
	if max(from, seen) == math.MaxUint64 {
		// Only a trusted key can have signed such a document; no epoch
		// fences above it, and adding one would wrap to 0.
		return 0, fmt.Errorf("epoch %d (the cluster's or a trusted document's in the buckets) is the largest there is; no epoch is above it: rotate the signing keys (security.md) and clear the buckets", uint64(math.MaxUint64))
	}
	return max(from, seen) + 1, nil
}

func (s *Server) epochRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/cluster/epoch", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, map[string]any{"epoch": s.fsm.State().Epoch(), "answered_by": s.cfg.NodeID})
	})
	mux.HandleFunc("POST /v1/cluster/epoch", func(w http.ResponseWriter, r *http.Request) {
		if !s.clusterPeer(w, r) {
			return
		}
		var in struct {
			Reason string `json:"reason"`
		}
		if err := json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&in); err != nil {
			http.Error(w, "want JSON {\"reason\": ...}", http.StatusBadRequest)
			return
		}
		ch, err := s.RaiseEpoch(r.Context(), in.Reason, clusterActor(r))
		if err != nil {
			clusterChange(w, err, s)
			return
		}
		writeJSON(w, ch)
	})
}

// RaiseEpoch asks the coordinators at addrs, in turn, to raise the cluster
// epoch; the leader among them does it. With cluster TLS the call needs a
// coordinator certificate, as every cluster change does.
func (c *ClusterClient) RaiseEpoch(ctx context.Context, addrs []string, reason string) (EpochChange, error) {
	var errs []error
	for _, a := range addrs {
		var ch EpochChange
		if err := c.postJSON(ctx, a, "/v1/cluster/epoch", map[string]string{"reason": reason}, &ch); err != nil {
			errs = append(errs, err)
			continue
		}
		return ch, nil
	}
	return EpochChange{}, errors.Join(errs...)
}

// clusterActor names who sent a cluster change, for the record: the
// subject of the cluster certificate the request was verified with, or,
// on a cluster without TLS, the peer's address.
func clusterActor(r *http.Request) string {
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 && len(r.TLS.VerifiedChains[0]) > 0 {
		return "cluster certificate " + r.TLS.VerifiedChains[0][0].Subject.String()
	}
	return "peer " + r.RemoteAddr + " (no cluster TLS)"
}
