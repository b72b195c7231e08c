package coordinator

import (
	"context"
	"net/http"
	"time"

	"github.com/switchyard/switchyard/coordinator/notify"
)

// notifyQueue is how many events may wait for one slow receiver before
// new ones are dropped (and counted).
const notifyQueue = 256

// notifyEvery is how often the leader looks for new events.
const notifyEvery = 250 * time.Millisecond

// runNotify is the leader's notifier: it turns committed state into
// events and hands them to one sender per receiver, so a slow or failing
// receiver delays nobody else and never the rollouts. A new leader resends
// the events of the last notify.ReplayWindow; receivers drop ids they saw.
func (s *Server) runNotify(ctx context.Context) {
	if len(s.cfg.Notify) == 0 {
		return
	}
	sender := &notify.Sender{
		Client: &http.Client{},
		Done: func(o notify.Outcome) {
			outcome := "sent"
			if o.Err != nil {
				outcome = "failed"
				s.log.Warn("notification not delivered", "target", o.Target, "event", o.Event, "attempts", o.Attempts, "err", o.Err)
			} else {
				s.log.Debug("notification delivered", "target", o.Target, "event", o.Event, "attempts", o.Attempts)
			}
			s.metrics.notifications.WithLabelValues(o.Target, outcome).Inc()
		},
	}
	queues := make([]chan notify.Event, len(s.cfg.Notify))
	done := make(chan struct{})
	for i := range s.cfg.Notify {
		t := &s.cfg.Notify[i]
		q := make(chan notify.Event, notifyQueue)
		queues[i] = q
		go func() {
			defer func() { done <- struct{}{} }()
			for {
				select {
				case <-ctx.Done():
					return
				case e := <-q:
					_ = sender.Send(ctx, t, e) // counted and logged by Done
				}
			}
		}()
	}
	defer func() {
		for range queues {
			<-done
		}
	}()
	tr := notify.NewTracker(s.cfg.Clock.Now().Add(-notify.ReplayWindow))
	tick := time.NewTicker(notifyEvery)
	defer tick.Stop()
	for {
		st := s.fsm.State()
		for _, e := range tr.Events(st.RolloutsWhere(tr.Changed), st.Drills()) {
			for i := range s.cfg.Notify {
				t := &s.cfg.Notify[i]
				if !t.Wants(e) {
					continue
				}
				select {
				case queues[i] <- e:
				default:
					s.metrics.notifications.WithLabelValues(t.Name, "dropped").Inc()
					s.log.Warn("notification dropped: the receiver is too far behind", "target", t.Name, "event", e.ID)
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
