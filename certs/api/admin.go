package api

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/utils/clock"

	"github.com/fjordmesh/fjord/certs"
)

// CA is what the admin service needs from the certificate authority: the
// built-in *certs.CA. In cert-manager mode there is none (see
// Admin.Unmanaged).
type CA interface {
	Status() certs.Status
	Rotate(ctx context.Context) (certs.Status, error)
	Bundle() []*x509.Certificate
}

// Admin is the AdminService. The control plane serves it on its admin
// socket; `fjordctl` calls the same methods in-process on a data directory
// no control plane holds, so both ways behave alike.
type Admin struct {
	UnimplementedAdminServiceServer
	CA CA
	// Unmanaged is set instead of CA when the signing intermediate is not
	// Fjord's to rotate (cert-manager mode): tokens carry its bundle, and
	// Status and Rotate are refused with FailedPrecondition, since
	// cert-manager renews and reports that intermediate.
	Unmanaged certs.Issuer
	Tokens    certs.TokenStore
	// TrustDomain of the identities tokens are minted for.
	TrustDomain string
	// Clock defaults to the wall clock.
	Clock clock.PassiveClock
	// Log defaults to slog.Default().
	Log *slog.Logger
}

// errUnmanaged answers Status and Rotate in cert-manager mode.
var errUnmanaged = status.Error(codes.FailedPrecondition,
	"the signing intermediate is cert-manager's (--ca-issuer cert-manager): cert-manager renews it; "+
		"see Certificate fjord-intermediate in the control plane's namespace (kubectl describe certificate, cmctl status certificate)")

// Register adds the AdminService to g, which must listen only on the admin
// socket.
func (a *Admin) Register(g *grpc.Server) { RegisterAdminServiceServer(g, a) }

// Status reports the CA.
func (a *Admin) Status(context.Context, *StatusRequest) (*StatusResponse, error) {
	if a.CA == nil {
		return nil, errUnmanaged
	}
	return a.statusResponse(a.CA.Status()), nil
}

// Rotate starts a root rotation.
func (a *Admin) Rotate(ctx context.Context, _ *RotateRequest) (*StatusResponse, error) {
	if a.CA == nil {
		return nil, errUnmanaged
	}
	st, err := a.CA.Rotate(ctx)
	if errors.Is(err, certs.ErrRotating) {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	a.log().Info("root rotation started", "phase", st.Phase, "deadline", st.Deadline)
	return a.statusResponse(st), nil
}

// CreateToken mints a token for one identity.
func (a *Admin) CreateToken(ctx context.Context, req *CreateTokenRequest) (*CreateTokenResponse, error) {
	sa := certs.ServiceAccount{Namespace: req.GetNamespace(), Name: req.GetServiceAccount()}
	id, err := certs.NewIdentity(a.trustDomain(), sa)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	token, rec, err := certs.MintToken(ctx, a.Tokens, sa, req.GetTtl().AsDuration(), a.now())
	if err != nil {
		// The identity is valid by now: what is left is a bad TTL or a
		// store that failed.
		code := codes.Internal
		if req.GetTtl().AsDuration() <= 0 || req.GetTtl().AsDuration() > certs.MaxTokenTTL {
			code = codes.InvalidArgument
		}
		return nil, status.Error(code, err.Error())
	}
	a.log().Info("token created", "identity", id.String(), "expires", rec.Expires)
	return &CreateTokenResponse{
		Token: token, SpiffeId: id.String(), Expires: timestamppb.New(rec.Expires),
		TrustBundlePem: string(certs.EncodeCerts(a.bundle())),
	}, nil
}

// RevokeTokens deletes every token of one identity.
func (a *Admin) RevokeTokens(ctx context.Context, req *RevokeTokensRequest) (*RevokeTokensResponse, error) {
	sa := certs.ServiceAccount{Namespace: req.GetNamespace(), Name: req.GetServiceAccount()}
	if err := sa.Validate(); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	n, err := a.Tokens.DeleteTokens(ctx, sa)
	if err != nil {
		return nil, status.Error(codes.Internal, fmt.Sprintf("revoking tokens of %s: %v", sa, err))
	}
	a.log().Info("tokens revoked", "service_account", sa.String(), "count", n)
	return &RevokeTokensResponse{Revoked: int32(n)}, nil
}

func (a *Admin) statusResponse(st certs.Status) *StatusResponse {
	r := &StatusResponse{
		Phase: string(st.Phase), NextStep: string(st.NextStep),
		Signer:         certInfo(st.Signer),
		TrustBundlePem: string(certs.EncodeCerts(a.bundle())),
		TrustDomain:    a.trustDomain(),
	}
	if !st.Deadline.IsZero() {
		r.Deadline = timestamppb.New(st.Deadline)
	}
	if !st.NextStepAt.IsZero() {
		r.NextStepAt = timestamppb.New(st.NextStepAt)
	}
	for _, c := range st.Roots {
		r.Roots = append(r.Roots, certInfo(c))
	}
	return r
}

func certInfo(c certs.CertInfo) *CertInfo {
	return &CertInfo{
		Role: c.Role, Subject: c.Subject, Serial: c.Serial, Sha256: c.SHA256,
		NotBefore: timestamppb.New(c.NotBefore), NotAfter: timestamppb.New(c.NotAfter),
	}
}

// bundle is the trust bundle handed out with tokens and status.
func (a *Admin) bundle() []*x509.Certificate {
	if a.CA == nil {
		return a.Unmanaged.Bundle()
	}
	return a.CA.Bundle()
}

func (a *Admin) trustDomain() string {
	if a.TrustDomain == "" {
		return certs.DefaultTrustDomain
	}
	return a.TrustDomain
}

func (a *Admin) now() (t time.Time) {
	if a.Clock == nil {
		return time.Now()
	}
	return a.Clock.Now()
}

func (a *Admin) log() *slog.Logger {
	if a.Log == nil {
		return slog.Default()
	}
	return a.Log
}
