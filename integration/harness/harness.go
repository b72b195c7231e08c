// Package harness starts and drives real Switchyard fleets (NATS, coordinator,
// agents, HAProxy, blue and green backends) as separate processes, for
// integration tests and the demo; it never imports testing so that a plain
// program can use it too.
package harness

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ErrNotReady is wrapped by Poll when the deadline passes before the
// condition holds.
var ErrNotReady = errors.New("condition not met before deadline")

// Poll calls cond every interval until it returns nil or ctx ends. On timeout
// the error names the last reason cond gave, which is what a person reading a
// failed test needs to see. A cond error wrapped by Permanent ends the wait
// at once: no point waiting for a process that has exited.
func Poll(ctx context.Context, interval time.Duration, cond func(ctx context.Context) error) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		err := cond(ctx)
		if err == nil {
			return nil
		}
		var p *permanentError
		if errors.As(err, &p) {
			return p.err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %v (last: %v)", ErrNotReady, context.Cause(ctx), err)
		case <-t.C:
		}
	}
}

// Permanent marks a Poll condition's error as final.
func Permanent(err error) error { return &permanentError{err} }

type permanentError struct{ err error }

func (p *permanentError) Error() string { return p.err.Error() }
func (p *permanentError) Unwrap() error { return p.err }
