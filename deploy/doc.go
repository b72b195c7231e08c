// Package deploy holds what operators install beside the switchyard binary —
// Prometheus rules (prometheus/), Grafana dashboards (grafana/), systemd
// units and example configs (systemd/, etc/) and the .deb builder
// (package/) — and the tests that check them with the real tools: promtool,
// systemd-analyze and dpkg.
package deploy
