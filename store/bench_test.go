package store

import (
	"fmt"
	"maps"
	"testing"
	"time"

	"github.com/fjordmesh/fjord/watcher/model"
)

// meshState is one config as the control plane saves it after a build: the
// snapshot, the accepted policies and the files' last good content.
type meshState struct {
	snap  *model.Snapshot
	files map[string][]byte
}

// bigState builds services Services with one EndpointSlice of endpoints
// endpoints each, ten policies and ten routes, and one file per Service.
func bigState(services, endpoints int) meshState {
	st := meshState{snap: &model.Snapshot{}, files: map[string][]byte{}}
	for i := range services {
		name := fmt.Sprintf("svc-%04d", i)
		st.snap.Services = append(st.snap.Services, model.Service{
			Key:   model.Key{Namespace: "load", Name: name},
			Ports: []model.ServicePort{{Name: "grpc", Port: 50051, AppProtocol: "grpc"}},
		})
		eps := make([]model.Endpoint, endpoints)
		for j := range eps {
			eps[j] = model.Endpoint{Address: fmt.Sprintf("10.%d.%d.%d", i/250, i%250, j+1), Ready: true, Zone: "a"}
		}
		st.snap.EndpointSlices = append(st.snap.EndpointSlices, model.EndpointSlice{
			Key: model.Key{Namespace: "load", Name: name + "-1"}, Service: name,
			Ports: []model.EndpointPort{{Name: "grpc", Port: 50051}}, Endpoints: eps,
		})
		st.files[name+".yaml"] = fmt.Appendf(nil, "apiVersion: v1\nkind: Service\nmetadata:\n  name: %s\n  namespace: load\n"+
			"spec:\n  ports:\n  - name: grpc\n    port: 50051\n    appProtocol: grpc\n%0800d\n", name, i)
	}
	for i := range 10 {
		p := testPolicies()[0]
		p.Name = fmt.Sprintf("policy-%02d", i)
		st.snap.Policies = append(st.snap.Policies, p)
		st.snap.Routes = append(st.snap.Routes, model.Route{
			Key: model.Key{Namespace: "load", Name: fmt.Sprintf("route-%02d", i)}, Kind: model.KindGRPCRoute,
			ParentRefs: []model.ParentRef{{Kind: "Service", Name: fmt.Sprintf("svc-%04d", i)}},
			Rules:      []model.RouteRule{{BackendRefs: []model.BackendRef{{ObjectRef: model.ObjectRef{Name: fmt.Sprintf("svc-%04d", i)}, Weight: 1}}}},
		})
	}
	return st
}

// flip returns st with the EndpointSlice and the file of Service i changed,
// sharing everything else the way a config source's next snapshot does.
func (st meshState) flip(i int) meshState {
	snap := *st.snap
	snap.Services = append([]model.Service(nil), st.snap.Services...)
	snap.EndpointSlices = append([]model.EndpointSlice(nil), st.snap.EndpointSlices...)
	es := &snap.EndpointSlices[i]
	es.Endpoints = append([]model.Endpoint(nil), es.Endpoints...)
	es.Endpoints[0].Ready = !es.Endpoints[0].Ready
	files := maps.Clone(st.files)
	name := fmt.Sprintf("svc-%04d.yaml", i)
	files[name] = append(append([]byte(nil), files[name]...), "# flipped\n"...)
	return meshState{snap: &snap, files: files}
}

// BenchmarkSaveEndpointFlip is the control plane's deferred write after an
// endpoint change: a 1,000-Service config saved again with one EndpointSlice
// and one file changed, then flushed. "nosync" leaves out the fsync of the
// commit, whose time depends on the disk more than on the store.
func BenchmarkSaveEndpointFlip(b *testing.B) {
	b.Run("sync", func(b *testing.B) { benchmarkSaveEndpointFlip(b, false) })
	b.Run("nosync", func(b *testing.B) { benchmarkSaveEndpointFlip(b, true) })
}

func benchmarkSaveEndpointFlip(b *testing.B, noSync bool) {
	s, err := Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	s.db.NoSync = noSync
	s.Defer(time.Hour, func(err error) { b.Error(err) })
	base := bigState(1000, 10)
	var flips []meshState
	for i := range 8 {
		flips = append(flips, base.flip(i*125))
	}
	save := func(st meshState) {
		if err := s.SaveConfig(st.snap); err != nil {
			b.Fatal(err)
		}
		if err := s.SaveAccepted(st.snap.Policies); err != nil {
			b.Fatal(err)
		}
		if err := s.SaveFiles(st.files); err != nil {
			b.Fatal(err)
		}
		if err := s.flush(); err != nil {
			b.Fatal(err)
		}
	}
	save(base)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		// Every save differs from the one before in one EndpointSlice and
		// one file: base, flip 0, base, flip 1, ...
		if i%2 == 0 {
			save(flips[i/2%len(flips)])
		} else {
			save(base)
		}
	}
}
