// Package e2e holds the end-to-end tests: the real fjord-cp binary in
// standalone mode on a temporary config directory, real grpc-go xDS clients
// and real gRPC backends on 127.0.0.x. They prove that what a user writes in
// the directory changes what a real client does, not only what config is
// served.
package e2e
