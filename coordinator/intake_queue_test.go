package coordinator

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

func queued(i int) *nats.Msg { return &nats.Msg{Subject: fmt.Sprint(i)} }

// take takes with nothing expiring.
func take(q *reportQueue, buf []*nats.Msg) int {
	n, _ := q.take(buf, time.Time{}, nil)
	return n
}

// take hands out the oldest reports first, a batch at a time, across the
// ring's wrap; a full queue drops its oldest report to make room and
// returns it.
func TestReportQueue_OldestFirstAndTheOldestDropped(t *testing.T) {
	q := newReportQueue(4)
	subjects := func(msgs []*nats.Msg) (out []string) {
		for _, m := range msgs {
			out = append(out, m.Subject)
		}
		return out
	}
	for i := range 3 {
		if d := q.push(nil, queued(i), time.Time{}); d.msg != nil {
			t.Fatalf("push %d dropped %s with room left", i, d.msg.Subject)
		}
	}
	buf := make([]*nats.Msg, 2)
	if n := take(q, buf); n != 2 || fmt.Sprint(subjects(buf[:n])) != "[0 1]" {
		t.Fatalf("took %v, want the oldest two [0 1]", subjects(buf[:n]))
	}
	// 2 waits; 3..5 fill the queue past the ring's end, 6 and 7 each drop
	// the oldest (2, then 3).
	for i := 3; i <= 5; i++ {
		if d := q.push(nil, queued(i), time.Time{}); d.msg != nil {
			t.Fatalf("push %d dropped %s", i, d.msg.Subject)
		}
	}
	if d := q.push(nil, queued(6), time.Time{}); d.msg == nil || d.msg.Subject != "2" {
		t.Fatalf("push 6 dropped %v, want the oldest, 2", d.msg)
	}
	if d := q.push(nil, queued(7), time.Time{}); d.msg == nil || d.msg.Subject != "3" {
		t.Fatalf("push 7 dropped %v, want the oldest, 3", d.msg)
	}
	if q.len() != 4 {
		t.Fatalf("len %d, want 4", q.len())
	}
	buf = make([]*nats.Msg, 8)
	if n := take(q, buf); n != 4 || fmt.Sprint(subjects(buf[:n])) != "[4 5 6 7]" {
		t.Fatalf("took %v, want [4 5 6 7]", subjects(buf[:n]))
	}
	q.push(nil, queued(8), time.Time{})
	q.push(nil, queued(9), time.Time{})
	if n := take(q, buf[:1]); n != 1 || buf[0].Subject != "8" {
		t.Fatalf("took %v, want [8]", subjects(buf[:n]))
	}
	if n := take(q, buf); n != 1 || buf[0].Subject != "9" {
		t.Fatalf("took %v, want [9]", subjects(buf[:n]))
	}
	if n := take(q, buf); n != 0 || q.len() != 0 {
		t.Fatalf("an empty queue gave %d, len %d", n, q.len())
	}
}

// Producers and workers at once (run with -race): every report pushed is
// either taken exactly once or dropped exactly once, and workers waiting on
// the wake token are woken for every report.
func TestReportQueue_EveryReportTakenOrDroppedOnce(t *testing.T) {
	const producers, each = 4, 5000
	q := newReportQueue(512)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var mu sync.Mutex
	seen := map[string]int{}
	note := func(m *nats.Msg) {
		mu.Lock()
		seen[m.Subject]++
		mu.Unlock()
	}
	var workers sync.WaitGroup
	stop := make(chan struct{})
	for range 2 {
		workers.Add(1)
		go func() {
			defer workers.Done()
			buf := make([]*nats.Msg, 64)
			for {
				if n := take(q, buf); n > 0 {
					for _, m := range buf[:n] {
						note(m)
					}
					continue
				}
				select {
				case <-stop:
					return
				case <-ctx.Done():
					return
				case <-q.wake:
				}
			}
		}()
	}
	var producing sync.WaitGroup
	for p := range producers {
		producing.Add(1)
		go func() {
			defer producing.Done()
			for i := range each {
				if d := q.push(nil, queued(p*each+i), time.Time{}); d.msg != nil {
					note(d.msg)
				}
			}
		}()
	}
	producing.Wait()
	for q.len() > 0 && ctx.Err() == nil {
		time.Sleep(time.Millisecond)
	}
	close(stop)
	workers.Wait()
	if len(seen) != producers*each {
		t.Fatalf("%d distinct reports taken or dropped, want %d", len(seen), producers*each)
	}
	for s, n := range seen {
		if n != 1 {
			t.Fatalf("report %s seen %d times", s, n)
		}
	}
}

// take first drops the reports received before the stale mark and hands
// out only the fresher ones.
func TestReportQueue_TakeDropsWhatWaitedTooLong(t *testing.T) {
	q := newReportQueue(8)
	for i := range 6 {
		q.push(nil, queued(i), time.Unix(100+int64(i), 0)) // received at 100..105
	}
	buf := make([]*nats.Msg, 2)
	n, expired := q.take(buf, time.Unix(103, 0), nil)
	if len(expired) != 3 || expired[0].msg.Subject != "0" || expired[2].msg.Subject != "2" || expired[2].at.Unix() != 102 {
		t.Fatalf("expired %+v, want 0, 1, 2 (received before 103), oldest first", expired)
	}
	if n != 2 || buf[0].Subject != "3" || buf[1].Subject != "4" {
		t.Fatalf("took %d: %v %v, want 3 and 4", n, buf[0], buf[1])
	}
	if n, expired = q.take(buf, time.Unix(200, 0), expired[:0]); n != 0 || len(expired) != 1 || expired[0].msg.Subject != "5" || q.len() != 0 {
		t.Fatalf("took %d, expired %+v, %d left; want 0, [5], 0", n, expired, q.len())
	}
}
