package coordinator

import (
	"fmt"
	"slices"
	"strings"

	"github.com/switchyard/switchyard/coordinator/hooks"
	"github.com/switchyard/switchyard/internal/spec"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// checkAgentHooks refuses a rollout that names agent hooks some live node
// of its service does not have: agents report their hook names in every
// status, and a node without the hook could neither run nor refuse it.
func (s *Server) checkAgentHooks(in *sv1.Intent) error {
	sp := in.GetApplyRollout().GetSpec()
	if len(spec.AgentHookNames(sp)) == 0 {
		return nil
	}
	have := s.fleet.hooksOf(sp.GetService())
	var errs spec.Errors
	a := sp.GetHooks().GetAgent()
	for _, l := range []struct {
		field string
		names []string
	}{{"preTraffic", a.GetPreTraffic()}, {"postTraffic", a.GetPostTraffic()}, {"rollback", a.GetRollback()}} {
		for i, name := range l.names {
			path := fmt.Sprintf("spec.hooks.agent.%s[%d]", l.field, i)
			if len(have) == 0 {
				errs = append(errs, &spec.FieldError{Path: path, Problem: fmt.Sprintf(
					"%q cannot be checked: no live node runs service %q, so no agent reports its hooks", name, sp.GetService())})
				continue
			}
			var lack []string
			for node, hooks := range have {
				if !slices.Contains(hooks, name) {
					lack = append(lack, node)
				}
			}
			if len(lack) > 0 {
				slices.Sort(lack)
				errs = append(errs, &spec.FieldError{Path: path, Problem: fmt.Sprintf(
					"hook %q is not in the agent config of node(s) %s; add it under hooks: there, or remove it here",
					name, strings.Join(lack, ", "))})
			}
		}
	}
	if len(errs) > 0 {
		return errs
	}
	return nil
}

// checkWebhookURLs refuses a rollout whose webhook names, by address, a
// destination the leader would not connect to: better now, by the field,
// than as a failed call once the rollout reached the hook point. Names are
// checked when the leader resolves them, at each call.
func (s *Server) checkWebhookURLs(in *sv1.Intent) error {
	d := hooks.Destinations{Networks: s.cfg.WebhookNetworks}
	var errs spec.Errors
	for i, w := range in.GetApplyRollout().GetSpec().GetHooks().GetWebhooks() {
		if err := d.CheckURL(w.GetUrl()); err != nil {
			errs = append(errs, &spec.FieldError{Path: fmt.Sprintf("spec.hooks.webhooks[%d].url", i), Problem: err.Error()})
		}
	}
	if len(errs) > 0 {
		return errs
	}
	return nil
}

// hooksOf maps each live node running service to the hook names its agent
// reports.
func (f *fleet) hooksOf(service string) map[string][]string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	now := f.now()
	out := map[string][]string{}
	for id, n := range f.nodes {
		if f.silent(n, now) {
			continue
		}
		for _, svc := range n.status.GetServices() {
			if svc.GetService() == service {
				out[id] = n.status.GetHooks()
			}
		}
	}
	return out
}
