package audit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/bus"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Source is the replicated chain the exporter reads.
type Source interface {
	AuditHead() *sv1.AuditHead
	// AuditEntries returns the records held with sequence above after, at
	// most limit of them.
	AuditEntries(after uint64, limit int) []*sv1.AuditEntry
}

// Raft records, through the log, how far the stream holds the chain.
type Raft interface {
	AuditExported(through uint64) error
}

// exportBatch is how many records one round publishes before recording
// progress in Raft.
const exportBatch = 256

// Exporter publishes the records of the replicated chain to the audit
// stream, in order, each once. It runs on the leader only. The stream's
// last record, not only the replicated mark, says where to resume: a leader
// killed after publishing but before recording progress leaves the stream
// ahead of the mark, and its successor goes on after the stream's last
// record (the Nats-Msg-Id covers a publish whose acknowledgement was lost).
type Exporter struct {
	JS       jetstream.JetStream
	Source   Source
	Raft     Raft
	Replicas bus.Replicas
	Log      *slog.Logger
	Metrics  *Metrics
	// Interval is how often the exporter looks for new records when
	// nobody wakes it.
	Interval time.Duration
	// Wake, when set, is signalled when records were added.
	Wake <-chan struct{}
}

// Run exports until ctx ends. A NATS outage only delays the export: the
// records stay in the replicated state until the stream holds them.
func (x *Exporter) Run(ctx context.Context) {
	interval := x.Interval
	if interval <= 0 {
		interval = 250 * time.Millisecond
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	ready := false
	for {
		if !ready {
			if _, err := bus.EnsureAuditStream(ctx, x.JS, x.Replicas); err != nil {
				x.failed("ensure stream", err)
			} else {
				ready = true
			}
		}
		if ready {
			if err := x.Step(ctx); err != nil && ctx.Err() == nil {
				x.failed("export", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-x.Wake:
		}
	}
}

func (x *Exporter) failed(what string, err error) {
	x.Metrics.errors.Inc()
	x.Log.Warn("audit "+what+" failed; records stay in the replicated state and are exported when the stream is back", "err", err)
}

// Step exports what the stream lacks, once.
func (x *Exporter) Step(ctx context.Context) error {
	head := x.Source.AuditHead()
	x.Metrics.backlog.Set(float64(head.GetSeq() - head.GetExported()))
	if head.GetSeq() == head.GetExported() {
		return nil
	}
	last, err := StreamLastSeq(ctx, x.JS)
	if errors.Is(err, ErrLastNotRecord) {
		// Something that is not a record was written after the last one
		// (only coordinators may write the stream). Go on from how far
		// the replicated chain says it was exported: a record published
		// but not marked is dropped again by its message id within the
		// stream's duplicate window. audit verify names the message.
		x.Metrics.errors.Inc()
		x.Log.Warn("the audit stream's last message is not an audit record; exporting after the replicated mark (switchyard audit verify names it)",
			"exported", head.GetExported(), "err", err)
		last, err = 0, nil
	}
	if err != nil {
		return err
	}
	from := max(head.GetExported(), last)
	if last > head.GetSeq() {
		return fmt.Errorf("the audit stream holds record %d but the replicated chain ends at %d; another cluster writes %s?", last, head.GetSeq(), bus.AuditStream)
	}
	done := from
	for done < head.GetSeq() {
		entries := x.Source.AuditEntries(done, exportBatch)
		if len(entries) == 0 {
			return fmt.Errorf("record %d is no longer held by the replicated state", done+1)
		}
		for _, e := range entries {
			seq := done + 1
			b, err := proto.Marshal(e)
			if err != nil {
				return fmt.Errorf("encode audit record %d: %w", seq, err)
			}
			msg := nats.NewMsg(bus.AuditSubject())
			msg.Data = b
			msg.Header.Set(bus.MsgIDHeader, bus.AuditMsgID(seq, e.GetHash()))
			msg.Header.Set(bus.AuditSeqHeader, strconv.FormatUint(seq, 10))
			ack, err := x.JS.PublishMsg(ctx, msg)
			if err != nil {
				x.mark(done)
				return fmt.Errorf("publish audit record %d: %w", seq, err)
			}
			if ack.Duplicate {
				x.Metrics.duplicates.Inc()
			} else {
				x.Metrics.exported.Inc()
			}
			done = seq
		}
		x.mark(done)
	}
	return nil
}

func (x *Exporter) mark(through uint64) {
	if through <= x.Source.AuditHead().GetExported() {
		return
	}
	if err := x.Raft.AuditExported(through); err != nil {
		x.Log.Warn("recording audit export progress", "through", through, "err", err)
	}
}

// ErrLastNotRecord says the audit stream's last message is not an audit
// record.
var ErrLastNotRecord = errors.New("the last message is not an audit record")

// StreamLastSeq is the sequence of the last record the audit stream holds,
// 0 when it holds none; ErrLastNotRecord when its last message is not one.
func StreamLastSeq(ctx context.Context, js jetstream.JetStream) (uint64, error) {
	st, err := js.Stream(ctx, bus.AuditStream)
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", bus.AuditStream, err)
	}
	m, err := st.GetLastMsgForSubject(ctx, bus.AuditSubject())
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("last record of %s: %w", bus.AuditStream, err)
	}
	if h := m.Header.Get(bus.AuditSeqHeader); h != "" {
		if n, err := strconv.ParseUint(h, 10, 64); err == nil {
			return n, nil
		}
	}
	var e sv1.AuditEntry
	if err := proto.Unmarshal(m.Data, &e); err != nil {
		return 0, fmt.Errorf("%w: stream sequence %d of %s does not decode: %v", ErrLastNotRecord, m.Sequence, bus.AuditStream, err)
	}
	var rec sv1.AuditRecord
	if err := proto.Unmarshal(e.GetRecord(), &rec); err != nil || rec.GetSeq() == 0 {
		return 0, fmt.Errorf("%w: stream sequence %d of %s holds no record (%v)", ErrLastNotRecord, m.Sequence, bus.AuditStream, err)
	}
	return rec.GetSeq(), nil
}
