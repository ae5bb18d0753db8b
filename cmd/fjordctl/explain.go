package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/fjordmesh/fjord/policy"
	fjordv1a1 "github.com/fjordmesh/fjord/policy/api/v1alpha1"
	"github.com/fjordmesh/fjord/watcher"
	"github.com/fjordmesh/fjord/watcher/model"
)

// explainOptions are the flags of `fjordctl explain service`.
type explainOptions struct {
	port              string
	monitoringAddress string
	kubeconfig        string
	meshNamespace     string
	namespaceSelector string
	timeout           time.Duration
}

func newExplain() *cobra.Command {
	explain := &cobra.Command{
		Use:   "explain",
		Short: "Explain which policies are in effect, and why",
	}
	var o explainOptions
	svc := &cobra.Command{
		Use:   "service NAMESPACE/NAME",
		Short: "Print a Service's effective policy per port, field by field, with the policy and level each value came from",
		Long: `Prints, for each port of the Service, every field of the effective
resilience policy with the policy (namespace/name) and the attachment level
(port, service, namespace, mesh) it came from, the namespaces that may see
the Service when its fjord.dev/export-to annotation restricts them (a
Service without it follows fjord-cp's --default-export-to, which is not
shown), and the
policies that target the Service, its namespace or the mesh but are not in
effect (Conflicted, Invalid, TargetNotFound) and why.

The input is read from a standalone control plane (--monitoring-address) or
from a cluster (--kubeconfig); either way it is resolved here, with the same
code the control plane runs.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			key, err := parseServiceKey(args[0])
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), o.timeout)
			defer cancel()
			mesh, err := o.resolve(ctx)
			if err != nil {
				return err
			}
			return explainService(cmd.OutOrStdout(), mesh, key, o.port, o.meshNamespace)
		},
	}
	f := svc.Flags()
	f.StringVar(&o.port, "port", "", "only this port (name or number)")
	f.StringVar(&o.monitoringAddress, "monitoring-address", "", "monitoring address (host:port) of a standalone control plane")
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig of the cluster to read")
	f.StringVar(&o.meshNamespace, "mesh-namespace", policy.DefaultMeshNamespace, "the control plane's namespace, where mesh-wide defaults live")
	f.StringVar(&o.namespaceSelector, "namespace-selector", watcher.DefaultNamespaceSelector, "the control plane's --namespace-selector (with --kubeconfig)")
	f.DurationVar(&o.timeout, "timeout", 30*time.Second, "how long to wait for the control plane or the API server")
	svc.MarkFlagsMutuallyExclusive("monitoring-address", "kubeconfig")
	svc.MarkFlagsOneRequired("monitoring-address", "kubeconfig")
	explain.AddCommand(svc)
	return explain
}

func parseServiceKey(s string) (model.Key, error) {
	ns, name, ok := strings.Cut(s, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return model.Key{}, fmt.Errorf("service %q: want NAMESPACE/NAME", s)
	}
	return model.Key{Namespace: ns, Name: name}, nil
}

// resolve reads the model from where the flags say and resolves it.
func (o explainOptions) resolve(ctx context.Context) (*policy.Mesh, error) {
	var (
		snap     *model.Snapshot
		accepted []model.Policy
		err      error
	)
	if o.kubeconfig != "" {
		snap, err = clusterSnapshot(ctx, o.kubeconfig, o.namespaceSelector, o.meshNamespace)
	} else {
		snap, accepted, err = controlPlaneSnapshot(ctx, o.monitoringAddress)
	}
	if err != nil {
		return nil, err
	}
	return policy.Resolve(snap, policy.Options{MeshNamespace: o.meshNamespace, LastAccepted: accepted}), nil
}

// controlPlaneSnapshot reads the model a standalone control plane last
// built (/debug/config), and the policies it used (/debug/mesh), which
// stand in for a policy whose current spec is invalid just as they do in
// the control plane.
func controlPlaneSnapshot(ctx context.Context, addr string) (*model.Snapshot, []model.Policy, error) {
	var snap model.Snapshot
	if err := getJSON(ctx, "http://"+addr+"/debug/config", &snap); err != nil {
		return nil, nil, err
	}
	var mesh struct {
		Accepted []model.Policy `json:"accepted"`
	}
	if err := getJSON(ctx, "http://"+addr+"/debug/mesh", &mesh); err != nil {
		return nil, nil, err
	}
	return &snap, mesh.Accepted, nil
}

func getJSON(ctx context.Context, url string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("control plane at %s: %w", url, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("control plane at %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
		return fmt.Errorf("control plane at %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("control plane at %s: decoding the answer: %w", url, err)
	}
	return nil
}

// clusterSnapshot runs the control plane's own Kubernetes source until its
// first snapshot: the model is read exactly as fjord-cp reads it.
func clusterSnapshot(ctx context.Context, kubeconfig, selector, meshNS string) (*model.Snapshot, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	src, err := watcher.NewKubeSource(cfg, watcher.KubeOptions{
		NamespaceSelector: selector, MeshNamespace: meshNS,
		HoldOff: time.Millisecond, MaxDelay: time.Millisecond,
		Log: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var snap *model.Snapshot
	err = src.Run(ctx, func(s *model.Snapshot) {
		if snap == nil {
			snap = s
			cancel()
		}
	})
	if err != nil {
		return nil, err
	}
	if snap == nil {
		return nil, fmt.Errorf("reading the cluster at %s: %w (can this user list Services, EndpointSlices, Pods, Namespaces and ResiliencePolicies?)",
			cfg.Host, context.Cause(ctx))
	}
	return snap, nil
}

// explainService writes the explanation of one Service (one port of it
// when port is not empty) from a resolved mesh.
func explainService(w io.Writer, mesh *policy.Mesh, key model.Key, port, meshNS string) error {
	i := slices.IndexFunc(mesh.Services, func(s policy.Service) bool { return s.Key == key })
	if i < 0 {
		return fmt.Errorf("service %s: not in the mesh (no such Service, or its namespace is not selected)", key)
	}
	svc := mesh.Services[i]
	var ports []policy.Port
	for _, p := range svc.Ports {
		if port == "" || p.Name == port || strconv.Itoa(int(p.Port)) == port {
			ports = append(ports, p)
		}
	}
	if len(ports) == 0 {
		return fmt.Errorf("service %s has no port %q", key, port)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for i, p := range ports {
		if i > 0 {
			fmt.Fprintln(tw)
		}
		name := p.Name
		if name == "" {
			name = "(unnamed)"
		}
		fmt.Fprintf(tw, "Service %s port %s (%d)\n", key, name, p.Port)
		if len(p.Sources) == 0 {
			fmt.Fprintln(tw, "  no policy applies: proxy defaults")
			continue
		}
		values, err := fieldValues(p.Policy)
		if err != nil {
			return fmt.Errorf("service %s port %s: %w", key, name, err)
		}
		fmt.Fprintln(tw, "  FIELD\tVALUE\tPOLICY\tLEVEL")
		for _, s := range p.Sources {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", s.Path, values[s.Path], s.Policy, s.Level)
		}
	}
	if e := slices.IndexFunc(mesh.Exports, func(e policy.Export) bool { return e.Service == key }); e >= 0 {
		to := mesh.Exports[e].To
		if !slices.Contains(to, key.Namespace) {
			to = append(slices.Clone(to), key.Namespace)
			slices.Sort(to)
		}
		fmt.Fprintln(tw)
		fmt.Fprintf(tw, "Visible only to proxies in namespaces %s (%s).\n", strings.Join(to, ", "), watcher.AnnotationExportTo)
	}
	var only []string // the port names asked for; nil for every port
	if port != "" {
		for _, p := range ports {
			only = append(only, p.Name)
		}
	}
	notes := notInEffect(mesh.Statuses, key, only, meshNS)
	fmt.Fprintln(tw)
	if len(notes) == 0 {
		fmt.Fprintf(tw, "Every policy that targets %s, its namespace or the mesh is in effect.\n", key)
	} else {
		fmt.Fprintln(tw, "Not in effect:")
		fmt.Fprintln(tw, "  POLICY\tTARGET\tREASON\tMESSAGE")
		for _, n := range notes {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", n.policy, n.target, n.reason, n.message)
		}
	}
	return tw.Flush()
}

// fieldValues flattens a policy spec to its leaf fields by JSON path, with
// values as they are written in YAML (durations as "5s", lists as [a, b]).
func fieldValues(spec fjordv1a1.ResiliencePolicySpec) (map[string]string, error) {
	js, err := json.Marshal(spec)
	if err != nil {
		return nil, fmt.Errorf("effective policy: %w", err)
	}
	var tree map[string]any
	if err := json.Unmarshal(js, &tree); err != nil {
		return nil, fmt.Errorf("effective policy: %w", err)
	}
	out := map[string]string{}
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		switch v := v.(type) {
		case map[string]any:
			out[prefix] = "(set)"
			for k, sub := range v {
				p := k
				if prefix != "" {
					p = prefix + "." + k
				}
				walk(p, sub)
			}
		case []any:
			parts := make([]string, len(v))
			for i, e := range v {
				parts[i] = fmt.Sprint(e)
			}
			out[prefix] = "[" + strings.Join(parts, ", ") + "]"
		default:
			out[prefix] = fmt.Sprint(v)
		}
	}
	walk("", tree)
	return out, nil
}

// note is one policy entry that does not apply.
type note struct {
	policy, target, reason, message string
}

// notInEffect lists the Accepted=False conditions of every policy that
// targets the Service (the ports named in only; any port, existing or not,
// when only is nil), its namespace or the mesh.
func notInEffect(statuses []policy.Status, key model.Key, only []string, meshNS string) []note {
	var out []note
	for _, st := range statuses {
		for _, a := range st.Ancestors {
			ref := a.AncestorRef
			target := ""
			switch ref.Kind {
			case "Service":
				ns := ref.Namespace
				if ns == "" {
					ns = st.Namespace
				}
				if ns != key.Namespace || ref.Name != key.Name {
					continue
				}
				target = "Service " + key.String()
				if ref.SectionName != nil {
					sec := *ref.SectionName
					if only != nil && !slices.Contains(only, sec) {
						continue
					}
					target += " port " + sec
				}
			case "Namespace":
				if ref.Name != key.Namespace && ref.Name != meshNS {
					continue
				}
				target = "namespace " + ref.Name
				if ref.Name == meshNS {
					target = "mesh (namespace " + ref.Name + ")"
				}
			default:
				continue
			}
			for _, c := range a.Conditions {
				if c.Type == fjordv1a1.ConditionAccepted && c.Status != metav1.ConditionTrue {
					out = append(out, note{
						policy: fmt.Sprintf("%s (generation %d)", st.Key, st.Generation),
						target: target, reason: c.Reason, message: c.Message,
					})
				}
			}
		}
	}
	return out
}
