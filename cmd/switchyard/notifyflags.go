package main

import (
	"flag"

	"github.com/switchyard/switchyard/coordinator/notify"
)

// notifyFlags are the receivers given on the command line.
type notifyFlags struct {
	json, slack stringList
}

func (n *notifyFlags) register(fs *flag.FlagSet) {
	fs.Var(&n.json, "notify", "URL that receives every rollout phase change, rollback (with its evidence) and drill report as JSON (repeatable)")
	fs.Var(&n.slack, "notify-slack", "Slack-compatible incoming-webhook URL that receives the same events as text (repeatable)")
}

// targets returns the receivers, defaults filled in by the coordinator.
func (n *notifyFlags) targets() []notify.Target {
	var out []notify.Target
	for _, u := range n.json {
		out = append(out, notify.Target{URL: u, Format: notify.FormatJSON})
	}
	for _, u := range n.slack {
		out = append(out, notify.Target{URL: u, Format: notify.FormatSlack})
	}
	return out
}
