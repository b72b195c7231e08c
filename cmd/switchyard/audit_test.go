package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/coordinator/audit"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// sealChain makes n records, 1..n, as a coordinator seals them.
func sealChain(t *testing.T, n int, about func(seq uint64) *sv1.AuditRecord) []*sv1.AuditEntry {
	t.Helper()
	var out []*sv1.AuditEntry
	var prev []byte
	for i := range n {
		rec := about(uint64(i + 1))
		rec.Seq = uint64(i + 1)
		e, err := audit.Seal(prev, rec)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
		prev = e.GetHash()
	}
	return out
}

// publishAudit writes entries to the audit stream as the exporter does.
func publishAudit(t *testing.T, nc *nats.Conn, entries ...*sv1.AuditEntry) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bus.EnsureAuditStream(ctx, js, 1); err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		rec, err := audit.Open(e)
		if err != nil {
			rec = &sv1.AuditRecord{}
			_ = proto.Unmarshal(e.GetRecord(), rec)
		}
		b, err := proto.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		m := nats.NewMsg(bus.AuditSubject())
		m.Data = b
		m.Header.Set(bus.MsgIDHeader, bus.AuditMsgID(rec.GetSeq(), e.GetHash()))
		m.Header.Set(bus.AuditSeqHeader, strconv.FormatUint(rec.GetSeq(), 10))
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
}

// answerAudit answers every audit query as a coordinator holding entries,
// all exported, would.
func answerAudit(t *testing.T, nc *nats.Conn, entries []*sv1.AuditEntry) {
	t.Helper()
	last := entries[len(entries)-1]
	ans := &sv1.AuditAnswer{Entries: entries,
		Head: &sv1.AuditHead{Seq: uint64(len(entries)), Hash: last.GetHash(), Exported: uint64(len(entries))}}
	body, err := proto.Marshal(ans)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := nc.Subscribe(bus.QuerySubject(bus.QueryAudit), func(m *nats.Msg) { _ = m.Respond(body) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

func decisions(seq uint64) *sv1.AuditRecord {
	return &sv1.AuditRecord{Kind: "decision", Actor: "switchyard", Rollout: "web-1", Accepted: true, Message: fmt.Sprintf("decision %d", seq)}
}

// A record appended to the stream by someone who can write it, linked
// onto the real chain (the chain has no key: anyone can extend it), is one
// the coordinators never made; verify says so rather than "ok".
func TestCLI_AuditVerifyCatchesARecordAppendedPastTheCoordinatorsHead(t *testing.T) {
	url, nc := runNATS(t)
	real := sealChain(t, 3, decisions)
	publishAudit(t, nc, real...)
	answerAudit(t, nc, real)
	if code, out, stderr := runCLI(t, "audit", "verify", "--nats", url, "--timeout", "5s"); code != exitOK {
		t.Fatalf("the true chain: exit %d\n%s%s", code, out, stderr)
	}

	forged, err := audit.Seal(real[2].GetHash(), &sv1.AuditRecord{Seq: 4, Kind: "intent", Actor: "alice", Action: "approve_rollout",
		Rollout: "web-1", Accepted: true, Message: "approved at wave all step 2/3"})
	if err != nil {
		t.Fatal(err)
	}
	publishAudit(t, nc, forged)
	code, out, stderr := runCLI(t, "audit", "verify", "--nats", url, "--timeout", "5s")
	if code != exitFailure || !strings.Contains(out+stderr, "record 4") {
		t.Fatalf("a forged record 4 past the coordinators' head 3: exit %d\n%s%s", code, out, stderr)
	}
}

// Whoever may read the audit stream through the JetStream API (a viewer)
// can name its subject as the reply subject of an API request, and the
// NATS server stores its answer in the stream: JSON, or for a direct get,
// a copy of the record read (kept once the stream's duplicate window has
// passed). Neither is part of the chain: verify says the chain holds and
// names them apart.
func TestCLI_AuditVerifyNamesJetStreamAnswersStoredInTheStream(t *testing.T) {
	url, nc := runNATS(t)
	real := sealChain(t, 3, decisions)
	publishAudit(t, nc, real...)
	answerAudit(t, nc, real)
	if err := nc.PublishRequest("$JS.API.STREAM.INFO."+bus.AuditStream, bus.AuditSubject(), nil); err != nil {
		t.Fatal(err)
	}
	// The server answers the API request on its own time: wait for the
	// answer to stand at sequence 4 before the copy goes in after it.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	for {
		s, err := js.Stream(ctx, bus.AuditStream)
		if err != nil {
			t.Fatal(err)
		}
		if s.CachedInfo().State.LastSeq >= 4 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("the JetStream answer never reached the audit stream")
		case <-time.After(10 * time.Millisecond):
		}
	}
	// The copy a direct get of record 2 leaves after the duplicate window
	// (two minutes): its headers and bytes, no message id left to match.
	b, err := proto.Marshal(real[1])
	if err != nil {
		t.Fatal(err)
	}
	m := nats.NewMsg(bus.AuditSubject())
	m.Data = b
	m.Header.Set(bus.AuditSeqHeader, "2")
	if _, err := js.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := runCLI(t, "audit", "verify", "--nats", url, "--timeout", "5s")
	if code != exitOK || !strings.Contains(out, "records 1..3 verify") || !strings.Contains(out, "1 messages are not records (stream sequences 4)") ||
		!strings.Contains(out, "1 messages are second copies of records (stream sequences 5)") {
		t.Fatalf("the chain, a JetStream answer and a copy of record 2 after it: exit %d\n%s%s", code, out, stderr)
	}
	// The log says what they are, where they stand.
	code, out, stderr = runCLI(t, "audit", "log", "--nats", url, "--timeout", "5s")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != exitOK || len(lines) != 5 || lines[3] != "(stream sequence 4: not an audit record; not part of the chain)" ||
		lines[4] != "(stream sequence 5: a second copy of record 2; not part of the chain)" {
		t.Fatalf("audit log: exit %d\n%s%s", code, out, stderr)
	}
}

// A record about a rollout altered in the stream no longer verifies;
// `audit log --rollout` still shows it, marked, rather than leaving it out
// of the one view an operator reconstructing that rollout reads.
func TestCLI_AuditLogForARolloutShowsItsRecordsThatDoNotVerify(t *testing.T) {
	url, nc := runNATS(t)
	entries := sealChain(t, 3, decisions)
	altered := proto.Clone(entries[1]).(*sv1.AuditEntry)
	i := strings.Index(string(altered.Record), "decision 2")
	if i < 0 {
		t.Fatal("record 2 does not hold its message")
	}
	altered.Record[i] = 'D'
	publishAudit(t, nc, entries[0], altered, entries[2])

	code, out, stderr := runCLI(t, "audit", "log", "--rollout", "web-1", "--nats", url, "--timeout", "5s")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.Contains(lines[1], "#2 (stream sequence 2): DOES NOT VERIFY") {
		t.Fatalf("audit log --rollout web-1 printed:\n%s\nwant records 1 to 3, record 2 marked as not verifying", out)
	}
	// A record about another rollout stays out, verified or not.
	code, out, _ = runCLI(t, "audit", "log", "--rollout", "web-2", "--nats", url, "--timeout", "5s")
	if code != exitOK || strings.TrimSpace(out) != "" {
		t.Fatalf("audit log --rollout web-2: exit %d\n%s", code, out)
	}
}

// verify prints a report and sets its exit code; the help promised -o json
// and it printed the same text, and it took log's --rollout and --follow
// and verified everything, once. Each is refused, naming the flag.
func TestCLI_AuditVerifyRefusesTheFlagsItDoesNotHonour(t *testing.T) {
	for _, args := range [][]string{{"-o", "json"}, {"--rollout", "web-1"}, {"--follow"}} {
		code, _, stderr := runCLI(t, append([]string{"audit", "verify", "--nats", "nats://127.0.0.1:1"}, args...)...)
		if code != exitUsage || !strings.Contains(stderr, strings.TrimLeft(args[0], "-")) {
			t.Errorf("audit verify %s: exit %d, stderr %q; want exit %d naming the flag", strings.Join(args, " "), code, stderr, exitUsage)
		}
	}
	if _, out, _ := runCLI(t, "audit", "help"); strings.Contains(out, "verify [-o json]") {
		t.Errorf("audit help still offers verify -o json:\n%s", out)
	}
}
