package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/coordinator/audit"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

const auditUsage = `Usage:
  switchyard audit log [--follow] [--rollout NAME] [-o json]
      the records of the SWITCHYARD_AUDIT stream, oldest first; -o json prints one JSON
      object per line: {"seq", "hash", "record"}
  switchyard audit verify
      recompute the hash chain from the stream, then compare it with a coordinator's
      replicated chain; exit 1 naming the first broken link
Common flags as for 'switchyard rollout' (--nats, --nats-creds, --nats-ca, --timeout).
`

func runAudit(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, auditUsage)
		return errUsage
	}
	verb := args[0]
	switch verb {
	case "log", "verify":
	case "-h", "--help", "help":
		fmt.Fprint(stdout, auditUsage)
		return nil
	default:
		return usageErr(stderr, "switchyard audit: unknown verb %q\n\n%s", verb, auditUsage)
	}
	fs := newFlags("audit "+verb, stderr)
	var c clientFlags
	c.register(fs)
	// verify checks the whole chain and prints a report: log's filters and
	// JSON are not for it.
	var follow *bool
	var rollout *string
	if verb == "log" {
		follow = fs.Bool("follow", false, "keep printing new records until interrupted")
		rollout = fs.String("rollout", "", "only records about this rollout")
	}
	pos, err := c.parse(fs, args[1:], stderr)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageErr(stderr, "switchyard audit %s: unexpected argument %q", verb, pos[0])
	}
	if verb == "verify" && c.output != "table" {
		return usageErr(stderr, "switchyard audit verify: -o %q: verify prints a report and says by its exit code whether the chain holds; want table", c.output)
	}
	nc, err := c.connect(ctx)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := c.security.sec.JetStream(nc)
	if err != nil {
		return err
	}
	if verb == "verify" {
		return auditVerify(ctx, c, js, nc, stdout)
	}
	var after uint64
	// seen are the hashes of the records printed, by sequence: a second
	// copy of one is said to be one.
	seen := map[uint64][]byte{}
	for {
		rctx, cancel := context.WithTimeout(ctx, c.timeout)
		msgs, last, err := audit.ReadStream(rctx, js, after)
		cancel()
		if err != nil {
			if *follow && ctx.Err() != nil {
				// Interrupted mid-read: --follow ends on Ctrl-C, as it
				// does between reads.
				return nil
			}
			return err
		}
		for _, m := range msgs {
			if apart := notInChain(m, seen); apart != "" {
				if *rollout == "" {
					printApart(stdout, m, apart, c.output == "json")
				}
				continue
			}
			if _, ok := seen[m.Seq]; !ok && m.Err == nil {
				if _, err := audit.Open(m.Entry); err == nil {
					seen[m.Seq] = m.Entry.GetHash()
				}
			}
			printAuditRecord(stdout, m, *rollout, c.output == "json")
		}
		after = last
		if !*follow {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// notInChain says why m is not part of the chain (audit.VerifyStored),
// or "" when it is a record: it claims none, or it is a second copy of a
// record in seen.
func notInChain(m audit.Stored, seen map[uint64][]byte) string {
	if m.Seq == 0 {
		return "not an audit record"
	}
	// The same hash, and bytes that hash to it: the same record.
	if h, ok := seen[m.Seq]; ok && m.Err == nil && bytes.Equal(h, m.Entry.GetHash()) {
		if _, err := audit.Open(m.Entry); err == nil {
			return fmt.Sprintf("a second copy of record %d", m.Seq)
		}
	}
	return ""
}

// printApart prints a message of the stream that is not part of the chain.
func printApart(w io.Writer, m audit.Stored, why string, asJSON bool) {
	if asJSON {
		b, _ := json.Marshal(map[string]any{"streamSequence": m.StreamSeq, "notInChain": why})
		fmt.Fprintln(w, string(b))
		return
	}
	fmt.Fprintf(w, "(stream sequence %d: %s; not part of the chain)\n", m.StreamSeq, why)
}

func printAuditRecord(w io.Writer, m audit.Stored, rollout string, asJSON bool) {
	var rec *sv1.AuditRecord
	var bad error = m.Err
	if bad == nil {
		rec, bad = audit.Open(m.Entry)
	}
	if rollout != "" {
		about := rec
		if about == nil && m.Err == nil {
			// A record that does not verify is shown, marked, when it
			// still reads as about the rollout: leaving it out would hide
			// the tampering from the view of that rollout.
			about = &sv1.AuditRecord{}
			if proto.Unmarshal(m.Entry.GetRecord(), about) != nil {
				about = nil
			}
		}
		// One that does not even decode may be about it: shown too.
		if about != nil && about.GetRollout() != rollout {
			return
		}
	}
	if bad != nil {
		if asJSON {
			b, _ := json.Marshal(map[string]any{"streamSequence": m.StreamSeq, "seq": m.Seq, "error": bad.Error()})
			fmt.Fprintln(w, string(b))
			return
		}
		fmt.Fprintf(w, "#%d (stream sequence %d): DOES NOT VERIFY: %v\n", m.Seq, m.StreamSeq, bad)
		return
	}
	if asJSON {
		body, _ := protojson.Marshal(rec)
		b, _ := json.Marshal(struct {
			Seq    uint64          `json:"seq"`
			Hash   string          `json:"hash"`
			Record json.RawMessage `json:"record"`
		}{rec.GetSeq(), hex.EncodeToString(m.Entry.GetHash()), body})
		fmt.Fprintln(w, string(b))
		return
	}
	status := "ok"
	if !rec.GetAccepted() {
		status = "REFUSED " + rec.GetCode()
	}
	var about []string
	for _, kv := range [][2]string{{"rollout", rec.GetRollout()}, {"service", rec.GetService()}, {"drill", rec.GetDrill()}, {"intent", rec.GetIntentId()}} {
		if kv[1] != "" {
			about = append(about, kv[0]+"="+kv[1])
		}
	}
	what := rec.GetKind()
	if rec.GetAction() != "" {
		what += " " + rec.GetAction()
	}
	fmt.Fprintf(w, "#%d %s %s by %s [%s] %s: %s\n", rec.GetSeq(), stamp(rec.GetAt().AsTime()), what,
		rec.GetActor(), status, strings.Join(about, " "), rec.GetMessage())
	if ev := rec.GetEvidence(); ev != nil {
		fmt.Fprintf(w, "    evidence: guardrail %s: %s\n", ev.GetGuardrail(), ev.GetSummary())
	}
}

// streamSeqs lists the first ten of seqs.
func streamSeqs(seqs []uint64) string {
	out := make([]string, 0, min(len(seqs), 10)+1)
	for _, s := range seqs[:min(len(seqs), 10)] {
		out = append(out, strconv.FormatUint(s, 10))
	}
	if len(seqs) > 10 {
		out = append(out, "…")
	}
	return strings.Join(out, ", ")
}

// errChainBroken is returned when audit verify finds a broken link.
var errChainBroken = errors.New("audit chain does not verify")

func auditVerify(ctx context.Context, c clientFlags, js jetstream.JetStream, nc *nats.Conn, stdout io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	// The coordinator first: what it says was exported is then in the
	// stream by the time the stream is read.
	var ans sv1.AuditAnswer
	if err := bus.Query(ctx, nc, bus.QueryAudit, &sv1.AuditQuery{}, &ans); err != nil {
		return fmt.Errorf("ask a coordinator for its chain: %w", err)
	}
	msgs, _, err := audit.ReadStream(ctx, js, 0)
	if err != nil {
		return err
	}
	v, err := audit.VerifyStored(msgs)
	if err != nil {
		fmt.Fprintf(stdout, "stream %s: BROKEN: %v\n", bus.AuditStream, err)
		return fmt.Errorf("%w: %v", errChainBroken, err)
	}
	fmt.Fprintf(stdout, "stream %s: records 1..%d verify; head %s\n", bus.AuditStream, v.Last, audit.Short(v.Head))
	for _, apart := range []struct {
		seqs []uint64
		what string
	}{{v.Foreign, "messages are not records"}, {v.Copies, "messages are second copies of records"}} {
		if len(apart.seqs) == 0 {
			continue
		}
		fmt.Fprintf(stdout, "stream %s: %d %s (stream sequences %s): not part of the chain; "+
			"the NATS server stores a JetStream API answer there when a request names the stream's subject as its reply subject\n",
			bus.AuditStream, len(apart.seqs), apart.what, streamSeqs(apart.seqs))
	}
	// What the first answer says was exported must be in the stream; the
	// records are compared with an answer at least as new as the stream.
	exported := ans.GetHead().GetExported()
	held := &ans
	if v.Last > ans.GetHead().GetSeq() {
		// Exported since the first answer, or appended by someone who can
		// write the stream: the chain has no key, anyone can extend it.
		// Ask again; a record past that head the coordinators never made.
		var again sv1.AuditAnswer
		if err := bus.Query(ctx, nc, bus.QueryAudit, &sv1.AuditQuery{}, &again); err != nil {
			return fmt.Errorf("ask a coordinator for its chain again: %w", err)
		}
		if h := again.GetHead().GetSeq(); v.Last > h {
			err := fmt.Errorf("record %d: the stream holds records through %d, but the coordinators' chain ends at %d: records they never made", h+1, v.Last, h)
			fmt.Fprintf(stdout, "coordinator chain: DIFFERS: %v\n", err)
			return fmt.Errorf("%w: %v", errChainBroken, err)
		}
		held = &again
	}
	links := make([]audit.Link, len(held.GetEntries()))
	for i, e := range held.GetEntries() {
		links[i] = audit.Link{Entry: e, Where: fmt.Sprintf("coordinator record #%d held", i+1)}
	}
	cv, err := audit.Verify(links, false)
	if err != nil {
		fmt.Fprintf(stdout, "coordinator chain: BROKEN: %v\n", err)
		return fmt.Errorf("%w: %v", errChainBroken, err)
	}
	head := held.GetHead()
	if len(links) > 0 && (cv.Last != head.GetSeq() || !bytes.Equal(cv.Head, head.GetHash())) {
		return fmt.Errorf("%w: the coordinator's records end at %d but its head says %d", errChainBroken, cv.Last, head.GetSeq())
	}
	// Every record both hold must be the same record; the coordinator may
	// be ahead of the export, never behind it.
	byHash := map[uint64][]byte{}
	for i, r := range v.Records {
		byHash[r.GetSeq()] = v.Hashes[i]
	}
	for i, r := range cv.Records {
		h, ok := byHash[r.GetSeq()]
		if !ok {
			continue
		}
		if !bytes.Equal(h, cv.Hashes[i]) {
			err := fmt.Errorf("record %d: the stream holds hash %s, the coordinators' replicated chain %s", r.GetSeq(), audit.Short(h), audit.Short(cv.Hashes[i]))
			fmt.Fprintf(stdout, "coordinator chain: DIFFERS: %v\n", err)
			return fmt.Errorf("%w: %v", errChainBroken, err)
		}
	}
	// The coordinator's first record must link onto the stream's record
	// before it, when the stream holds that one.
	if len(cv.Records) > 0 {
		first := cv.Records[0]
		if h, ok := byHash[first.GetSeq()-1]; ok && !bytes.Equal(h, first.GetPrevHash()) {
			err := fmt.Errorf("record %d: names previous hash %s, the stream's record %d hashes to %s", first.GetSeq(), audit.Short(first.GetPrevHash()), first.GetSeq()-1, audit.Short(h))
			fmt.Fprintf(stdout, "coordinator chain: DIFFERS: %v\n", err)
			return fmt.Errorf("%w: %v", errChainBroken, err)
		}
	}
	if exported > v.Last {
		err := fmt.Errorf("the coordinators exported records through %d but the stream holds only 1..%d", exported, v.Last)
		fmt.Fprintf(stdout, "coordinator chain: %v\n", err)
		return fmt.Errorf("%w: %v", errChainBroken, err)
	}
	fmt.Fprintf(stdout, "coordinator: head %d (%s), exported through %d; its %d held records verify and match the stream\n",
		head.GetSeq(), audit.Short(head.GetHash()), exported, len(cv.Records))
	fmt.Fprintln(stdout, "ok")
	return nil
}
