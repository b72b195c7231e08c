// Package names checks the names of services, nodes, rollouts and backends,
// which must each be one token of a NATS subject and one KV key.
package names

import (
	"errors"
	"fmt"
	"regexp"
)

// ErrInvalid is returned for a name that cannot be one subject token or KV key.
var ErrInvalid = errors.New("invalid name")

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$`)

// Validate checks that s can name a service, node, rollout or backend: 1 to
// 63 letters, digits, '-' or '_', starting with a letter or digit.
func Validate(s string) error {
	if !nameRE.MatchString(s) {
		return fmt.Errorf("%w: %q: want 1-63 letters, digits, '-' or '_', starting with a letter or digit", ErrInvalid, s)
	}
	return nil
}
