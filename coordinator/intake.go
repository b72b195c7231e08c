package coordinator

import (
	"context"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/coordinator/analysis"
)

// Telemetry intake: every node reports every second, so a coordinator of a
// large fleet takes a hundred thousand reports a second. The subscription's
// callback only queues a report; a pool of workers decodes reports and
// merges them into the analysis store in batches, one lock per batch. When
// the queue is full its oldest report is shed, and so is a report that
// waited too long: counted, and marked against its service's second in the
// store, so the windows missing it cannot pass. The window judge waits for
// every report received before a window's grace ended to be merged or
// marked (unsettled), so a backlog delays a verdict rather than passing a
// window on part of the fleet.

const (
	// intakeQueue bounds the reports waiting to be decoded: about a second
	// of a 65k-node fleet; some 41 MB of 10-backend reports with their
	// sketches as whole_counts (621 bytes), 220 MB of the same with counts
	// as doubles (3.3 KB), as agents from before whole_counts send them.
	// A quarter of it (16,384) was tried at 100,000 reports a second: it
	// shed a little in every run instead of keeping up in half of them.
	intakeQueue = 1 << 16
	// intakeBatch is how many queued reports one worker merges per lock.
	intakeBatch = 256
	// intakeMaxWait is how long a report may wait for a worker. The judge
	// reads a second analysis.Grace (1.5 s) after it ends, and a report is
	// sent as its second ends and takes some time to arrive: one that waited
	// longer than this would be merged after its second was read, lost
	// without a word. It is shed instead, and its second marked as missing
	// data.
	intakeMaxWait = time.Second
	// shedFlush is how often shed reports are marked in the store: the
	// judge reads a window only after analysis.Grace.
	shedFlush = 100 * time.Millisecond
	// reportMaxAhead is how far ahead of the coordinator's clock a
	// report's window may end: agents date reports by their own clocks,
	// which NTP keeps well within it. A report further ahead is refused.
	reportMaxAhead = 5 * time.Second
	// clockLogEvery is how often the intake logs the nodes whose reports
	// were dated ahead of its clock or came late.
	clockLogEvery = 10 * time.Second
)

// Reasons a report is shed, the label of switchyard_coordinator_reports_shed_total.
const (
	// shedQueueFull: the workers could not keep up and the queue was full;
	// its oldest report made room for the newest.
	shedQueueFull = "queue_full"
	// shedSlowConsumer: the NATS client dropped reports before the
	// callback saw them (its pending limits were reached).
	shedSlowConsumer = "slow_consumer"
	// shedWaitedTooLong: the report waited longer than intakeMaxWait.
	shedWaitedTooLong = "waited_too_long"
)

type shedKey struct {
	service string
	sec     int64
}

// intake feeds health reports into the analysis store.
type intake struct {
	store   *analysis.Store
	queue   *reportQueue
	workers int
	// reported wakes the leader's rollout controller (may be nil).
	reported chan<- struct{}
	metrics  *intakeMetrics
	log      *slog.Logger
	now      func() time.Time

	// dropping holds the report the callback's push dropped until it is
	// marked as shed.
	// drillUnjudged reports whether a rollout's judge leaves out a node's
	// report tagged with a drill (state.DrillUnjudged); nil leaves out
	// none.
	drillUnjudged func(drill, node, rollout string) bool

	dropping *hold
	// heard is when the last report arrived (Unix nanoseconds); 0 before
	// the first.
	heard atomic.Int64

	mu      sync.Mutex
	pending map[shedKey]uint64
	// pendingSince is when the oldest report in pending was received;
	// flushing, the same of what flushShed is marking in the store. Zero
	// when none.
	pendingSince, flushing time.Time
	clocks                 clockNotes
}

func newIntake(store *analysis.Store, m *intakeMetrics, reported chan<- struct{}, log *slog.Logger, now func() time.Time) *intake {
	in := &intake{store: store, queue: newReportQueue(intakeQueue), workers: max(runtime.GOMAXPROCS(0), 1),
		reported: reported, metrics: m, log: log, now: now, pending: map[shedKey]uint64{}}
	in.dropping = in.queue.newHold()
	store.AwaitIntake(in.unsettled)
	return in
}

// handle is the subscription's callback: it never blocks and never decodes.
func (in *intake) handle(msg *nats.Msg) {
	now := in.now()
	in.heard.Store(now.UnixNano())
	if old := in.queue.push(in.dropping, msg, now); old.msg != nil {
		in.shedQueued(shedQueueFull, old)
		in.queue.release(in.dropping)
	}
}

// lastHeard is when the last report arrived, if one did.
func (in *intake) lastHeard() (time.Time, bool) {
	n := in.heard.Load()
	return time.Unix(0, n), n != 0
}

// unsettled is the receive time of the oldest report intake has neither
// merged nor marked as shed in the store, and whether there is one: the
// window judge reads no window whose grace ended after it, whose reports
// may still be on their way into the store.
func (in *intake) unsettled() (time.Time, bool) {
	// The queue first: a report leaves it for pending before it is let go.
	at, ok := in.queue.oldest()
	in.mu.Lock()
	defer in.mu.Unlock()
	for _, p := range []time.Time{in.pendingSince, in.flushing} {
		if !p.IsZero() && (!ok || p.Before(at)) {
			at, ok = p, true
		}
	}
	return at, ok
}

// notePending records that a report received at at is pending; in.mu is
// held.
func (in *intake) notePending(at time.Time) {
	if in.pendingSince.IsZero() || at.Before(in.pendingSince) {
		in.pendingSince = at
	}
}

// shedQueued sheds reports that were queued, each against the second it
// was received in.
func (in *intake) shedQueued(reason string, reports ...queuedReport) {
	in.metrics.shed(reason).Add(float64(len(reports)))
	in.mu.Lock()
	for _, r := range reports {
		svc, _ := bus.TelemetryService(r.msg.Subject)
		in.pending[shedKey{svc, r.at.Unix()}]++
		in.notePending(r.at)
	}
	in.mu.Unlock()
}

// shed counts reports dropped for reason as they were received and
// remembers them for the store. An empty service stands for every service
// the store follows.
func (in *intake) shed(service, reason string, n uint64) {
	in.metrics.shed(reason).Add(float64(n))
	now := in.now()
	in.mu.Lock()
	in.pending[shedKey{service, now.Unix()}] += n
	in.notePending(now)
	in.mu.Unlock()
}

// flushShed marks the shed reports in the store.
func (in *intake) flushShed() {
	in.mu.Lock()
	if len(in.pending) == 0 {
		in.mu.Unlock()
		return
	}
	pending := in.pending
	in.pending = map[shedKey]uint64{}
	in.flushing, in.pendingSince = in.pendingSince, time.Time{}
	in.mu.Unlock()
	defer func() {
		in.mu.Lock()
		in.flushing = time.Time{}
		in.mu.Unlock()
	}()
	for k, n := range pending {
		if k.service != "" {
			in.store.MarkShed(k.service, k.sec, n)
			continue
		}
		for _, svc := range in.store.Services() {
			in.store.MarkShed(svc, k.sec, n)
		}
	}
}

// run decodes and merges reports until ctx ends, and watches sub for
// reports the NATS client dropped.
func (in *intake) run(ctx context.Context, sub *nats.Subscription) {
	var wg sync.WaitGroup
	wg.Add(in.workers)
	for range in.workers {
		go func() {
			defer wg.Done()
			in.work(ctx)
		}()
	}
	tick := time.NewTicker(shedFlush)
	defer tick.Stop()
	var dropped int
	lastClockLog := in.now()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return
		case <-tick.C:
		}
		if now := in.now(); now.Sub(lastClockLog) >= clockLogEvery {
			lastClockLog = now
			in.clocks.log(in.log)
		}
		if sub != nil {
			if d, err := sub.Dropped(); err == nil && d > dropped {
				in.shed("", shedSlowConsumer, uint64(d-dropped))
				dropped = d
			}
		}
		in.flushShed()
	}
}

func (in *intake) work(ctx context.Context) {
	var dec analysis.Decoder
	msgs := make([]*nats.Msg, intakeBatch)
	batch := make([]*analysis.Report, 0, intakeBatch)
	var expired []queuedReport
	held := in.queue.newHold()
	for {
		var n int
		n, expired = in.queue.takeHeld(held, msgs, in.now().Add(-intakeMaxWait), expired[:0])
		if len(expired) > 0 {
			in.shedQueued(shedWaitedTooLong, expired...)
			clear(expired)
		}
		if n == 0 {
			in.queue.release(held)
			select {
			case <-ctx.Done():
				return
			case <-in.queue.wake:
			}
			continue
		}
		batch = batch[:0]
		rejected, forged, ahead, late, scaled, drilled := 0, 0, 0, 0, 0, 0
		now := in.now()
		latest, lateBefore := now.Add(reportMaxAhead).Unix(), now.Add(-analysis.Grace).Unix()
		for i, msg := range msgs[:n] {
			msgs[i] = nil
			r, err := dec.Decode(msg.Data)
			switch {
			case err != nil:
				rejected++
				in.log.Debug("health report refused", "subject", msg.Subject, "err", err)
				in.clocks.noteRefused(msg.Subject, "", "", err)
			case !bus.IsTelemetrySubject(msg.Subject, r.Service, r.Node):
				// An agent may publish only on its own subject; a
				// report naming another node or service was sent
				// with another node's credentials, to forge its
				// health.
				forged++
				in.log.Debug("health report refused: node or service is not the subject's", "subject", msg.Subject,
					"node", r.Node, "service", r.Service)
				in.clocks.noteRefused(msg.Subject, r.Node, r.Service, nil)
			case r.End > latest:
				// A node whose clock runs ahead: merged, its report
				// would move the service's newest second into the
				// future and age out every real one.
				ahead++
				in.clocks.note(r.Node, time.Duration(r.End-now.Unix())*time.Second, true)
			default:
				if r.End < lateBefore {
					late++
					in.clocks.note(r.Node, time.Duration(now.Unix()-r.End)*time.Second, false)
				}
				scaled += r.ScaledSketches
				if r.Drill != "" && r.Generation != 0 && in.drillUnjudged != nil && in.drillUnjudged(r.Drill, r.Node, r.Rollout) {
					// The drill's injected failures are not the
					// release's: the node's window is missing data for
					// the rollout (generation 0 is judged for none),
					// and still counts toward the node's health.
					r.Generation = 0
					drilled++
				}
				batch = append(batch, r)
			}
		}
		if rejected > 0 {
			in.metrics.rejected.Add(float64(rejected))
		}
		if forged > 0 {
			in.metrics.forged.Add(float64(forged))
		}
		if ahead > 0 {
			in.metrics.clockAhead.Add(float64(ahead))
		}
		if late > 0 {
			in.metrics.late.Add(float64(late))
		}
		if scaled > 0 {
			in.metrics.scaled.Add(float64(scaled))
		}
		if drilled > 0 {
			in.metrics.drilled.Add(float64(drilled))
		}
		if len(batch) == 0 {
			in.queue.release(held)
			dec.Reuse()
			continue
		}
		in.store.AddReports(batch)
		in.queue.release(held)
		// The store keeps copies: the next batch decodes into the same
		// memory.
		dec.Reuse()
		in.metrics.merged.Add(float64(len(batch)))
		if in.reported != nil {
			select {
			case in.reported <- struct{}{}:
			default:
			}
		}
	}
}

// clockNotes gathers, between two log lines, the reports dated ahead of
// the coordinator's clock and those that came late, with the node that was
// furthest off each way: an operator reading the log learns which node's
// clock to look at. It gathers the refused reports too, with the subject
// of the last one: the subject names the credentials that sent it.
type clockNotes struct {
	mu sync.Mutex
	clockTally
}

type clockTally struct {
	ahead, late         int
	aheadNode, lateNode string
	aheadBy, lateBy     time.Duration
	// forged reports named another node or service than their subject;
	// malformed ones did not decode. The last of each is described.
	forged, malformed                        int
	forgedSubject, forgedNode, forgedService string
	malformedSubject                         string
	malformedErr                             error
}

// noteRefused notes a report refused as malformed (err set) or as naming
// node and service on another's subject.
func (c *clockNotes) noteRefused(subject, node, service string, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.malformed++
		c.malformedSubject, c.malformedErr = subject, err
		return
	}
	c.forged++
	c.forgedSubject, c.forgedNode, c.forgedService = subject, node, service
}

func (c *clockNotes) note(node string, by time.Duration, ahead bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ahead {
		c.ahead++
		if by > c.aheadBy {
			c.aheadNode, c.aheadBy = node, by
		}
		return
	}
	c.late++
	if by > c.lateBy {
		c.lateNode, c.lateBy = node, by
	}
}

// log writes what was noted since the last call, and forgets it.
func (c *clockNotes) log(log *slog.Logger) {
	c.mu.Lock()
	n := c.clockTally
	c.clockTally = clockTally{}
	c.mu.Unlock()
	if n.ahead > 0 {
		log.Warn("health reports dated ahead of this coordinator's clock were refused; check the node's clock",
			"reports", n.ahead, "node", n.aheadNode, "ahead_by", n.aheadBy, "within", clockLogEvery)
	}
	if n.late > 0 {
		log.Warn("health reports came after the judge may have read their second; a node's clock may be behind",
			"reports", n.late, "node", n.lateNode, "behind_by", n.lateBy, "within", clockLogEvery)
	}
	if n.forged > 0 {
		log.Warn("health reports refused: they name another node or service than their subject, which names the credentials that sent them (revoke a node you no longer trust)",
			"reports", n.forged, "subject", n.forgedSubject, "node", n.forgedNode, "service", n.forgedService, "within", clockLogEvery)
	}
	if n.malformed > 0 {
		log.Warn("health reports refused: they do not decode",
			"reports", n.malformed, "subject", n.malformedSubject, "err", n.malformedErr, "within", clockLogEvery)
	}
}
