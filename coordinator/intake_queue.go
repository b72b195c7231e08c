package coordinator

import (
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// reportQueue holds the reports waiting for the intake workers, oldest
// first out. A full queue drops its oldest report to make room, and a
// report that waited too long is dropped when a worker comes by: merged
// after the window judge has read its second it would count for nothing
// there, and nobody would know; dropped and counted instead, its second is
// marked as missing data (see intakeMaxWait). Of the reports the queue
// cannot keep, the oldest are the likeliest to be late anyway.
//
// Taking the newest first was tried, to decode reports while the NATS
// client's copy is still in the processor's cache: offered 300,000
// reports a second in process it merged about half as many as oldest
// first, and over the bus (on a loaded machine, three paired runs) it cost
// more per report, not less.
type reportQueue struct {
	mu   sync.Mutex
	ring []queuedReport
	head int // the oldest report
	n    int
	// wake holds a token while reports may be waiting for a worker.
	wake chan struct{}
	// holds are the takers' holds (see hold).
	holds []*hold
}

// A hold is what one taker (a worker, or the subscription's callback for
// the reports push drops) moved out of the ring and has not yet let go of:
// merged into the store, or marked there as shed. Until then such a report
// is neither waiting nor in the store, and the window judge must not read
// its second as if it were complete (see oldest).
type hold struct {
	// at is the receive time of the oldest report held; zero when none.
	at time.Time
}

// queuedReport is a report and when it was received, by the intake's
// clock (with its monotonic reading, when it has one, so that a step of
// the wall clock neither ages nor rejuvenates what waits).
type queuedReport struct {
	msg *nats.Msg
	at  time.Time
}

func newReportQueue(size int) *reportQueue {
	return &reportQueue{ring: make([]queuedReport, size), wake: make(chan struct{}, 1)}
}

// push queues m, received at at. When the queue is full the oldest report
// makes room: it is returned (dropped.msg set), to be shed, and h (when not
// nil) holds it until release(h).
func (q *reportQueue) push(h *hold, m *nats.Msg, at time.Time) (dropped queuedReport) {
	q.mu.Lock()
	if q.n == len(q.ring) {
		dropped = q.ring[q.head]
		q.keep(h, dropped.at)
		q.ring[q.head] = queuedReport{m, at}
		q.head = (q.head + 1) % len(q.ring)
	} else {
		q.ring[(q.head+q.n)%len(q.ring)] = queuedReport{m, at}
		q.n++
	}
	q.mu.Unlock()
	q.signal()
	return dropped
}

// take first moves every report received before stale out of the queue,
// appending them to expired, and then moves up to len(buf) of the others
// into buf, oldest first. It returns how many went to buf, and expired.
func (q *reportQueue) take(buf []*nats.Msg, stale time.Time, expired []queuedReport) (int, []queuedReport) {
	return q.takeHeld(nil, buf, stale, expired)
}

// takeHeld is take whose reports, those for buf and the expired ones, h
// holds until release(h).
func (q *reportQueue) takeHeld(h *hold, buf []*nats.Msg, stale time.Time, expired []queuedReport) (int, []queuedReport) {
	q.mu.Lock()
	if q.n > 0 {
		// The head is the oldest of what is taken.
		q.keep(h, q.ring[q.head].at)
	}
	for q.n > 0 && q.ring[q.head].at.Before(stale) {
		expired = append(expired, q.ring[q.head])
		q.ring[q.head] = queuedReport{}
		q.head = (q.head + 1) % len(q.ring)
		q.n--
	}
	k := min(len(buf), q.n)
	for i := range k {
		at := (q.head + i) % len(q.ring)
		buf[i] = q.ring[at].msg
		q.ring[at] = queuedReport{}
	}
	q.head = (q.head + k) % len(q.ring)
	q.n -= k
	left := q.n
	q.mu.Unlock()
	if left > 0 {
		// Another worker may take the rest.
		q.signal()
	}
	return k, expired
}

// newHold registers a taker's hold.
func (q *reportQueue) newHold() *hold {
	q.mu.Lock()
	defer q.mu.Unlock()
	h := &hold{}
	q.holds = append(q.holds, h)
	return h
}

// keep has h hold a report received at at; q.mu is held.
func (q *reportQueue) keep(h *hold, at time.Time) {
	if h != nil && (h.at.IsZero() || at.Before(h.at)) {
		h.at = at
	}
}

// release lets go of what h held: merged, or marked as shed.
func (q *reportQueue) release(h *hold) {
	q.mu.Lock()
	h.at = time.Time{}
	q.mu.Unlock()
}

// oldest is the receive time of the oldest report waiting or held, and
// whether there is one.
func (q *reportQueue) oldest() (time.Time, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	var at time.Time
	if q.n > 0 {
		at = q.ring[q.head].at
	}
	for _, h := range q.holds {
		if !h.at.IsZero() && (at.IsZero() || h.at.Before(at)) {
			at = h.at
		}
	}
	return at, !at.IsZero()
}

func (q *reportQueue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// len is how many reports wait.
func (q *reportQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.n
}
