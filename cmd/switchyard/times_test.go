package main

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
	_ "time/tzdata" // the child's TZ=Europe/Berlin on a machine without zone files

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/coordinator/audit"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// The morning after an incident an operator lays `rollout history` (and
// status, series, chaos list) beside `audit log`. The audit log printed
// UTC, marked Z; the others printed the machine's local time, unmarked, so
// on a laptop two hours east of UTC the rollback at 03:12Z read 05:12 in the
// history and 03:12 in the audit. Every time printed is now UTC and says so.
//
// It runs in a process of its own whose zone is Europe/Berlin (TZ, with the
// zone data built in): setting time.Local in this one races every
// goroutine earlier tests left calling time.Now.
func TestCLI_EveryCommandPrintsTimesInUTCAndSaysSo(t *testing.T) {
	if os.Getenv(inBerlin) == "" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCLI_EveryCommandPrintsTimesInUTCAndSaysSo$", "-test.count=1")
		cmd.Env = append(os.Environ(), inBerlin+"=1", "TZ=Europe/Berlin")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("in a process whose zone is Europe/Berlin: %v\n%s", err, out)
		}
		return
	}
	if _, off := time.Date(2026, 5, 1, 3, 12, 0, 0, time.Local).Zone(); off != 2*3600 {
		t.Fatalf("the local zone is %s, offset %d s; want Europe/Berlin (CEST, +2 h) from TZ", time.Local, off)
	}

	at := time.Date(2026, 5, 1, 3, 12, 0, 0, time.UTC)
	ts := timestamppb.New(at)
	since := timestamppb.New(at.Add(-2 * time.Minute))
	ev := &sv1.Evidence{Guardrail: "error_rate", Summary: "errors",
		Sequential: &sv1.SequentialEvidence{Test: "errors", Since: since, At: ts},
		Windows:    []*sv1.WindowEvidence{{Start: since, Verdict: "fail"}}}
	r := &sv1.Rollout{Id: "web-42", History: []*sv1.RolloutEvent{{At: ts, Index: 7, Phase: sv1.RolloutPhase_ROLLOUT_PHASE_ROLLING_BACK, Message: "rolling back"}}}

	var out bytes.Buffer
	printHistory(&out, r)
	printEvidence(&out, ev)
	e, err := audit.Seal(nil, &sv1.AuditRecord{Seq: 1, At: ts, Kind: "rollback", Actor: "switchyard", Rollout: "web-42", Accepted: true, Message: "rolling back"})
	if err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	printAuditRecord(&log, audit.Stored{Seq: 1, StreamSeq: 1, Entry: e}, "", false)

	if !strings.Contains(log.String(), "2026-05-01T03:12:00Z") {
		t.Fatalf("audit log:\n%s\nwant the record's time in UTC, 2026-05-01T03:12:00Z", log.String())
	}
	text := out.String()
	for _, want := range []string{"2026-05-01T03:12:00Z", "03:10:00 UTC to 03:12:00 UTC", "03:10:00 UTC"} {
		if !strings.Contains(text, want) {
			t.Errorf("history and evidence:\n%s\nwant %q, the time the audit log prints, in UTC and marked so", text, want)
		}
	}
	if strings.Contains(text, "05:1") {
		t.Errorf("history and evidence:\n%s\nprint the local time (05:1x CEST) beside the audit log's UTC", text)
	}
}

// inBerlin marks the process TestCLI_EveryCommandPrintsTimesInUTCAndSaysSo
// runs its checks in.
const inBerlin = "SWITCHYARD_TEST_IN_BERLIN"
