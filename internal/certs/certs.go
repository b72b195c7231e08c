// Package certs loads the CA, certificate and key files of Switchyard's TLS
// connections (NATS and Raft) and makes development CAs.
package certs

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// ErrNoCertificates is returned for a CA file that holds no PEM certificate.
var ErrNoCertificates = errors.New("no PEM certificate found")

// Files names a CA bundle and, optionally, a certificate and its key. Field
// labels in errors come from Labels so each names its flag or config key.
type Files struct {
	CA, Cert, Key string
	// Labels name CA, Cert and Key in errors (e.g. "--nats-ca"); the
	// file path is used when empty.
	CALabel, CertLabel, KeyLabel string
}

func label(l, path string) string {
	if l != "" {
		return l + " " + path
	}
	return path
}

// Pool reads the CA bundle.
func (f Files) Pool() (*x509.CertPool, error) {
	pem, err := os.ReadFile(f.CA)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", label(f.CALabel, f.CA), err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: %w", label(f.CALabel, f.CA), ErrNoCertificates)
	}
	return pool, nil
}

// KeyPair reads the certificate and key; both must be set, or neither.
func (f Files) KeyPair() (*tls.Certificate, error) {
	switch {
	case f.Cert == "" && f.Key == "":
		return nil, nil
	case f.Cert == "":
		return nil, fmt.Errorf("%s: set together with %s", f.KeyLabel, f.CertLabel)
	case f.Key == "":
		return nil, fmt.Errorf("%s: set together with %s", f.CertLabel, f.KeyLabel)
	}
	for _, p := range []struct{ l, path string }{{f.CertLabel, f.Cert}, {f.KeyLabel, f.Key}} {
		if _, err := os.Stat(p.path); err != nil {
			return nil, fmt.Errorf("%s: %w", label(p.l, p.path), err)
		}
	}
	c, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return nil, fmt.Errorf("%s and %s: %w", label(f.CertLabel, f.Cert), label(f.KeyLabel, f.Key), err)
	}
	return &c, nil
}

// Client is a TLS client configuration that verifies the server against the
// CA and presents the certificate when one is set.
func (f Files) Client() (*tls.Config, error) {
	pool, err := f.Pool()
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	kp, err := f.KeyPair()
	if err != nil {
		return nil, err
	}
	if kp != nil {
		cfg.Certificates = []tls.Certificate{*kp}
	}
	return cfg, nil
}

// Mutual is a configuration for both ends of a mutual-TLS link: it presents
// the certificate and requires the peer's, each verified against the CA.
func (f Files) Mutual() (*tls.Config, error) {
	pool, err := f.Pool()
	if err != nil {
		return nil, err
	}
	kp, err := f.KeyPair()
	if err != nil {
		return nil, err
	}
	if kp == nil {
		return nil, fmt.Errorf("%s and %s: required for mutual TLS", f.CertLabel, f.KeyLabel)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{*kp},
		RootCAs:      pool,
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS13,
	}, nil
}
