package harness

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// Load sends steady HTTP traffic to a set of URLs (one edge node's HAProxy
// each) and counts the answers by the backend that gave them, as the
// backend's X-Backend header names it.
type Load struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	client *http.Client

	mu     sync.Mutex
	counts map[string]*LoadCount
}

// LoadCount is what one backend answered.
type LoadCount struct {
	Requests int
	// Errors are answers with a 5xx status.
	Errors int
	// FirstError is when the first 5xx answer came, zero if none did.
	FirstError time.Time
}

// Unanswered is the key under which Load counts requests no backend
// answered (refused connections, timeouts).
const Unanswered = "unanswered"

// StartLoad sends perSecond requests a second to every URL until ctx ends or
// Stop is called.
func StartLoad(ctx context.Context, urls []string, perSecond int) *Load {
	ctx, cancel := context.WithCancel(ctx)
	l := &Load{
		cancel: cancel,
		client: &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 4}},
		counts: map[string]*LoadCount{},
	}
	perSecond = max(perSecond, 1)
	for _, u := range urls {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			tick := time.NewTicker(time.Second / time.Duration(perSecond))
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				l.one(ctx, u)
			}
		}()
	}
	return l
}

func (l *Load) one(ctx context.Context, url string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return
	}
	resp, err := l.client.Do(req)
	backend, failed := Unanswered, true
	if err == nil {
		resp.Body.Close()
		if b := resp.Header.Get("X-Backend"); b != "" {
			backend = b
		}
		failed = resp.StatusCode >= 500
	} else if ctx.Err() != nil {
		return // stopped, not failed
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.counts[backend]
	if c == nil {
		c = &LoadCount{}
		l.counts[backend] = c
	}
	c.Requests++
	if failed {
		c.Errors++
		if c.FirstError.IsZero() {
			c.FirstError = time.Now()
		}
	}
}

// Counts returns a copy of the counts so far, by backend.
func (l *Load) Counts() map[string]LoadCount {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]LoadCount, len(l.counts))
	for k, c := range l.counts {
		out[k] = *c
	}
	return out
}

// Reset forgets the counts so far.
func (l *Load) Reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.counts = map[string]*LoadCount{}
}

// Stop ends the traffic and waits for requests in flight.
func (l *Load) Stop() {
	l.cancel()
	l.wg.Wait()
	l.client.CloseIdleConnections()
}

// FormatCounts renders counts as one line, backends in name order:
// "blue 950 (4 errors), green 48 (0 errors)".
func FormatCounts(counts map[string]LoadCount) string {
	names := make([]string, 0, len(counts))
	for name := range counts {
		names = append(names, name)
	}
	slices.Sort(names)
	parts := make([]string, 0, len(names))
	for _, name := range names {
		c := counts[name]
		parts = append(parts, fmt.Sprintf("%s %d (%d errors)", name, c.Requests, c.Errors))
	}
	if len(parts) == 0 {
		return "no answers yet"
	}
	return strings.Join(parts, ", ")
}
