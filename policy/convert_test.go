package policy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"

	fjordv1a1 "github.com/fjordmesh/fjord/policy/api/v1alpha1"
	"github.com/fjordmesh/fjord/watcher/model"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// lastAcceptedAnnotation marks a ResiliencePolicy in a test input as an
// entry of Options.LastAccepted rather than part of the snapshot, so that
// one file can describe both.
const lastAcceptedAnnotation = "test.fjord.dev/last-accepted"

// RouteDecoder converts an HTTPRoute or GRPCRoute document with the
// watcher's own converters. The watcher imports this package, so only an
// external test package can reach them: route_decoder_test.go sets it.
var RouteDecoder func(kind string, doc []byte) (model.Route, error)

// decodeObjects turns a multi-document YAML of Kubernetes objects (Service,
// discovery.k8s.io/v1 EndpointSlice, ResiliencePolicy) into a sorted
// snapshot and the policies marked as last accepted; gateway.networking.k8s.io/v1
// HTTPRoutes and GRPCRoutes go through RouteDecoder. It is the tests'
// stand-in for the watcher's converter, decoding strictly so that a typo in
// a test input fails instead of silently testing something else.
func decodeObjects(data []byte) (*model.Snapshot, []model.Policy, error) {
	snap := &model.Snapshot{}
	var last []model.Policy
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for i := 0; ; i++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, nil, fmt.Errorf("document %d: %w", i, err)
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			return nil, nil, fmt.Errorf("document %d: %w", i, err)
		}
		switch tm.APIVersion + " " + tm.Kind {
		case "v1 Service":
			var s corev1.Service
			if err := yaml.UnmarshalStrict(doc, &s); err != nil {
				return nil, nil, fmt.Errorf("document %d (Service): %w", i, err)
			}
			snap.Services = append(snap.Services, convertService(&s))
		case "discovery.k8s.io/v1 EndpointSlice":
			var s discoveryv1.EndpointSlice
			if err := yaml.UnmarshalStrict(doc, &s); err != nil {
				return nil, nil, fmt.Errorf("document %d (EndpointSlice): %w", i, err)
			}
			snap.EndpointSlices = append(snap.EndpointSlices, convertSlice(&s))
		case "fjord.dev/v1alpha1 ResiliencePolicy":
			var p fjordv1a1.ResiliencePolicy
			if err := yaml.UnmarshalStrict(doc, &p); err != nil {
				return nil, nil, fmt.Errorf("document %d (ResiliencePolicy): %w", i, err)
			}
			mp := model.Policy{
				Key:               model.Key{Namespace: p.Namespace, Name: p.Name},
				Generation:        p.Generation,
				CreationTimestamp: p.CreationTimestamp.UTC(),
				Spec:              p.Spec,
			}
			if p.Annotations[lastAcceptedAnnotation] == "true" {
				last = append(last, mp)
			} else {
				snap.Policies = append(snap.Policies, mp)
			}
		case "gateway.networking.k8s.io/v1 HTTPRoute", "gateway.networking.k8s.io/v1 GRPCRoute":
			rt, err := RouteDecoder(tm.Kind, doc)
			if err != nil {
				return nil, nil, fmt.Errorf("document %d (%s): %w", i, tm.Kind, err)
			}
			snap.Routes = append(snap.Routes, rt)
		default:
			return nil, nil, fmt.Errorf("document %d: unsupported object %s %s", i, tm.APIVersion, tm.Kind)
		}
	}
	snap.Sort()
	return snap, last, nil
}

func convertService(s *corev1.Service) model.Service {
	out := model.Service{Key: model.Key{Namespace: s.Namespace, Name: s.Name}}
	for _, p := range s.Spec.Ports {
		sp := model.ServicePort{Name: p.Name, Port: p.Port}
		if p.AppProtocol != nil {
			sp.AppProtocol = *p.AppProtocol
		}
		out.Ports = append(out.Ports, sp)
	}
	return out
}

func convertSlice(s *discoveryv1.EndpointSlice) model.EndpointSlice {
	out := model.EndpointSlice{
		Key:     model.Key{Namespace: s.Namespace, Name: s.Name},
		Service: s.Labels[discoveryv1.LabelServiceName],
	}
	for _, p := range s.Ports {
		ep := model.EndpointPort{}
		if p.Name != nil {
			ep.Name = *p.Name
		}
		if p.Port != nil {
			ep.Port = *p.Port
		}
		out.Ports = append(out.Ports, ep)
	}
	for _, e := range s.Endpoints {
		for _, addr := range e.Addresses {
			me := model.Endpoint{Address: addr, Ready: e.Conditions.Ready == nil || *e.Conditions.Ready}
			if e.Zone != nil {
				me.Zone = *e.Zone
			}
			if e.TargetRef != nil && e.TargetRef.Kind == "Pod" {
				me.Workload = e.TargetRef.Name
			}
			out.Endpoints = append(out.Endpoints, me)
		}
	}
	return out
}
