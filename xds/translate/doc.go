// Package translate turns the resolved mesh (policy.Mesh) into the xDS
// resources one kind of proxy is served: clusters, endpoints, listeners and
// route configurations. It is the pure middle of the pipeline — no clock,
// randomness, I/O or logging, output sorted by name — so that equal meshes
// give byte-identical resources and the cache, which versions resources by
// content, pushes nothing when nothing changed.
package translate
