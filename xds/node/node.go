// Package node defines how a proxy identifies itself to the control plane:
// the xDS Node id and metadata that fjordctl bootstrap writes and the xDS
// server reads. Keeping both directions here means the bootstrap and the
// server can never disagree about the format.
package node

import (
	"fmt"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// Kind is the kind of data plane behind an xDS stream. It decides which
// resources the proxy is served (Envoy sidecars get real listeners, proxyless
// gRPC gets api_listeners).
type Kind string

// The proxy kinds Fjord serves.
const (
	Envoy Kind = "envoy"
	GRPC  Kind = "grpc"
)

// Kinds lists every proxy kind, in a stable order.
var Kinds = []Kind{Envoy, GRPC}

// ParseKind accepts "envoy" or "grpc".
func ParseKind(s string) (Kind, error) {
	switch Kind(s) {
	case Envoy, GRPC:
		return Kind(s), nil
	}
	return "", fmt.Errorf("unknown proxy kind %q: want envoy or grpc", s)
}

// Metadata keys in the xDS Node metadata.
const (
	KeyNamespace      = "NAMESPACE"
	KeyWorkload       = "WORKLOAD_NAME"
	KeyServiceAccount = "SERVICE_ACCOUNT"
	KeyKind           = "PROXY_KIND"
)

// Info is who a proxy says it is.
type Info struct {
	Namespace      string
	Workload       string
	ServiceAccount string
	Kind           Kind
}

// ID is the xDS node id: kind~namespace~workload. It is unique per workload
// and readable in logs.
func (i Info) ID() string {
	return string(i.Kind) + "~" + i.Namespace + "~" + i.Workload
}

// Validate reports a missing or malformed field.
func (i Info) Validate() error {
	if _, err := ParseKind(string(i.Kind)); err != nil {
		return err
	}
	for _, f := range []struct{ name, v string }{
		{KeyNamespace, i.Namespace}, {KeyWorkload, i.Workload}, {KeyServiceAccount, i.ServiceAccount},
	} {
		if f.v == "" {
			return fmt.Errorf("node metadata %s is empty", f.name)
		}
		if strings.Contains(f.v, "~") {
			return fmt.Errorf("node metadata %s %q must not contain '~'", f.name, f.v)
		}
	}
	return nil
}

// Node renders the identity as an xDS Node, for bootstraps.
func (i Info) Node() *corev3.Node {
	return &corev3.Node{
		Id:      i.ID(),
		Cluster: i.Namespace,
		Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
			KeyNamespace:      structpb.NewStringValue(i.Namespace),
			KeyWorkload:       structpb.NewStringValue(i.Workload),
			KeyServiceAccount: structpb.NewStringValue(i.ServiceAccount),
			KeyKind:           structpb.NewStringValue(string(i.Kind)),
		}},
	}
}

// FromNode reads the identity a proxy sent, and fails if any part is missing.
func FromNode(n *corev3.Node) (Info, error) {
	if n == nil {
		return Info{}, fmt.Errorf("request carries no node")
	}
	get := func(k string) string {
		if n.GetMetadata() == nil {
			return ""
		}
		return n.GetMetadata().GetFields()[k].GetStringValue()
	}
	i := Info{
		Namespace:      get(KeyNamespace),
		Workload:       get(KeyWorkload),
		ServiceAccount: get(KeyServiceAccount),
		Kind:           Kind(get(KeyKind)),
	}
	if err := i.Validate(); err != nil {
		return Info{}, fmt.Errorf("node %q: %w", n.GetId(), err)
	}
	return i, nil
}
