package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/fjordmesh/fjord/certs"
)

// Per-identity rate limit defaults: a deployment of a hundred replicas
// starting at once gets its certificates without waiting, while a stolen
// token cannot keep the CA busy.
const (
	DefaultRate  = rate.Limit(20)
	DefaultBurst = 200
)

// maxTrackedIdentities bounds the rate limiter map; above it, limiters that
// are full again (idle identities) are dropped.
const maxTrackedIdentities = 10000

// Options configure the certificate server.
type Options struct {
	Issuer        certs.Issuer
	Authenticator certs.Authenticator
	// TrustDomain of the identities issued. Default certs.DefaultTrustDomain.
	TrustDomain string
	// Rate and Burst limit Sign calls per identity. Default DefaultRate and
	// DefaultBurst.
	Rate  rate.Limit
	Burst int
	// Registerer, if set, gets fjord_certs_issued_total and
	// fjord_certs_refused_total{reason}.
	Registerer prometheus.Registerer
	// Log defaults to slog.Default().
	Log *slog.Logger
}

// Server is the CertificateService.
type Server struct {
	UnimplementedCertificateServiceServer
	opts    Options
	log     *slog.Logger
	issued  prometheus.Counter
	refused *prometheus.CounterVec

	mu       sync.Mutex
	limiters map[certs.Identity]*rate.Limiter
}

// NewServer checks the options and registers the metrics.
func NewServer(opts Options) (*Server, error) {
	if opts.Issuer == nil || opts.Authenticator == nil {
		return nil, errors.New("certificate server: an issuer and an authenticator are required")
	}
	if opts.TrustDomain == "" {
		opts.TrustDomain = certs.DefaultTrustDomain
	}
	if err := certs.ValidateTrustDomain(opts.TrustDomain); err != nil {
		return nil, err
	}
	if opts.Rate <= 0 {
		opts.Rate = DefaultRate
	}
	if opts.Burst <= 0 {
		opts.Burst = DefaultBurst
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	s := &Server{
		opts: opts, log: opts.Log, limiters: map[certs.Identity]*rate.Limiter{},
		issued: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fjord_certs_issued_total", Help: "Workload certificates issued by the certificate API.",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fjord_certs_refused_total", Help: "Certificate API calls refused, by reason.",
		}, []string{"reason"}),
	}
	if opts.Registerer != nil {
		for _, c := range []prometheus.Collector{s.issued, s.refused} {
			if err := opts.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("certificate server metrics: %w", err)
			}
		}
	}
	return s, nil
}

// Register adds the CertificateService to g, which must serve TLS.
func (s *Server) Register(g *grpc.Server) { RegisterCertificateServiceServer(g, s) }

// Sign authenticates the caller, checks the CSR against the caller's own
// identity, and issues the leaf.
func (s *Server) Sign(ctx context.Context, req *SignRequest) (*SignResponse, error) {
	token, err := bearer(ctx)
	if err != nil {
		return nil, s.refuse("no_token", codes.Unauthenticated, err, slog.Attr{})
	}
	sa, err := s.opts.Authenticator.Authenticate(ctx, token)
	if errors.Is(err, certs.ErrUnauthenticated) {
		return nil, s.refuse("bad_token", codes.Unauthenticated, err, slog.Attr{})
	}
	if err != nil {
		return nil, s.refuse("authenticator", codes.Unavailable, fmt.Errorf("authenticating: %w", err), slog.Attr{})
	}
	id, err := certs.NewIdentity(s.opts.TrustDomain, sa)
	if err != nil {
		return nil, s.refuse("bad_identity", codes.PermissionDenied, fmt.Errorf("the token's identity %s: %w", sa, err), slog.Attr{})
	}
	who := slog.String("identity", id.String())
	if !s.limiter(id).Allow() {
		return nil, s.refuse("rate_limited", codes.ResourceExhausted, fmt.Errorf("rate limit of %s per second for %s", formatRate(s.opts.Rate), id), who)
	}
	csr, err := certs.ParseCSR([]byte(req.GetCsrPem()))
	if err != nil {
		return nil, s.refuse("bad_csr", codes.InvalidArgument, err, who)
	}
	if err := certs.CheckCSR(csr, id); errors.Is(err, certs.ErrWrongIdentity) {
		return nil, s.refuse("wrong_identity", codes.PermissionDenied, err, who)
	} else if err != nil {
		return nil, s.refuse("bad_csr", codes.InvalidArgument, err, who)
	}
	ttl := req.GetTtl().AsDuration()
	if req.GetTtl() != nil && ttl <= 0 {
		return nil, s.refuse("bad_ttl", codes.InvalidArgument, fmt.Errorf("ttl %s: want more than 0", ttl), who)
	}
	chain, err := s.opts.Issuer.Sign(csr, id, ttl)
	if err != nil {
		s.log.Error("signing failed", "identity", id.String(), "error", err)
		return nil, status.Error(codes.Internal, "signing failed")
	}
	s.issued.Inc()
	s.log.Debug("certificate issued", "identity", id.String(),
		"serial", chain[0].SerialNumber.Text(16), "not_after", chain[0].NotAfter)
	return &SignResponse{
		CertChainPem:   string(certs.EncodeCerts(chain)),
		TrustBundlePem: string(s.opts.Issuer.BundlePEM()),
	}, nil
}

// refuse counts, logs and returns a refusal. The token is never logged.
func (s *Server) refuse(reason string, code codes.Code, err error, who slog.Attr) error {
	s.refused.WithLabelValues(reason).Inc()
	s.log.Info("certificate request refused", "reason", reason, who, "error", err)
	return status.Error(code, err.Error())
}

// limiter returns id's rate limiter, making it on first use.
func (s *Server) limiter(id certs.Identity) *rate.Limiter {
	s.mu.Lock()
	defer s.mu.Unlock()
	l, ok := s.limiters[id]
	if ok {
		return l
	}
	if len(s.limiters) >= maxTrackedIdentities {
		for k, l := range s.limiters {
			if l.Tokens() >= float64(s.opts.Burst) {
				delete(s.limiters, k)
			}
		}
	}
	l = rate.NewLimiter(s.opts.Rate, s.opts.Burst)
	s.limiters[id] = l
	return l
}

// bearer reads the token from the "authorization: Bearer <token>" metadata.
func bearer(ctx context.Context) (string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get("authorization")
	if len(vals) != 1 {
		return "", fmt.Errorf("want one authorization header with a bearer token, got %d", len(vals))
	}
	scheme, token, ok := strings.Cut(vals[0], " ")
	if !ok || !strings.EqualFold(scheme, "bearer") || token == "" {
		return "", errors.New("authorization header: want \"Bearer <token>\"")
	}
	return token, nil
}

func formatRate(r rate.Limit) string { return fmt.Sprintf("%g", float64(r)) }
