package coordinator

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/coordinator/audit"
	"github.com/switchyard/switchyard/coordinator/state"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

func TestRefusalBudget_RecordsABurstThenCountsTheRest(t *testing.T) {
	b := newRefusalBudget()
	t0 := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	for i := range refusalRecordBurst {
		if !b.take("malformed", "", t0) {
			t.Fatalf("refusal %d of the first burst not recorded", i+1)
		}
	}
	if _, ok := b.drain(); ok {
		t.Fatal("a summary with nothing held back")
	}
	if b.take("malformed", "", t0) || b.take("unsigned", "", t0.Add(time.Millisecond)) || b.take("malformed", "", t0.Add(2*time.Millisecond)) {
		t.Fatal("a refusal past the burst was recorded one by one")
	}
	// A tenth of a second later the rate has earned one more record.
	if !b.take("malformed", "", t0.Add(100*time.Millisecond)) {
		t.Fatal("the budget did not refill at its rate")
	}
	h, ok := b.drain()
	if !ok || h.total() != 3 || h.byCode["malformed"] != 2 || h.byCode["unsigned"] != 1 || !h.first.Equal(t0) || !h.last.Equal(t0.Add(2*time.Millisecond)) {
		t.Fatalf("held %+v", h)
	}
	want := "3 refused intents were not recorded one by one (more than 10 a second, bursts of 100): malformed 2, unsigned 1; the first at 2026-11-30T12:00:00Z, the last at 2026-11-30T12:00:00.002Z"
	if h.String() != want {
		t.Fatalf("summary %q\nwant    %q", h.String(), want)
	}
	// A summary that could not be recorded goes with the next one.
	b.take("unsigned", "", t0.Add(5*time.Millisecond))
	b.giveBack(h)
	h2, _ := b.drain()
	if h2.total() != 4 || h2.byCode["unsigned"] != 2 || !h2.first.Equal(t0) || !h2.last.Equal(t0.Add(5*time.Millisecond)) {
		t.Fatalf("after giving back: %+v", h2)
	}

	// Signed refusals are counted by key too, the most first, at most
	// five named and refusalKeysKept kept (the rest as otherKeys). An hour
	// on, the budget records a full burst again first.
	t1 := t0.Add(time.Hour)
	for range refusalRecordBurst {
		b.take("unknown_key", "UKEYA", t1)
	}
	for range 3 {
		b.take("unknown_key", "UKEYA", t1)
		b.take("forbidden", "UKEYB", t1)
		b.take("unknown_key", "UKEYA", t1)
	}
	for i := range refusalKeysKept + 10 {
		b.take("unknown_key", fmt.Sprintf("UFRESH%03d", i), t1)
	}
	h3, _ := b.drain()
	if len(h3.byKey) != refusalKeysKept+1 || h3.byKey["UKEYA"] != 6 || h3.byKey["UKEYB"] != 3 || h3.byKey[otherKeys] != 12 {
		t.Fatalf("by key: %d keys, %v", len(h3.byKey), h3.byKey)
	}
	if !strings.Contains(h3.String(), "; signed by other keys 12, UKEYA 6, UKEYB 3, UFRESH000 1, UFRESH001 1, 60 more keys; the first at") {
		t.Fatalf("summary %q", h3.String())
	}
}

// TestAcl_AFloodOfJunkIntentsDoesNotHoldUpASignedOne publishes 600 intents
// that are not even protobuf on an enforcing cluster, then a signed grant:
// every piece of junk is answered and counted, the grant commits, and the
// audit holds a bounded number of refusal records plus a summary that
// accounts for the rest.
func TestAcl_AFloodOfJunkIntentsDoesNotHoldUpASignedOne(t *testing.T) {
	nc, url := startNATS(t)
	admin := newUser(t)
	c := startCoordinatorWithAdmin(t, url, t.TempDir(), admin)
	js, _ := jetstream.New(nc)

	answers, err := nc.SubscribeSync(nc.NewRespInbox())
	if err != nil {
		t.Fatal(err)
	}
	const n = 600
	before := testutil.ToFloat64(c.srv.metrics.intentsRejected.WithLabelValues("malformed"))
	for i := range n {
		m := nats.NewMsg(bus.IntentSubject(bus.IntentKindRollout))
		m.Data = []byte("not an intent")
		m.Header.Set(bus.MsgIDHeader, fmt.Sprintf("junk-%d", i))
		m.Header.Set(bus.ReplyHeader, answers.Subject)
		if _, err := js.PublishMsgAsync(m); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(10 * time.Second):
		t.Fatal("the junk was not all stored")
	}
	if res := sendSigned(t, nc, admin, bus.IntentKindAcl, grantIntent("g1", newUser(t), "alice", "deployer", "web")); !res.GetAccepted() {
		t.Fatalf("the grant behind the junk: %v", res)
	}
	// The grant came after the junk on the stream: all of it is refused.
	for i := range n {
		if _, err := answers.NextMsg(5 * time.Second); err != nil {
			t.Fatalf("answer %d of %d: %v", i+1, n, err)
		}
	}
	if got := testutil.ToFloat64(c.srv.metrics.intentsRejected.WithLabelValues("malformed")) - before; got != n {
		t.Fatalf("intents_rejected_total{reason=malformed} rose by %v, want %d", got, n)
	}
	held := testutil.ToFloat64(c.srv.metrics.refusalsNotRecorded.WithLabelValues("malformed"))
	if held < n/2 {
		t.Fatalf("intent_refusals_not_recorded_total{reason=malformed} %v: the junk was recorded one by one", held)
	}

	// The summary comes within refusalSummaryEvery and is exported with
	// the chain; the records and the summary add up to the flood.
	var v audit.Verified
	waitFor(t, "the summary of refusals in the audit stream", 3*refusalSummaryEvery, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		msgs, _, err := audit.ReadStream(ctx, js, 0)
		if err != nil {
			return false
		}
		if v, err = audit.VerifyStored(msgs); err != nil {
			t.Fatal(err)
		}
		return slices.ContainsFunc(v.Records, func(r *sv1.AuditRecord) bool { return r.GetCode() == state.CodeRefusalsNotRecorded })
	})
	one, summarized := 0, 0
	for _, r := range v.Records {
		switch r.GetCode() {
		case "malformed":
			one++
		case state.CodeRefusalsNotRecorded:
			var k int
			if _, err := fmt.Sscanf(r.GetMessage(), "%d refused intents", &k); err != nil || r.GetActor() != "switchyard" ||
				!strings.Contains(r.GetMessage(), fmt.Sprintf("malformed %d", k)) {
				t.Fatalf("summary record %v", r)
			}
			summarized += k
		}
	}
	if one+summarized != n || one > refusalRecordBurst+refusalRecordRate*5 || float64(summarized) != held {
		t.Fatalf("%d refusals recorded one by one and %d in summaries (metric %v), want %d in all with at most ~%d one by one", one, summarized, held, n, refusalRecordBurst)
	}
}
