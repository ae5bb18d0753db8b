package bootstrap

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"sigs.k8s.io/yaml"

	"github.com/fjordmesh/fjord/xds/node"
)

// DefaultXDSAddress is the control plane's plaintext xDS address in
// standalone mode.
const DefaultXDSAddress = "127.0.0.1:15010"

// DefaultSecureXDSAddress is the control plane's secure address in
// standalone mode: the certificate API and authenticated xDS, over TLS.
const DefaultSecureXDSAddress = "127.0.0.1:15012"

// ServerListenerTemplate is the listener name an xDS-enabled gRPC server
// (xds.NewGRPCServer) asks for; %s is its listening address.
const ServerListenerTemplate = "grpc/server?xds.resource.listening_address=%s"

// Envoy-side names.
const (
	// XDSCluster is the static cluster through which Envoy reaches the
	// control plane.
	XDSCluster = "xds_cluster"
	// AdminAddress is where Envoy's admin interface listens: loopback only,
	// since it can change the proxy's state.
	AdminAddress = "127.0.0.1"
	AdminPort    = 15000
	// SDSCluster is the static cluster that reaches the pod-local identity
	// agent's SDS socket (its --sds-socket, as a pipe address). mTLS
	// resources served over xDS name it as their SDS source.
	SDSCluster = "sds-grpc"
)

// Render returns the bootstrap for the proxy kind of info.
func Render(info node.Info, xdsAddress string) ([]byte, error) {
	switch info.Kind {
	case node.GRPC:
		return GRPC(info, xdsAddress)
	case node.Envoy:
		return Envoy(info, xdsAddress)
	}
	return nil, fmt.Errorf("proxy kind %q: want %s or %s", info.Kind, node.Envoy, node.GRPC)
}

// grpcBootstrap is the subset of grpc-go's bootstrap format Fjord writes.
type grpcBootstrap struct {
	XDSServers                 []grpcServer                `json:"xds_servers"`
	Node                       json.RawMessage             `json:"node"`
	ServerListenerNameTemplate string                      `json:"server_listener_resource_name_template"`
	CertificateProviders       map[string]grpcCertProvider `json:"certificate_providers,omitempty"`
}

type grpcServer struct {
	ServerURI      string      `json:"server_uri"`
	ChannelCreds   []grpcCreds `json:"channel_creds"`
	ServerFeatures []string    `json:"server_features"`
}

type grpcCreds struct {
	Type   string             `json:"type"`
	Config *fileWatcherConfig `json:"config,omitempty"`
}

type grpcCertProvider struct {
	PluginName string            `json:"plugin_name"`
	Config     fileWatcherConfig `json:"config"`
}

// fileWatcherConfig is grpc-go's file_watcher plugin config, which the "tls"
// channel credentials (gRFC A65) take as well.
type fileWatcherConfig struct {
	CertificateFile   string          `json:"certificate_file,omitempty"`
	PrivateKeyFile    string          `json:"private_key_file,omitempty"`
	CACertificateFile string          `json:"ca_certificate_file,omitempty"`
	RefreshInterval   json.RawMessage `json:"refresh_interval,omitempty"`
}

// FileWatcher is a set of PEM files grpc-go re-reads every RefreshInterval
// (zero: grpc-go's default of ten minutes): a certificate chain and its key,
// and the roots to verify peers with. Paths should be absolute, since the
// bootstrap is read from wherever the process runs.
type FileWatcher struct {
	CertificateFile, PrivateKeyFile, CACertificateFile string
	RefreshInterval                                    time.Duration
}

func (f FileWatcher) config() (*fileWatcherConfig, error) {
	c := &fileWatcherConfig{CertificateFile: f.CertificateFile, PrivateKeyFile: f.PrivateKeyFile, CACertificateFile: f.CACertificateFile}
	if (c.CertificateFile == "") != (c.PrivateKeyFile == "") {
		return nil, fmt.Errorf("file watcher: certificate file %q and key file %q go together", c.CertificateFile, c.PrivateKeyFile)
	}
	if c.CertificateFile == "" && c.CACertificateFile == "" {
		return nil, errors.New("file watcher: neither a certificate nor a CA certificate file")
	}
	if f.RefreshInterval < 0 {
		return nil, fmt.Errorf("file watcher: refresh interval %s is negative", f.RefreshInterval)
	}
	if f.RefreshInterval > 0 {
		interval, err := protojson.Marshal(durationpb.New(f.RefreshInterval))
		if err != nil {
			return nil, fmt.Errorf("file watcher: refresh interval %s: %w", f.RefreshInterval, err)
		}
		c.RefreshInterval = interval
	}
	return c, nil
}

// GRPCOptions add credentials to a gRPC bootstrap.
type GRPCOptions struct {
	// CertificateProviders become file_watcher certificate provider
	// instances, by name; xDS resources for proxyless gRPC refer to them
	// (CertProviderInstance) for data-plane TLS.
	CertificateProviders map[string]FileWatcher
	// ChannelTLS, if set, makes the channel to the control plane TLS with
	// these files: the CA file verifies the control plane's serving
	// certificate, the certificate and key are the client certificate that
	// authenticated xDS (the secure port, 15012) demands.
	ChannelTLS *FileWatcher
}

// GRPC returns grpc-go's xDS bootstrap JSON (GRPC_XDS_BOOTSTRAP) for a
// proxyless client or server. The channel to the control plane is
// plaintext: this is the development address, port 15010.
func GRPC(info node.Info, xdsAddress string) ([]byte, error) {
	return GRPCWith(info, xdsAddress, GRPCOptions{})
}

// GRPCWith is GRPC with credentials: certificate providers for data-plane
// TLS and, for the secure port, TLS channel credentials, in the form grpc-go
// (1.85) parses them.
func GRPCWith(info node.Info, xdsAddress string, opts GRPCOptions) ([]byte, error) {
	if err := check(info, node.GRPC, xdsAddress); err != nil {
		return nil, err
	}
	n, err := protojson.Marshal(info.Node())
	if err != nil {
		return nil, fmt.Errorf("encoding node %s: %w", info.ID(), err)
	}
	creds := grpcCreds{Type: "insecure"}
	if opts.ChannelTLS != nil {
		c, err := opts.ChannelTLS.config()
		if err != nil {
			return nil, fmt.Errorf("channel credentials for %s: %w", info.ID(), err)
		}
		creds = grpcCreds{Type: "tls", Config: c}
	}
	b := grpcBootstrap{
		XDSServers: []grpcServer{{
			ServerURI:      xdsAddress,
			ChannelCreds:   []grpcCreds{creds},
			ServerFeatures: []string{"xds_v3"},
		}},
		// protojson output is deliberately unstable in whitespace;
		// json.Marshal compacts it, so the file is byte-for-byte stable.
		Node:                       n,
		ServerListenerNameTemplate: ServerListenerTemplate,
	}
	for name, fw := range opts.CertificateProviders {
		if name == "" {
			return nil, fmt.Errorf("certificate provider for %s: empty name", info.ID())
		}
		c, err := fw.config()
		if err != nil {
			return nil, fmt.Errorf("certificate provider %q for %s: %w", name, info.ID(), err)
		}
		if b.CertificateProviders == nil {
			b.CertificateProviders = map[string]grpcCertProvider{}
		}
		b.CertificateProviders[name] = grpcCertProvider{PluginName: "file_watcher", Config: *c}
	}
	out, err := json.MarshalIndent(b, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encoding bootstrap for %s: %w", info.ID(), err)
	}
	return append(out, '\n'), nil
}

// Envoy returns an Envoy bootstrap as YAML: the node, the admin interface
// on loopback, and incremental (delta) ADS over HTTP/2 to a static cluster
// pointing at the control plane, from which clusters and listeners come.
//
// ADS sets set_node_on_first_message_only, as Istio's bootstraps do: by
// default Envoy sends its node in every request of a stream, which the
// control plane must decode and compare with the node the stream's first
// request pinned (a stream's identity cannot change), for nothing. With it,
// Envoy sends the node in the first request of each stream only, and every
// later request relies on the pinned one.
func Envoy(info node.Info, xdsAddress string) ([]byte, error) {
	return EnvoyWith(info, xdsAddress, EnvoyOptions{})
}

// EnvoyOptions are the optional parts of an Envoy bootstrap.
type EnvoyOptions struct {
	// SDSSocket is the identity agent's SDS socket (fjordctl agent
	// --sds-socket). When set, the bootstrap defines the SDSCluster that
	// mTLS resources use, and Envoy reaches the control plane over TLS with
	// the agent's certificate (secret SecretCertificate), verifying it with
	// the trust bundle (secret SecretRootCA): the authenticated xDS port.
	SDSSocket string
	// StateOfTheWorld makes Envoy use state-of-the-world ADS instead of
	// incremental (delta) ADS. Delta is the default: a sidecar subscribes to
	// a load assignment per cluster of the mesh, and with state of the world
	// it names every one of them again in each acknowledgement, which the
	// control plane must decode and compare; with delta an acknowledgement
	// carries a nonce and the control plane sends only what changed.
	StateOfTheWorld bool
}

// EnvoyWith is Envoy with options.
func EnvoyWith(info node.Info, xdsAddress string, opts EnvoyOptions) ([]byte, error) {
	if err := check(info, node.Envoy, xdsAddress); err != nil {
		return nil, err
	}
	host, port, _ := splitAddress(xdsAddress)
	ads := corev3.ApiConfigSource_DELTA_GRPC
	if opts.StateOfTheWorld {
		ads = corev3.ApiConfigSource_GRPC
	}
	b, err := envoyBootstrap(info, host, port, ads)
	if err != nil {
		return nil, err
	}
	if opts.SDSSocket != "" {
		if err := addSDS(b, opts.SDSSocket); err != nil {
			return nil, err
		}
	}
	if err := b.ValidateAll(); err != nil {
		return nil, fmt.Errorf("bootstrap for %s: %w", info.ID(), err)
	}
	js, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(b)
	if err != nil {
		return nil, fmt.Errorf("encoding bootstrap for %s: %w", info.ID(), err)
	}
	out, err := yaml.JSONToYAML(js)
	if err != nil {
		return nil, fmt.Errorf("encoding bootstrap for %s: %w", info.ID(), err)
	}
	return out, nil
}

func envoyBootstrap(info node.Info, host string, port uint32, apiType corev3.ApiConfigSource_ApiType) (*bootstrapv3.Bootstrap, error) {
	http2, err := anypb.New(&httpv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{
			ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
					Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
				},
			},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("encoding HTTP/2 options: %w", err)
	}
	// An IP needs no resolution; a name is resolved and re-resolved by DNS.
	discovery := clusterv3.Cluster_STRICT_DNS
	if _, err := netip.ParseAddr(host); err == nil {
		discovery = clusterv3.Cluster_STATIC
	}
	ads := func() *corev3.ConfigSource {
		return &corev3.ConfigSource{
			ResourceApiVersion:    corev3.ApiVersion_V3,
			ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
		}
	}
	return &bootstrapv3.Bootstrap{
		Node: info.Node(),
		Admin: &bootstrapv3.Admin{
			Address: socketAddress(AdminAddress, AdminPort),
		},
		DynamicResources: &bootstrapv3.Bootstrap_DynamicResources{
			AdsConfig: &corev3.ApiConfigSource{
				ApiType:                   apiType,
				TransportApiVersion:       corev3.ApiVersion_V3,
				SetNodeOnFirstMessageOnly: true,
				GrpcServices: []*corev3.GrpcService{{
					TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
						EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: XDSCluster},
					},
				}},
			},
			CdsConfig: ads(),
			LdsConfig: ads(),
		},
		StaticResources: &bootstrapv3.Bootstrap_StaticResources{
			Clusters: []*clusterv3.Cluster{{
				Name:                 XDSCluster,
				ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: discovery},
				ConnectTimeout:       durationpb.New(time.Second),
				TypedExtensionProtocolOptions: map[string]*anypb.Any{
					"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": http2,
				},
				LoadAssignment: &endpointv3.ClusterLoadAssignment{
					ClusterName: XDSCluster,
					Endpoints: []*endpointv3.LocalityLbEndpoints{{
						LbEndpoints: []*endpointv3.LbEndpoint{{
							HostIdentifier: &endpointv3.LbEndpoint_Endpoint{
								Endpoint: &endpointv3.Endpoint{Address: socketAddress(host, port)},
							},
						}},
					}},
				},
			}},
		},
	}, nil
}

// addSDS adds the SDS cluster on the agent's Unix socket and puts the xDS
// cluster behind TLS with the agent's secrets.
func addSDS(b *bootstrapv3.Bootstrap, socket string) error {
	http2 := b.GetStaticResources().GetClusters()[0].GetTypedExtensionProtocolOptions()
	sds := &clusterv3.Cluster{
		Name:                          SDSCluster,
		ClusterDiscoveryType:          &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:                durationpb.New(time.Second),
		TypedExtensionProtocolOptions: http2,
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: SDSCluster,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{
				LbEndpoints: []*endpointv3.LbEndpoint{{
					HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
						Address: &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: socket}}},
					}},
				}},
			}},
		},
	}
	fromSDS := func(name string) *tlsv3.SdsSecretConfig {
		return &tlsv3.SdsSecretConfig{Name: name, SdsConfig: &corev3.ConfigSource{
			ResourceApiVersion: corev3.ApiVersion_V3,
			ConfigSourceSpecifier: &corev3.ConfigSource_ApiConfigSource{ApiConfigSource: &corev3.ApiConfigSource{
				ApiType:             corev3.ApiConfigSource_GRPC,
				TransportApiVersion: corev3.ApiVersion_V3,
				GrpcServices: []*corev3.GrpcService{{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
					EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: SDSCluster},
				}}},
			}},
		}}
	}
	tlsCtx, err := anypb.New(&tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{fromSDS(SecretCertificate)},
		ValidationContextType: &tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig{
			ValidationContextSdsSecretConfig: fromSDS(SecretRootCA),
		},
	}})
	if err != nil {
		return fmt.Errorf("encoding the xDS cluster's TLS context: %w", err)
	}
	xds := b.GetStaticResources().GetClusters()[0]
	xds.TransportSocket = &corev3.TransportSocket{
		Name:       "envoy.transport_sockets.tls",
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: tlsCtx},
	}
	b.StaticResources.Clusters = append(b.StaticResources.Clusters, sds)
	return nil
}

func socketAddress(host string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       host,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

// check validates the identity and the control plane address.
func check(info node.Info, kind node.Kind, xdsAddress string) error {
	if info.Kind != kind {
		return fmt.Errorf("proxy kind %q: this bootstrap is for %s", info.Kind, kind)
	}
	if err := info.Validate(); err != nil {
		return err
	}
	if _, _, err := splitAddress(xdsAddress); err != nil {
		return err
	}
	return nil
}

func splitAddress(addr string) (string, uint32, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("xds address %q: %w", addr, err)
	}
	port, err := strconv.ParseUint(p, 10, 16)
	if err != nil || port == 0 || host == "" {
		return "", 0, fmt.Errorf("xds address %q: want host:port with a port from 1 to 65535", addr)
	}
	return host, uint32(port), nil
}
