package audit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/bus"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// chain is an in-memory replicated chain: records and the export mark.
type chain struct {
	mu       sync.Mutex
	entries  []*sv1.AuditEntry
	exported uint64
	// failMarks makes recording progress fail, as when a leader dies
	// between publishing and committing the mark.
	failMarks bool
}

func (c *chain) add(t *testing.T, n int) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	for range n {
		var prev []byte
		if len(c.entries) > 0 {
			prev = c.entries[len(c.entries)-1].GetHash()
		}
		seq := uint64(len(c.entries) + 1)
		e, err := Seal(prev, &sv1.AuditRecord{Seq: seq, Kind: "decision", Message: fmt.Sprintf("decision %d", seq)})
		if err != nil {
			t.Fatal(err)
		}
		c.entries = append(c.entries, e)
	}
}

func (c *chain) AuditHead() *sv1.AuditHead {
	c.mu.Lock()
	defer c.mu.Unlock()
	h := &sv1.AuditHead{Seq: uint64(len(c.entries)), Exported: c.exported}
	if len(c.entries) > 0 {
		h.Hash = c.entries[len(c.entries)-1].GetHash()
	}
	return h
}

func (c *chain) AuditEntries(after uint64, limit int) []*sv1.AuditEntry {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*sv1.AuditEntry
	for _, e := range c.entries[after:] {
		out = append(out, e)
		if limit > 0 && len(out) == limit {
			break
		}
	}
	return out
}

func (c *chain) AuditExported(through uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.failMarks {
		return errors.New("leadership lost")
	}
	c.exported = max(c.exported, through)
	return nil
}

func exporter(t *testing.T, js jetstream.JetStream, c *chain) *Exporter {
	t.Helper()
	m, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return &Exporter{JS: js, Source: c, Raft: c, Replicas: 1, Metrics: m, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

func streamMsgs(t *testing.T, js jetstream.JetStream) []Stored {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	msgs, _, err := ReadStream(ctx, js, 0)
	if err != nil {
		t.Fatal(err)
	}
	return msgs
}

// auditStream runs a NATS server storing in dir with the audit stream,
// and connects to it (reconnecting for as long as the test runs).
func auditStream(t *testing.T, dir string) (*server.Server, jetstream.JetStream) {
	t.Helper()
	ns, err := bus.RunEmbedded(bus.EmbeddedOptions{StoreDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	nc, err := nats.Connect(ns.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := bus.EnsureAuditStream(ctx, js, 1); err != nil {
		t.Fatal(err)
	}
	return ns, js
}

func TestAudit_ExportResumesAfterALeaderDiedBeforeRecordingProgress(t *testing.T) {
	dir := t.TempDir()
	ns, js := auditStream(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	c := &chain{}
	c.add(t, 300) // more than one batch
	c.failMarks = true
	if err := exporter(t, js, c).Step(ctx); err != nil {
		t.Fatal(err)
	}
	if c.exported != 0 {
		t.Fatal("mark recorded although Raft refused it")
	}
	// The next leader sees the mark at 0 but the stream at 300: it goes on
	// from the stream, publishing nothing twice.
	c.failMarks = false
	c.add(t, 5)
	x := exporter(t, js, c)
	if err := x.Step(ctx); err != nil {
		t.Fatal(err)
	}
	msgs := streamMsgs(t, js)
	if len(msgs) != 305 || c.exported != 305 {
		t.Fatalf("stream holds %d messages, mark %d; want 305 and 305", len(msgs), c.exported)
	}
	v, err := VerifyStored(msgs)
	if err != nil || v.Last != 305 {
		t.Fatalf("verify: %v (last %d)", err, v.Last)
	}
	// A republish of a record already stored (a lost acknowledgement) is
	// dropped by its Nats-Msg-Id.
	e := c.entries[304]
	b, _ := proto.Marshal(e)
	m := nats.NewMsg(bus.AuditSubject())
	m.Data = b
	m.Header.Set(bus.MsgIDHeader, bus.AuditMsgID(305, e.GetHash()))
	if ack, err := js.PublishMsg(ctx, m); err != nil || !ack.Duplicate {
		t.Fatalf("republish: %v %v, want a duplicate", ack, err)
	}

	// NATS goes away: the export fails, the records wait, nothing is
	// lost; when it is back the export catches up.
	port := ns.Addr().(*net.TCPAddr).Port
	ns.Shutdown()
	ns.WaitForShutdown()
	c.add(t, 7)
	sctx, scancel := context.WithTimeout(ctx, 2*time.Second)
	if err := x.Step(sctx); err == nil {
		t.Fatal("export succeeded with NATS down")
	}
	scancel()
	ns2, err := bus.RunEmbedded(bus.EmbeddedOptions{StoreDir: dir, Port: port})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns2.Shutdown(); ns2.WaitForShutdown() })
	deadline := time.Now().Add(20 * time.Second)
	for {
		sctx, scancel := context.WithTimeout(ctx, 2*time.Second)
		err := x.Step(sctx)
		scancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("export did not catch up after NATS came back: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	msgs = streamMsgs(t, js)
	if v, err := VerifyStored(msgs); err != nil || v.Last != 312 || len(msgs) != 312 {
		t.Fatalf("after the outage: %d messages, %v (last %d); want 312, verified", len(msgs), err, v.Last)
	}
}

func TestAudit_VerifyNamesTheFirstBrokenLink(t *testing.T) {
	c := &chain{}
	c.add(t, 5)
	stored := func() []Stored {
		var out []Stored
		for i, e := range c.entries {
			out = append(out, Stored{StreamSeq: uint64(i + 1), Seq: uint64(i + 1), Entry: proto.Clone(e).(*sv1.AuditEntry)})
		}
		return out
	}
	if v, err := VerifyStored(stored()); err != nil || v.Last != 5 {
		t.Fatalf("good chain: %v", err)
	}
	flipped := stored()
	flipped[2].Entry.Record[4] ^= 1
	missing := append(stored()[:1], stored()[2:]...)
	// A byte-for-byte copy of record 4 is listed apart; another record 4
	// breaks the chain.
	copied := append(stored(), stored()[3])
	copied[5].StreamSeq = 6
	if v, err := VerifyStored(copied); err != nil || v.Last != 5 || !slices.Equal(v.Copies, []uint64{6}) {
		t.Fatalf("a copy of record 4: %v (last %d, copies %v); want the chain whole and stream sequence 6 listed", err, v.Last, v.Copies)
	}
	other, _ := Open(stored()[3].Entry)
	other.Message = "another record 4"
	otherEntry, _ := Seal(other.GetPrevHash(), other)
	dup := append(stored(), Stored{StreamSeq: 6, Seq: 4, Entry: otherEntry})
	relinked := stored()
	// A record rewritten with a matching hash still breaks the next link.
	rec, _ := Open(relinked[1].Entry)
	rec.Message = "rewritten"
	e, _ := Seal(rec.GetPrevHash(), rec)
	relinked[1].Entry = e
	for _, cs := range []struct {
		name string
		msgs []Stored
		want string
	}{
		{"flipped byte", flipped, "record 3 (stream sequence 3): hash"},
		{"missing record", missing, "record 3 follows record 1 (gap)"},
		{"another record of the same sequence", dup, "record 4 follows record 4 (duplicate"},
		{"rewritten and rehashed", relinked, "record 3 (stream sequence 3): record 3 names previous hash"},
	} {
		_, err := VerifyStored(cs.msgs)
		if !errors.Is(err, ErrBroken) || !strings.Contains(err.Error(), cs.want) {
			t.Fatalf("%s: %v; want %q", cs.name, err, cs.want)
		}
	}
}

func BenchmarkAudit_Seal(b *testing.B) {
	rec := &sv1.AuditRecord{Seq: 1, Kind: "intent", Actor: "alice", ActorKey: "UABCDEFGHIJKLMNOPQRSTUVWXYZ234567ABCDEFGHIJKLMNOPQRSTUV",
		IntentId: "aZ0123456789abcdefghij", Action: "apply_rollout", Rollout: "web-42", Service: "web", Accepted: true,
		Message: "started: web from blue to green, wave all step 1/3 (setWeight 20, new backend at 20%)", IntentSha256: make([]byte, 32)}
	prev := make([]byte, 32)
	for b.Loop() {
		if _, err := Seal(prev, rec); err != nil {
			b.Fatal(err)
		}
	}
}

// A message that is not a record, last in the stream (a JetStream API
// answer the server stored there, or something holding a coordinator's
// rights), does not stop the export: it goes on after the replicated mark,
// and verifying names the message apart from the chain.
func TestAudit_ExportGoesOnPastAMessageThatIsNotARecord(t *testing.T) {
	_, js := auditStream(t, t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := &chain{}
	c.add(t, 5)
	x := exporter(t, js, c)
	if err := x.Step(ctx); err != nil {
		t.Fatal(err)
	}
	for _, junk := range [][]byte{[]byte("not a record"), nil} {
		if _, err := js.Publish(ctx, bus.AuditSubject(), junk); err != nil {
			t.Fatal(err)
		}
		if _, err := StreamLastSeq(ctx, js); !errors.Is(err, ErrLastNotRecord) {
			t.Fatalf("last message %q: %v, want ErrLastNotRecord", junk, err)
		}
		c.add(t, 3)
		if err := x.Step(ctx); err != nil {
			t.Fatalf("export after %q: %v", junk, err)
		}
	}
	if c.exported != 11 {
		t.Fatalf("exported through %d, want 11", c.exported)
	}
	if last, err := StreamLastSeq(ctx, js); err != nil || last != 11 {
		t.Fatalf("stream's last record %d, %v; want 11", last, err)
	}
	// The chain verifies; the two messages are named apart.
	v, err := VerifyStored(streamMsgs(t, js))
	if err != nil || v.Last != 11 || !slices.Equal(v.Foreign, []uint64{6, 10}) {
		t.Fatalf("verify: %v (last %d, not records %v); want records 1..11 and stream sequences 6 and 10 named", err, v.Last, v.Foreign)
	}
}
