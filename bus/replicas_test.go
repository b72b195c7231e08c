package bus

import (
	"context"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchyard/switchyard/internal/freeport"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// startCluster runs three clustered JetStream servers in this process, on
// ports picked at run time, and returns them with a client URL list.
func startCluster(t *testing.T) ([]*server.Server, string) {
	t.Helper()
	const n = 3
	routePorts := make([]int, n)
	for i := range n {
		routePorts[i] = freePort(t)
	}
	var routes []*url.URL
	for _, p := range routePorts {
		routes = append(routes, &url.URL{Scheme: "nats", Host: fmt.Sprintf("127.0.0.1:%d", p)})
	}
	var servers []*server.Server
	var urls string
	for i := range n {
		s, err := server.NewServer(&server.Options{
			ServerName: fmt.Sprintf("n%d", i+1),
			Host:       "127.0.0.1",
			Port:       server.RANDOM_PORT,
			JetStream:  true,
			StoreDir:   t.TempDir(),
			NoSigs:     true,
			Cluster:    server.ClusterOpts{Name: "sy", Host: "127.0.0.1", Port: routePorts[i]},
			Routes:     routes,
		})
		if err != nil {
			t.Fatal(err)
		}
		s.Start()
		t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
		if !s.ReadyForConnections(10 * time.Second) {
			t.Fatalf("server n%d not ready", i+1)
		}
		servers = append(servers, s)
		if urls != "" {
			urls += ","
		}
		urls += s.ClientURL()
	}
	// JetStream's meta group must have elected a leader before streams can
	// be created.
	deadline := time.Now().Add(30 * time.Second)
	for {
		for _, s := range servers {
			if s.JetStreamIsLeader() {
				return servers, urls
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("no JetStream meta leader within 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	p, err := freeport.Pick()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// On a three-server cluster the streams and buckets get three replicas,
// nothing lowers what a stream has, and losing any one server stops no
// write.
func TestReplicas_ClusterGetsThreeAndNeverLess(t *testing.T) {
	servers, urls := startCluster(t)
	nc, err := nats.Connect(urls, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if r := ChooseReplicas(nc, 0); r != 3 {
		t.Fatalf("ChooseReplicas on a 3-server cluster = %d, want 3", r)
	}
	if r := ChooseReplicas(nc, 2); r != 2 {
		t.Fatalf("ChooseReplicas with 2 configured = %d, want 2", r)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// The meta leader may take a moment after the cluster forms.
	var kv jetstream.KeyValue
	for {
		actx, acancel := context.WithTimeout(ctx, 3*time.Second)
		kv, err = EnsureDesiredBucket(actx, js, 3)
		acancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("ensure desired bucket: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := EnsureIntentStream(ctx, js, 3); err != nil {
		t.Fatal(err)
	}
	// A coordinator configured for 1 (or one that sees fewer servers)
	// must not lower them.
	if _, err := EnsureDesiredBucket(ctx, js, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := EnsureIntentStream(ctx, js, 1); err != nil {
		t.Fatal(err)
	}
	got, err := StreamReplicas(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	if got[IntentStream] != 3 || got["KV_"+DesiredBucket] != 3 {
		t.Fatalf("replicas after ensuring with 1: %v, want 3 kept", got)
	}

	signer, ring := testSigner(t, 1, time.Minute)
	pub := &Publisher{Signer: signer, Trusted: ring}
	if _, err := pub.PutDesired(ctx, kv, &sv1.DesiredState{Service: "web", Epoch: 1, Generation: 5}, time.Now()); err != nil {
		t.Fatal(err)
	}
	// One server gone (any one: the first is the one the client is most
	// likely connected to): writes and reads go on.
	servers[0].Shutdown()
	servers[0].WaitForShutdown()
	const gen = 10
	var perr error
	// Each attempt is bounded on its own: a request in flight to the server
	// that went away is not answered, and the next attempt goes elsewhere.
	for ctx.Err() == nil {
		actx, acancel := context.WithTimeout(ctx, 3*time.Second)
		_, perr = pub.PutDesired(actx, kv, &sv1.DesiredState{Service: "web", Epoch: 1, Generation: gen}, time.Now())
		acancel()
		if perr == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if perr != nil {
		t.Fatalf("with server n1 down: put generation %d: %v", gen, perr)
	}
	if g, err := PublishedGeneration(ctx, js, "web"); err != nil || g != gen {
		t.Fatalf("with server n1 down: bucket has generation %d (%v), want %d", g, err, gen)
	}
}
