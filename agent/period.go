package agent

import (
	"math/rand/v2"
	"time"
)

// newSpreadTimer is the timer of a task every agent does each period: the
// resync of desired state, the drills listing, the heartbeat. It fires
// first after firstTick; reset with the period after each firing, it then
// fires every period.
func newSpreadTimer(period time.Duration) *time.Timer {
	return time.NewTimer(firstTick(period))
}

// firstTick is when a periodic task first comes: at a random point of the
// second half of its first period, so that agents started together (a
// fleet-wide restart or upgrade) read the buckets and beat spread over
// half the period, not all in the same instant every period, which at
// thousands of nodes is a burst of requests and statuses that the servers,
// the coordinators and the decisions they carry wait behind. Never sooner
// than half the period: an agent just started has read and said all of it.
func firstTick(period time.Duration) time.Duration {
	if period <= 1 {
		return period
	}
	half := period / 2
	return period - rand.N(half+1)
}

// beatDue says whether a heartbeat goes out on a beat that comes since
// after the last status: not when a changed status is due within the
// status window (it says more), nor within a quarter of the heartbeat of
// the last status, which keeps statuses at most 1.25 heartbeats apart.
func beatDue(since, heartbeat time.Duration, changeWaiting bool) bool {
	return !changeWaiting && since >= heartbeat/4
}
