package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// MaxBatchKeys is the most keys LastValues reads: the servers answer a
// batched read of the newest message of each subject with at most 1,024.
const MaxBatchKeys = 1024

// numPendingHeader is what the servers' end of a batch says was left
// unsent.
const numPendingHeader = "Nats-Num-Pending"

// ErrTooManyKeys is returned by LastValues for a bucket with more than
// MaxBatchKeys keys; the caller lists them through a consumer instead.
var ErrTooManyKeys = errors.New("more keys than one batched read returns")

// LastValues reads the newest value of every key in bucket with one batched
// direct get, the servers' "last message of each subject", instead of the
// ordered consumer a key listing takes: it needs no more rights than a Get,
// creates nothing on the servers, and works when the bucket's stream has
// all the consumers it may have. Deleted and purged keys are left out. A
// bucket with more than MaxBatchKeys keys gives ErrTooManyKeys.
func LastValues(ctx context.Context, js jetstream.JetStream, bucket string) (map[string][]byte, error) {
	nc := js.Conn()
	prefix := "$KV." + bucket + "." // of every key's subject
	req, err := json.Marshal(struct {
		MultiLast []string `json:"multi_last"`
	}{[]string{prefix + ">"}})
	if err != nil {
		return nil, err
	}
	inbox := nc.NewRespInbox()
	// A batch is at most MaxBatchKeys values and the end-of-batch mark.
	sub, err := subscribeReplies(nc, inbox, MaxBatchKeys+1)
	if err != nil {
		return nil, fmt.Errorf("read bucket %s: %w", bucket, err)
	}
	defer sub.unsubscribe()
	subject := apiPrefix(js) + "DIRECT.GET.KV_" + bucket
	if err := nc.PublishRequest(subject, inbox, req); err != nil {
		return nil, fmt.Errorf("read bucket %s: %w", bucket, err)
	}
	values := map[string][]byte{}
	for {
		m, err := sub.next(ctx)
		if err != nil {
			return nil, fmt.Errorf("read bucket %s: %w", bucket, err)
		}
		if status := m.Header.Get("Status"); status != "" {
			switch status {
			case "204": // end of batch
				if np := m.Header.Get(numPendingHeader); np != "" && np != "0" {
					return nil, fmt.Errorf("read bucket %s: the servers stopped with %s keys unread", bucket, np)
				}
				return values, nil
			case "404": // no keys
				return values, nil
			case "413":
				return nil, fmt.Errorf("read bucket %s: %w (%d)", bucket, ErrTooManyKeys, MaxBatchKeys)
			case "503":
				return nil, fmt.Errorf("read bucket %s: %w", bucket, nats.ErrNoResponders)
			}
			return nil, fmt.Errorf("read bucket %s: the servers answered %s %s", bucket, status, m.Header.Get("Description"))
		}
		if err := keepValue(values, m, bucket, prefix); err != nil {
			return nil, err
		}
	}
}

// keepValue files one message of bucket's stream (subjects under prefix)
// in values: its key's newest value, or, for a delete or purge marker, no
// value.
func keepValue(values map[string][]byte, m *nats.Msg, bucket, prefix string) error {
	key, ok := strings.CutPrefix(m.Header.Get(jetstream.SubjectHeader), prefix)
	if !ok || key == "" {
		return fmt.Errorf("read bucket %s: an answer for subject %q", bucket, m.Header.Get(jetstream.SubjectHeader))
	}
	switch m.Header.Get(KVOperationHeader) {
	case KVOperationDelete, KVOperationPurge:
		delete(values, key)
	default:
		values[key] = m.Data
	}
	return nil
}

// apiPrefix is the JetStream API prefix js sends requests with: the
// domain's when it has one.
func apiPrefix(js jetstream.JetStream) string {
	o := js.Options()
	switch {
	case o.Domain != "":
		return "$JS." + o.Domain + ".API."
	case o.APIPrefix != "":
		return strings.TrimSuffix(o.APIPrefix, ".") + "."
	}
	return jetstream.DefaultAPIPrefix
}

// ReadAll reads the newest value of every key in kv: with LastValues, or,
// past MaxBatchKeys keys, by walking the bucket's stream in batched direct
// gets of MaxBatchKeys messages each (its history is one message per key).
// Neither takes a consumer: a consumer's deliver subject is not checked
// against its creator's permissions, so the credentials of a reader (an
// agent) must not allow creating one.
func ReadAll(ctx context.Context, js jetstream.JetStream, kv jetstream.KeyValue) (map[string][]byte, error) {
	values, err := LastValues(ctx, js, kv.Bucket())
	if !errors.Is(err, ErrTooManyKeys) {
		return values, err
	}
	return walkValues(ctx, js, kv.Bucket())
}

// walkValues reads every message of bucket's stream from its first on, a
// batch at a time, and keeps the newest value of each key; a delete or
// purge marker drops the key. A key written again while the walk goes on
// moves to a later sequence, where the walk finds it.
func walkValues(ctx context.Context, js jetstream.JetStream, bucket string) (map[string][]byte, error) {
	nc := js.Conn()
	prefix := "$KV." + bucket + "."
	subject := apiPrefix(js) + "DIRECT.GET.KV_" + bucket
	inbox := nc.NewRespInbox()
	// Each batch is read to its end before the next is asked for.
	sub, err := subscribeReplies(nc, inbox, MaxBatchKeys+1)
	if err != nil {
		return nil, fmt.Errorf("read bucket %s: %w", bucket, err)
	}
	defer sub.unsubscribe()
	values := map[string][]byte{}
	for next := uint64(1); ; {
		req, err := json.Marshal(struct {
			Seq        uint64 `json:"seq"`
			NextBySubj string `json:"next_by_subj"`
			Batch      int    `json:"batch"`
		}{next, prefix + ">", MaxBatchKeys})
		if err != nil {
			return nil, err
		}
		if err := nc.PublishRequest(subject, inbox, req); err != nil {
			return nil, fmt.Errorf("read bucket %s: %w", bucket, err)
		}
	batch:
		for {
			m, err := sub.next(ctx)
			if err != nil {
				return nil, fmt.Errorf("read bucket %s: %w", bucket, err)
			}
			if status := m.Header.Get("Status"); status != "" {
				switch status {
				case "204": // end of batch
					if np := m.Header.Get(numPendingHeader); np == "" || np == "0" {
						return values, nil
					}
				case "404": // nothing at or after next
					return values, nil
				case "503":
					return nil, fmt.Errorf("read bucket %s: %w", bucket, nats.ErrNoResponders)
				default:
					return nil, fmt.Errorf("read bucket %s: the servers answered %s %s", bucket, status, m.Header.Get("Description"))
				}
				break batch // more after this batch: ask from next on
			}
			seq, err := strconv.ParseUint(m.Header.Get(jetstream.SequenceHeader), 10, 64)
			if err != nil || seq < next {
				return nil, fmt.Errorf("read bucket %s: an answer with sequence %q after %d", bucket, m.Header.Get(jetstream.SequenceHeader), next)
			}
			next = seq + 1
			if err := keepValue(values, m, bucket, prefix); err != nil {
				return nil, err
			}
		}
	}
}
