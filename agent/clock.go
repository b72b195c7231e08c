package agent

import "time"

// Clock tells the time stamped on applied states and statuses. Timers and
// tickers use real time.
type Clock interface {
	Now() time.Time
}

// systemClock is the real Clock.
type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }
