package agent

import (
	"math/rand/v2"
	"time"
)

// newResyncTimer is the timer of a periodic read of the bus (the resync of
// desired state, the drills listing). It fires first after firstResync,
// then, reset with the period after each firing, every period.
func newResyncTimer(period time.Duration) *time.Timer {
	return time.NewTimer(firstResync(period))
}

// firstResync is when a periodic read of the bus first comes: at a random
// point within its first period, so that agents started together (a
// fleet-wide restart or upgrade) read the buckets spread over the period,
// not all in the same instant every period, which at thousands of nodes is
// a burst of requests that the servers, and the decisions they carry, wait
// behind.
func firstResync(period time.Duration) time.Duration {
	if period <= 0 {
		return period
	}
	return rand.N(period) + 1
}
