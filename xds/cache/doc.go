// Package cache holds what the xDS server serves: per proxy kind, view and
// type, every translated resource validated, serialised once and versioned
// by a hash of its bytes. It implements go-control-plane's cache.Cache so
// the server can answer state-of-the-world and delta streams from it, and
// it wakes only the watches whose resources actually changed, so identical
// translator output never reaches a proxy. A view is what the proxies of a
// group of namespaces may see: a node's namespace picks its view (see
// SetViews), and a namespace that changes view has its open watches moved
// and answered there. Update replaces a kind's whole set in one view,
// Publish every view's at once with the namespaces' views; Patch changes a
// few resources of one (the endpoint fast path), with the same validation,
// versions and wake-ups. State-of-the-world responses for load assignments
// and route configurations carry only what a client is proven to lack (see
// sotwRespond), what each state-of-the-world client was sent is recorded
// as the version of a shared selection rather than a map of every name
// (see sotwMarker), a delta client's as the shared record of a snapshot and
// what differs from it (see deltaHeld), and the responses an Update wakes
// are built and sent in parallel, outside the cache lock (see fanOut).
package cache
