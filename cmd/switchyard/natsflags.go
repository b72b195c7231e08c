package main

import (
	"flag"

	"github.com/nats-io/nats.go"

	"github.com/switchyard/switchyard/bus"
)

// natsSecurityFlags are the NATS identity and TLS flags every command that
// connects to the bus takes, with environment defaults so a shell set up
// once (eval of `switchyard dev`'s output) needs none of them.
type natsSecurityFlags struct{ sec bus.Security }

func (f *natsSecurityFlags) register(fs *flag.FlagSet) {
	f.registerCreds(fs, "SWITCHYARD_NATS_CREDS")
	f.registerTLS(fs)
}

// registerCreds adds --nats-creds with its default from env; "" takes no
// default from the environment (an agent must not pick up the operator's
// creds of the shell it was started from).
func (f *natsSecurityFlags) registerCreds(fs *flag.FlagSet, env string) {
	if env == "" {
		fs.StringVar(&f.sec.Creds, "nats-creds", "", "NATS user credentials file, from 'switchyard auth issue'")
		return
	}
	fs.StringVar(&f.sec.Creds, "nats-creds", envOr(env, ""), "NATS user credentials file, from 'switchyard auth issue' (env "+env+")")
}

func (f *natsSecurityFlags) registerTLS(fs *flag.FlagSet) {
	fs.StringVar(&f.sec.CA, "nats-ca", envOr("SWITCHYARD_NATS_CA", ""), "CA certificate that signed the NATS servers' certificates; turns TLS on (env SWITCHYARD_NATS_CA)")
	fs.StringVar(&f.sec.Cert, "nats-cert", envOr("SWITCHYARD_NATS_CERT", ""), "client certificate, for servers that require one (env SWITCHYARD_NATS_CERT)")
	fs.StringVar(&f.sec.Key, "nats-key", envOr("SWITCHYARD_NATS_KEY", ""), "key of --nats-cert (env SWITCHYARD_NATS_KEY)")
}

// options checks the files and returns the connection options; errors name
// the flag.
func (f *natsSecurityFlags) options() ([]nats.Option, error) { return f.sec.Options("--nats-") }
