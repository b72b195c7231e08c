package haproxy

import (
	"context"
	"slices"
	"testing"
	"time"
)

// BenchmarkHAProxy_ApplyToFirstRequest measures a switch through the
// runtime API: from Apply moving all traffic to the other backend to the
// first request through a real HAProxy that lands there (new connections,
// keep-alive off on the backend side is HAProxy's default per request).
// Reported as p50 and p99 over b.N switches.
func BenchmarkHAProxy_ApplyToFirstRequest(b *testing.B) {
	l := startLive(b)
	ctx := context.Background()
	to := []string{"green", "blue"}
	var lat []time.Duration
	b.ResetTimer()
	for i := range b.N {
		want := to[i%2]
		w := map[string]uint32{"blue": 0, "green": 0}
		w[want] = 100
		start := time.Now()
		if err := l.drv.Apply(ctx, w); err != nil {
			b.Fatal(err)
		}
		for {
			got, err := l.get()
			if err != nil {
				b.Fatal(err)
			}
			if got == want {
				break
			}
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	reportQuantiles(b, lat)
}

func reportQuantiles(b *testing.B, lat []time.Duration) {
	slices.Sort(lat)
	q := func(p float64) float64 {
		return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Microseconds()) / 1000
	}
	b.ReportMetric(q(0.50), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
	b.ReportMetric(0, "ns/op")
}
