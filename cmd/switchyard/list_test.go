package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/bus"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// rollout list asks for the newest 100 rollouts unless --limit says
// otherwise, passes --service on, and says how many older rollouts the
// answer left out; a rollout named takes neither flag.
func TestCLI_RolloutListAsksForTheNewestAndSaysWhatItLeftOut(t *testing.T) {
	url, nc := runNATS(t)
	sp := &sv1.RolloutSpec{Name: "web-9", Service: "web", From: "blue", To: "green", Strategy: &sv1.Strategy{Kind: &sv1.Strategy_BlueGreen{BlueGreen: &sv1.BlueGreen{}}}}
	body, err := proto.Marshal(&sv1.RolloutsAnswer{Omitted: 8, Rollouts: []*sv1.RolloutView{{
		Rollout: &sv1.Rollout{Id: "web-9", Spec: sp, Phase: sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED, Generation: 30}, Converged: 3, Live: 3}}})
	if err != nil {
		t.Fatal(err)
	}
	asked := make(chan *sv1.RolloutsQuery, 16)
	sub, err := nc.Subscribe(bus.QuerySubject(bus.QueryRollouts), func(m *nats.Msg) {
		q := &sv1.RolloutsQuery{}
		if proto.Unmarshal(m.Data, q) == nil {
			asked <- q
		}
		_ = m.Respond(body)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args    []string
		service string
		limit   uint32
	}{
		{[]string{"rollout", "list"}, "", 100},
		{[]string{"rollout", "status"}, "", 100},
		{[]string{"rollout", "list", "--service", "web", "--limit", "1"}, "web", 1},
		{[]string{"rollout", "list", "--limit", "0"}, "", 0},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var out, errb strings.Builder
		code := run(ctx, append(c.args, "--nats", url), &out, &errb)
		cancel()
		what := strings.Join(c.args, " ")
		if code != exitOK {
			t.Fatalf("%s: exit %d, stderr %q", what, code, errb.String())
		}
		q := <-asked
		if q.GetService() != c.service || q.GetLimit() != c.limit || !q.GetSummary() {
			t.Errorf("%s asked %v; want service %q, limit %d, summary", what, q, c.service, c.limit)
		}
		if !strings.Contains(out.String(), "web-9") || !strings.Contains(out.String(), "8 older rollouts not listed (--limit 0 lists every one)") {
			t.Errorf("%s printed:\n%s\nwant web-9, then that 8 older rollouts were left out", what, out.String())
		}
	}

	for _, args := range [][]string{
		{"rollout", "status", "web-9", "--limit", "5"},
		{"rollout", "status", "--service", "web", "web-9"},
	} {
		var out, errb strings.Builder
		if code := run(context.Background(), append(args, "--nats", url), &out, &errb); code != exitUsage || !strings.Contains(errb.String(), "--service and --limit are for the list") {
			t.Errorf("%s: exit %d, stderr %q; want a usage error naming the flags", strings.Join(args, " "), code, errb.String())
		}
	}
	var out, errb strings.Builder
	if code := run(context.Background(), []string{"rollout", "list", "--limit", "-3", "--nats", url}, &out, &errb); code != exitUsage || !strings.Contains(errb.String(), "limit") {
		t.Errorf("--limit -3: exit %d, stderr %q; want a usage error naming --limit", code, errb.String())
	}
}
