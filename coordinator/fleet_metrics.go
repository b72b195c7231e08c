package coordinator

import (
	"github.com/prometheus/client_golang/prometheus"
)

// nodesDesc is the fleet as this coordinator hears it, computed on each
// scrape from the agents' status messages.
var nodesDesc = prometheus.NewDesc("switchyard_coordinator_nodes",
	"Nodes running a service as this coordinator hears them, by state: live (a status within the stale period, 15 s by default) or stale (silent longer; rollouts do not wait for them). A node silent for --forget-nodes-after (24 h by default) is forgotten and counted no more.",
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
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sweep(f.now())
	out := make(map[string]nodeCount, len(f.tallies))
	for service, t := range f.tallies {
		if t.live == 0 && len(t.stale) == 0 {
			continue // its nodes run other services now
		}
		out[service] = nodeCount{live: t.live, stale: len(t.stale)}
	}
	return out
}
