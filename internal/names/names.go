// Package names checks the names of services, nodes, rollouts and backends,
// which must each be one token of a NATS subject and one KV key.
package names

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
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

// Few joins the first n of list and says how many more there are:
// "edge-1, edge-2 and 3 more".
func Few(list []string, n int) string {
	return Listed(list[:min(len(list), n)], max(len(list)-n, 0))
}

// Listed joins shown and adds how many were left out of it, if any.
func Listed(shown []string, more int) string {
	s := strings.Join(shown, ", ")
	if more > 0 {
		s += fmt.Sprintf(" and %d more", more)
	}
	return s
}
