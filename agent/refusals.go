package agent

import (
	"sync"
	"time"
)

// refusalWarnEvery is how often, at most, an agent warns of documents
// refused for the same reason: the first at once, then one a minute
// saying how many were refused since. The counters count every one.
const refusalWarnEvery = time.Minute

// refusalLog bounds the warnings of refused documents. A refused document
// can be sent as often as someone likes: whoever may read a bucket through
// the JetStream API can have the NATS server store its answer where a
// document belongs (docs/security.md), and every agent then receives it.
type refusalLog struct {
	mu   sync.Mutex
	seen map[string]refusalSeen
}

type refusalSeen struct {
	at time.Time
	// since counts the refusals not warned of since at.
	since int
}

// warn says whether a refusal for reason at now is to be warned of, and
// how many were not since the last warning.
func (l *refusalLog) warn(reason string, now time.Time) (ok bool, since int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.seen == nil {
		l.seen = map[string]refusalSeen{}
	}
	s, had := l.seen[reason]
	if had && now.Sub(s.at) < refusalWarnEvery {
		s.since++
		l.seen[reason] = s
		return false, 0
	}
	l.seen[reason] = refusalSeen{at: now}
	return true, s.since
}
