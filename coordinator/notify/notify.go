// Package notify tells people what the fleet did: the leading coordinator
// posts an event to every configured receiver when a rollout changes phase,
// when it rolls back (with the evidence the judge committed) and when a
// drill ends with its report. Bodies are JSON, or Slack-compatible
// ({"text": ...}) for chat incoming webhooks.
//
// Events are read from replicated state (each rollout's history and each
// drill's report), so what is notified is what was committed. Delivery is
// at least once: every event carries a stable id (the Raft index of the
// entry that made it), a new leader resends the events of the last
// ReplayWindow that its predecessor may not have delivered, and a receiver
// that must act once drops ids it has seen.
package notify

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Kinds of events.
const (
	// KindPhase is a rollout entering a new phase (started, paused at a
	// gate, promoted, completed, rolling back, rolled back...).
	KindPhase = "phase"
	// KindRollback is a rollout rolling back, with its reason and evidence.
	KindRollback = "rollback"
	// KindDrill is a drill that ended, with its report.
	KindDrill = "drill"
)

// Kinds lists every kind, the default of a Target's Events.
var Kinds = []string{KindPhase, KindRollback, KindDrill}

// Formats of a body.
const (
	FormatJSON  = "json"
	FormatSlack = "slack"
)

// Defaults of a Target.
const (
	DefaultTimeout = 5 * time.Second
	DefaultRetries = 3
)

// Target is one receiver.
type Target struct {
	// Name labels the receiver in logs and metrics; the URL's host when
	// empty.
	Name string `yaml:"name"`
	// URL receives a POST per event. Required; http or https.
	URL string `yaml:"url"`
	// Format is json (the Event as JSON) or slack ({"text": ...}).
	Format string `yaml:"format"`
	// Events are the kinds sent; every kind when empty.
	Events []string `yaml:"events"`
	// Timeout bounds one attempt.
	Timeout time.Duration `yaml:"timeout"`
	// Retries is how many times a failed attempt (no answer, or a non-2xx)
	// is tried again, with backoff.
	Retries *int `yaml:"retries"`
}

// Validate fills defaults and checks the target, naming the field at path.
func (t *Target) Validate(path string) error {
	u, err := url.Parse(t.URL)
	switch {
	case t.URL == "":
		return fmt.Errorf("%s.url: required", path)
	case err != nil:
		return fmt.Errorf("%s.url: %v", path, err)
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("%s.url: %q: want an http or https URL", path, t.URL)
	}
	if t.Name == "" {
		t.Name = u.Host
	}
	switch t.Format {
	case "":
		t.Format = FormatJSON
	case FormatJSON, FormatSlack:
	default:
		return fmt.Errorf("%s.format: %q: want %s or %s", path, t.Format, FormatJSON, FormatSlack)
	}
	for i, k := range t.Events {
		if !slices.Contains(Kinds, k) {
			return fmt.Errorf("%s.events[%d]: %q: want one of %s", path, i, k, strings.Join(Kinds, ", "))
		}
	}
	if len(t.Events) == 0 {
		t.Events = slices.Clone(Kinds)
	}
	if t.Timeout < 0 {
		return fmt.Errorf("%s.timeout: %v: must not be negative", path, t.Timeout)
	}
	if t.Timeout == 0 {
		t.Timeout = DefaultTimeout
	}
	if t.Retries == nil {
		n := DefaultRetries
		t.Retries = &n
	}
	if *t.Retries < 0 || *t.Retries > 20 {
		return fmt.Errorf("%s.retries: %d: want 0..20", path, *t.Retries)
	}
	return nil
}

// Event is one thing worth telling.
type Event struct {
	// ID is stable across leaders: KIND/NAME/INDEX.
	ID   string `json:"id"`
	Kind string `json:"kind"`
	// At is when the entry was committed; Index is its Raft index.
	At    time.Time `json:"at"`
	Index uint64    `json:"index"`

	Rollout       string `json:"rollout,omitempty"`
	Drill         string `json:"drill,omitempty"`
	Service       string `json:"service"`
	From          string `json:"from,omitempty"`
	To            string `json:"to,omitempty"`
	Phase         string `json:"phase"`
	PreviousPhase string `json:"previous_phase,omitempty"`
	Operator      string `json:"operator,omitempty"`
	Message       string `json:"message,omitempty"`
	// Reason is why a rollout rolled back or a drill was aborted.
	Reason string `json:"reason,omitempty"`
	// Evidence is the judge's evidence of a rollback, in words.
	Evidence string `json:"evidence,omitempty"`
	// Verdict and Report are a drill's.
	Verdict string `json:"verdict,omitempty"`
	Report  string `json:"report,omitempty"`
}

// Text is the event in one or two lines, for chat.
func (e Event) Text() string {
	var b strings.Builder
	switch e.Kind {
	case KindRollback:
		fmt.Fprintf(&b, ":rotating_light: *%s* (%s: %s -> %s) is rolling back: %s", e.Rollout, e.Service, e.To, e.From, e.Reason)
		if e.Evidence != "" {
			fmt.Fprintf(&b, "\nEvidence: %s", e.Evidence)
		}
	case KindDrill:
		fmt.Fprintf(&b, "Drill *%s* on %s %s", e.Drill, e.Service, e.Phase)
		if e.Verdict != "" {
			fmt.Fprintf(&b, ": %s", e.Verdict)
		}
		if e.Reason != "" {
			fmt.Fprintf(&b, " (%s)", e.Reason)
		}
		if e.Report != "" {
			fmt.Fprintf(&b, "\n%s", e.Report)
		}
	default:
		fmt.Fprintf(&b, "Rollout *%s* (%s: %s -> %s) is %s", e.Rollout, e.Service, e.From, e.To, e.Phase)
		if e.Message != "" {
			fmt.Fprintf(&b, ": %s", e.Message)
		}
		if e.Operator != "" {
			fmt.Fprintf(&b, " (%s)", e.Operator)
		}
	}
	return b.String()
}

// Body is what t receives for e.
func (t *Target) Body(e Event) ([]byte, error) {
	if t.Format == FormatSlack {
		return json.Marshal(map[string]string{"text": e.Text()})
	}
	return json.Marshal(e)
}

// Wants tells whether t receives events of e's kind.
func (t *Target) Wants(e Event) bool { return slices.Contains(t.Events, e.Kind) }

// Outcome is how one delivery ended.
type Outcome struct {
	Target   string
	Event    string
	Attempts int
	Err      error
}

// maxBackoffFactor caps the wait between attempts at this many times the
// first (32 s by default): doubling without end, a target's last retries
// would wait for days while its later events queue behind and are dropped.
const maxBackoffFactor = 64

// Sender delivers events to targets, each target in order on a goroutine of
// its own, so a slow receiver delays nobody else.
type Sender struct {
	Client *http.Client
	// Backoff is the wait before the first retry, doubled each time up to
	// maxBackoffFactor times itself; 500 ms when zero.
	Backoff time.Duration
	// Done, when set, is told every delivery's outcome.
	Done func(Outcome)
}

// Send delivers e to t, retrying as t says. It returns when the receiver
// answered 2xx, the retries ran out, or ctx ended.
func (s *Sender) Send(ctx context.Context, t *Target, e Event) error {
	body, err := t.Body(e)
	if err != nil {
		return err
	}
	first := s.Backoff
	if first <= 0 {
		first = 500 * time.Millisecond
	}
	backoff := first
	client := http.Client{}
	if s.Client != nil {
		client = *s.Client
	}
	// A redirect is not delivery: following a 301/302/303 turns the POST
	// into a GET without the body. It is a failed attempt, with its status.
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	attempts := 1 + *t.Retries
	var last error
	n := 0
	for n < attempts {
		n++
		if last = s.attempt(ctx, &client, t, e, body); last == nil {
			break
		}
		if n == attempts || ctx.Err() != nil {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, maxBackoffFactor*first)
	}
	if s.Done != nil {
		s.Done(Outcome{Target: t.Name, Event: e.ID, Attempts: n, Err: last})
	}
	if last != nil {
		return fmt.Errorf("notify %s of %s: %w (after %d attempts)", t.Name, e.ID, last, n)
	}
	return nil
}

func (s *Sender) attempt(ctx context.Context, client *http.Client, t *Target, e Event, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, t.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.URL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Switchyard-Event-Id", e.ID)
	req.Header.Set("Switchyard-Event-Kind", e.Kind)
	resp, err := client.Do(req)
	if err != nil {
		// The error names the URL, whose path or query is often the
		// receiver's secret (a chat webhook's token); it ends in the logs.
		if uerr := (*url.Error)(nil); errors.As(err, &uerr) {
			uerr.URL = redact(t.URL)
		}
		return err
	}
	defer resp.Body.Close()
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
	if resp.StatusCode/100 != 2 {
		status := resp.Status
		if resp.Header.Get("Location") != "" {
			status += " (a redirect, not followed)"
		}
		return fmt.Errorf("answered %s: %s", status, strings.TrimSpace(string(snippet)))
	}
	return nil
}

// redact is rawURL with only its scheme and host: what may be logged.
func redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "(unparsable URL)"
	}
	out := u.Scheme + "://" + u.Host
	if u.Path != "" || u.RawQuery != "" || u.Fragment != "" {
		out += "/…"
	}
	return out
}
