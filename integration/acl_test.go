package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/coordinator/audit"
	"github.com/switchyard/switchyard/integration/harness"
	"github.com/switchyard/switchyard/integration/harness/harnesstest"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

const aclCanary = `
version: v1
name: web-acl
service: web
from: blue
to: green
strategy:
  canary:
    steps:
      - setWeight: 20
      - pause: {}
      - setWeight: 40
      - pause: {duration: 10m}
analysis:
  window: 3s
  minRequests: 20
`

const aclDrill = `
version: v1
name: acl-drill
service: web
percent: 100
maxNodes: 2
maxPercent: 100
duration: 30s
fault:
  http: {backend: green, errorPercent: 20, status: 503}
`

// TestAcl_RefusalsAndACanaryAreAuditedAndVerifyAcrossALeaderKill runs three
// coordinators (first admin: the harness's operator identity) and two
// agents with HAProxy. An unsigned intent, an intent signed by a key no one
// enrolled, a viewer applying a rollout, a deployer approving their own
// rollout under a two-person policy and a deployer starting a drill are
// each refused naming the role or policy, and each refusal is in `audit
// log`. The right people then run a canary: apply, automatic advance,
// approval by a second person, leader SIGKILLed, automatic rollback. `audit
// verify` accepts the chain, the stream holds every record once, and after
// one byte of one exported record is flipped (written back with stream
// access) `audit verify` names that record.
func TestAcl_RefusalsAndACanaryAreAuditedAndVerifyAcrossALeaderKill(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, 6*time.Minute)
	cp := startControlPlane(t, ctx)
	c, f, nc := cp.cluster, cp.fleet, cp.nc
	stop := load(ctx, t, f, 60)
	defer stop()

	creds := func(name string) string {
		t.Helper()
		p, err := f.Bus.Creds(bus.RoleOperator, name)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	alice, bob, val, eve := creds("alice"), creds("bob"), creds("val"), creds("eve")
	run := func(who string, args ...string) *harness.CLIResult {
		t.Helper()
		if who != "" {
			args = append(args, "--nats-creds", who)
		}
		res, err := f.Run(ctx, args...)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	must := func(res *harness.CLIResult) {
		t.Helper()
		if res.ExitCode != 0 {
			t.Fatalf("%v: exit %d\n%s%s", res.Args, res.ExitCode, res.Stdout, res.Stderr)
		}
	}
	refused := func(res *harness.CLIResult, want ...string) {
		t.Helper()
		out := res.Stdout + res.Stderr
		if res.ExitCode == 0 {
			t.Fatalf("%v was not refused:\n%s", res.Args, out)
		}
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Fatalf("%v refused without saying %q:\n%s", res.Args, w, out)
			}
		}
	}

	// The admin (the harness's operator identity) enrolls the others.
	must(run("", "acl", "grant", "--key", alice, "--name", "alice", "--role", "deployer", "--services", "web"))
	must(run("", "acl", "grant", "--key", alice, "--name", "alice", "--role", "approver", "--services", "web"))
	must(run("", "acl", "grant", "--key", bob, "--name", "bob", "--role", "approver"))
	must(run("", "acl", "grant", "--key", val, "--name", "val", "--role", "viewer"))
	must(run("", "acl", "policy", "--approvals", "1", "--require-gates"))
	list := run(val, "acl", "list")
	must(list)
	for _, w := range []string{"alice", "deployer on web", "approver on web", "bob", "val", "approvals 1", "a gate on every wave"} {
		if !strings.Contains(list.Stdout, w) {
			t.Fatalf("acl list lacks %q:\n%s", w, list.Stdout)
		}
	}

	// Refusals.
	unsigned := publishRawIntent(t, ctx, nc, []byte(`{"id":"acl-unsigned","abortRollout":{"rollout":"web-acl"}}`))
	if unsigned.GetAccepted() || unsigned.GetCode() != "unsigned" || !strings.Contains(unsigned.GetError(), "not signed") {
		t.Fatalf("unsigned intent: %v", unsigned)
	}
	spec := writeSpec(t, "web-acl", aclCanary)
	refused(run(eve, "rollout", "apply", "-f", spec), "unknown_key", "no principal holds key")
	refused(run(val, "rollout", "apply", "-f", spec), "forbidden", `val (`, `lacks role "deployer" on service "web"`, "apply_rollout needs role deployer")
	refused(run(alice, "chaos", "run", "-f", writeSpec(t, "acl-drill", aclDrill)), "forbidden", `lacks role "chaos"`, "run_drill needs role chaos")
	refused(run(alice, "rollout", "apply", "-f", writeSpec(t, "web-ungated", blueGreenSpec("web-ungated", harness.Blue, harness.Green))),
		"two_person", `wave "all" would take all of service "web"'s traffic without an approval`, "manualGate: true")
	// The pipeline below applies a rollout without gates: the approvals
	// stay, the requirement goes.
	must(run("", "acl", "policy", "--require-gates=false"))

	// The right people: alice applies; the automatic advance takes the
	// canary to the manual gate; alice may not approve her own rollout,
	// bob may.
	must(run(alice, "rollout", "apply", "-f", spec))
	if _, err := f.WaitRollout(ctx, "web-acl", atStep(f, 1)); err != nil {
		t.Fatal(err)
	}
	refused(run(alice, "rollout", "approve", "web-acl"), "two_person", "two-person rule", "alice")
	must(run(bob, "rollout", "approve", "web-acl"))
	if _, err := f.WaitRollout(ctx, "web-acl", atStep(f, 3)); err != nil {
		t.Fatal(err)
	}
	// A timed pause has nothing to approve.
	refused(run(bob, "rollout", "approve", "web-acl"), "nothing_to_approve")

	// The leader dies mid-rollout; the next one carries on, and its
	// guardrails roll green back.
	leader, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Kill(leader); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitLeader(ctx, leader); err != nil {
		t.Fatal(err)
	}
	setGreen(t, f, 0.3)
	if _, err := f.WaitRollout(ctx, "web-acl", f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK)); err != nil {
		t.Fatal(err)
	}
	if err := c.Start(ctx, leader); err != nil {
		t.Fatal(err)
	}

	// Every refusal and decision is in `audit log`, with its author.
	var records []map[string]any
	if err := harness.Poll(ctx, 200*time.Millisecond, func(ctx context.Context) error {
		res := run(val, "audit", "log", "--rollout", "web-acl", "-o", "json")
		if res.ExitCode != 0 {
			return fmt.Errorf("audit log: %s", res.Stderr)
		}
		records = records[:0]
		for _, line := range strings.Split(strings.TrimSpace(res.Stdout), "\n") {
			var r map[string]any
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				return fmt.Errorf("audit log line %q: %v", line, err)
			}
			records = append(records, r["record"].(map[string]any))
		}
		for _, r := range records {
			if r["kind"] == "rollback" && r["evidence"] != nil {
				return nil
			}
		}
		return fmt.Errorf("no rollback with evidence among %d records yet", len(records))
	}); err != nil {
		t.Fatal(err)
	}
	find := func(pred func(map[string]any) bool, what string) {
		t.Helper()
		for _, r := range records {
			if pred(r) {
				return
			}
		}
		t.Fatalf("audit log lacks %s; records:\n%v", what, records)
	}
	refusal := func(code, actor string) func(map[string]any) bool {
		return func(r map[string]any) bool {
			return r["kind"] == "refused" && r["code"] == code && (actor == "" || r["actor"] == actor)
		}
	}
	find(refusal("unsigned", ""), "the unsigned intent")
	find(refusal("unknown_key", ""), "the unknown key")
	find(refusal("forbidden", "val"), "the viewer's apply")
	find(refusal("two_person", "alice"), "alice approving her own rollout")
	find(refusal("nothing_to_approve", "bob"), "the approval of a timed pause")
	find(func(r map[string]any) bool {
		return r["action"] == "apply_rollout" && r["actor"] == "alice" && r["accepted"] == true
	}, "alice's apply")
	find(func(r map[string]any) bool {
		return r["action"] == "approve_rollout" && r["actor"] == "bob" && r["accepted"] == true
	}, "bob's approval")
	find(func(r map[string]any) bool { return r["kind"] == "decision" && r["actor"] == "switchyard" }, "an automatic advance")
	all := run(val, "audit", "log")
	must(all)
	if !strings.Contains(all.Stdout, "run_drill by alice [REFUSED forbidden]") {
		t.Fatalf("audit log lacks the deployer's drill:\n%s", all.Stdout)
	}

	// The documented pipeline step: `switchyard intent sign` with the
	// pipeline's creds, the admin's grant, then any client publishes.
	sy, _ := binaries(t)
	dir := t.TempDir()
	copyFile(t, creds("ci"), filepath.Join(dir, "ci.creds"))
	runDocBlock(t, ctx, f, sy, dir, "bus.md", "pipeline-signing")
	must(run("", "acl", "grant", "--key", filepath.Join(dir, "ci.creds"), "--name", "ci", "--role", "deployer", "--services", "web*"))
	signed, err := os.ReadFile(filepath.Join(dir, "signed.json"))
	if err != nil {
		t.Fatal(err)
	}
	if res := publishRawIntent(t, ctx, nc, signed); !res.GetAccepted() {
		t.Fatalf("the pipeline's signed intent: %v", res)
	}
	if v, err := f.WaitRollout(ctx, "web-build-42", func(*sv1.RolloutView) error { return nil }); err != nil || v.GetRollout().GetOperator() != "ci" {
		t.Fatalf("web-build-42 by %q (%v), want the verified ci", v.GetRollout().GetOperator(), err)
	}
	copyFile(t, creds("carol"), filepath.Join(dir, "carol.creds"))
	copyFile(t, creds("dave"), filepath.Join(dir, "dave.creds"))
	runDocBlock(t, ctx, f, sy, dir, "audit.md", "acl-verbs")
	runDocBlock(t, ctx, f, sy, dir, "audit.md", "audit-verbs")

	// The chain verifies from the stream and against a coordinator; the
	// stream holds each record once, with no gap, across the leader kill.
	verify := run(val, "audit", "verify")
	must(verify)
	if !strings.Contains(verify.Stdout, "ok") {
		t.Fatalf("audit verify:\n%s", verify.Stdout)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	msgs, _, err := audit.ReadStream(ctx, js, 0)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[uint64]bool{}
	for _, m := range msgs {
		if seen[m.Seq] {
			t.Fatalf("record %d exported twice", m.Seq)
		}
		seen[m.Seq] = true
	}
	for i := uint64(1); i <= uint64(len(msgs)); i++ {
		if !seen[i] {
			t.Fatalf("record %d missing from the stream (%d messages)", i, len(msgs))
		}
	}
	t.Logf("%d records exported, no gap, no duplicate; verify:\n%s", len(msgs), verify.Stdout)

	// One byte of record 3 flipped and written back: verify names it.
	tampered := tamperAuditRecord(t, ctx, js, msgs, 3)
	broken := run(val, "audit", "verify")
	refused(broken, "record 3 (stream sequence "+strconv.FormatUint(tampered, 10)+")")
}

// tamperAuditRecord rewrites the stream's copy of record seq with one byte
// flipped, as someone with write access to the stream could: the original
// is deleted and the altered bytes published in its stead. It returns the
// altered copy's stream sequence.
func tamperAuditRecord(t *testing.T, ctx context.Context, js jetstream.JetStream, msgs []audit.Stored, seq uint64) uint64 {
	t.Helper()
	st, err := js.Stream(ctx, bus.AuditStream)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		if m.Seq != seq {
			continue
		}
		raw, err := st.GetMsg(ctx, m.StreamSeq)
		if err != nil {
			t.Fatal(err)
		}
		data := append([]byte(nil), raw.Data...)
		data[len(data)/3] ^= 0x01
		if err := st.DeleteMsg(ctx, m.StreamSeq); err != nil {
			t.Fatal(err)
		}
		msg := nats.NewMsg(bus.AuditSubject())
		msg.Data = data
		msg.Header.Set(bus.AuditSeqHeader, strconv.FormatUint(seq, 10))
		ack, err := js.PublishMsg(ctx, msg)
		if err != nil {
			t.Fatal(err)
		}
		return ack.Sequence
	}
	t.Fatalf("record %d is not in the stream", seq)
	return 0
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// runDocBlock runs the shell block of docs/<doc> between the markers
// <!-- name --> and <!-- /name -->, as written, with sh -e in dir, the
// switchyard binary on PATH and the harness operator's environment.
func runDocBlock(t *testing.T, ctx context.Context, f *harness.Fleet, switchyard, dir, doc, name string) {
	t.Helper()
	root, err := harness.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "docs", doc))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "<!-- "+name+" -->")
	block, _, ok2 := strings.Cut(rest, "<!-- /"+name+" -->")
	if !ok || !ok2 {
		t.Fatalf("docs/%s has no block %s", doc, name)
	}
	block = strings.TrimSpace(block)
	block = strings.TrimSuffix(strings.TrimPrefix(block, "```sh"), "```")
	env, err := f.Bus.CLIEnv()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, "sh", "-e", "-c", block)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.Env = append(cmd.Env, "PATH="+filepath.Dir(switchyard)+":"+os.Getenv("PATH"), "SWITCHYARD_NATS="+f.NATSURL)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("docs/%s block %s: %v\n%s", doc, name, err, out)
	}
	t.Logf("docs/%s block %s:\n%s", doc, name, out)
}
