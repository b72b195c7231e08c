package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
)

// ErrPushRefused is returned when a server refuses an account update.
var ErrPushRefused = errors.New("nats server refused the account update")

// claimsUpdateSubject is where the system account sends account JWTs to the
// NATS-based resolver of every server in the cluster.
const claimsUpdateSubject = "$SYS.REQ.CLAIMS.UPDATE"

// Push sends an account JWT to the running servers' resolvers over nc, which
// must be connected as the system account's user (SystemCredsFile). Every
// server of a cluster stores it and applies it at once: revoked users are
// disconnected, no reload needed.
func Push(ctx context.Context, nc *nats.Conn, accountJWT string) error {
	m, err := nc.RequestWithContext(ctx, claimsUpdateSubject, []byte(accountJWT))
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) {
			return fmt.Errorf("push account: no server answered on %s; is the resolver of type full and are these the system account's creds?", claimsUpdateSubject)
		}
		return fmt.Errorf("push account: %w", err)
	}
	var resp struct {
		Data *struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		} `json:"data"`
		Error *struct {
			Code        int    `json:"code"`
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(m.Data, &resp); err != nil {
		return fmt.Errorf("push account: answer %q: %w", m.Data, err)
	}
	if resp.Error != nil {
		return fmt.Errorf("%w: %d %s", ErrPushRefused, resp.Error.Code, resp.Error.Description)
	}
	if resp.Data == nil || resp.Data.Code != 200 {
		return fmt.Errorf("%w: %s", ErrPushRefused, m.Data)
	}
	return nil
}
