package translate

import (
	"testing"

	"github.com/fjordmesh/fjord/watcher/model"
	"github.com/fjordmesh/fjord/xds/node"
)

// TestNames pins the resource names other parts and clients depend on.
func TestNames(t *testing.T) {
	svc := model.Key{Namespace: "demo", Name: "echo"}
	tests := map[string]struct {
		got, want string
	}{
		"cluster":        {ClusterName(svc, 8080), "outbound|8080||echo.demo.svc.cluster.local"},
		"grpc listener":  {ListenerName(node.GRPC, svc, 8080), "echo.demo.svc.cluster.local:8080"},
		"grpc route":     {RouteName(node.GRPC, svc, 8080), "echo.demo.svc.cluster.local:8080"},
		"envoy listener": {ListenerName(node.Envoy, svc, 8080), "0.0.0.0_8080"},
		"envoy route":    {RouteName(node.Envoy, svc, 8080), "8080"},
		"host":           {Host(svc), "echo.demo.svc.cluster.local"},
		"authority":      {Authority(svc, 50051), "echo.demo.svc.cluster.local:50051"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if tc.got != tc.want {
				t.Errorf("got %q, want %q", tc.got, tc.want)
			}
		})
	}
}
