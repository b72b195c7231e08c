package haproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/switchyard/switchyard/agent/driver"
)

// ErrNoSuchServer means HAProxy has no server by the configured name in the
// configured backend: the driver's config and haproxy.cfg disagree.
var ErrNoSuchServer = errors.New("haproxy has no such server")

// ErrNoSuchBackend means HAProxy has no backend by the configured name.
var ErrNoSuchBackend = errors.New("haproxy has no such backend")

// ErrRefused means HAProxy answered a command with an error message other
// than a missing server or backend; the error text carries the answer.
var ErrRefused = errors.New("haproxy refused the command")

// maxAnswer bounds what one command may return; "show stat" for a large
// config is tens of kilobytes, so this is only a guard against a runaway peer.
const maxAnswer = 16 << 20

// knownAnswers are the error messages of HAProxy 2.6's runtime API that
// mean a name does not exist. "set weight"/"get weight" say "No such
// backend.", "show servers state" says "Can't find backend.", "show stat"
// says "No such proxy.".
var knownAnswers = map[string]error{
	"No such server.":     ErrNoSuchServer,
	"No such backend.":    ErrNoSuchBackend,
	"Can't find backend.": ErrNoSuchBackend,
	"No such proxy.":      ErrNoSuchBackend,
}

// runtimeAPI talks to HAProxy's admin socket in non-interactive mode: one
// command per connection, HAProxy answers and closes. No state survives
// between commands, so an HAProxy restart needs no reconnect logic.
type runtimeAPI struct {
	socket  string
	timeout time.Duration
}

// do sends cmd and returns the answer without its trailing newlines.
// Failures to reach HAProxy wrap driver.ErrUnavailable.
func (a runtimeAPI) do(ctx context.Context, cmd string) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("haproxy %q: %w", cmd, err)
	}
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()

	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", a.socket)
	if err != nil {
		return "", a.ioError(parent, cmd, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	// The deadline covers timeouts; cancellation needs its own wake-up.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	if _, err := io.WriteString(conn, cmd+"\n"); err != nil {
		return "", a.ioError(parent, cmd, err)
	}
	b, err := io.ReadAll(io.LimitReader(conn, maxAnswer+1))
	if err != nil {
		return "", a.ioError(parent, cmd, err)
	}
	if len(b) > maxAnswer {
		return "", fmt.Errorf("haproxy %q: answer longer than %d bytes", cmd, maxAnswer)
	}
	return strings.TrimRight(string(b), "\n"), nil
}

// ioError classifies a socket failure: the caller's cancellation or
// deadline is theirs to see; anything else (no socket, refused, our own
// per-command timeout) means HAProxy is not there for us.
func (a runtimeAPI) ioError(parent context.Context, cmd string, err error) error {
	if perr := parent.Err(); perr != nil {
		return fmt.Errorf("haproxy %q: %w", cmd, perr)
	}
	return fmt.Errorf("haproxy admin socket %s, command %q: %w: %w", a.socket, cmd, driver.ErrUnavailable, err)
}

// set runs a command that answers nothing on success and an error message
// otherwise.
func (a runtimeAPI) set(ctx context.Context, cmd string) error {
	ans, err := a.do(ctx, cmd)
	if err != nil {
		return err
	}
	if ans = strings.TrimSpace(ans); ans != "" {
		return answerError(cmd, ans)
	}
	return nil
}

// show runs a command that answers with data, telling HAProxy's error
// messages apart from it.
func (a runtimeAPI) show(ctx context.Context, cmd string) (string, error) {
	ans, err := a.do(ctx, cmd)
	if err != nil {
		return "", err
	}
	if _, known := knownAnswers[strings.TrimSpace(ans)]; known {
		return "", answerError(cmd, strings.TrimSpace(ans))
	}
	return ans, nil
}

func answerError(cmd, ans string) error {
	sentinel, ok := knownAnswers[ans]
	if !ok {
		sentinel = ErrRefused
	}
	return fmt.Errorf("haproxy %q answered %q: %w", cmd, head(ans), sentinel)
}
