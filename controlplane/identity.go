package controlplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/fjordmesh/fjord/certs"
	"github.com/fjordmesh/fjord/certs/api"
	"github.com/fjordmesh/fjord/watcher"
	"github.com/fjordmesh/fjord/xds/server"
)

// DefaultServiceAccount is the control plane's own service account: with
// the mesh namespace, the SPIFFE ID of its serving certificate.
const DefaultServiceAccount = "fjord-cp"

// caLoadTimeout bounds loading or creating the CA at startup: in Kubernetes
// mode its storage is a Secret behind the API server.
const caLoadTimeout = 30 * time.Second

// IdentityConfig configures the mesh's identity: the CA, and the secure
// port that serves the certificate API and authenticated xDS over TLS.
type IdentityConfig struct {
	// SecureAddress is host:port of the secure port; port 0 picks a free
	// one (see SecureAddr). Empty turns identity off: no CA, no secure
	// port, no admin socket.
	SecureAddress string
	// TrustDomain of every identity issued. Default certs.DefaultTrustDomain.
	TrustDomain string
	// ServiceAccount is the control plane's. Default DefaultServiceAccount.
	ServiceAccount string
	// LeafTTL is the lifetime of workload certificates. Default
	// certs.DefaultLeafTTL.
	LeafTTL time.Duration
	// Skew is the clock skew the built-in CA allows for: it lengthens each
	// root rotation phase and backdates CA certificates. Default
	// certs.DefaultSkew.
	Skew time.Duration
	// CAStorage keeps the built-in CA. Default: fjord.db in the data
	// directory. Unused with Issuer.
	CAStorage certs.Storage
	// Issuer replaces the built-in CA: in cert-manager mode, a
	// certs.ExternalIssuer that signs with the intermediate cert-manager
	// issues. New waits (up to a bound) until it has loaded one, and Run
	// runs it. Its rotations are not Fjord's: `fjordctl ca status` and
	// `ca rotate` are refused.
	Issuer Issuer
	// Authenticator checks the tokens of certificate requests. Default:
	// tokens minted by `fjordctl token create`, kept in fjord.db.
	Authenticator certs.Authenticator
	// DNSNames and IPs are what clients dial the secure port by, for the
	// serving certificate. Default <ServiceAccount>.<mesh namespace>.svc
	// (the install names its Service like its ServiceAccount), 127.0.0.1
	// and the secure address's IP if it names one.
	DNSNames []string
	IPs      []net.IP
}

// Issuer is a CA that is not Fjord's own (IdentityConfig.Issuer).
type Issuer interface {
	certs.ServingIssuer
	// BundlePEM is the trust bundle as PEM.
	BundlePEM() []byte
	// Loaded is closed once the issuer can sign.
	Loaded() <-chan struct{}
	// Run follows the issuer's changes until ctx ends.
	Run(ctx context.Context) error
}

// issuer is what the identity needs of either kind of CA.
type issuer interface {
	certs.ServingIssuer
	BundlePEM() []byte
	Run(ctx context.Context) error
}

// identity is the running CA and the servers that hand out and check
// identities.
type identity struct {
	log       *slog.Logger
	issuer    issuer
	serving   *certs.Serving
	secure    *grpc.Server
	secureLis net.Listener
	// admin serves the AdminService on DATA/admin.sock; nil without a data
	// directory.
	admin    *grpc.Server
	adminLis net.Listener
}

// newIdentity loads or creates the CA, issues the serving certificate and
// binds the secure port and the admin socket; nil if identity is off.
func (cp *ControlPlane) newIdentity() (_ *identity, err error) {
	cfg := cp.cfg.Identity
	if cfg.SecureAddress == "" {
		return nil, nil
	}
	if cfg.TrustDomain == "" {
		cfg.TrustDomain = certs.DefaultTrustDomain
	}
	if cfg.ServiceAccount == "" {
		cfg.ServiceAccount = DefaultServiceAccount
	}
	if (cfg.CAStorage == nil && cfg.Issuer == nil) || cfg.Authenticator == nil {
		if cp.store == nil {
			return nil, errors.New("secure address: the CA and the tokens need a data directory or their own storage")
		}
		if cfg.CAStorage == nil && cfg.Issuer == nil {
			cfg.CAStorage = cp.store.CA()
		}
		if cfg.Authenticator == nil {
			cfg.Authenticator = &certs.TokenAuthenticator{Store: cp.store.Tokens()}
		}
	}
	self, err := certs.NewIdentity(cfg.TrustDomain, certs.ServiceAccount{Namespace: cp.cfg.MeshNamespace, Name: cfg.ServiceAccount})
	if err != nil {
		return nil, fmt.Errorf("control plane identity: %w", err)
	}
	id := &identity{log: cp.log.With("component", "identity")}
	defer func() {
		if err != nil {
			id.closeListeners()
		}
	}()

	var ca *certs.CA
	if cfg.Issuer != nil {
		t := time.NewTimer(caLoadTimeout)
		defer t.Stop()
		select {
		case <-cfg.Issuer.Loaded():
		case <-t.C:
			return nil, errNotIssued(cp.cfg.MeshNamespace)
		}
		id.issuer = cfg.Issuer
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), caLoadTimeout)
		defer cancel()
		if ca, err = certs.New(ctx, certs.Options{Storage: cfg.CAStorage, LeafTTL: cfg.LeafTTL, Skew: cfg.Skew, Log: id.log.With("component", "ca")}); err != nil {
			return nil, err
		}
		id.issuer = ca
	}
	if id.secureLis, err = net.Listen("tcp", cfg.SecureAddress); err != nil {
		return nil, fmt.Errorf("secure address: %w", err)
	}
	dns, ips := cfg.DNSNames, cfg.IPs
	if len(dns)+len(ips) == 0 {
		dns = []string{cfg.ServiceAccount + "." + cp.cfg.MeshNamespace + ".svc"}
		ips = []net.IP{net.IPv4(127, 0, 0, 1)}
		if a, ok := id.secureLis.Addr().(*net.TCPAddr); ok && !a.IP.IsUnspecified() && !a.IP.IsLoopback() {
			ips = append(ips, a.IP)
		}
	}
	if id.serving, err = certs.NewServing(id.issuer, certs.ServingOptions{
		Identity: self, DNSNames: dns, IPs: ips, Log: id.log.With("component", "serving-certificate"),
	}); err != nil {
		return nil, err
	}
	certSrv, err := api.NewServer(api.Options{
		Issuer: id.issuer, Authenticator: cfg.Authenticator, TrustDomain: cfg.TrustDomain,
		Registerer: cp.reg, Log: id.log.With("component", "certificate-api"),
	})
	if err != nil {
		return nil, err
	}
	id.secure = grpc.NewServer(append(server.TLSGRPCOptions(), grpc.Creds(credentials.NewTLS(id.serving.TLSConfig())))...)
	certSrv.Register(id.secure)
	cp.xds.RegisterAuthenticated(id.secure, cfg.TrustDomain)

	if cp.store != nil {
		// The admin socket mints tokens and rotates the CA: only this
		// user and root may connect.
		path := filepath.Join(cp.cfg.DataDir, api.AdminSocket)
		if id.adminLis, err = api.ListenUnix(path, []int{os.Getuid(), 0}, id.log); err != nil {
			return nil, err
		}
		id.admin = grpc.NewServer()
		admin := &api.Admin{Tokens: cp.store.Tokens(), TrustDomain: cfg.TrustDomain, Log: id.log.With("component", "admin")}
		if ca != nil {
			admin.CA = ca
		} else {
			admin.Unmanaged = id.issuer
		}
		admin.Register(id.admin)
		cp.log.Info("admin socket listening", "path", path)
	}
	cp.log.Info("secure server listening (certificate API, authenticated xds)", "addr", id.secureLis.Addr().String(),
		"identity", self.String(), "trust_domain", cfg.TrustDomain)
	return id, nil
}

// run keeps the CA and the serving certificate current and serves the
// secure port and the admin socket until ctx ends and stop is called; each
// failure is sent to errs, which must have room for four.
func (id *identity) run(ctx context.Context, wg *sync.WaitGroup, errs chan<- error) {
	jobs := map[string]func() error{
		"CA":                  func() error { return id.issuer.Run(ctx) },
		"serving certificate": func() error { return id.serving.Run(ctx) },
		"secure server":       func() error { return id.secure.Serve(id.secureLis) },
	}
	if id.admin != nil {
		jobs["admin server"] = func() error { return id.admin.Serve(id.adminLis) }
	}
	for name, job := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := job(); err != nil {
				errs <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
}

// servers are the gRPC servers to stop, with their names.
func (id *identity) servers() map[string]*grpc.Server {
	s := map[string]*grpc.Server{"secure server": id.secure}
	if id.admin != nil {
		s["admin server"] = id.admin
	}
	return s
}

func (id *identity) closeListeners() {
	for _, l := range []net.Listener{id.secureLis, id.adminLis} {
		if l != nil {
			l.Close()
		}
	}
}

// stopGRPC stops g gracefully, or closes its connections once grace has
// passed.
func stopGRPC(log *slog.Logger, name string, g *grpc.Server, grace time.Duration) {
	stopped := make(chan struct{})
	go func() {
		g.GracefulStop()
		close(stopped)
	}()
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-stopped:
	case <-t.C:
		log.Warn("server did not stop in time; closing its connections", "server", name, "grace", grace)
		g.Stop()
		<-stopped
	}
}

// errNotIssued is the failure to start in cert-manager mode when no
// intermediate came in time.
func errNotIssued(meshNS string) error {
	return fmt.Errorf("no signing intermediate after %s: is cert-manager issuing Certificate %s/%s? (kubectl describe certificate)",
		caLoadTimeout, meshNS, watcher.IntermediateName)
}

// SecureAddr is the bound secure address, nil if identity is off.
func (cp *ControlPlane) SecureAddr() net.Addr {
	if cp.identity == nil {
		return nil
	}
	return cp.identity.secureLis.Addr()
}

// TrustBundle follows the CA's trust bundle (for the fjord-root-ca
// publisher), nil if identity is off.
func (cp *ControlPlane) TrustBundle() watcher.Bundle {
	if cp.identity == nil {
		return nil
	}
	return cp.identity.issuer
}
