package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil, fmt.Errorf("read bucket %s: %w", bucket, err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	subject := apiPrefix(js) + "DIRECT.GET.KV_" + bucket
	if err := nc.PublishRequest(subject, inbox, req); err != nil {
		return nil, fmt.Errorf("read bucket %s: %w", bucket, err)
	}
	values := map[string][]byte{}
	for {
		m, err := sub.NextMsgWithContext(ctx)
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
		key, ok := strings.CutPrefix(m.Header.Get(jetstream.SubjectHeader), prefix)
		if !ok || key == "" {
			return nil, fmt.Errorf("read bucket %s: an answer for subject %q", bucket, m.Header.Get(jetstream.SubjectHeader))
		}
		switch m.Header.Get(KVOperationHeader) {
		case KVOperationDelete, KVOperationPurge:
			delete(values, key)
			continue
		}
		values[key] = m.Data
	}
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
// past MaxBatchKeys keys, through a key listing (an ordered consumer, which
// the caller's credentials must allow) and a Get for each key. A key
// deleted between the listing and its Get is left out.
func ReadAll(ctx context.Context, js jetstream.JetStream, kv jetstream.KeyValue) (map[string][]byte, error) {
	values, err := LastValues(ctx, js, kv.Bucket())
	if !errors.Is(err, ErrTooManyKeys) {
		return values, err
	}
	lister, err := kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("list bucket %s: %w", kv.Bucket(), err)
	}
	var keys []string
	for k := range lister.Keys() {
		keys = append(keys, k)
	}
	_ = lister.Stop()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("list bucket %s: %w", kv.Bucket(), err)
	}
	values = make(map[string][]byte, len(keys))
	for _, k := range keys {
		e, err := kv.Get(ctx, k)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			continue
		case err != nil:
			return nil, fmt.Errorf("read %s from bucket %s: %w", k, kv.Bucket(), err)
		}
		values[k] = e.Value()
	}
	return values, nil
}
