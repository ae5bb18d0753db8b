package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/fjordmesh/fjord/bootstrap"
	"github.com/fjordmesh/fjord/certs/api"
)

// ListenSDS listens on the SDS Unix socket at path, mode 0600, admitting only
// processes of the given user ids (Envoy's).
func ListenSDS(path string, uids []int, log *slog.Logger) (net.Listener, error) {
	return api.ListenUnix(path, uids, log)
}

// ServeSDS serves Envoy's SecretDiscoveryService on lis until ctx ends:
// state-of-the-world streams and unary fetches of bootstrap.SecretCertificate
// and bootstrap.SecretRootCA, pushing new versions as the credentials are
// renewed.
func (a *Agent) ServeSDS(ctx context.Context, lis net.Listener) error {
	g := grpc.NewServer()
	secretv3.RegisterSecretDiscoveryServiceServer(g, &sdsServer{a: a, log: a.log.With("component", "sds")})
	errc := make(chan error, 1)
	go func() { errc <- g.Serve(lis) }()
	select {
	case <-ctx.Done():
		// Streams live as long as Envoy does; do not wait for them.
		g.Stop()
		<-errc
		return nil
	case err := <-errc:
		return fmt.Errorf("SDS server: %w", err)
	}
}

type sdsServer struct {
	secretv3.UnimplementedSecretDiscoveryServiceServer
	a   *Agent
	log *slog.Logger
}

// StreamSecrets is the state-of-the-world SDS stream. A request with new
// resource names is answered with the current credentials (as soon as there
// are any); an ACK or NACK of the last response is not; a renewal is pushed.
func (s *sdsServer) StreamSecrets(stream grpc.BidiStreamingServer[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]) error {
	ctx := stream.Context()
	reqs := make(chan *discoveryv3.DiscoveryRequest)
	errc := make(chan error, 1)
	go func() {
		for {
			r, err := stream.Recv()
			if err != nil {
				errc <- err
				return
			}
			select {
			case reqs <- r:
			case <-ctx.Done():
				return
			}
		}
	}()

	var (
		names       []string
		subscribed  bool
		sentVersion string
		lastNonce   string
		nonce       int
	)
	changed := s.a.Changed()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case <-changed:
			changed = s.a.Changed()
		case r := <-reqs:
			if r.GetTypeUrl() != resourcev3.SecretType {
				return status.Errorf(codes.InvalidArgument, "type %q: this server only serves %s", r.GetTypeUrl(), resourcev3.SecretType)
			}
			if r.GetResponseNonce() != lastNonce {
				continue // answers an older response
			}
			if d := r.GetErrorDetail(); d != nil {
				s.log.Warn("Envoy rejected secrets", "version", r.GetVersionInfo(), "names", r.GetResourceNames(), "error", d.GetMessage())
			}
			want := slices.Sorted(slices.Values(r.GetResourceNames()))
			if subscribed && slices.Equal(want, names) {
				continue // an ACK or NACK: nothing new to send
			}
			names, subscribed, sentVersion = want, true, ""
		}
		if !subscribed {
			continue
		}
		creds := s.a.Current()
		if creds == nil || version(creds, names) == sentVersion {
			continue
		}
		nonce++
		resp, err := s.response(creds, names, strconv.Itoa(nonce))
		if err != nil {
			return status.Error(codes.Internal, err.Error())
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
		sentVersion, lastNonce = resp.VersionInfo, resp.Nonce
	}
}

// FetchSecrets answers once with the current credentials.
func (s *sdsServer) FetchSecrets(_ context.Context, r *discoveryv3.DiscoveryRequest) (*discoveryv3.DiscoveryResponse, error) {
	if r.GetTypeUrl() != resourcev3.SecretType {
		return nil, status.Errorf(codes.InvalidArgument, "type %q: this server only serves %s", r.GetTypeUrl(), resourcev3.SecretType)
	}
	creds := s.a.Current()
	if creds == nil {
		return nil, status.Error(codes.Unavailable, "no certificate yet")
	}
	resp, err := s.response(creds, r.GetResourceNames(), "")
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return resp, nil
}

// response holds the requested secrets (both for a wildcard request);
// unknown names are left out.
func (s *sdsServer) response(creds *Credentials, names []string, nonce string) (*discoveryv3.DiscoveryResponse, error) {
	if len(names) == 0 {
		names = []string{bootstrap.SecretCertificate, bootstrap.SecretRootCA}
	}
	resp := &discoveryv3.DiscoveryResponse{VersionInfo: version(creds, names), TypeUrl: resourcev3.SecretType, Nonce: nonce}
	for _, name := range names {
		var secret *tlsv3.Secret
		switch name {
		case bootstrap.SecretCertificate:
			key, err := creds.Key.PEM()
			if err != nil {
				return nil, err
			}
			secret = &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
				CertificateChain: inline(creds.ChainPEM),
				PrivateKey:       inline(key),
			}}}
		case bootstrap.SecretRootCA:
			secret = &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
				TrustedCa: inline(creds.BundlePEM),
			}}}
		default:
			s.log.Warn("Envoy asked for an unknown secret", "name", name)
			continue
		}
		if err := secret.ValidateAll(); err != nil {
			return nil, fmt.Errorf("secret %s: %w", name, err)
		}
		a, err := anypb.New(secret)
		if err != nil {
			return nil, fmt.Errorf("secret %s: %w", name, err)
		}
		resp.Resources = append(resp.Resources, a)
	}
	return resp, nil
}

// version names the content of the named secrets, so that a stream is
// pushed only when what it asked for changed: a ROOTCA stream is not
// disturbed by a leaf renewal that kept the bundle.
func version(creds *Credentials, names []string) string {
	if len(names) == 0 {
		names = []string{bootstrap.SecretCertificate, bootstrap.SecretRootCA}
	}
	h := sha256.New()
	for _, name := range names {
		switch name {
		case bootstrap.SecretCertificate:
			h.Write([]byte(bootstrap.SecretCertificate))
			h.Write(creds.ChainPEM)
		case bootstrap.SecretRootCA:
			h.Write([]byte(bootstrap.SecretRootCA))
			h.Write(creds.BundlePEM)
		}
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

func inline(b []byte) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
}
