package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nuid"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/bus"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// signer is the key the client signs intents with: --sign-key, else the
// nkey in --nats-creds; nil (bare intents) when neither is set.
func (c *clientFlags) signer() (*bus.IntentSigner, error) {
	switch {
	case c.signKey != "":
		s, err := bus.LoadIntentSigner(c.signKey)
		if err != nil {
			return nil, fmt.Errorf("--sign-key: %w", err)
		}
		return s, nil
	case c.security.sec.Creds != "":
		s, err := bus.LoadIntentSigner(c.security.sec.Creds)
		if err != nil {
			return nil, fmt.Errorf("--nats-creds: %w", err)
		}
		return s, nil
	}
	return nil, nil
}

const intentUsage = `Usage:
  switchyard intent sign [--sign-key FILE | --nats-creds FILE] < intent.json > signed.json
      read one intent as JSON (protojson of switchyard.v1.Intent) on standard input, fill
      id and createdAt when missing, and write the signed envelope (switchyard.v1.SignedIntent,
      JSON) on standard output, ready to publish on switchyard.intent.rollout or
      switchyard.intent.chaos with any NATS client.
  switchyard intent key [--sign-key FILE | --nats-creds FILE]
      print the public key intents are signed with (what an admin grants roles to)
`

func runIntent(_ context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, intentUsage)
		return errUsage
	}
	switch args[0] {
	case "sign", "key":
	case "-h", "--help", "help":
		fmt.Fprint(stdout, intentUsage)
		return nil
	default:
		return usageErr(stderr, "switchyard intent: unknown verb %q\n\n%s", args[0], intentUsage)
	}
	fs := newFlags("intent "+args[0], stderr)
	var c clientFlags
	fs.StringVar(&c.signKey, "sign-key", envOr("SWITCHYARD_SIGN_KEY", ""), "enrolled Ed25519 key or NATS creds file to sign with (env SWITCHYARD_SIGN_KEY)")
	c.security.registerCreds(fs, "SWITCHYARD_NATS_CREDS")
	if err := parse(fs, args[1:]); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageErr(stderr, "switchyard intent %s: takes no arguments", args[0])
	}
	signer, err := c.signer()
	if err != nil {
		return err
	}
	if signer == nil {
		return usageErr(stderr, "switchyard intent %s: want --sign-key FILE or --nats-creds FILE (or SWITCHYARD_SIGN_KEY / SWITCHYARD_NATS_CREDS)", args[0])
	}
	if args[0] == "key" {
		fmt.Fprintln(stdout, signer.Key())
		return nil
	}
	b, err := io.ReadAll(io.LimitReader(stdin, bus.MaxIntentSize+1))
	if err != nil {
		return fmt.Errorf("read intent: %w", err)
	}
	if len(b) > bus.MaxIntentSize {
		return fmt.Errorf("intent on standard input: more than %d bytes", bus.MaxIntentSize)
	}
	if b, err = bus.AcceptSpecJSON(b); err != nil {
		return fmt.Errorf("intent on standard input: %v", err)
	}
	var in sv1.Intent
	if err := protojson.Unmarshal(b, &in); err != nil {
		return fmt.Errorf("intent on standard input: not a switchyard.v1.Intent in JSON: %v", err)
	}
	if in.GetAction() == nil {
		return fmt.Errorf("intent on standard input: names no action (applyRollout, abortRollout, approveRollout, runDrill, acl, …)")
	}
	if in.GetId() == "" {
		in.Id = nuid.Next()
	}
	if in.GetCreatedAt() == nil {
		in.CreatedAt = timestamppb.New(time.Now())
	}
	env, err := signer.Sign(&in)
	if err != nil {
		return err
	}
	out, err := protojson.Marshal(env)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, string(out))
	return nil
}
