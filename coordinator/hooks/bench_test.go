package hooks

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// BenchmarkHooks_GateRoundTrip measures one gate from shut to open: the due
// entry, the HTTP call to a local receiver, the recorded outcome and the
// gate's second look, on the in-memory state (Raft's commits come on top
// in a cluster).
func BenchmarkHooks_GateRoundTrip(b *testing.B) {
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer srv.Close()
	wh := webhook("gate", sv1.HookPoint_HOOK_POINT_PRE_PROMOTION, srv.URL, true)
	for range b.N {
		b.StopTimer()
		m := newRaft(b, hookedSpec(wh))
		g := &Gate{Raft: m}
		c := caller(m)
		b.StartTimer()
		if w, err := g.Hold(m.st.Rollout("r1"), 0, 2, true, t0); err != nil || w == "" {
			b.Fatalf("gate open before its call: %q %v", w, err)
		}
		c.Step(context.Background())
		c.Wait()
		if w, err := g.Hold(m.st.Rollout("r1"), 0, 2, true, t0); err != nil || w != "" {
			b.Fatalf("gate still shut: %q %v", w, err)
		}
	}
}
