package coordinator

import (
	"context"
	"io"
	"math"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// The raised epoch is above both the cluster's and the buckets'; at the
// largest epoch there is none above, and the raise is refused rather than
// wrapped to 0 (which would commit nothing and report success).
func TestNextEpoch_AboveBothAndNeverWraps(t *testing.T) {
	for _, c := range []struct{ from, seen, want uint64 }{{0, 0, 1}, {3, 7, 8}, {9, 2, 10}} {
		if got, err := nextEpoch(c.from, c.seen); err != nil || got != c.want {
			t.Fatalf("nextEpoch(%d, %d) = %d, %v; want %d", c.from, c.seen, got, err, c.want)
		}
	}
	for _, c := range [][2]uint64{{math.MaxUint64, 1}, {1, math.MaxUint64}} {
		if _, err := nextEpoch(c[0], c[1]); err == nil || !strings.Contains(err.Error(), "largest there is") {
			t.Fatalf("nextEpoch(%d, %d): %v, want refused", c[0], c[1], err)
		}
	}
}

// Raising the epoch without a reason is the caller's mistake: 400 naming
// the field, not a 500 that reads as the coordinator failing.
func TestEpoch_RaiseWithoutReasonIsABadRequest(t *testing.T) {
	_, url := startNATS(t)
	c := startCoordinator(t, url, t.TempDir())
	for _, body := range []string{`{}`, `{"reason": "  "}`} {
		resp, err := http.Post("http://"+c.srv.HTTPAddr()+"/v1/cluster/epoch", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), "reason: required") {
			t.Fatalf("POST /v1/cluster/epoch %s: %d %s; want 400 naming reason", body, resp.StatusCode, b)
		}
	}
	if got := c.srv.fsm.State().Epoch(); got != 1 {
		t.Fatalf("epoch %d after refused raises, want 1", got)
	}
}

// On a cluster without TLS an epoch raise is recorded with the address it
// came from, and the Raft index of its entry, as every other record is.
func TestEpoch_RaiseIsAuditedWithWhoAskedAndItsIndex(t *testing.T) {
	_, url := startNATS(t)
	c := startCoordinator(t, url, t.TempDir())
	ch, err := (&ClusterClient{}).RaiseEpoch(context.Background(), []string{c.srv.HTTPAddr()}, "rebuilt from backup")
	if err != nil {
		t.Fatal(err)
	}
	rec := epochRecord(t, c.srv, ch.To)
	if !strings.HasPrefix(rec.GetActor(), "peer 127.0.0.1:") || !strings.HasSuffix(rec.GetActor(), " (no cluster TLS)") || rec.GetIndex() == 0 ||
		!strings.Contains(rec.GetMessage(), "rebuilt from backup") {
		t.Fatalf("epoch audit record: actor %q index %d message %q", rec.GetActor(), rec.GetIndex(), rec.GetMessage())
	}
}

// A cluster change is JSON sent by switchyard itself. A web page open in
// an operator's browser can POST a form or text/plain to the coordinator
// without asking first (no CORS preflight); such a request must change
// nothing, or any page could raise the epoch or remove a coordinator.
func TestCluster_ChangesOnlyTakeJSON(t *testing.T) {
	_, url := startNATS(t)
	c := startCoordinator(t, url, t.TempDir())
	for _, path := range []string{"/v1/cluster/epoch", "/v1/cluster/remove", "/v1/cluster/join"} {
		for _, ct := range []string{"text/plain", "application/x-www-form-urlencoded", ""} {
			req, _ := http.NewRequest(http.MethodPost, "http://"+c.srv.HTTPAddr()+path,
				strings.NewReader(`{"reason": "a page did it", "id": "c9", "raft_addr": "127.0.0.1:1"}`))
			if ct != "" {
				req.Header.Set("Content-Type", ct)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnsupportedMediaType || !strings.Contains(string(b), "application/json") {
				t.Fatalf("POST %s as %q: %d %s; want 415 asking for application/json", path, ct, resp.StatusCode, b)
			}
		}
	}
	if got := c.srv.fsm.State().Epoch(); got != 1 {
		t.Fatalf("epoch %d after refused raises, want 1", got)
	}
	if n := testutil.ToFloat64(c.srv.metrics.peerRejected); n != 9 {
		t.Fatalf("%v refused cluster changes counted, want 9", n)
	}
}
