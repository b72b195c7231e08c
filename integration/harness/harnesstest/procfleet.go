package harnesstest

import (
	"context"
	"testing"

	"github.com/switchyard/switchyard/integration/harness"
)

// StartProcessFleet starts a process fleet for the test and stops it when
// the test ends (if it has not been closed before). On failure the tails of
// the first agents' logs are printed; unclean exits on shutdown fail the
// test.
func StartProcessFleet(tb testing.TB, ctx context.Context, o harness.ProcessFleetOptions) *harness.ProcessFleet {
	tb.Helper()
	if o.Dir == "" {
		o.Dir = Dir(tb)
	}
	f, err := harness.StartProcessFleet(ctx, o)
	if err != nil {
		tb.Fatalf("start process fleet: %v", err)
	}
	tb.Cleanup(func() {
		if err := f.Close(); err != nil {
			tb.Errorf("process fleet shutdown was not clean: %v", err)
		}
	})
	return f
}
