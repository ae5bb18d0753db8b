// Package echo is the gRPC backend behind the demo and the end-to-end tests:
// a grpc.testing.TestService that names itself in every answer and can be
// told to fail, fail every n-th call or answer slowly. It lets a test observe
// what a proxyless client actually did — which endpoint got each call, and
// how many calls were in flight at once — without any generated code of ours.
package echo
