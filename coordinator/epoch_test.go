package coordinator

import (
	"io"
	"math"
	"net/http"
	"strings"
	"testing"
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
