package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/fjordmesh/fjord/certs"
	"github.com/fjordmesh/fjord/certs/api"
	"github.com/fjordmesh/fjord/store"
)

func newCA() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ca",
		Short: "Show or rotate the control plane's certificate authority",
		Long: `Show or rotate the built-in certificate authority kept in DATA/fjord.db.

While fjord-cp runs it holds the data directory, so these commands talk to it
over its admin socket, DATA/admin.sock (only its own user and root may);
when it does not run they work on the data directory directly.`,
	}
	cmd.AddCommand(newCAStatus(), newCARotate())
	return cmd
}

// adminFlags are the flags of every command that reaches the admin service.
type adminFlags struct {
	dataDir, trustDomain string
	leafTTL              time.Duration
}

func (f *adminFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.dataDir, "data-dir", "", "the control plane's data directory (required)")
	fl.StringVar(&f.trustDomain, "trust-domain", certs.DefaultTrustDomain, "trust domain, when no control plane runs (else the control plane's)")
	fl.DurationVar(&f.leafTTL, "leaf-ttl", certs.DefaultLeafTTL, "the control plane's --leaf-ttl, when no control plane runs: it sets the length of rotation phases")
	_ = cmd.MarkFlagRequired("data-dir")
}

// openAdmin returns the admin service of the control plane holding the data
// directory, through its admin socket, or, when none runs, the same service
// in-process on the data directory (creating the CA if create is set and
// there is none yet, as fjord-cp's first start would). close releases it.
func (f *adminFlags) openAdmin(ctx context.Context, stderr io.Writer, create bool) (client api.AdminServiceClient, close func(), err error) {
	sock := filepath.Join(f.dataDir, api.AdminSocket)
	if c, err := net.DialTimeout("unix", sock, 2*time.Second); err == nil {
		c.Close()
		conn, err := api.DialAdmin(sock)
		if err != nil {
			return nil, nil, err
		}
		return api.NewAdminServiceClient(conn), func() { conn.Close() }, nil
	}
	st, err := store.Open(f.dataDir)
	if errors.Is(err, store.ErrLocked) {
		return nil, nil, fmt.Errorf("a control plane holds %s but its admin socket %s does not answer: %w", f.dataDir, sock, err)
	}
	if err != nil {
		return nil, nil, err
	}
	if !create {
		if _, _, err := st.CA().Load(ctx); errors.Is(err, certs.ErrNotFound) {
			st.Close()
			return nil, nil, fmt.Errorf("no CA in %s yet: fjord-cp creates it on its first start", f.dataDir)
		}
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ca, err := certs.New(ctx, certs.Options{Storage: st.CA(), LeafTTL: f.leafTTL, Log: log})
	if err != nil {
		st.Close()
		return nil, nil, err
	}
	admin := &api.Admin{CA: ca, Tokens: st.Tokens(), TrustDomain: f.trustDomain, Log: log}
	return localAdmin{admin}, func() { st.Close() }, nil
}

// localAdmin calls the admin service in-process.
type localAdmin struct{ a *api.Admin }

func (l localAdmin) Status(ctx context.Context, in *api.StatusRequest, _ ...grpc.CallOption) (*api.StatusResponse, error) {
	return l.a.Status(ctx, in)
}

func (l localAdmin) Rotate(ctx context.Context, in *api.RotateRequest, _ ...grpc.CallOption) (*api.StatusResponse, error) {
	return l.a.Rotate(ctx, in)
}

func (l localAdmin) CreateToken(ctx context.Context, in *api.CreateTokenRequest, _ ...grpc.CallOption) (*api.CreateTokenResponse, error) {
	return l.a.CreateToken(ctx, in)
}

func (l localAdmin) RevokeTokens(ctx context.Context, in *api.RevokeTokensRequest, _ ...grpc.CallOption) (*api.RevokeTokensResponse, error) {
	return l.a.RevokeTokens(ctx, in)
}

func newCAStatus() *cobra.Command {
	var (
		f      adminFlags
		output string
	)
	cmd := &cobra.Command{
		Use:     "status",
		Short:   "Show the CA's chain, expiries and rotation phase",
		Example: "  fjordctl ca status --data-dir .data",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "text" && output != "json" {
				return fmt.Errorf("--output %q: want text or json", output)
			}
			admin, done, err := f.openAdmin(cmd.Context(), cmd.ErrOrStderr(), false)
			if err != nil {
				return err
			}
			defer done()
			st, err := admin.Status(cmd.Context(), &api.StatusRequest{})
			if err != nil {
				return err
			}
			return writeStatus(cmd.OutOrStdout(), st, output)
		},
	}
	f.register(cmd)
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	return cmd
}

func newCARotate() *cobra.Command {
	var f adminFlags
	cmd := &cobra.Command{
		Use:   "rotate",
		Short: "Start a root rotation",
		Long: `Start a root rotation. A new root and intermediate are trusted at once (every
workload receives the two-root bundle at its next renewal), sign leaves from
one leaf lifetime later, and the old root is dropped one more leaf lifetime
after that, once nothing it signed can still be valid. No handshake fails on
the way. ` + "`fjordctl ca status`" + ` shows the phase and when it advances.`,
		Example: "  fjordctl ca rotate --data-dir .data",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			admin, done, err := f.openAdmin(cmd.Context(), cmd.ErrOrStderr(), false)
			if err != nil {
				return err
			}
			defer done()
			st, err := admin.Rotate(cmd.Context(), &api.RotateRequest{})
			if err != nil {
				return err
			}
			return writeStatus(cmd.OutOrStdout(), st, "text")
		},
	}
	f.register(cmd)
	return cmd
}

func writeStatus(w io.Writer, st *api.StatusResponse, output string) error {
	if output == "json" {
		data, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(st)
		if err != nil {
			return err
		}
		// protojson's whitespace is deliberately unstable; re-indent it.
		var b bytes.Buffer
		if err := json.Indent(&b, data, "", "  "); err != nil {
			return err
		}
		b.WriteByte('\n')
		_, err = b.WriteTo(w)
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "Trust domain:\t%s\n", st.TrustDomain)
	fmt.Fprintf(tw, "Phase:\t%s\n", st.Phase)
	if st.Deadline != nil {
		fmt.Fprintf(tw, "Phase ends:\t%s\n", stamp(st.Deadline.AsTime()))
	}
	if st.NextStep != "" {
		fmt.Fprintf(tw, "Next step:\t%s at %s\n", st.NextStep, stamp(st.NextStepAt.AsTime()))
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "ROLE\tCERTIFICATE\tSERIAL\tNOT BEFORE\tNOT AFTER\tSHA-256")
	row := func(kind string, c *api.CertInfo) {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", kind, c.Subject, c.Serial,
			stamp(c.NotBefore.AsTime()), stamp(c.NotAfter.AsTime()), c.Sha256[:16])
	}
	row("intermediate (signing)", st.Signer)
	for _, r := range st.Roots {
		row("root ("+r.Role+")", r)
	}
	return tw.Flush()
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }
