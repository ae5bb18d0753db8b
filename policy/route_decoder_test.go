package policy_test

import (
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	"github.com/fjordmesh/fjord/policy"
	"github.com/fjordmesh/fjord/watcher"
	"github.com/fjordmesh/fjord/watcher/model"
)

// The golden inputs hold routes as users write them; decoding them with
// the watcher's converters keeps the tests honest about the defaults the
// converters apply.
func init() {
	policy.RouteDecoder = func(kind string, doc []byte) (model.Route, error) {
		if kind == watcher.KindHTTPRoute {
			var r gatewayv1.HTTPRoute
			if err := yaml.UnmarshalStrict(doc, &r); err != nil {
				return model.Route{}, err
			}
			return watcher.HTTPRouteFromK8s(&r), nil
		}
		var r gatewayv1.GRPCRoute
		if err := yaml.UnmarshalStrict(doc, &r); err != nil {
			return model.Route{}, err
		}
		return watcher.GRPCRouteFromK8s(&r), nil
	}
}
