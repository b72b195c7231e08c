package coordinator

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/coordinator/fsm"
	"github.com/switchyard/switchyard/coordinator/state"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Refusals before commit are audited one by one, each a Raft entry and a
// record in the audit stream, up to refusalRecordRate a second with bursts
// of refusalRecordBurst. Past that, a publisher of junk (a holder of
// operator NATS credentials without a signing key, a pipeline gone wrong)
// would grow the Raft log and the audit stream at will and, since the
// leader takes intents one at a time, keep an operator's abort waiting
// behind a Raft round trip for each: the leader still refuses and answers
// every one and counts it, and records what it held back as one summary
// (code state.CodeRefusalsNotRecorded) every refusalSummaryEvery.
const (
	refusalRecordRate   = 10
	refusalRecordBurst  = 100
	refusalSummaryEvery = 5 * time.Second
)

// refusalBudget decides which refusals are recorded one by one and keeps
// count of the others until they are summarized. Safe for concurrent use.
type refusalBudget struct {
	lim *rate.Limiter

	mu   sync.Mutex
	held heldRefusals // since the last drain
}

// refusalKeysKept bounds the keys a summary counts refusals by: a flood of
// intents signed by fresh keys must not grow the map without bound.
const refusalKeysKept = 64

// otherKeys counts the refusals signed by keys past refusalKeysKept.
const otherKeys = "other keys"

func newRefusalBudget() *refusalBudget {
	return &refusalBudget{lim: rate.NewLimiter(refusalRecordRate, refusalRecordBurst)}
}

// take reports whether a refusal at now may be recorded by itself; if not,
// it is counted under code, and under the key that signed it (if any), for
// the next summary.
func (b *refusalBudget) take(code, key string, now time.Time) bool {
	if b.lim.AllowN(now, 1) {
		return true
	}
	one := heldRefusals{byCode: map[string]int{code: 1}, first: now, last: now}
	if key != "" {
		one.byKey = map[string]int{key: 1}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.held.add(one)
	return false
}

// drain returns what was held since the last drain, and whether there was
// anything.
func (b *refusalBudget) drain() (heldRefusals, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	h := b.held
	b.held = heldRefusals{}
	return h, len(h.byCode) > 0
}

// giveBack returns a summary that could not be recorded, to go with the
// next one.
func (b *refusalBudget) giveBack(h heldRefusals) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.held.add(h)
}

// heldRefusals is what a summary says: how many refusals were not recorded
// one by one, by code and by signing key, and when the first and last of
// them came.
type heldRefusals struct {
	byCode      map[string]int
	byKey       map[string]int
	first, last time.Time
}

// add counts o's refusals into h; past refusalKeysKept keys, the refusals
// of further keys count under otherKeys.
func (h *heldRefusals) add(o heldRefusals) {
	if len(o.byCode) == 0 {
		return
	}
	if len(h.byCode) == 0 || o.first.Before(h.first) {
		h.first = o.first
	}
	if o.last.After(h.last) {
		h.last = o.last
	}
	if h.byCode == nil {
		h.byCode, h.byKey = map[string]int{}, map[string]int{}
	}
	for c, n := range o.byCode {
		h.byCode[c] += n
	}
	for k, n := range o.byKey {
		if _, ok := h.byKey[k]; !ok && len(h.byKey) >= refusalKeysKept {
			k = otherKeys
		}
		h.byKey[k] += n
	}
}

func (h heldRefusals) total() int {
	n := 0
	for _, c := range h.byCode {
		n += c
	}
	return n
}

// String reads e.g. "1900 refused intents were not recorded one by one
// (more than 10 a second, bursts of 100): malformed 1850, unsigned 50; the
// first at …, the last at …".
func (h heldRefusals) String() string {
	codes := slices.Sorted(maps.Keys(h.byCode))
	parts := make([]string, len(codes))
	for i, c := range codes {
		parts[i] = fmt.Sprintf("%s %d", c, h.byCode[c])
	}
	signed := ""
	if len(h.byKey) > 0 {
		// The keys that signed the most first, at most five of them.
		keys := slices.SortedFunc(maps.Keys(h.byKey), func(a, b string) int {
			if c := h.byKey[b] - h.byKey[a]; c != 0 {
				return c
			}
			return strings.Compare(a, b)
		})
		var ks []string
		for _, k := range keys[:min(len(keys), 5)] {
			ks = append(ks, fmt.Sprintf("%s %d", k, h.byKey[k]))
		}
		if len(keys) > 5 {
			ks = append(ks, fmt.Sprintf("%d more keys", len(keys)-5))
		}
		signed = "; signed by " + strings.Join(ks, ", ")
	}
	return fmt.Sprintf("%d refused intents were not recorded one by one (more than %d a second, bursts of %d): %s%s; the first at %s, the last at %s",
		h.total(), refusalRecordRate, refusalRecordBurst, strings.Join(parts, ", "), signed,
		h.first.UTC().Format(time.RFC3339Nano), h.last.UTC().Format(time.RFC3339Nano))
}

// summarizeRefusals records what the budget held back, every
// refusalSummaryEvery while this node leads, and once more when it stops
// leading (which fails if another node leads by then: the count is then
// only in this node's log and metrics).
func (s *Server) summarizeRefusals(ctx context.Context) {
	t := time.NewTicker(refusalSummaryEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			s.recordHeldRefusals()
			return
		case <-t.C:
			s.recordHeldRefusals()
		}
	}
}

func (s *Server) recordHeldRefusals() {
	h, ok := s.refusals.drain()
	if !ok {
		return
	}
	msg := h.String()
	e := &sv1.AuditRefusalEntry{Code: state.CodeRefusalsNotRecorded, Reason: msg, StampedAt: timestamppb.New(s.cfg.Clock.Now())}
	if _, _, err := s.raftApply(fsm.AuditRefusalType, e); err != nil {
		s.refusals.giveBack(h)
		s.log.Warn("recording the summary of refused intents", "summary", msg, "err", err)
		return
	}
	s.wakeAudit()
	s.log.Warn("refused intents summarized in the audit", "summary", msg)
}
