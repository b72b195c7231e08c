package coordinator

import (
	"github.com/prometheus/client_golang/prometheus"
)

// nodesDesc is the fleet as this coordinator hears it, computed on each
// scrape from the agents' status messages.
var nodesDesc = prometheus.NewDesc("switchyard_coordinator_nodes",
	"Nodes running a service as this coordinator hears them, by state: live (a status within the stale period, 15 s by default) or stale (silent longer; rollouts do not wait for them). A node stays stale until the coordinator restarts.",
	[]string{"service", "state"}, nil)

// fleetCollector exports nodesDesc for a fleet.
type fleetCollector struct{ f *fleet }

func (c fleetCollector) Describe(ch chan<- *prometheus.Desc) { ch <- nodesDesc }

func (c fleetCollector) Collect(ch chan<- prometheus.Metric) {
	for service, n := range c.f.nodeCounts() {
		ch <- prometheus.MustNewConstMetric(nodesDesc, prometheus.GaugeValue, float64(n.live), service, "live")
		ch <- prometheus.MustNewConstMetric(nodesDesc, prometheus.GaugeValue, float64(n.stale), service, "stale")
	}
}

type nodeCount struct{ live, stale int }

// nodeCounts counts, per service, the nodes heard from within the stale
// period and those silent longer.
func (f *fleet) nodeCounts() map[string]nodeCount {
	f.mu.RLock()
	defer f.mu.RUnlock()
	now := f.now()
	out := map[string]nodeCount{}
	for _, n := range f.nodes {
		stale := now.Sub(n.seen) > f.staleAfter
		for _, svc := range n.status.GetServices() {
			c := out[svc.GetService()]
			if stale {
				c.stale++
			} else {
				c.live++
			}
			out[svc.GetService()] = c
		}
	}
	return out
}
