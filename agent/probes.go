package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/cookiejar"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/internal/clock"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// PreflightProbeName is the name a preflight has in ProbeResults.
const PreflightProbeName = "preflight"

// maxProbeBody bounds how much of an answer a probe reads to look for
// BodyContains.
const maxProbeBody = 1 << 20

// maxPendingProbes bounds the results waiting for the next HealthReport.
const maxPendingProbes = 256

// probeTransport is shared by every probe. Connections are not kept: a
// probe every few seconds gains nothing from them, and a fresh connection is
// what a preflight must prove works.
var probeTransport = &http.Transport{
	Proxy:                  nil, // a probe goes to the backend, never through an environment proxy
	DisableKeepAlives:      true,
	TLSHandshakeTimeout:    5 * time.Second,
	ResponseHeaderTimeout:  0, // the check's own timeout bounds it
	MaxResponseHeaderBytes: 64 << 10,
}

// runCheck makes one request and judges its answer. It returns the latency
// to the end of the body and, when the check fails, why.
func runCheck(ctx context.Context, client *http.Client, chk *HTTPCheck) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, chk.Timeout)
	defer cancel()
	var body io.Reader
	if chk.Body != "" {
		body = strings.NewReader(chk.Body)
	}
	req, err := http.NewRequestWithContext(ctx, chk.Method, chk.URL, body)
	if err != nil {
		return 0, fmt.Errorf("build request %s %s: %w", chk.Method, chk.URL, err)
	}
	for k, v := range chk.Headers {
		if strings.EqualFold(k, "Host") {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return time.Since(start), fmt.Errorf("%s %s: no answer within timeout %s", chk.Method, chk.URL, chk.Timeout)
		}
		return time.Since(start), fmt.Errorf("%s %s: %w", chk.Method, chk.URL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxProbeBody))
	lat := time.Since(start)
	if err != nil {
		return lat, fmt.Errorf("%s %s: read body: %w", chk.Method, chk.URL, err)
	}
	if resp.StatusCode != chk.ExpectStatus {
		return lat, fmt.Errorf("%s %s: status %d, want %d", chk.Method, chk.URL, resp.StatusCode, chk.ExpectStatus)
	}
	if chk.BodyContains != "" && !strings.Contains(string(b), chk.BodyContains) {
		return lat, fmt.Errorf("%s %s: body lacks %q", chk.Method, chk.URL, chk.BodyContains)
	}
	if chk.MaxLatency > 0 && lat > chk.MaxLatency {
		return lat, fmt.Errorf("%s %s: took %s, limit %s", chk.Method, chk.URL, lat.Round(time.Millisecond), chk.MaxLatency)
	}
	return lat, nil
}

// probeResult builds the wire form of one probe.
func probeResult(backend, name string, at time.Time, lat time.Duration, err error) *sv1.ProbeResult {
	r := &sv1.ProbeResult{
		Backend: backend,
		Name:    name,
		Ok:      err == nil,
		Latency: durationpb.New(lat),
		At:      timestamppb.New(at),
	}
	if err != nil {
		r.Error = err.Error()
	}
	return r
}

// probeBuffer holds probe results until the next HealthReport takes them.
type probeBuffer struct {
	mu      sync.Mutex
	results []*sv1.ProbeResult
	dropped int
}

func (b *probeBuffer) add(r *sv1.ProbeResult) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.results) >= maxPendingProbes {
		// Oldest first out: the newest say most about the backend now.
		b.results = slices.Delete(b.results, 0, 1)
		b.dropped++
	}
	b.results = append(b.results, r)
}

func (b *probeBuffer) take() []*sv1.ProbeResult {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := b.results
	b.results = nil
	return out
}

// prober runs a service's preflights and synthetic transactions and records
// their results for telemetry and metrics.
type prober struct {
	service string
	cfg     *ProbesConfig // nil: no probes
	buf     *probeBuffer
	m       *metrics
	clock   clock.Clock
	log     *slog.Logger
}

// preflightError is a preflight that failed: the agent refuses the weight
// and retries, but the driver itself is fine.
type preflightError struct {
	backend string
	err     error
}

func (e *preflightError) Error() string {
	return fmt.Sprintf("preflight of backend %q failed: %v", e.backend, e.err)
}

func (e *preflightError) Unwrap() error { return e.err }

// preflight checks every backend whose weight goes from 0 (or absent) to
// more and has a preflight configured, in name order, and returns the first
// failure.
func (p *prober) preflight(ctx context.Context, before, after map[string]uint32) error {
	if p.cfg == nil || len(p.cfg.Preflight) == 0 {
		return nil
	}
	client := &http.Client{Transport: probeTransport}
	for _, b := range slices.Sorted(maps.Keys(after)) {
		chk := p.cfg.Preflight[b]
		if chk == nil || after[b] == 0 || before[b] != 0 {
			continue
		}
		at := p.clock.Now()
		lat, err := runCheck(ctx, client, chk)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		p.record(probePreflight, b, PreflightProbeName, at, lat, err)
		if err != nil {
			return &preflightError{backend: b, err: err}
		}
		p.log.Info("preflight passed", "backend", b, "latency", lat.Round(time.Millisecond))
	}
	return nil
}

func (p *prober) record(kind, backend, name string, at time.Time, lat time.Duration, err error) {
	result := probeOK
	if err != nil {
		result = probeFailed
	}
	p.m.probes.WithLabelValues(p.service, backend, kind, result).Inc()
	p.buf.add(probeResult(backend, name, at, lat, err))
}

// runSynthetic runs every backend's scripted sequence once. A step that
// fails ends its sequence: later steps usually depend on it (a login).
func (p *prober) runSynthetic(ctx context.Context) {
	s := p.cfg.Synthetic
	for _, b := range slices.Sorted(maps.Keys(s.Transactions)) {
		jar, _ := cookiejar.New(nil) // cannot fail without options
		client := &http.Client{Transport: probeTransport, Jar: jar}
		for _, chk := range s.Transactions[b] {
			at := p.clock.Now()
			lat, err := runCheck(ctx, client, chk)
			if ctx.Err() != nil {
				return
			}
			p.record(probeSynthetic, b, chk.Name, at, lat, err)
			if err != nil {
				p.log.Warn("synthetic transaction failed", "backend", b, "step", chk.Name, "err", err)
				break
			}
		}
	}
}

// syntheticLoop runs the transactions every interval while view says a
// rollout is in progress on this service.
func (p *prober) syntheticLoop(ctx context.Context, view func() *appliedView) {
	if p.cfg == nil || p.cfg.Synthetic == nil {
		return
	}
	t := time.NewTicker(p.cfg.Synthetic.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if v := view(); v.rolloutActive() {
				p.runSynthetic(ctx)
			}
		}
	}
}
