package audit

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/bus"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Stored is one message of the audit stream.
type Stored struct {
	// StreamSeq is the message's sequence in the stream.
	StreamSeq uint64
	// Seq is the record sequence the message claims (its header, else its
	// decoded record); 0 when it names none.
	Seq   uint64
	Entry *sv1.AuditEntry
	// Err is set when the message does not decode as an entry.
	Err error
}

// ReadStream reads the audit stream's messages with stream sequence above
// after, in stream order, and returns them with the stream's last
// sequence.
func ReadStream(ctx context.Context, js jetstream.JetStream, after uint64) ([]Stored, uint64, error) {
	st, err := js.Stream(ctx, bus.AuditStream)
	if err != nil {
		return nil, 0, fmt.Errorf("open %s: %w", bus.AuditStream, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("%s info: %w", bus.AuditStream, err)
	}
	last := info.State.LastSeq
	var out []Stored
	for seq := max(after+1, info.State.FirstSeq); seq <= last && seq > 0; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return out, last, fmt.Errorf("%s message %d: %w", bus.AuditStream, seq, err)
		}
		s := Stored{StreamSeq: seq, Entry: &sv1.AuditEntry{}}
		if err := proto.Unmarshal(m.Data, s.Entry); err != nil {
			s.Err = fmt.Errorf("does not decode as an audit entry: %v", err)
		}
		if h := m.Header.Get(bus.AuditSeqHeader); h != "" {
			s.Seq, _ = strconv.ParseUint(h, 10, 64)
		}
		if s.Seq == 0 && s.Err == nil {
			var rec sv1.AuditRecord
			if proto.Unmarshal(s.Entry.GetRecord(), &rec) == nil {
				s.Seq = rec.GetSeq()
			}
		}
		out = append(out, s)
	}
	return out, last, nil
}

// VerifyStored recomputes the chain over the stream's messages, in the
// order of the record sequences they claim, from record 1. A message that
// claims a record but does not decode, a record whose hash or link is
// wrong, a missing record and two different records of one sequence are
// each reported as the first broken link. Two kinds of message are not
// part of the chain and are listed apart: one that claims no record (no
// sequence in its header or its bytes; Verified.Foreign), and a second
// copy, byte for byte, of a record the stream holds (Verified.Copies). The
// NATS server writes both when a JetStream API request names the stream's
// subject as its reply subject (anyone who may read the stream can send
// one; a direct get answered there is a copy of the record it read), so
// they must not break the chain; neither can change what it says, and
// every record must still be there, linked.
func VerifyStored(msgs []Stored) (Verified, error) {
	var foreign []uint64
	msgs = slices.DeleteFunc(slices.Clone(msgs), func(m Stored) bool {
		if m.Seq == 0 {
			foreign = append(foreign, m.StreamSeq)
			return true
		}
		return false
	})
	slices.SortStableFunc(msgs, func(a, b Stored) int {
		switch {
		case a.Seq < b.Seq:
			return -1
		case a.Seq > b.Seq:
			return 1
		}
		return 0
	})
	var copies []uint64
	kept := msgs[:0]
	for _, m := range msgs {
		if n := len(kept); n > 0 && kept[n-1].Seq == m.Seq && kept[n-1].Err == nil && m.Err == nil && proto.Equal(kept[n-1].Entry, m.Entry) {
			copies = append(copies, m.StreamSeq)
			continue
		}
		kept = append(kept, m)
	}
	v, err := verifySorted(kept)
	v.Foreign, v.Copies = foreign, copies
	return v, err
}

// verifySorted verifies msgs, sorted by the record sequences they claim.
func verifySorted(sorted []Stored) (Verified, error) {
	links := make([]Link, 0, len(sorted))
	for _, m := range sorted {
		where := fmt.Sprintf("record %d (stream sequence %d)", m.Seq, m.StreamSeq)
		if m.Err != nil {
			return Verified{}, fmt.Errorf("%w at %s: %v", ErrBroken, where, m.Err)
		}
		links = append(links, Link{Entry: m.Entry, Where: where})
	}
	return Verify(links, true)
}
