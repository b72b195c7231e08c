package chaos

import "context"

// Injector is one fault on this host. Apply and Revert are idempotent: an
// agent may call Revert for a fault it never applied (after a crash, from
// its journal), and Apply twice after a reconnect.
type Injector interface {
	Apply(ctx context.Context) error
	Revert(ctx context.Context) error
}
