package api

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// BearerToken is the per-call credentials of the certificate API: it reads
// the token anew for every call, so a token file that is replaced (as
// Kubernetes does with projected service-account tokens) is picked up.
type BearerToken func() (string, error)

// GetRequestMetadata sends "authorization: Bearer <token>".
func (b BearerToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	token, err := b()
	if err != nil {
		return nil, fmt.Errorf("reading token: %w", err)
	}
	return map[string]string{"authorization": "Bearer " + token}, nil
}

// RequireTransportSecurity is true: a token never travels in clear.
func (BearerToken) RequireTransportSecurity() bool { return true }

// DialAdmin connects to the admin socket at path. The connection is local
// and the server checks the caller's user id, so it needs no TLS.
func DialAdmin(path string) (*grpc.ClientConn, error) {
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	return conn, nil
}

// DialCertificates connects to the certificate API at addr (host:port),
// checking the control plane's serving certificate against bundle for the
// host of addr, and sending token with every call.
func DialCertificates(addr string, bundle []*x509.Certificate, token BearerToken) (*grpc.ClientConn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("certificate API address %q: %w", addr, err)
	}
	if len(bundle) == 0 {
		return nil, errors.New("certificate API: no trust bundle to verify the control plane with")
	}
	roots := x509.NewCertPool()
	for _, c := range bundle {
		roots.AddCert(c)
	}
	creds := credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots, ServerName: host})
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds), grpc.WithPerRPCCredentials(token))
	if err != nil {
		return nil, fmt.Errorf("certificate API %s: %w", addr, err)
	}
	return conn, nil
}
