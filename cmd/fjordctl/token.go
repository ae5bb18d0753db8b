package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fjordmesh/fjord/agent"
	"github.com/fjordmesh/fjord/certs"
	"github.com/fjordmesh/fjord/certs/api"
)

// Files `fjordctl token create -o DIR` writes, which `fjordctl agent` reads
// with --token-file and --ca-file.
const (
	tokenFile = "token"
	caFile    = "ca.pem"
)

func newToken() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Create or revoke standalone workload tokens",
		Long: `Tokens authenticate a workload's identity agent to the certificate API in
standalone mode (in Kubernetes the service-account token does). A token is
scoped to one identity (NAMESPACE/SERVICE-ACCOUNT), expires, and is stored
only as a SHA-256 hash in DATA/fjord.db.

While fjord-cp runs these commands talk to it over DATA/admin.sock; when it
does not run they work on the data directory directly.`,
	}
	cmd.AddCommand(newTokenCreate(), newTokenRevoke())
	return cmd
}

func newTokenCreate() *cobra.Command {
	var (
		f             adminFlags
		identity, out string
		ttl           time.Duration
	)
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Mint a token for one identity",
		Long: `Mint a token for one identity. With -o DIR, write DIR/token (mode 0600) and
DIR/ca.pem, the roots the agent verifies the control plane with; without it,
print the token alone.`,
		Example: "  fjordctl token create --data-dir .data --identity demo/client --ttl 24h -o /run/fjord\n" +
			"  fjordctl agent --identity demo/client --token-file /run/fjord/token --ca-file /run/fjord/ca.pem --out-dir /run/fjord/certs",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sa, err := certs.ParseServiceAccount(identity)
			if err != nil {
				return err
			}
			admin, done, err := f.openAdmin(cmd.Context(), cmd.ErrOrStderr(), true)
			if err != nil {
				return err
			}
			defer done()
			resp, err := admin.CreateToken(cmd.Context(), &api.CreateTokenRequest{
				Namespace: sa.Namespace, ServiceAccount: sa.Name, Ttl: durationpb.New(ttl),
			})
			if err != nil {
				return err
			}
			if out == "" {
				_, err := fmt.Fprintln(cmd.OutOrStdout(), resp.Token)
				return err
			}
			if err := os.MkdirAll(out, 0o700); err != nil {
				return fmt.Errorf("output directory: %w", err)
			}
			if err := agent.WriteFileAtomic(filepath.Join(out, tokenFile), []byte(resp.Token+"\n"), 0o600); err != nil {
				return err
			}
			if err := agent.WriteFileAtomic(filepath.Join(out, caFile), []byte(resp.TrustBundlePem), 0o644); err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "token for %s, valid until %s: %s\ncontrol plane roots: %s\n",
				resp.SpiffeId, stamp(resp.Expires.AsTime()), filepath.Join(out, tokenFile), filepath.Join(out, caFile))
			return err
		},
	}
	f.register(cmd)
	fl := cmd.Flags()
	fl.StringVar(&identity, "identity", "", "NAMESPACE/SERVICE-ACCOUNT the token speaks for (required)")
	fl.DurationVar(&ttl, "ttl", 24*time.Hour, "how long the token is valid")
	fl.StringVarP(&out, "output", "o", "", "directory to write token and ca.pem into (default: print the token)")
	_ = cmd.MarkFlagRequired("identity")
	return cmd
}

func newTokenRevoke() *cobra.Command {
	var (
		f        adminFlags
		identity string
	)
	cmd := &cobra.Command{
		Use:     "revoke",
		Short:   "Revoke every token of one identity",
		Long:    "Revoke every token of one identity. Certificates already issued stay valid until they expire (24 h by default).",
		Example: "  fjordctl token revoke --data-dir .data --identity demo/client",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sa, err := certs.ParseServiceAccount(identity)
			if err != nil {
				return err
			}
			admin, done, err := f.openAdmin(cmd.Context(), cmd.ErrOrStderr(), false)
			if err != nil {
				return err
			}
			defer done()
			resp, err := admin.RevokeTokens(cmd.Context(), &api.RevokeTokensRequest{Namespace: sa.Namespace, ServiceAccount: sa.Name})
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "revoked %d token(s) of %s\n", resp.Revoked, sa)
			return err
		},
	}
	f.register(cmd)
	cmd.Flags().StringVar(&identity, "identity", "", "NAMESPACE/SERVICE-ACCOUNT whose tokens to revoke (required)")
	_ = cmd.MarkFlagRequired("identity")
	return cmd
}
