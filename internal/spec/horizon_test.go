package spec

import (
	"strings"
	"testing"
	"time"
)

func TestSpec_HorizonIsThePlannedLifeUnlessSet(t *testing.T) {
	timed := strings.Replace(canary, "30s", "10m", 1)
	cases := []struct {
		name, yaml string
		want       time.Duration
	}{
		{"a timed canary lives as long as its steps", timed, 10*time.Minute + 3*DefaultWindow},
		{"two waves add up", timed + "waves:\n  - {name: a, percent: 10}\n  - {name: b, percent: 100}\n", 2 * (10*time.Minute + 3*DefaultWindow)},
		{"a pause for an operator has no planned end", "version: v1\nname: r\nservice: web\nfrom: blue\nto: green\nstrategy:\n  canary:\n    steps:\n      - setWeight: 10\n      - pause: {}\n", DefaultHorizon},
		{"a plan shorter than a minute is held to a minute", canary, time.Minute},
		{"a blue-green switch without pauses too", good, time.Minute},
		{"an explicit horizon wins", canary + "analysis:\n  horizon: 2h\n", 2 * time.Hour},
		// 3,000,000 windows of an hour overflow a time.Duration; the plan is
		// held to the longest horizon, not wrapped to a negative one.
		{"a plan longer than a Duration is held to 720h", canary + "      - analysis: {windows: 3000000}\nanalysis:\n  window: 1h\n", 30 * 24 * time.Hour},
		{"pauses that add up past a Duration too", strings.Replace(canary, "30s", "2562047h", 1) + "      - pause: {duration: 2562047h}\n", 30 * 24 * time.Hour},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, err := Parse([]byte(c.yaml))
			if err != nil {
				t.Fatal(err)
			}
			if got := HorizonOf(s); got != c.want {
				t.Fatalf("horizon %s, want %s", got, c.want)
			}
		})
	}
}
