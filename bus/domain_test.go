package bus

import (
	"strings"
	"testing"
)

func TestSecurity_JetStreamDomainMustBeOneToken(t *testing.T) {
	for _, tc := range []struct {
		domain, err string
	}{
		{"", ""},
		{"hub", ""},
		{"hub-eu_1", ""},
		{"hub.eu", `natsClient.jetstreamDomain: "hub.eu": a JetStream domain is one NATS subject token`},
		{"*", `natsClient.jetstreamDomain: "*"`},
		{"a>", `natsClient.jetstreamDomain: "a>"`},
		{"my hub", `natsClient.jetstreamDomain: "my hub"`},
	} {
		_, err := Security{JetStreamDomain: tc.domain}.Options("natsClient.")
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%q: %v", tc.domain, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%q: got %v, want %q", tc.domain, err, tc.err)
		}
	}
}
