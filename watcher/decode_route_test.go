package watcher

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"sigs.k8s.io/yaml"

	"github.com/fjordmesh/fjord/watcher/model"
)

func TestDecodeRoute(t *testing.T) {
	firstSeen := time.Date(2026, 3, 1, 12, 0, 0, 500, time.UTC)
	i32 := func(v int32) *int32 { return &v }
	tests := map[string]struct {
		kind, yaml string
		want       model.Route
		wantErr    string
	}{
		"HTTPRoute with the API's defaults applied": {
			kind: KindHTTPRoute,
			yaml: `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo-split, namespace: demo}
spec:
  parentRefs:
  - {group: "", kind: Service, name: echo, port: 50051}
  - {name: some-gateway}
  hostnames: [echo.example]
  rules:
  - matches:
    - headers: [{name: x-version, value: v2}]
      queryParams: [{type: RegularExpression, name: q, value: "a.*"}]
      method: POST
    - path: {type: Exact, value: /grpc.testing.TestService/UnaryCall}
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: a, value: b}], add: [{name: c, value: d}], remove: [e]}
    - type: RequestMirror
      requestMirror: {backendRef: {name: shadow, port: 80}, fraction: {numerator: 1}}
    - type: CORS
      cors: {allowOrigins: ["https://a.example"]}
    backendRefs:
    - {name: echo-v2, port: 50051, weight: 20}
    - name: echo-v1
      port: 50051
      filters:
      - type: ResponseHeaderModifier
        responseHeaderModifier: {remove: [server]}
    timeouts: {request: 10s, backendRequest: 2s}
    retry: {attempts: 3, codes: [503], backoff: 100ms}
    sessionPersistence: {sessionName: s}
  - filters:
    - type: RequestRedirect
      requestRedirect: {scheme: https, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}
    - type: URLRewrite
      urlRewrite: {hostname: other.example, path: {type: ReplaceFullPath, replaceFullPath: /x}}
`,
			want: model.Route{
				Key: model.Key{Namespace: "demo", Name: "echo-split"}, Kind: model.KindHTTPRoute,
				Generation: 1, CreationTimestamp: firstSeen.Truncate(time.Second),
				ParentRefs: []model.ParentRef{
					{Group: "", Kind: "Service", Name: "echo", Port: 50051},
					{Group: "gateway.networking.k8s.io", Kind: "Gateway", Name: "some-gateway"},
				},
				Hostnames: []string{"echo.example"},
				Rules: []model.RouteRule{{
					Matches: []model.RouteMatch{
						{
							Path:        &model.PathMatch{Type: "PathPrefix", Value: "/"},
							Method:      "POST",
							Headers:     []model.ValueMatch{{Type: "Exact", Name: "x-version", Value: "v2"}},
							QueryParams: []model.ValueMatch{{Type: "RegularExpression", Name: "q", Value: "a.*"}},
						},
						{Path: &model.PathMatch{Type: "Exact", Value: "/grpc.testing.TestService/UnaryCall"}},
					},
					Filters: []model.RouteFilter{
						{Type: "RequestHeaderModifier", RequestHeaderModifier: &model.HeaderModifier{
							Set: []model.Header{{Name: "a", Value: "b"}}, Add: []model.Header{{Name: "c", Value: "d"}}, Remove: []string{"e"},
						}},
						{Type: "RequestMirror", RequestMirror: &model.MirrorFilter{
							BackendRef: model.ObjectRef{Kind: "Service", Name: "shadow", Port: 80}, Numerator: 1, Denominator: 100,
						}},
						{Type: "CORS"},
					},
					BackendRefs: []model.BackendRef{
						{ObjectRef: model.ObjectRef{Kind: "Service", Name: "echo-v2", Port: 50051}, Weight: 20},
						{ObjectRef: model.ObjectRef{Kind: "Service", Name: "echo-v1", Port: 50051}, Weight: 1, Filters: []model.RouteFilter{
							{Type: "ResponseHeaderModifier", ResponseHeaderModifier: &model.HeaderModifier{Remove: []string{"server"}}},
						}},
					},
					Timeouts:    &model.RouteTimeouts{Request: "10s", BackendRequest: "2s"},
					Retry:       &model.RouteRetry{Codes: []int32{503}, Attempts: i32(3), Backoff: "100ms"},
					Unsupported: []string{"sessionPersistence"},
				}, {
					Filters: []model.RouteFilter{
						{Type: "RequestRedirect", RequestRedirect: &model.RedirectFilter{
							Scheme: "https", Path: &model.PathModifier{Type: "ReplacePrefixMatch", Value: "/v2"}, StatusCode: 302,
						}},
						{Type: "URLRewrite", URLRewrite: &model.RewriteFilter{
							Hostname: "other.example", Path: &model.PathModifier{Type: "ReplaceFullPath", Value: "/x"},
						}},
					},
				}},
			},
		},
		"GRPCRoute keeps its timestamp and generation": {
			kind: KindGRPCRoute,
			yaml: `
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo-methods, namespace: demo, generation: 4, creationTimestamp: "2026-01-02T03:04:05Z"}
spec:
  parentRefs:
  - {group: "", kind: Service, name: echo, sectionName: grpc}
  rules:
  - matches:
    - method: {service: grpc.testing.TestService, method: EmptyCall}
      headers: [{type: RegularExpression, name: x-user, value: "a.+"}]
    - method: {type: RegularExpression, method: "Un.*"}
    filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: shadow, port: 80}, percent: 5}
    backendRefs:
    - {name: echo-empty, port: 50051}
`,
			want: model.Route{
				Key: model.Key{Namespace: "demo", Name: "echo-methods"}, Kind: model.KindGRPCRoute,
				Generation: 4, CreationTimestamp: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
				ParentRefs: []model.ParentRef{{Group: "", Kind: "Service", Name: "echo", SectionName: "grpc"}},
				Rules: []model.RouteRule{{
					Matches: []model.RouteMatch{
						{
							GRPCMethod: &model.GRPCMethodMatch{Type: "Exact", Service: "grpc.testing.TestService", Method: "EmptyCall"},
							Headers:    []model.ValueMatch{{Type: "RegularExpression", Name: "x-user", Value: "a.+"}},
						},
						{GRPCMethod: &model.GRPCMethodMatch{Type: "RegularExpression", Method: "Un.*"}},
					},
					Filters: []model.RouteFilter{{Type: "RequestMirror", RequestMirror: &model.MirrorFilter{
						BackendRef: model.ObjectRef{Kind: "Service", Name: "shadow", Port: 80}, Numerator: 5, Denominator: 100,
					}}},
					BackendRefs: []model.BackendRef{{ObjectRef: model.ObjectRef{Kind: "Service", Name: "echo-empty", Port: 50051}, Weight: 1}},
				}},
			},
		},
		"a misspelt field is an error naming it": {
			kind: KindHTTPRoute,
			yaml: `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: typo, namespace: demo}
spec:
  rules:
  - backendRefs: [{name: echo, port: 80, wieght: 3}]
`,
			wantErr: "wieght",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			js, err := yaml.YAMLToJSONStrict([]byte(tc.yaml))
			if err != nil {
				t.Fatal(err)
			}
			ref := ObjectRef{Kind: tc.kind, Key: model.Key{Namespace: "demo"}}
			got, err := decodeRoute(js, ref, firstSeen)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one naming %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
		})
	}
}
