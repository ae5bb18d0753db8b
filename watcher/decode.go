package watcher

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	fjordv1a1 "github.com/fjordmesh/fjord/policy/api/v1alpha1"
	"github.com/fjordmesh/fjord/watcher/model"
)

// Kinds the mesh reads, and the one apiVersion each is read in.
const (
	KindService          = "Service"
	KindEndpointSlice    = "EndpointSlice"
	KindResiliencePolicy = "ResiliencePolicy"
)

var kindAPIVersion = map[string]string{
	KindService:          "v1",
	KindEndpointSlice:    discoveryv1.SchemeGroupVersion.String(),
	KindResiliencePolicy: fjordv1a1.GroupVersion.String(),
}

// AnnotationServiceAccounts on a Service lists, comma-separated, the service
// accounts (in the Service's namespace) its backends run as. With mTLS,
// clients accept these identities besides those of the endpoints' pods; in
// standalone mode, where endpoints have no pods, it is how a Service gets an
// identity at all.
const AnnotationServiceAccounts = "fjord.dev/service-accounts"

// AnnotationExportTo on a Service lists, comma-separated, the namespaces
// whose proxies may see it, as Istio's networking.istio.io/exportTo does:
// "*" (every namespace), "." (the Service's own) or namespace names. Without
// it the control plane's --default-export-to applies. A proxy is sent only
// the Services its namespace may see, with their policies and routes.
const AnnotationExportTo = "fjord.dev/export-to"

// DefaultNamespace is the namespace of an object whose metadata names none,
// as kubectl apply would place it.
const DefaultNamespace = "default"

// Objects is what one file of Kubernetes YAML contributes to the model.
type Objects struct {
	Services       []model.Service
	EndpointSlices []model.EndpointSlice
	Policies       []model.Policy
	Routes         []model.Route
	// Refs names every object above, in document order, so that a caller
	// can detect the same object defined in two files.
	Refs []ObjectRef
	// Skipped names the objects of kinds the mesh does not read (a
	// Deployment next to its Service, say). They are not errors.
	Skipped []ObjectRef
}

// ObjectRef identifies one object of a file.
type ObjectRef struct {
	APIVersion string
	Kind       string
	model.Key
	// Document is the 1-based index of the YAML document in its file.
	Document int
}

// String renders the reference as users read it in errors: "Kind ns/name".
func (r ObjectRef) String() string {
	return r.Kind + " " + r.Key.String()
}

// Decode reads one file of Kubernetes YAML (several documents separated by
// "---"; JSON is YAML too) and converts the Services, EndpointSlices,
// ResiliencePolicies, HTTPRoutes and GRPCRoutes in it to the model. Decoding is strict, as the API
// server is: an unknown or duplicated field, or a field of the wrong type, is
// an error, so that a typo is reported rather than silently ignored. Every
// error names the file, the document, the object and the field; all of a
// file's errors are returned together and no object of a failing file is.
//
// A ResiliencePolicy or route without metadata.creationTimestamp gets firstSeen (the
// time the caller first saw the file), since precedence between policies at
// one level goes to the oldest; set the timestamp in the file to pin it.
// Decode itself reads no clock, so the same input always gives the same output.
func Decode(file string, data []byte, firstSeen time.Time) (*Objects, error) {
	out := &Objects{}
	var errs []error
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for doc := 1; ; doc++ {
		raw, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: document %d: %w", file, doc, err))
			break
		}
		if err := out.decodeDocument(fmt.Sprintf("%s: document %d", file, doc), raw, doc, firstSeen); err != nil {
			errs = append(errs, err)
		}
	}
	if err := out.checkDuplicates(); err != nil {
		errs = append(errs, fmt.Errorf("%s: %w", file, err))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// decodeDocument adds the object of one document to o. at says where the
// document is, for errors.
func (o *Objects) decodeDocument(at string, raw []byte, doc int, firstSeen time.Time) error {
	js, err := yaml.YAMLToJSONStrict(raw)
	if err != nil {
		return fmt.Errorf("%s: invalid YAML: %w", at, err)
	}
	if t := bytes.TrimSpace(js); len(t) == 0 || bytes.Equal(t, []byte("null")) {
		return nil // an empty document, e.g. after a trailing "---"
	}
	var head struct {
		metav1.TypeMeta `json:",inline"`
		Metadata        struct {
			Namespace string `json:"namespace"`
			Name      string `json:"name"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(js, &head); err != nil {
		return fmt.Errorf("%s: not a Kubernetes object: %w", at, err)
	}
	ref := ObjectRef{APIVersion: head.APIVersion, Kind: head.Kind, Document: doc,
		Key: model.Key{Namespace: head.Metadata.Namespace, Name: head.Metadata.Name}}
	if ref.Namespace == "" {
		ref.Namespace = DefaultNamespace
	}
	switch {
	case head.APIVersion == "":
		return fmt.Errorf("%s (%s): apiVersion: required", at, ref)
	case head.Kind == "":
		return fmt.Errorf("%s (%s): kind: required", at, ref)
	case ref.Name == "":
		return fmt.Errorf("%s (%s): metadata.name: required", at, ref)
	}
	want, known := kindAPIVersion[head.Kind]
	if !known || want != head.APIVersion {
		// fjord.dev is this project's group: a kind or version of it that is
		// not read here is a mistake, not someone else's object.
		if strings.HasPrefix(head.APIVersion, fjordv1a1.GroupVersion.Group+"/") {
			return fmt.Errorf("%s (%s): apiVersion %q kind %q: not supported, want %s %s",
				at, ref, head.APIVersion, head.Kind, kindAPIVersion[KindResiliencePolicy], KindResiliencePolicy)
		}
		o.Skipped = append(o.Skipped, ref)
		return nil
	}
	if err := o.add(js, ref, firstSeen); err != nil {
		return fmt.Errorf("%s (%s): %w", at, ref, err)
	}
	o.Refs = append(o.Refs, ref)
	return nil
}

func (o *Objects) add(js []byte, ref ObjectRef, firstSeen time.Time) error {
	switch ref.Kind {
	case KindService:
		var s corev1.Service
		if err := strict(js, &s); err != nil {
			return err
		}
		s.Namespace = ref.Namespace
		if err := validateService(&s); err != nil {
			return err
		}
		m, err := ServiceFromK8s(&s)
		if err != nil {
			return err
		}
		o.Services = append(o.Services, m)
	case KindEndpointSlice:
		var s discoveryv1.EndpointSlice
		if err := strict(js, &s); err != nil {
			return err
		}
		s.Namespace = ref.Namespace
		m, err := EndpointSliceFromK8s(&s)
		if err != nil {
			return err
		}
		o.EndpointSlices = append(o.EndpointSlices, m)
	case KindResiliencePolicy:
		var p fjordv1a1.ResiliencePolicy
		if err := strict(js, &p); err != nil {
			return err
		}
		p.Namespace = ref.Namespace
		m := PolicyFromK8s(&p)
		if m.CreationTimestamp.IsZero() {
			m.CreationTimestamp = firstSeen.UTC().Truncate(time.Second)
		}
		o.Policies = append(o.Policies, m)
	case KindHTTPRoute, KindGRPCRoute:
		m, err := decodeRoute(js, ref, firstSeen)
		if err != nil {
			return err
		}
		o.Routes = append(o.Routes, m)
	}
	return nil
}

// strict decodes JSON into a typed object the way the API server does:
// field names match case-sensitively, and unknown or duplicate fields are
// errors whose text carries the field's path ("spec.retry.attemps").
func strict(js []byte, into any) error {
	serr, err := kjson.UnmarshalStrict(js, into)
	if err != nil {
		return err
	}
	return errors.Join(serr...)
}

// checkDuplicates reports an object defined twice in one file.
func (o *Objects) checkDuplicates() error {
	type id struct {
		kind string
		key  model.Key
	}
	seen := map[id]int{}
	var errs []error
	for _, r := range o.Refs {
		k := id{r.Kind, r.Key}
		if first, dup := seen[k]; dup {
			errs = append(errs, fmt.Errorf("%s defined twice, in documents %d and %d", r, first, r.Document))
			continue
		}
		seen[k] = r.Document
	}
	return errors.Join(errs...)
}

// validateService checks what the API server would have checked and the
// mesh relies on; in Kubernetes mode these always hold.
func validateService(s *corev1.Service) error {
	names := map[string]bool{}
	for i, p := range s.Spec.Ports {
		if p.Port < 1 || p.Port > 65535 {
			return fmt.Errorf("spec.ports[%d].port: %d is not a valid port number", i, p.Port)
		}
		if len(s.Spec.Ports) > 1 && p.Name == "" {
			return fmt.Errorf("spec.ports[%d].name: required when a Service has several ports", i)
		}
		if names[p.Name] {
			return fmt.Errorf("spec.ports[%d].name: %q is used twice", i, p.Name)
		}
		names[p.Name] = true
	}
	return nil
}

// ServiceFromK8s reduces a Service to the ports the mesh routes. Only TCP
// ports are kept (an empty protocol means TCP): the proxies carry HTTP and
// gRPC, never UDP or SCTP. The service accounts of its
// AnnotationServiceAccounts are kept sorted and without duplicates; its
// AnnotationExportTo is read into model.Service.ExportTo. An export-to list
// that does not parse is an error naming the annotation; the Service is
// returned anyway, with ExportTo nil, for the caller to decide what it
// serves instead (the file source rejects the file, the Kubernetes source
// keeps the last accepted list).
func ServiceFromK8s(s *corev1.Service) (model.Service, error) {
	out := model.Service{Key: model.Key{Namespace: s.Namespace, Name: s.Name}, Ports: []model.ServicePort{}}
	var err error
	if v, ok := s.Annotations[AnnotationExportTo]; ok {
		var entries []string
		if entries, err = model.ParseExportTo(v); err != nil {
			err = fmt.Errorf("metadata.annotations[%q]: %w", AnnotationExportTo, err)
		} else {
			out.ExportTo = model.NormaliseExportTo(entries, s.Namespace)
		}
	}
	for _, sa := range strings.Split(s.Annotations[AnnotationServiceAccounts], ",") {
		if sa = strings.TrimSpace(sa); sa != "" && !slices.Contains(out.ServiceAccounts, sa) {
			out.ServiceAccounts = append(out.ServiceAccounts, sa)
		}
	}
	slices.Sort(out.ServiceAccounts)
	for _, p := range s.Spec.Ports {
		if p.Protocol != "" && p.Protocol != corev1.ProtocolTCP {
			continue
		}
		sp := model.ServicePort{Name: p.Name, Port: p.Port}
		if p.AppProtocol != nil {
			sp.AppProtocol = *p.AppProtocol
		}
		out.Ports = append(out.Ports, sp)
	}
	return out, err
}

// EndpointSliceFromK8s reduces an EndpointSlice to its addresses, ports and
// readiness. The owning Service comes from the kubernetes.io/service-name
// label, which is required: a slice without it belongs to nothing the mesh
// routes. Only the first address of an endpoint is used (Kubernetes treats
// an endpoint's addresses as fungible). A missing ready condition means
// ready, as in Kubernetes. The Pod named by targetRef becomes the Workload.
func EndpointSliceFromK8s(s *discoveryv1.EndpointSlice) (model.EndpointSlice, error) {
	svc := s.Labels[discoveryv1.LabelServiceName]
	if svc == "" {
		return model.EndpointSlice{}, fmt.Errorf("metadata.labels[%q]: required, it names the owning Service", discoveryv1.LabelServiceName)
	}
	switch s.AddressType {
	case discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6:
	default:
		return model.EndpointSlice{}, fmt.Errorf("addressType: %q is not supported, want IPv4 or IPv6", s.AddressType)
	}
	out := model.EndpointSlice{
		Key:       model.Key{Namespace: s.Namespace, Name: s.Name},
		Service:   svc,
		Ports:     []model.EndpointPort{},
		Endpoints: []model.Endpoint{},
	}
	for i, p := range s.Ports {
		if p.Protocol != nil && *p.Protocol != corev1.ProtocolTCP {
			continue
		}
		if p.Port == nil {
			return model.EndpointSlice{}, fmt.Errorf("ports[%d].port: required", i)
		}
		if *p.Port < 1 || *p.Port > 65535 {
			return model.EndpointSlice{}, fmt.Errorf("ports[%d].port: %d is not a valid port number", i, *p.Port)
		}
		ep := model.EndpointPort{Port: *p.Port}
		if p.Name != nil {
			ep.Name = *p.Name
		}
		out.Ports = append(out.Ports, ep)
	}
	for i, e := range s.Endpoints {
		if len(e.Addresses) == 0 {
			return model.EndpointSlice{}, fmt.Errorf("endpoints[%d].addresses: required", i)
		}
		a, err := netip.ParseAddr(e.Addresses[0])
		if err != nil || a.Zone() != "" || a.Is4() != (s.AddressType == discoveryv1.AddressTypeIPv4) {
			return model.EndpointSlice{}, fmt.Errorf("endpoints[%d].addresses[0]: %q is not an %s address", i, e.Addresses[0], s.AddressType)
		}
		m := model.Endpoint{Address: a.String(), Ready: e.Conditions.Ready == nil || *e.Conditions.Ready}
		if e.Zone != nil {
			m.Zone = *e.Zone
		}
		if e.TargetRef != nil && e.TargetRef.Kind == "Pod" {
			m.Workload = e.TargetRef.Name
		}
		out.Endpoints = append(out.Endpoints, m)
	}
	return out, nil
}

// PolicyFromK8s takes a ResiliencePolicy into the model. The spec is copied,
// so the snapshot never shares memory with an informer cache. A policy that
// was never stored by an API server has generation 0; it counts as 1, the
// first generation, so statuses always name a real one.
func PolicyFromK8s(p *fjordv1a1.ResiliencePolicy) model.Policy {
	gen := p.Generation
	if gen == 0 {
		gen = 1
	}
	m := model.Policy{
		Key:        model.Key{Namespace: p.Namespace, Name: p.Name},
		Generation: gen,
		Spec:       *p.Spec.DeepCopy(),
	}
	if !p.CreationTimestamp.IsZero() {
		m.CreationTimestamp = p.CreationTimestamp.UTC()
	}
	return m
}
