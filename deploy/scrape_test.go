package deploy

import (
	"os"
	"testing"

	"go.yaml.in/yaml/v3"
)

// The packaged coordinator config turns on cluster TLS, and with it the
// coordinator serves its HTTP address, /metrics included, over HTTPS with
// the cluster CA. The packaged Prometheus configuration must scrape it that
// way, or every coordinator is down to Prometheus and SwitchyardNoLeader
// fires on a healthy cluster.
func TestPrometheusConfig_ScrapesCoordinatorsAsThePackagedConfigServes(t *testing.T) {
	b, err := os.ReadFile("etc/switchyard/coordinator.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var coord struct {
		ClusterTLS struct {
			CA string `yaml:"ca"`
		} `yaml:"clusterTLS"`
	}
	if err := yaml.Unmarshal(b, &coord); err != nil {
		t.Fatalf("etc/switchyard/coordinator.yaml: %v", err)
	}
	b, err = os.ReadFile("prometheus/prometheus.yml")
	if err != nil {
		t.Fatal(err)
	}
	var prom struct {
		ScrapeConfigs []struct {
			JobName   string `yaml:"job_name"`
			Scheme    string `yaml:"scheme"`
			TLSConfig struct {
				CAFile string `yaml:"ca_file"`
			} `yaml:"tls_config"`
		} `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal(b, &prom); err != nil {
		t.Fatalf("prometheus/prometheus.yml: %v", err)
	}
	found := false
	for _, j := range prom.ScrapeConfigs {
		if j.JobName != "switchyard-coordinator" {
			continue
		}
		found = true
		if coord.ClusterTLS.CA == "" {
			continue
		}
		if j.Scheme != "https" || j.TLSConfig.CAFile == "" {
			t.Errorf("prometheus.yml job switchyard-coordinator: scheme %q, tls_config.ca_file %q; the packaged coordinator.yaml sets clusterTLS, so /metrics is HTTPS with the cluster CA: want scheme https and the CA as ca_file",
				j.Scheme, j.TLSConfig.CAFile)
		}
	}
	if !found {
		t.Fatal("prometheus.yml has no job switchyard-coordinator")
	}
}
