package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/fjordmesh/fjord/agent"
	"github.com/fjordmesh/fjord/bootstrap"
	"github.com/fjordmesh/fjord/xds/node"
)

func newBootstrap() *cobra.Command {
	var (
		kind, out, xdsAddress string
		certDir, sdsSocket    string
		protocol              string
		secure                bool
		refresh               time.Duration
		info                  node.Info
	)
	cmd := &cobra.Command{
		Use:   "bootstrap",
		Short: "Write the bootstrap a proxy needs to reach the control plane",
		Long: `Write the xDS bootstrap for one workload.

  --kind grpc   grpc-go bootstrap JSON: point GRPC_XDS_BOOTSTRAP at it and dial
                xds:///<service>.<namespace>.svc.cluster.local:<port>
  --kind envoy  Envoy bootstrap YAML: envoy -c FILE; incremental (delta)
                ADS unless --xds-protocol sotw

The node id and metadata carry the namespace, workload name, service account
and proxy kind, which the control plane requires on every xDS stream.

  --secure --cert-dir DIR  (grpc) reach the authenticated xDS port, 15012,
                with TLS: DIR holds what ` + "`fjordctl agent --out-dir`" + ` keeps
                current (cert.pem, key.pem, ca.pem); the same files back the
                certificate provider "default" for data-plane TLS. The
                node's namespace and service account must be the
                certificate's.
  --sds-socket PATH  (envoy) the agent's SDS socket (fjordctl agent
                --sds-socket): Envoy reaches 15012 over TLS with the
                agent's secrets, and mTLS clusters fetch them there.`,
		Example: "  fjordctl bootstrap --kind grpc --namespace demo --name client --service-account client -o bootstrap.json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			k, err := node.ParseKind(kind)
			if err != nil {
				return err
			}
			info.Kind = k
			if !cmd.Flags().Changed("xds-address") && (secure || sdsSocket != "") {
				xdsAddress = bootstrap.DefaultSecureXDSAddress
			}
			var data []byte
			if protocol != "delta" && protocol != "sotw" {
				return fmt.Errorf("--xds-protocol %q: want delta or sotw", protocol)
			}
			if cmd.Flags().Changed("xds-protocol") && k != node.Envoy {
				return errors.New("--xds-protocol: only for --kind envoy (proxyless gRPC speaks state of the world)")
			}
			switch {
			case secure && k != node.GRPC:
				return errors.New("--secure: only for --kind grpc (Envoy reaches the secure port through SDS, not files)")
			case secure && certDir == "":
				return errors.New("--secure needs --cert-dir")
			case !secure && certDir != "":
				return errors.New("--cert-dir needs --secure")
			case sdsSocket != "" && k != node.Envoy:
				return errors.New("--sds-socket: only for --kind envoy (proxyless gRPC reads files: --secure --cert-dir)")
			case k == node.Envoy:
				opts := bootstrap.EnvoyOptions{SDSSocket: sdsSocket, StateOfTheWorld: protocol == "sotw"}
				if data, err = bootstrap.EnvoyWith(info, xdsAddress, opts); err != nil {
					return err
				}
			case secure:
				dir, err := filepath.Abs(certDir)
				if err != nil {
					return fmt.Errorf("--cert-dir: %w", err)
				}
				files := agent.CredentialFiles(dir, refresh)
				data, err = bootstrap.GRPCWith(info, xdsAddress, bootstrap.GRPCOptions{
					CertificateProviders: map[string]bootstrap.FileWatcher{bootstrap.CertProviderInstance: files},
					ChannelTLS:           &files,
				})
				if err != nil {
					return err
				}
			default:
				if data, err = bootstrap.Render(info, xdsAddress); err != nil {
					return err
				}
			}
			if out == "" || out == "-" {
				_, err := cmd.OutOrStdout().Write(data)
				return err
			}
			return agent.WriteFileAtomic(out, data, 0o644)
		},
	}
	f := cmd.Flags()
	f.StringVar(&kind, "kind", "", "proxy kind: grpc or envoy")
	f.StringVar(&info.Namespace, "namespace", "", "namespace of the workload")
	f.StringVar(&info.Workload, "name", "", "workload name")
	f.StringVar(&info.ServiceAccount, "service-account", "", "service account of the workload")
	f.StringVar(&xdsAddress, "xds-address", bootstrap.DefaultXDSAddress, "control plane xDS address (host:port)")
	f.StringVarP(&out, "output", "o", "", "file to write (default: standard output)")
	f.BoolVar(&secure, "secure", false, "grpc: TLS to the authenticated xDS port with the files of --cert-dir (default address "+bootstrap.DefaultSecureXDSAddress+")")
	f.StringVar(&sdsSocket, "sds-socket", "", "envoy: the identity agent's SDS socket (fjordctl agent --sds-socket); Envoy then reaches the authenticated xDS port (default "+bootstrap.DefaultSecureXDSAddress+") over TLS with the agent's certificate")
	f.StringVar(&protocol, "xds-protocol", "delta", "envoy: ADS variant, delta (incremental) or sotw (state of the world)")
	f.StringVar(&certDir, "cert-dir", "", "with --secure: directory of cert.pem, key.pem and ca.pem (fjordctl agent --out-dir)")
	f.DurationVar(&refresh, "refresh-interval", agent.DefaultRefreshInterval, "with --secure: how often gRPC re-reads the files")
	for _, name := range []string{"kind", "namespace", "name", "service-account"} {
		_ = cmd.MarkFlagRequired(name)
	}
	return cmd
}
