package bus

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go"
)

// Query answers larger than one bus message: a coordinator's view of a
// rollout lists every node that runs its service, some hundred bytes each,
// so on a fleet of ten thousand nodes it outgrows the 1 MB a NATS message
// carries by default. An asker that can put an answer back together says so
// with PartsHeader on its request; an answer too big for one message then
// comes as several, in order, each with PartHeader (its index from 0) and
// PartsHeader (how many there are). An asker that did not say so gets an
// error that names the sizes instead of no answer at all.
const (
	PartsHeader = "Switchyard-Parts"
	PartHeader  = "Switchyard-Part"
)

// maxParts bounds the parts of one answer: at the default 1 MB a message,
// a quarter of a gigabyte.
const maxParts = 256

// partHeadroom is the room left in each message for its headers.
const partHeadroom = 1024

// ErrReplyNotInbox refuses to answer a request whose reply subject is not
// under an inbox (see IsInbox).
var ErrReplyNotInbox = errors.New("the reply subject is not an inbox (" + inboxRoot + ".>); no answer is sent there")

// Respond sends reply as the answer to the request req on nc, split into
// parts when it is bigger than a message may be on this bus and the asker
// takes parts.
func Respond(nc *nats.Conn, req, reply *nats.Msg) error {
	if req.Reply == "" {
		// Published, not asked: there is no one to answer.
		return nil
	}
	if !IsInbox(req.Reply) {
		return fmt.Errorf("%w: %q", ErrReplyNotInbox, req.Reply)
	}
	reply.Subject = req.Reply
	limit := int(nc.MaxPayload()) - partHeadroom
	if limit < partHeadroom {
		limit = int(nc.MaxPayload()) / 2
	}
	if len(reply.Data) <= limit {
		return nc.PublishMsg(reply)
	}
	tooBig := func(why string) error {
		m := nats.NewMsg(req.Reply)
		m.Header.Set(ErrorHeader, fmt.Sprintf("the answer is %d bytes, %s", len(reply.Data), why))
		return nc.PublishMsg(m)
	}
	if req.Header.Get(PartsHeader) == "" {
		return tooBig(fmt.Sprintf("more than one message carries on this bus (%d); "+
			"ask with a client that takes answers in parts (header %s), such as the switchyard CLI, or use the HTTP read API",
			nc.MaxPayload(), PartsHeader))
	}
	n := (len(reply.Data) + limit - 1) / limit
	if n > maxParts {
		return tooBig(fmt.Sprintf("more than %d parts of %d bytes", maxParts, limit))
	}
	for i := range n {
		part := nats.NewMsg(req.Reply)
		for k, v := range reply.Header {
			part.Header[k] = v
		}
		part.Header.Set(PartHeader, strconv.Itoa(i))
		part.Header.Set(PartsHeader, strconv.Itoa(n))
		part.Data = reply.Data[i*limit : min((i+1)*limit, len(reply.Data))]
		if err := nc.PublishMsg(part); err != nil {
			return fmt.Errorf("part %d of %d: %w", i+1, n, err)
		}
	}
	return nil
}

// request sends msg and waits, until ctx ends, for its answer on an inbox
// of its own, and puts an answer that came in parts back together: the
// first part, with the whole answer as its data.
func request(ctx context.Context, nc *nats.Conn, msg *nats.Msg) (*nats.Msg, error) {
	// Every part may wait for the reader, whatever its size.
	inbox := nc.NewInbox()
	sub, err := subscribeReplies(nc, inbox, maxParts+1)
	if err != nil {
		return nil, err
	}
	defer sub.unsubscribe()
	msg.Reply = inbox
	msg.Header.Set(PartsHeader, "1")
	if err := nc.PublishMsg(msg); err != nil {
		return nil, err
	}
	m, err := sub.next(ctx)
	if err != nil {
		return nil, err
	}
	if m.Header.Get(PartsHeader) == "" {
		return m, nil
	}
	n, err := partIndex(m, PartsHeader)
	if err != nil || n < 1 || n > maxParts {
		return nil, fmt.Errorf("answer in parts: bad %s %q", PartsHeader, m.Header.Get(PartsHeader))
	}
	data := m.Data
	for i := range n {
		if i > 0 {
			if m, err = sub.next(ctx); err != nil {
				return nil, fmt.Errorf("answer in parts: part %d of %d: %w", i+1, n, err)
			}
			data = append(data, m.Data...)
		}
		if got, err := partIndex(m, PartHeader); err != nil || got != i {
			return nil, fmt.Errorf("answer in parts: want part %d of %d, got %s %q", i, n, PartHeader, m.Header.Get(PartHeader))
		}
		if got, _ := partIndex(m, PartsHeader); got != n {
			return nil, fmt.Errorf("answer in parts: part %d says %s %q, the first said %d", i, PartsHeader, m.Header.Get(PartsHeader), n)
		}
	}
	m.Data = data
	return m, nil
}

func partIndex(m *nats.Msg, header string) (int, error) {
	v := m.Header.Get(header)
	if v == "" {
		return 0, errors.New("missing")
	}
	return strconv.Atoi(v)
}
