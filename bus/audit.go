package bus

import (
	"context"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

const (
	// AuditStream holds the audit records the leader exports, hash-chained,
	// in order; it keeps them until an operator removes them.
	AuditStream = "SWITCHYARD_AUDIT"
	// auditPrefix: switchyard.audit.record.
	auditPrefix = "switchyard.audit"
	// AuditSeqHeader carries an exported record's sequence, so a reader
	// (and the next leader) can find it without decoding.
	AuditSeqHeader = "Switchyard-Audit-Seq"
)

// AuditSubject is where the leader publishes audit records.
func AuditSubject() string { return auditPrefix + ".record" }

// AuditSubjects is the filter of the audit stream.
func AuditSubjects() string { return auditPrefix + ".>" }

// AuditMsgID is the deduplication id of the record with seq and hash: the
// same record published twice (a leader killed after publishing, before
// recording it) is stored once.
func AuditMsgID(seq uint64, hash []byte) string {
	if len(hash) > 8 {
		hash = hash[:8]
	}
	return fmt.Sprintf("audit-%d-%s", seq, hex.EncodeToString(hash))
}

// EnsureAuditStream creates or updates the audit stream. It keeps every
// record (no age or size limit): removing old records is an operator's
// decision, made with the records archived.
func EnsureAuditStream(ctx context.Context, js jetstream.JetStream, r Replicas) (jetstream.Stream, error) {
	n, err := replicasFor(ctx, js, AuditStream, r)
	if err != nil {
		return nil, err
	}
	s, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        AuditStream,
		Description: "Switchyard audit records: every committed decision, hash-chained",
		Subjects:    []string{AuditSubjects()},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		Replicas:    n,
		Duplicates:  10 * time.Minute,
		AllowDirect: true,
	})
	if err != nil {
		return nil, fmt.Errorf("ensure stream %s: %w", AuditStream, err)
	}
	return s, nil
}

// streamRead are the JetStream API subjects reading a stream message by
// message needs (`switchyard audit log` and `verify` read by sequence; a KV
// Get reads its bucket's stream the same way) and nothing that writes or
// creates: its info, direct and classic message get, in this account's
// JetStream and through any JetStream domain ($JS.DOMAIN.API.), for an
// identity at a leaf server that reaches the hub's. No consumer: a stream
// takes at most 1,000 by the servers' default, and a viewer's credentials
// must not be able to use them up.
func streamRead(stream string) []string {
	var subjects []string
	for _, api := range []string{jsAPI, jsDomainAPI} {
		subjects = append(subjects,
			api+"STREAM.INFO."+stream,
			api+"DIRECT.GET."+stream,
			api+"DIRECT.GET."+stream+".>",
			api+"STREAM.MSG.GET."+stream,
		)
	}
	return subjects
}
