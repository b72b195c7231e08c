package coordinator

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/bus"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// On a fleet of twelve thousand nodes (one label each) one rollout's view lists every node and
// is bigger than a NATS message may be (1 MB by default): it comes in
// parts to an asker that takes them, with a clear error to one that does
// not, and a list of rollouts counts the nodes without listing them.
func TestQuery_AFleetTooBigForOneMessage(t *testing.T) {
	nc, url := startNATS(t)
	c := startCoordinator(t, url, t.TempDir())
	const nodes = 12000
	weights := map[string]uint32{"blue": 100, "green": 0}
	for i := range nodes {
		publishLabelled(t, nc, fmt.Sprintf("edge-%05d", i), "eu", 0, weights)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "every node heard of", 30*time.Second, func() bool {
		f, err := c.srv.Fleet(&sv1.FleetQuery{Service: "web"})
		return err == nil && len(f.GetNodes()) == nodes
	})
	if res := send(t, nc, applyIntent("big-1", "web-1")); !res.GetAccepted() {
		t.Fatalf("apply: %v", res)
	}

	whole, err := c.srv.Rollouts(&sv1.RolloutsQuery{Rollout: "web-1"})
	if err != nil {
		t.Fatal(err)
	}
	if size := proto.Size(whole); int64(size) <= nc.MaxPayload() {
		t.Fatalf("the view is %d bytes, not more than one message (%d): the test proves nothing", size, nc.MaxPayload())
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var got sv1.RolloutsAnswer
	if err := bus.Query(ctx, nc, bus.QueryRollouts, &sv1.RolloutsQuery{Rollout: "web-1"}, &got); err != nil {
		t.Fatalf("a view bigger than one message: %v", err)
	}
	v := got.GetRollouts()[0]
	if len(v.GetNodes()) != nodes || v.GetNodes()[nodes-1].GetNode() != fmt.Sprintf("edge-%05d", nodes-1) || v.GetLive() != nodes {
		t.Fatalf("the view came back with %d nodes (live %d), want all %d", len(v.GetNodes()), v.GetLive(), nodes)
	}
	var fleet sv1.FleetAnswer
	if err := bus.Query(ctx, nc, bus.QueryFleet, &sv1.FleetQuery{Service: "web"}, &fleet); err != nil || len(fleet.GetNodes()) != nodes {
		t.Fatalf("the fleet: %d nodes, %v", len(fleet.GetNodes()), err)
	}

	// An asker that does not take parts (a plain NATS request) learns why
	// it gets no view.
	q, _ := proto.Marshal(&sv1.RolloutsQuery{Rollout: "web-1"})
	m, err := nc.RequestWithContext(ctx, bus.QuerySubject(bus.QueryRollouts), q)
	if err != nil {
		t.Fatal(err)
	}
	if e := m.Header.Get(bus.ErrorHeader); !strings.Contains(e, "more than one message carries") || len(m.Data) != 0 {
		t.Fatalf("a plain request for a big view: error %q, %d bytes", e, len(m.Data))
	}

	// A list counts each rollout's nodes without listing them: small
	// whatever the fleet.
	var list sv1.RolloutsAnswer
	if err := bus.Query(ctx, nc, bus.QueryRollouts, &sv1.RolloutsQuery{Summary: true}, &list); err != nil {
		t.Fatal(err)
	}
	if len(list.GetRollouts()) != 1 || proto.Size(&list) > 4096 {
		t.Fatalf("summary of %d rollouts is %d bytes", len(list.GetRollouts()), proto.Size(&list))
	}
	for _, v := range list.GetRollouts() {
		if len(v.GetNodes()) != 0 || v.GetLive() != nodes {
			t.Fatalf("summary of %s: %d nodes listed, %d live; want none listed, %d live", v.GetRollout().GetId(), len(v.GetNodes()), v.GetLive(), nodes)
		}
	}

	// The read API likewise, and a summary that is neither true nor false
	// is a bad request that names the parameter.
	base := "http://" + c.srv.HTTPAddr()
	var viaHTTP sv1.RolloutsAnswer
	if code, body := getAPI(t, base+"/v1/rollouts?summary=true", &viaHTTP); code != http.StatusOK || len(viaHTTP.GetRollouts()) != 1 ||
		len(viaHTTP.GetRollouts()[0].GetNodes()) != 0 || viaHTTP.GetRollouts()[0].GetLive() != nodes {
		t.Fatalf("GET /v1/rollouts?summary=true: %d %.200s", code, body)
	}
	if code, body := getAPI(t, base+"/v1/rollouts?summary=yes", nil); code != http.StatusBadRequest || !strings.Contains(body, "summary") {
		t.Fatalf("GET /v1/rollouts?summary=yes: %d %s", code, body)
	}
	// A misspelt parameter would answer for the whole fleet as if asked;
	// it is refused, naming it and what the route takes.
	for path, want := range map[string]string{
		"/v1/fleet?servce=web":            `unknown parameter "servce": this route takes service, reached, stale`,
		"/v1/rollouts?nmae=web-1":         `unknown parameter "nmae": this route takes name, summary, service, limit, stale`,
		"/v1/overview?stale=1":            `stale="1": want true or false`,
		"/v1/drills?name=a&name=b":        `parameter "name" given 2 times`,
		"/v1/rollouts/web-1?summary=true": `unknown parameter "summary": this route takes stale`,
	} {
		if code, body := getAPI(t, base+path, nil); code != http.StatusBadRequest || !strings.Contains(body, want) {
			t.Errorf("GET %s: %d %s, want 400 saying %s", path, code, body, want)
		}
	}
	var ov sv1.Overview
	if code, body := getAPI(t, base+"/v1/overview", &ov); code != http.StatusOK || len(ov.GetRollouts().GetRollouts()[0].GetNodes()) != 0 ||
		ov.GetRollouts().GetRollouts()[0].GetLive() != nodes {
		t.Fatalf("GET /v1/overview: %d %.200s", code, body)
	}
}
