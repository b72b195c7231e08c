package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/switchyard/switchyard/coordinator"
)

// The members table prints what the answering coordinator knows of each
// member: a dead one on the leader's answer is "unreachable", never
// "follower", and a coordinator without a leader says so.
func TestMembers_TableSaysWhichCoordinatorsAreGone(t *testing.T) {
	for _, c := range []struct {
		name string
		m    coordinator.Members
		want []string
	}{
		{"leader", coordinator.Members{AnsweredBy: "c1", State: "Leader", Leader: "c1", Members: []coordinator.Member{
			{ID: "c1", RaftAddr: "10.0.0.1:7000", Suffrage: "Voter", Leader: true, Role: "leader"},
			{ID: "c2", RaftAddr: "10.0.0.2:7000", Suffrage: "Voter", Role: "unreachable"},
			{ID: "c3", RaftAddr: "10.0.0.3:7000", Suffrage: "Voter", Role: "follower"},
		}}, []string{"c1  10.0.0.1:7000  voter     leader\n", "c2  10.0.0.2:7000  voter     unreachable\n", "c3  10.0.0.3:7000  voter     follower\n"}},
		{"no leader", coordinator.Members{AnsweredBy: "c1", State: "Candidate", Members: []coordinator.Member{
			{ID: "c1", RaftAddr: "10.0.0.1:7000", Suffrage: "Voter", Role: "candidate"},
			{ID: "c2", RaftAddr: "10.0.0.2:7000", Suffrage: "Voter", Role: "unknown"},
		}}, []string{"Leader: -", "(answered by c1, candidate)", "c1  10.0.0.1:7000  voter     candidate\n", "c2  10.0.0.2:7000  voter     unknown\n", "c1 knows no leader"}},
		{"before roles", coordinator.Members{AnsweredBy: "c2", State: "Follower", Leader: "c1", Members: []coordinator.Member{
			{ID: "c1", RaftAddr: "10.0.0.1:7000", Suffrage: "Voter", Leader: true},
			{ID: "c2", RaftAddr: "10.0.0.2:7000", Suffrage: "Voter"},
		}}, []string{"c1  10.0.0.1:7000  voter     leader\n", "c2  10.0.0.2:7000  voter     follower\n"}},
	} {
		var out bytes.Buffer
		if err := printMembers(&out, &c.m); err != nil {
			t.Fatal(err)
		}
		for _, w := range c.want {
			if !strings.Contains(out.String(), w) {
				t.Errorf("%s: table lacks %q:\n%s", c.name, w, out.String())
			}
		}
	}
}

// A replica that has not applied what it knows committed answers reads
// from an older state: the table shows its applied index beside the
// commit index, as the JSON does.
func TestCLI_MembersShowsTheAnsweringReplicasAppliedIndex(t *testing.T) {
	m := coordinator.Members{AnsweredBy: "c2", State: "Follower", Leader: "c1", Term: 3, LastIndex: 900, CommitIndex: 900, AppliedIndex: 412}
	var out bytes.Buffer
	if err := printMembers(&out, &m); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "Applied index: 412 ") {
		t.Errorf("members of a replica that applied 412 of 900 committed entries:\n%s", out.String())
	}
}
