package coordinator

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/bus"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// The state keeps every rollout ever applied: a list takes the newest N
// and counts the rest, copying only what it returns.
func TestState_NewestRolloutsCutsToTheNewestAndCountsTheRest(t *testing.T) {
	st := historyState(t, 30, time.Date(2026, 9, 1, 0, 0, 0, 0, time.UTC)).State()
	all := st.Rollouts()
	if len(all) != 31 {
		t.Fatalf("%d rollouts, want 31", len(all))
	}
	got, omitted := st.NewestRollouts(nil, 5)
	if len(got) != 5 || omitted != 26 {
		t.Fatalf("newest 5: %d rollouts, %d left out; want 5 and 26", len(got), omitted)
	}
	for i, r := range got {
		if r.GetId() != all[i].GetId() {
			t.Errorf("newest 5, #%d: %s, want %s (newest first)", i, r.GetId(), all[i].GetId())
		}
	}
	got[0].Id = "changed"
	if st.Rollout(all[0].GetId()) == nil {
		t.Error("a returned rollout is the state's own, not a copy")
	}
	if got, omitted := st.NewestRollouts(nil, 0); len(got) != 31 || omitted != 0 {
		t.Errorf("limit 0: %d rollouts, %d left out; want every one", len(got), omitted)
	}
	if got, omitted := st.NewestRollouts(nil, 100); len(got) != 31 || omitted != 0 {
		t.Errorf("limit above the count: %d rollouts, %d left out; want every one", len(got), omitted)
	}
}

// rollout list on a long-lived cluster: one service's rollouts, the newest
// N, and how many it left out, on the bus and over HTTP; a query naming a
// rollout takes neither.
func TestQuery_RolloutsOfOneServiceAndTheNewest(t *testing.T) {
	nc, url := startNATS(t)
	c := startCoordinator(t, url, t.TempDir())
	for i, svc := range []string{"web", "api", "db"} {
		in := applyIntent(fmt.Sprintf("i-%d", i), svc+"-1")
		in.GetApplyRollout().GetSpec().Service = svc
		if res := send(t, nc, in); !res.GetAccepted() {
			t.Fatalf("apply %s-1: %v", svc, res)
		}
	}
	ask := func(q *sv1.RolloutsQuery) (*sv1.RolloutsAnswer, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var ans sv1.RolloutsAnswer
		err := bus.Query(ctx, nc, bus.QueryRollouts, q, &ans)
		return &ans, err
	}
	ids := func(ans *sv1.RolloutsAnswer) string {
		var out []string
		for _, v := range ans.GetRollouts() {
			out = append(out, v.GetRollout().GetId())
		}
		return strings.Join(out, ",")
	}
	for _, c := range []struct {
		q       *sv1.RolloutsQuery
		want    string
		omitted uint32
	}{
		{&sv1.RolloutsQuery{Summary: true}, "db-1,api-1,web-1", 0},
		{&sv1.RolloutsQuery{Summary: true, Limit: 2}, "db-1,api-1", 1},
		{&sv1.RolloutsQuery{Summary: true, Service: "api"}, "api-1", 0},
		{&sv1.RolloutsQuery{Summary: true, Service: "web", Limit: 1}, "web-1", 0},
		{&sv1.RolloutsQuery{Summary: true, Service: "cache"}, "", 0},
	} {
		ans, err := ask(c.q)
		if err != nil || ids(ans) != c.want || ans.GetOmitted() != c.omitted {
			t.Errorf("%v: %s, %d left out, %v; want %s, %d left out", c.q, ids(ans), ans.GetOmitted(), err, c.want, c.omitted)
		}
	}
	if _, err := ask(&sv1.RolloutsQuery{Rollout: "web-1", Limit: 1}); err == nil || !strings.Contains(err.Error(), "takes neither") {
		t.Errorf("a named rollout with a limit: %v, want a refusal", err)
	}

	base := "http://" + c.srv.HTTPAddr()
	var byHTTP sv1.RolloutsAnswer
	if code, body := getAPI(t, base+"/v1/rollouts?summary=true&limit=1&service=api", &byHTTP); code != http.StatusOK || ids(&byHTTP) != "api-1" {
		t.Errorf("GET /v1/rollouts?summary=true&limit=1&service=api: %d %s", code, body)
	}
	if code, body := getAPI(t, base+"/v1/rollouts?summary=true&limit=2", &byHTTP); code != http.StatusOK || ids(&byHTTP) != "db-1,api-1" || byHTTP.GetOmitted() != 1 {
		t.Errorf("GET /v1/rollouts?summary=true&limit=2: %d %s", code, body)
	}
	for path, want := range map[string]string{
		"/v1/rollouts?limit=x":            `limit="x": want how many`,
		"/v1/rollouts?limit=-1":           `limit="-1"`,
		"/v1/rollouts?name=web-1&limit=1": "takes neither",
	} {
		if code, body := getAPI(t, base+path, nil); code != http.StatusBadRequest || !strings.Contains(body, want) {
			t.Errorf("GET %s: %d %s; want 400 saying %q", path, code, body, want)
		}
	}
}
